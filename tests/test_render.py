import numpy as np

import sage_core as sc


def test_render_grid_shape_dtype_and_known_cells():
    grid = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    img = sc.render_grid(grid)
    assert img.shape == (900, 900, 3) and img.dtype == np.uint8
    # cell (1, 0) is colour 3 (green); pixels 30..59 down, 0..29 across
    assert (img[30:60, 0:30] == sc.PALETTE[3]).all()
    assert tuple(img[15, 45]) == (0xFF, 0x41, 0x36)     # colour 2 = red
    assert (img[60:, :] == sc.OUTSIDE_RGB).all() and (img[:, 60:] == sc.OUTSIDE_RGB).all()


def test_render_pair_puts_input_left_and_output_right():
    pair = sc.Pair(np.full((30, 30), 1, np.uint8), np.full((2, 2), 2, np.uint8))
    frame = sc.render_pair(pair)
    assert frame.shape == (900, 900, 3)
    assert (frame[225:675, :450] == sc.PALETTE[1]).all()      # 30x30 blue input fills its half
    assert (frame[225:255, 450:480] == sc.PALETTE[2]).all()   # 2x2 output at 15 px per cell
    assert (frame[:225] == sc.OUTSIDE_RGB).all() and (frame[675:] == sc.OUTSIDE_RGB).all()


def test_plots_return_figures(arc1_training):
    import matplotlib
    matplotlib.use("Agg")
    task = arc1_training.tasks["007bbfb7"]
    for fig in (sc.plot_task(task), sc.plot_pair(task.train[0]),
                sc.plot_augmentations(task.train[0], sc.sample_augmentations(3)),
                sc.plot_size_histogram({"arc1/training": sc.dataset_stats(arc1_training)})):
        assert fig.axes
        matplotlib.pyplot.close(fig)
