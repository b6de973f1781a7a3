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


def test_copy_baseline_matches_an_independent_count(arc1_training, arc1_evaluation):
    split = sc.make_split(arc1_training, arc1_evaluation)
    right = total = exact = 0
    solved = {}
    for task in arc1_evaluation:
        ok_all = True
        for pair in task.test:
            total += pair.output.size
            if pair.input.shape == pair.output.shape:
                same = int(np.sum(pair.input == pair.output))
                right += same
                ok = same == pair.output.size
            else:
                ok = False
            exact += ok
            ok_all &= ok
        solved[task.id] = ok_all
    scores = sc.copy_baseline(split, "test")
    assert scores["pixel"] == pytest.approx(right / total)
    assert scores["exact"] == pytest.approx(exact / len(split.test))
    assert scores["solved"] == pytest.approx(np.mean(list(solved.values())))
    assert scores["tasks"] == 400 and 0.5 < scores["pixel"] < 0.9
