import numpy as np

import sage_core as sc


def test_query_output_never_reaches_the_teacher(arc1_training):
    """Every query of every ARC-AGI-1 training task: frame 0 is the query input, frame 1 a
    different demonstration; the query's output is in neither frame."""
    tasks = arc1_training.tasks
    examples = [ex for t in arc1_training for kind in ("train", "test")
                for ex in [sc.Example(t.id, kind, i) for i in range(len(getattr(t, kind)))]]
    obs = sc.make_observations(tasks, examples)
    for i, ex in enumerate(examples):
        task = tasks[ex.task_id]
        query = getattr(task, ex.kind)[ex.index]
        demo = sc.demonstration_for(task, ex)
        assert demo is not None and demo is not query
        np.testing.assert_array_equal(obs.query[i], sc.encode_grid(query.input))
        np.testing.assert_array_equal(obs.pair[i], sc.pair_cells(sc.encode_grid(demo.input),
                                                                 sc.encode_grid(demo.output)))
        answer = sc.encode_grid(query.output)
        # A frame may show an identical grid only if another demonstration really has it.
        others = [p for p in task.train if p is not query]
        if any(np.array_equal(f, answer) for f in (obs.query[i], obs.pair[i][15:45, 30:])):
            assert any(np.array_equal(sc.encode_grid(p.output), answer) or
                       np.array_equal(sc.encode_grid(p.input), answer) for p in others + [query])
    assert len(examples) == 1302 + 416


def test_groot_inputs_have_the_documented_shapes(arc1_training):
    task = arc1_training.tasks["007bbfb7"]
    obs = sc.make_observations({task.id: task}, [sc.Example(task.id, "test", 0),
                                                 sc.Example(task.id, "train", 1)])
    assert obs.video().shape == (2, 2, 1, 900, 900, 3)     # B, T, V, H, W, C
    inputs = obs.groot_inputs()
    video = inputs[sc.VIDEO_KEY]                           # one camera key: B, T, H, W, C
    assert video.shape == (2, 2, 900, 900, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video[0, 0], sc.render_grid(task.test[0].input))
    np.testing.assert_array_equal(video[0, 1], sc.render_pair(task.train[0]))
    np.testing.assert_array_equal(video[1, 1], sc.render_pair(task.train[2]))
    assert inputs[sc.STATE_KEY].shape == (2, 1, 16) and inputs[sc.STATE_KEY].dtype == np.float32
    assert inputs[sc.ACTION_KEY].shape == (2, 16, 32)
    text = inputs[sc.TEXT_KEY]
    assert text.shape == (2,) and "007bbfb7" in text[0]
    assert len(sc.TEXT_KEY.split(".")) >= 3


def test_task_encoding_is_bounded_and_named(arc1_training):
    assert len(sc.STATE_FEATURES) == sc.STATE_DIM == 16
    split_tasks = arc1_training.tasks
    exs = [sc.Example(t, "test", 0) for t in list(split_tasks)[:200]]
    state = sc.make_observations(split_tasks, exs).state
    assert state.shape == (200, 16) and np.isfinite(state).all()
    assert state.min() >= 0 and state.max() <= 1
    assert (state.std(0) > 0).sum() >= 14     # the features vary across tasks


def test_single_demonstration_task_gets_a_blank_second_frame():
    pair = sc.Pair(np.ones((2, 2), np.uint8), np.full((2, 2), 2, np.uint8))
    task = sc.Task("solo", (pair,), (pair,))
    obs = sc.make_observations({"solo": task}, [sc.Example("solo", "train", 0)])
    assert (obs.pair[0] == sc.OUTSIDE).all()
