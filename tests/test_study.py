"""scripts/study.sh: each row trains what its name says (teacher terms included), on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sage_core as sc

ROOT = Path(__file__).resolve().parents[1]


def stage(name, root):
    env = {**os.environ, "PYTHON": sys.executable, "PROFILE": "smoke", "DEVICE": "cpu", "PRESET": "tiny",
           "BUDGET": "2", "TEACHER_BUDGET": "2"}
    subprocess.run(["bash", str(ROOT / "scripts" / "study.sh"), name, str(root)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return root / name


def config(run):
    return json.loads((run / "train_config.json").read_text())["config"]


def test_study_rows_carry_their_teacher_terms(tmp_path):
    for name in ("teacher", "sage-store", "standin-store"):
        stage(name, tmp_path)
    rows = {name: config(stage(name, tmp_path)) for name in ("a1", "b", "c2")}
    assert rows["a1"]["loss"]["w_feat"] == 0 and rows["a1"]["run"]["seed"] == 1
    assert rows["b"]["teacher"]["teacher"] == "standin" and rows["b"]["loss"]["w_feat"] == 0.5
    c = rows["c2"]
    assert (c["teacher"]["teacher"], c["loss"]["w_feat"], c["loss"]["w_kd"], c["run"]["seed"]) == ("sage", 0.5, 1.0, 2)
    assert {r["student"]["width"] for r in rows.values()} == {192}      # one student for every row
    for name in ("a1", "b", "c2"):
        assert "pass@2" in json.loads((tmp_path / name / "train_summary.json").read_text())["test"]
    with pytest.raises(subprocess.CalledProcessError):
        stage("e", tmp_path)


def sequence_stage(name, root, **settings):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "PRESET": "tiny", "BUDGET": "2",
           "TEACHER_BUDGET": "3", "WARM_BUDGET": "2", "GRID_PROFILE": "smoke", "EXTRA": "max_tasks=3 augmentations=3",
           "TEACHER": "width=32 depth=2 heads=4", "STUDENT": "width=16 depth=2 heads=2", **settings}
    subprocess.run(["bash", str(ROOT / "scripts" / "sequence_study.sh"), name, str(root)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return root / name


def test_sequence_study_in_one_hold_runs_every_row_and_times_each_rows_first_seed(tmp_path):
    pinned = "schedule=epochs epochs=2 seconds_budget=0"
    sequence_stage("hold", tmp_path, SEEDS="2 3", EPOCHS="1", GRID_EPOCHS="1", TEACHER_BUDGET="",
                   TEACHER=f"width=32 depth=2 heads=4 {pinned}")
    rows = [f"{r}{s}" for r in "abcde" for s in (2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cost.json", "logs", "store-standin", "teacher", *rows])
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(
        f"{s}.log" for s in ["teacher", "standin-store", *rows])
    assert json.loads((tmp_path / "teacher" / "train_summary.json").read_text())["epochs"] == 2
    started = lambda run: (tmp_path / run / "train_config.json").stat().st_mtime     # noqa: E731
    finished = lambda run: (tmp_path / run / "train_summary.json").stat().st_mtime   # noqa: E731
    assert started("d3") >= finished("d2") and started("b2") < finished("d2")      # grid students one at a time
    answers = tmp_path / "teacher" / "predictions.json"
    assert json.loads(answers.read_text())                              # the teacher's voted answers
    rows = {name: config(tmp_path / name) for name in rows}
    teacher_path = str(tmp_path / "teacher" / "checkpoints" / "best.pt")
    assert rows["a2"]["loss"]["w_kd"] == rows["a2"]["loss"]["w_feat"] == 0
    for name in ("b3", "c2"):
        r = rows[name]
        assert (r["teacher"]["teacher"], r["teacher"]["teacher_path"], r["loss"]["w_kd"]) == ("sage", teacher_path, 1.0)
    assert rows["b3"]["data"]["self_train"] == ""
    assert rows["c2"]["data"]["self_train"] == rows["d3"]["data"]["self_train"] == str(answers)
    assert rows["d2"]["student"]["student"] == "grid" and rows["d2"]["loss"]["w_kd"] == 0
    assert (rows["e3"]["teacher"]["teacher"], rows["e3"]["loss"]["w_feat"]) == ("standin", 0.5)
    small = {k: rows["a2"]["student"][k] for k in ("width", "depth", "heads")}
    assert small == {"width": 16, "depth": 2, "heads": 2}
    assert all({k: rows[n]["student"][k] for k in small} == small for n in rows if n[0] != "d")
    for name, cfg in rows.items():
        summary = json.loads((tmp_path / name / "train_summary.json").read_text())
        assert cfg["run"]["seed"] == int(name[1:]) and (summary["epochs"], summary["stop"]) == (1, "epochs")
        assert "pass@2" in summary["test"]
    costs = json.loads((tmp_path / "cost.json").read_text())["rows"]     # each row's first seed, then the stand-in
    assert [r["model"].split(":")[0] for r in costs] == ["teacher", "a2", "b2", "c2", "d2", "e2", "teacher"]
    # the study's table and figure from these folders (scores set by hand where arithmetic is checked)
    for name, score in {"teacher": 0.40, "a2": 0.30, "a3": 0.32, "b2": 0.36}.items():
        (tmp_path / name / "test_scores.json").write_text(json.dumps(
            {"pass@2": score, "pass@1": score / 2, "exact": score, "pixel": 0.9}))
    # a second process times what a later machine trained (a3 here), beside its own stand-in
    later = json.loads((tmp_path / "cost.json").read_text())
    later["rows"] = [{**costs[1], "model": "a3: as a2", "ms_batch1": 3 * costs[1]["ms_batch1"]}, costs[-1]]
    (tmp_path / "cost-2.json").write_text(json.dumps(later))
    table = {r["row"]: r for r in sc.study_table(tmp_path, sc.study_costs(tmp_path))}
    assert set(table) == {"teacher", "a", "b", "c", "d", "e"} and table["a"]["runs"] == ["a2", "a3"]
    assert table["a"]["ms per input, batch 1"] == pytest.approx(2 * costs[1]["ms_batch1"])   # a2's and a3's mean
    assert table["a"]["training steps by seed"] == [
        json.loads((tmp_path / name / "train_summary.json").read_text())["steps"] for name in ("a2", "a3")]
    assert table["a"]["pass@2"] == pytest.approx(0.31) and table["a"]["kept of the teacher's pass@2"] == pytest.approx(0.775)
    assert table["b"]["against (a)"] == "within seed noise" and table["a"]["against (a)"] == "-"
    assert table["teacher"]["non-embedding parameters"] > table["a"]["non-embedding parameters"]
    assert all(r["ms per input, batch 1"] > 0 and r["inputs/s, best batch"] > 0 for r in table.values())
    figure = tmp_path / "study.png"
    assert sc.main(["study", str(tmp_path), "--out", str(figure)]) == 0 and figure.stat().st_size > 10_000


def test_sequence_study_hold_needs_every_length_pinned(tmp_path):
    with pytest.raises(subprocess.CalledProcessError):
        sequence_stage("hold", tmp_path, EPOCHS="1")                    # no GRID_EPOCHS: nothing starts
    assert not any(tmp_path.iterdir())


def test_sequence_study_epochs_set_every_rows_length_but_not_the_warm_up_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    row = sequence_stage("a3", tmp_path, EPOCHS="2", BUDGET="1")   # EPOCHS wins over the budget
    summary = json.loads((row / "train_summary.json").read_text())
    assert (summary["epochs"], summary["stop"], config(row)["train"]["seconds_budget"]) == (2, "epochs", 0)
    sequence_stage("warm", tmp_path, EPOCHS="2")
    warmed = tmp_path / "scratch" / "sage-study-warm" / "warm"    # compiled once, outside the study's folder
    assert (warmed / "checkpoints" / "best.pt").exists() and not (warmed / "predictions.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a3", "scratch"]
    assert (config(warmed)["train"]["schedule"], config(warmed)["train"]["seconds_budget"]) == ("budget", 2)


def test_seed_noise_needs_every_seed_of_one_row_above_the_others():
    assert sc.seed_noise([0.30, 0.32], [0.25, 0.28]) == "above, beyond seed noise"
    assert sc.seed_noise([0.20, 0.22], [0.25, 0.28]) == "below, beyond seed noise"
    assert sc.seed_noise([0.26, 0.32], [0.25, 0.28]) == "within seed noise"
    assert sc.seed_noise([0.40], [0.25, 0.28]) == "one seed: cannot tell"


def test_non_embedding_parameters_leave_out_the_embedding_tables():
    cfg = sc.build_config("smoke", student="sequence", width=32, depth=2, heads=4)["student"]
    model = sc.build_student(cfg, n_task_ids=50)
    embedded = model.task.weight.numel() + model.dihedral.weight.numel() + model.token.weight.numel()
    assert sc.non_embedding_parameters(cfg) == sc._n_params(model) - embedded
