import numpy as np
import pytest

import sage_core as sc


def test_every_arc1_grid_round_trips_under_all_dihedrals_and_random_colours(arc1_training, arc1_evaluation):
    rng = np.random.default_rng(0)
    for data in (arc1_training, arc1_evaluation):
        for task in data:
            colours = (0, *(rng.permutation(9) + 1).tolist(), sc.OUTSIDE)
            for k in range(8):
                aug = sc.Augmentation(k, colours)
                for grid in task.grids():
                    np.testing.assert_array_equal(aug.invert(aug.apply(grid)), grid)


def test_the_eight_transforms_are_distinct_and_keep_black():
    grid = np.arange(12, dtype=np.uint8).reshape(3, 4) % 10   # no symmetry
    outs = [sc.dihedral(grid, k) for k in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    aug = sc.Augmentation(0, (0, 2, 3, 4, 5, 6, 7, 8, 9, 1, 10))
    assert (aug.apply(grid)[grid == 0] == 0).all()
    assert aug.apply(np.array([[9]]))[0, 0] == 1


def test_dihedral_works_on_batches():
    batch = np.random.default_rng(1).integers(0, 10, (5, 7, 7))
    for k in range(8):
        np.testing.assert_array_equal(sc.dihedral(batch, k)[2], sc.dihedral(batch[2], k))


def test_augmenting_a_task_gives_a_new_id_and_transforms_every_pair(arc1_training):
    task = arc1_training.tasks["007bbfb7"]
    aug = sc.sample_augmentations(3, seed=5)[2]
    new = aug.apply_task(task)
    assert new.id == f"007bbfb7~{aug.name}" and new.id != task.id
    assert len(new.train) == len(task.train) and len(new.test) == len(task.test)
    np.testing.assert_array_equal(new.test[0].output, aug.apply(task.test[0].output))


def test_sampling_is_deterministic_distinct_and_starts_with_identity():
    a = sc.sample_augmentations(50, seed=3)
    assert [x.name for x in a] == [x.name for x in sc.sample_augmentations(50, seed=3)]
    assert [x.name for x in a] != [x.name for x in sc.sample_augmentations(50, seed=4)]
    assert len({x.name for x in a}) == 50
    assert a[0] == sc.Augmentation()


@pytest.mark.parametrize("k,colours", [(8, tuple(range(11))), (0, (1, 0, *range(2, 11))),
                                       (0, tuple(range(10)) + (9,))])
def test_bad_augmentations_are_refused(k, colours):
    with pytest.raises(ValueError):
        sc.Augmentation(k, colours)
