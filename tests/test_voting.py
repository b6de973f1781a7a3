import json

import numpy as np
import pytest

import sage_core as sc

A, B, C = np.array([[1]]), np.array([[2, 2]]), np.array([[3], [3]])


def test_vote_ranks_by_count_and_breaks_ties_by_first_seen():
    grids, votes = sc.vote([B, A, A, C, B, A])
    assert [g.tolist() for g in grids] == [A.tolist(), B.tolist()] and votes == [3, 2]
    grids, votes = sc.vote([C, B, B, C])              # tie: C appeared first
    assert [g.tolist() for g in grids] == [C.tolist(), B.tolist()] and votes == [2, 2]
    same_bytes_other_shape = np.array([[2], [2]])     # same cells as B, other shape: other grid
    assert sc.vote([B, same_bytes_other_shape])[1] == [1, 1]


def make_task():
    g = lambda *rows: np.array(rows, dtype=np.uint8)  # noqa: E731
    train = (sc.Pair(g([1, 0], [0, 0]), g([0, 1], [0, 0])),)
    tests = (sc.Pair(g([2, 0]), g([0, 2])), sc.Pair(g([3, 4]), g([4, 3])))
    return sc.Task("t1", train, tests)


def test_oracle_predictions_in_every_version_map_back_to_the_answers():
    task = make_task()
    split = sc.Split("x", {"t1": task}, [], [], [sc.Example("t1", "test", i) for i in range(2)])
    versions = sc.task_versions(split.tasks, 8, seed=3)
    bank = sc.make_bank(split, "test", versions, 5, "cpu")
    records = sc.voted_predictions(split, "test", bank.target.numpy(), bank.examples, versions)
    assert all(r["votes"] == [8] for r in records)
    scores = sc.score_voted(records, split)
    assert scores["pass@1"] == scores["pass@2"] == scores["exact"] == scores["pixel"] == 1.0


def test_pass_at_2_and_multi_test_tasks_on_hand_made_records():
    task = make_task()
    split = sc.Split("x", {"t1": task}, [], [], [])
    right0, right1 = task.test[0].output, task.test[1].output
    wrong = np.zeros((1, 2), np.uint8)
    records = [{"task_id": "t1", "kind": "test", "index": 0, "attempts": [wrong, right0], "votes": [5, 3]},
               {"task_id": "t1", "kind": "test", "index": 1, "attempts": [right1], "votes": [8]}]
    s = sc.score_voted(records, split)
    assert s["pass@1"] == 0.0 and s["pass@2"] == 1.0 and s["exact"] == 0.5
    assert s["pixel"] == pytest.approx((1 + 2) / 4)        # [[0, 0]] vs [[0, 2]]: 1 of 2 cells
    records[1]["attempts"] = [wrong]
    assert sc.score_voted(records, split)["pass@2"] == 0.0  # one test input wrong: task unsolved


def test_submission_has_the_arc_prize_format():
    records = [{"task_id": "t1", "kind": "test", "index": 1, "attempts": [C], "votes": [1]},
               {"task_id": "t1", "kind": "test", "index": 0, "attempts": [A, B], "votes": [2, 1]}]
    sub = json.loads(json.dumps(sc.submission(records)))
    assert sub == {"t1": [{"attempt_1": [[1]], "attempt_2": [[2, 2]]},
                          {"attempt_1": [[3], [3]], "attempt_2": [[3], [3]]}]}


def test_train_command_then_voted_evaluation_writes_scores_and_predictions(tmp_path):
    code = sc.main(["train", "--profile", "smoke", "--run-dir", str(tmp_path), "--evaluate", "--set",
                    "device=cpu", "epochs=1", "w_feat=0", "augmentations=2"])
    assert code == 0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    test = summary["test"]
    assert test["tasks"] == sc.PROFILES["smoke"]["max_tasks"] and 0 <= test["pass@1"] <= test["pass@2"] <= 1
    assert 0 <= test["pixel"] <= 1 and "copy_baseline" in test
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert len(predictions) == test["tasks"]
    assert all({"attempt_1", "attempt_2"} == set(a) for v in predictions.values() for a in v)
    (tmp_path / "predictions.json").unlink()   # the score command alone writes them again, the same
    assert sc.main(["score", "--run-dir", str(tmp_path), "--device", "cpu"]) == 0
    again = json.loads((tmp_path / "test_scores.json").read_text())
    assert again.pop("seconds") > 0 and again == {k: v for k, v in test.items() if k != "seconds"}
    assert json.loads((tmp_path / "predictions.json").read_text()) == predictions


def test_every_version_is_mapped_back_before_the_vote_and_a_tie_goes_to_the_identity():
    task = make_task()
    split = sc.Split("x", {"t1": task}, [], [], [sc.Example("t1", "test", i) for i in range(2)])
    versions = sc.task_versions(split.tasks, 4, seed=5)
    right = [p.output for p in task.test]
    wrong = np.array([[7, 7, 7]], np.uint8)
    # What each version predicts, in the original frame: test 0 right in 3 of 4 versions;
    # test 1 a 2-2 tie between a wrong grid (the identity version's) and the right one.
    plan = [[right[0], right[0], right[0], wrong], [wrong, right[1], wrong, right[1]]]
    assert any(aug.apply(wrong).shape != wrong.shape for aug in versions["t1"])   # the inverse turns it back
    cells = np.stack([sc.encode_grid(versions["t1"][v].apply(plan[e][v])) for e in range(2) for v in range(4)])
    records = sc.voted_predictions(split, "test", cells, split.test, versions)
    assert records[0]["votes"] == [3, 1] and records[0]["attempts"][0].tolist() == right[0].tolist()
    assert records[1]["votes"] == [2, 2]
    assert [a.tolist() for a in records[1]["attempts"]] == [wrong.tolist(), right[1].tolist()]
    assert [c.tolist() for c in records[1]["candidates"]] == [g.tolist() for g in plan[1]]
    s = sc.score_voted(records, split)
    assert s["pass@1"] == 0.0 and s["pass@2"] == 1.0 and s["exact"] == 0.5


def test_a_version_that_predicts_no_grid_is_left_out_of_the_vote():
    task = make_task()
    split = sc.Split("x", {"t1": task}, [], [], [sc.Example("t1", "test", 0)])
    versions = sc.task_versions(split.tasks, 2, seed=0)
    outside = np.full((30, 30), sc.OUTSIDE, np.uint8)
    answer = sc.encode_grid(versions["t1"][1].apply(task.test[0].output))
    (record,) = sc.voted_predictions(split, "test", np.stack([outside, answer]), split.test, versions)
    assert record["votes"] == [1] and record["attempts"][0].tolist() == task.test[0].output.tolist()
    assert record["candidates"][0].size == 0
    (record,) = sc.voted_predictions(split, "test", np.stack([outside, outside]), split.test, versions)
    assert record["votes"] == [0] and record["attempts"][0].tolist() == [[0]]


def test_the_curve_command_plots_each_evaluated_run_by_its_training_minutes(tmp_path, capsys):
    for name, student, seconds, where in (("a", "sequence", 330.0, "score"), ("b", "grid", 290.0, "train")):
        run = tmp_path / name
        run.mkdir()
        summary = {"student": student, "seconds": seconds}
        if where == "train":                                 # `train --evaluate` keeps it in the summary
            summary["test"] = {"pass@2": 0.0125}
        else:                                                # `score` writes its own file
            (run / "test_scores.json").write_text(json.dumps({"pass@2": 0.075}))
        (run / "train_summary.json").write_text(json.dumps(summary))
    out = tmp_path / "figures" / "curve.png"
    assert sc.main(["curve", "--out", str(out), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert "| a | sequence | 5.5 | 7.50% |" in printed and "| b | grid | 4.8 | 1.25% |" in printed


def test_a_gallery_keeps_its_title_when_a_pair_has_no_attempt():
    task = make_task()
    split = sc.Split("x", {"t1": task}, [], [], [sc.Example("t1", "test", 0)])
    record = {"task_id": "t1", "kind": "test", "index": 0, "attempts": [np.zeros((1, 1), np.uint8)], "votes": [0]}
    import matplotlib.pyplot as plt
    fig = sc.plot_prediction_gallery([record], split, [0], "the gallery's title")
    assert fig._suptitle.get_text() == "the gallery's title"
    assert fig.axes[2].get_title() == "attempt 1: none ([[0]] submitted)"
    plt.close(fig)
