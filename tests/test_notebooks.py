"""Notebook files as stored in git, and the smoke pipeline run through papermill."""
import ast
import dataclasses
import hashlib
import json
import math
import re
import shutil

import nbformat
import numpy as np
import papermill as pm
import pytest

import sage_core as sc

NOTEBOOKS = sc.list_notebooks()
FIELDS = {f.name: f.default for cls in sc.CONFIG_CLASSES.values() for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs not stripped"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_leaves_every_field_to_the_profile_and_says_its_default(path):
    params = pm.inspect_notebook(str(path))
    assert params, "papermill found no parameters"
    assert set(params) <= set(FIELDS)
    assert all(info["default"] == "None" for info in params.values())
    for name in ("run_dir", "profile", "device", "batch_size", "epochs", "seed", "interactive"):
        assert name in params
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == sc.parameters_source(list(params))   # comments and defaults as in sage_core


def assigned_names(source):
    """Every name a cell binds: assignments, loop and with targets, imports, definitions."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_after_the_parameters_rebinds_or_reads_a_parameter_name(path):
    cells = nbformat.read(path, as_version=4).cells
    start = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    for index, cell in enumerate(cells[start + 1:], start + 1):
        if cell.cell_type == "code":
            clash = assigned_names(cell.source) & set(FIELDS)
            assert not clash, f"cell {index} rebinds {sorted(clash)}: re-running the set-up cell would break"
            # a parameter may be None (not given): later cells read the built config instead
            read = {n.id for n in ast.walk(ast.parse(cell.source))
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} & set(FIELDS)
            assert not read, f"cell {index} reads {sorted(read)} directly instead of run.config"


def test_the_rebinding_check_sees_every_kind_of_binding():
    source = "split = 1\nfor teacher in x: pass\nwith f() as device: pass\nimport numpy as lr\ndef seed(): pass"
    assert assigned_names(source) >= {"split", "teacher", "device", "lr", "seed"}


def test_pipeline_names_the_notebook_and_cell_that_fail(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "broken.json").write_text('{"train": [')
    record = sc.run_pipeline("smoke", "cpu", "broken", tmp_path, only="00", train_set=str(tasks))
    assert record["status"] == "failed"
    assert "00_arc_data.ipynb failed at cell" in record["failure"]
    assert "TaskError" in record["failure"] and "broken.json" in record["failure"]
    saved = json.loads((tmp_path / "broken" / "run.json").read_text())
    assert saved["status"] == "failed" and saved["notebooks"]["00_arc_data"]["status"] == "failed"


def test_a_bad_parameter_fails_before_any_notebook_runs(tmp_path):
    with pytest.raises(ValueError, match=re.escape("student must be one of grid | features | sequence, not 'gird'")):
        sc.run_pipeline("smoke", "cpu", "typo", tmp_path, student="gird")
    assert not (tmp_path / "typo").exists()


def test_papermill_values_equal_to_the_defaults_win_over_the_profile(tmp_path):
    defaults = {"epochs": sc.RunConfig.epochs, "augmentations": sc.DataConfig.augmentations,
                "w_feat": sc.LossConfig.w_feat}
    assert all(sc.PROFILES["full"][k] != v for k, v in defaults.items())
    pm.execute_notebook(str(NOTEBOOKS[0]), str(tmp_path / "00.ipynb"), cwd=str(sc.NOTEBOOK_DIR),
                        kernel_name="python3", progress_bar=False,
                        parameters={"run_dir": str(tmp_path / "run"), "profile": "full", "device": "cpu", **defaults})
    recorded = json.loads((tmp_path / "run" / "configs" / "00_arc_data.json").read_text())["config"]
    assert recorded["run"]["profile"] == "full"
    assert recorded["run"]["epochs"] == 20 and recorded["data"]["augmentations"] == 8
    assert recorded["loss"]["w_feat"] == 0.5
    assert recorded["run"]["batch_size"] == sc.PROFILES["full"]["batch_size"]   # not given: the profile's


def figure_hashes():
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(sc.FIGURES_DIR.glob("*"))}


def test_a_hand_run_of_06_writes_figures_into_its_run_only(smoke_run, tmp_path):
    """As a user in JupyterLab: only run_dir and interactive edited, the kernel in notebooks/."""
    run_dir = tmp_path / "mine"
    shutil.copytree(smoke_run, run_dir)
    shutil.rmtree(run_dir / "figures")
    before = figure_hashes()
    out = tmp_path / "06.ipynb"
    pm.execute_notebook(str(NOTEBOOKS[-1]), str(out), cwd=str(sc.NOTEBOOK_DIR), kernel_name="python3",
                        progress_bar=False, parameters={"run_dir": str(run_dir), "interactive": True})
    assert figure_hashes() == before
    assert {"06_gallery_right.png", "06_speed.png"} <= {p.name for p in (run_dir / "figures").glob("*.png")}
    outputs = [o for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_publish_copies_a_runs_figures_and_says_where_they_come_from(smoke_run, tmp_path):
    published = sc.publish_figures(smoke_run, ["06_speed", "05_"], target=tmp_path)
    assert sorted(p.name for p in published) == ["05_learning_curves.png", "06_speed.png"]
    assert (tmp_path / "06_speed.png").read_bytes() == (smoke_run / "figures" / "06_speed.png").read_bytes()
    sources = json.loads((tmp_path / "sources.json").read_text())
    assert set(sources) == {"05_learning_curves.png", "06_speed.png"}
    assert sources["06_speed.png"]["run"].endswith("smoke") and sources["06_speed.png"]["commit"]
    with pytest.raises(FileNotFoundError, match="no figures"):
        sc.publish_figures(smoke_run, ["99_"], target=tmp_path)


def test_smoke_run_records_parameters_versions_and_timings(smoke_run):
    record = json.loads((smoke_run / "run.json").read_text())
    assert record["status"] == "ok"
    assert record["parameters"]["profile"] == "smoke"
    assert record["packages"]["torch"] and record["commit"]
    assert [p.stem for p in NOTEBOOKS] == list(record["notebooks"])
    assert all(nb["seconds"] > 0 for nb in record["notebooks"].values())
    for path in NOTEBOOKS:
        assert (smoke_run / "notebooks" / path.name).exists()


def test_smoke_arc_data_step(smoke_run):
    summary = json.loads((smoke_run / "steps" / "00_arc_data.json").read_text())
    n = sc.PROFILES["smoke"]["max_tasks"]
    assert summary["split"]["tasks"] == 2 * n
    assert all(d["tasks"] == n for d in summary["datasets"].values())
    for part in ("val", "test"):
        scores = summary["copy_baseline"][part]
        assert all(math.isfinite(v) for v in scores.values())
        assert 0 < scores["pixel"] < 1 and scores["exact"] == 0
    figures = {p.name for p in (smoke_run / "figures").glob("00_*.png")}
    assert {"00_grid_sizes.png", "00_teacher_frames.png", "00_augmentations.png"} <= figures


def read_step(run_dir, step):
    return json.loads((run_dir / "steps" / f"{step}.json").read_text())


def test_smoke_groot_integration_step(smoke_run):
    s = read_step(smoke_run, "01_groot_integration")
    assert s["teacher"]["teacher"] == "standin" and s["teacher"]["pretrained"] is False
    assert "carry no knowledge" in s["label"]
    assert s["tokens_per_observation"] == s["features_shape"][1] > 2 * 10 * 16
    assert all(r["ms_per_example"] > 0 for r in s["speed"])
    assert "groot:" in s["groot"]
    assert (smoke_run / "figures" / "01_observation.png").exists()


def test_smoke_dataset_build_step(smoke_run):
    s = read_step(smoke_run, "02_dataset_build")
    split = read_step(smoke_run, "00_arc_data")["split"]
    m = s["manifest"]
    assert m["examples"] == split["train"] + split["val"] + split["test"]
    assert 0 < m["bytes_per_example"] < 64 * 1024
    assert s["examples_per_s"] > 0 and math.isfinite(s["model_examples_per_s"])
    assert (smoke_run / "feature_store" / "manifest.json").exists()


def test_smoke_architecture_and_loss_steps(smoke_run):
    arch = read_step(smoke_run, "03_architecture")
    assert {"grid", "features", "sequence"} == set(arch["parameters"])
    shapes = {r["student"]: r for r in arch["shapes"]}
    assert shapes["grid"]["logits"] == shapes["features"]["logits"] == "(2, 30, 30, 11)"
    # two 15x15 pairs: each 1 + 15 x 16 + 1 + 15 x 16 + 1 tokens, 14 logits per token
    assert shapes["sequence"]["inputs"] == "2 sequences packed in 966 tokens"
    assert shapes["sequence"]["logits"] == "(966, 14)" and shapes["sequence"]["pooled"].startswith("(2, ")
    assert {r["input"] for r in arch["speed"] if r["student"] == "sequence"} == {"30x30 pairs", "15x15 pairs"}
    loss = read_step(smoke_run, "04_loss_tests")
    assert loss["all_pass"] and len(loss["checks"]) >= 8


def test_smoke_training_step(smoke_run):
    s = read_step(smoke_run, "05_training")
    assert s["steps"] > 0 and s["stop"] in ("epochs", "seconds_budget", "early_stopping")
    assert 0 <= s["best_val_exact"] <= 1
    assert (smoke_run / "checkpoints" / "best.pt").exists()
    assert (smoke_run / "figures" / "05_learning_curves.png").exists()
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["total"]) for r in records if r["kind"] == "train")


def test_smoke_evaluation_step(smoke_run, arc1_evaluation, hand_count):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    predictions = json.loads((smoke_run / "predictions.json").read_text())
    tasks = list(arc1_evaluation.subset(sc.PROFILES["smoke"]["max_tasks"]))
    # predictions.json: every evaluation task, one entry per test input, two ARC grids each
    assert sorted(predictions) == sorted(t.id for t in tasks)
    for task in tasks:
        assert len(predictions[task.id]) == len(task.test)
        for entry in predictions[task.id]:
            assert set(entry) == {"attempt_1", "attempt_2"}
            for grid in map(np.array, entry.values()):
                assert grid.ndim == 2 and 1 <= min(grid.shape) and max(grid.shape) <= 30
                assert 0 <= grid.min() and grid.max() <= 9
    # the scores equal a count by hand from that file and the answers; the baseline likewise
    counted = hand_count([(t.id, [np.array(e["attempt_1"]), np.array(e["attempt_2"])], p.output)
                          for t in tasks for e, p in zip(predictions[t.id], t.test)])
    for key, value in counted.items():
        assert metrics["scores"][key] == pytest.approx(value), key
    copy = hand_count([(t.id, [p.input], p.output) for t in tasks for p in t.test])
    assert metrics["copy_baseline"]["pixel"] == pytest.approx(copy["pixel"])
    assert metrics["copy_baseline"]["solved"] == pytest.approx(copy["pass@1"])
    assert metrics["split"]["versions"] == sc.PROFILES["smoke"]["augmentations"]
    # speed: the features student's time holds its teacher's; the stand-in is named as such
    rows = metrics["speed"]["rows"]
    teacher = next(r for r in rows if r["model"].startswith("teacher"))
    assert "carry no knowledge" in teacher["model"]
    assert rows[-1]["ms_batch1"] > teacher["ms_batch1"] > 0 and rows[0]["ms_batch1"] > 0
    assert rows[-1]["parameters"] > teacher["parameters"]
    # alignment against the stand-in's features, attention honestly not computed
    align = metrics["alignment"]
    assert align["computed"] and align["projection_trained"] and "carry no knowledge" in align["teacher"]
    assert len(align["matched"]) == metrics["split"]["test_pairs"]
    assert all(-1 <= c <= 1 for c in align["matched"] + align["mismatched"])
    assert not metrics["attention"]["computed"] and "stand-in" in metrics["attention"]["reason"]
    # the report links figures that exist; no widget was built in the headless run
    report = (smoke_run / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+)\)", report)
    assert len(links) >= 6 and all((smoke_run / link).exists() for link in links)
    assert "carry no knowledge" in report
    executed = nbformat.read(smoke_run / "notebooks" / "06_evaluation.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_evaluate_command_reruns_06_on_a_run_folder_and_keeps_its_record(smoke_run, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(smoke_run, run_dir)
    for name in ("report.md", "metrics.json", "predictions.json"):
        (run_dir / name).unlink()
    assert sc.main(["evaluate", "--run-dir", str(run_dir), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == f"report: {run_dir.resolve() / 'report.md'}"
    assert re.match(r"scored \d+ tasks \(\d+ test pairs x 2 versions\) in [\d.]+ s on cpu", lines[-1])
    record = json.loads((run_dir / "run.json").read_text())
    assert list(record["notebooks"]) == [p.stem for p in NOTEBOOKS]   # the earlier steps' record stays
    assert record["parameters"]["profile"] == "smoke"                  # the checkpoint's own profile
    assert all((run_dir / name).exists() for name in ("report.md", "metrics.json", "predictions.json"))
