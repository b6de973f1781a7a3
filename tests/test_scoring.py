import numpy as np
import pytest

import sage_core as sc


def test_scores_on_a_hand_counted_case():
    targets = [np.array([[1, 2], [3, 4]]), np.array([[5]]), np.array([[1, 1, 1]])]
    preds = [np.array([[1, 2], [3, 0]]),     # 3 of 4 cells
             np.array([[5]]),                # exact
             np.array([[1], [1], [1]])]      # wrong size: all 3 cells count wrong
    scores = sc.score_predictions(preds, targets, ["a", "b", "b"])
    assert scores["pixel"] == pytest.approx(4 / 8)
    assert scores["exact"] == pytest.approx(1 / 3)
    assert scores["solved"] == 0.0           # task b has one wrong test input
    assert sc.score_predictions(preds[1:2], targets[1:2], ["b"])["solved"] == 1.0


def test_copy_baseline_matches_an_independent_count(arc1_training, arc1_evaluation, hand_count):
    split = sc.make_split(arc1_training, arc1_evaluation)
    counted = hand_count([(t.id, [p.input], p.output) for t in arc1_evaluation for p in t.test])
    scores = sc.copy_baseline(split, "test")
    assert scores["pixel"] == pytest.approx(counted["pixel"])
    assert scores["exact"] == pytest.approx(counted["exact"])
    assert scores["solved"] == pytest.approx(counted["pass@1"])
    assert scores["tasks"] == 400 and 0.5 < scores["pixel"] < 0.9


def test_pair_scores_and_accuracy_by_size_on_a_hand_counted_case():
    g = lambda *rows: np.array(rows, dtype=np.uint8)  # noqa: E731
    big_in, big_out = np.zeros((12, 12), np.uint8), np.ones((12, 12), np.uint8)
    task = sc.Task("t", (sc.Pair(g([1]), g([1])),),
                   (sc.Pair(g([1, 2], [3, 0]), g([1, 2], [3, 4])), sc.Pair(big_in, big_out)))
    split = sc.Split("x", {"t": task}, [], [], [])
    records = [{"task_id": "t", "kind": "test", "index": 0, "attempts": [g([1, 2], [3, 3])], "votes": [2]},
               {"task_id": "t", "kind": "test", "index": 1, "attempts": [g([1]), big_out], "votes": [1, 1]}]
    rows = sc.pair_scores(records, split)
    assert [(r["rows"], r["cols"]) for r in rows] == [(2, 2), (12, 12)]
    assert rows[0]["pixel"] == 0.75 and not rows[0]["exact"] and not rows[0]["pass@2"]
    assert rows[0]["copy_pixel"] == 0.75              # the input differs from the target in one cell
    assert rows[1]["pixel"] == 0.0 and not rows[1]["exact"] and rows[1]["pass@2"]   # right at attempt 2
    assert rows[1]["copy_pixel"] == 0.0
    by_size = sc.accuracy_by_size(rows)
    assert [(b["side"], b["pairs"], b["pixel"], b["exact"]) for b in by_size] == [("1-5", 1, 0.75, 0.0),
                                                                                ("11-15", 1, 0.0, 0.0)]


def test_difference_grid_marks_wrong_cells_and_counts_a_wrong_size_as_all_wrong():
    target = np.array([[1, 2], [3, 4]])
    diff = sc.difference_grid(np.array([[1, 2], [0, 4]]), target)
    assert (diff == 2).sum() == 1 and diff[1, 0] == 2 and (diff[target != 3] == sc.OUTSIDE).all()
    assert (sc.difference_grid(np.array([[1, 2]]), target) == 2).all()
