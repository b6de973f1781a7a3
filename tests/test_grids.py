import numpy as np
import pytest

import sage_core as sc


def test_encode_decode_round_trip_on_every_arc1_grid(arc1_training, arc1_evaluation):
    n = 0
    for data in (arc1_training, arc1_evaluation):
        for task in data:
            for grid in task.grids():
                cells = sc.encode_grid(grid)
                assert cells.shape == (30, 30)
                assert sc.grid_shape(cells) == grid.shape
                np.testing.assert_array_equal(sc.decode_grid(cells), grid)
                n += 1
    assert n == 7000   # 3,436 training + 3,564 evaluation grids


def test_encode_marks_everything_else_outside():
    cells = sc.encode_grid(np.array([[1, 2, 3], [0, 0, 0]]))
    assert (cells[:2, :3] == [[1, 2, 3], [0, 0, 0]]).all()
    assert (cells[2:] == sc.OUTSIDE).all() and (cells[:, 3:] == sc.OUTSIDE).all()


@pytest.mark.parametrize("shape", [(0, 3), (31, 2), (2, 31)])
def test_encode_rejects_grids_that_do_not_fit(shape):
    with pytest.raises(ValueError, match="does not fit"):
        sc.encode_grid(np.zeros(shape, dtype=np.uint8))


def test_decode_of_a_prediction_uses_the_non_outside_rectangle():
    cells = np.full((30, 30), sc.OUTSIDE, dtype=np.uint8)
    cells[0, 0] = 3
    cells[2, 4] = 5          # a stray cell widens the rectangle to 3x5
    grid = sc.decode_grid(cells)
    assert grid.shape == (3, 5)
    assert grid[0, 0] == 3 and grid[2, 4] == 5
    assert grid.max() <= 9   # OUTSIDE inside the rectangle becomes a valid colour
    assert sc.decode_grid(np.full((30, 30), sc.OUTSIDE)).shape == (0, 0)


def test_palette_has_ten_colours_and_a_distinct_outside():
    assert sc.PALETTE.shape == (11, 3)
    assert len({tuple(c) for c in sc.PALETTE}) == 11
    assert tuple(sc.PALETTE[0]) == (0, 0, 0)
