"""The groot backend where Isaac-GR00T is absent (CI): metadata, checkpoint copy, error paths."""
import copy
import json

import numpy as np
import pytest

import sage_core as sc


@pytest.fixture
def entry():
    states = np.random.default_rng(0).random((50, 16)).astype(np.float32)
    return sc.groot_metadata(states)


def test_metadata_entry_has_what_the_schema_requires(entry):
    sc.check_groot_metadata(entry)
    assert entry["embodiment_tag"] == "new_embodiment"
    assert entry["modalities"]["video"]["input_grid"] == {"resolution": [900, 900], "channels": 3, "fps": 1.0}
    assert entry["modalities"]["state"]["task_encoding"]["shape"] == [16]
    assert entry["modalities"]["action"]["grid_output"]["shape"] == [32]
    stats = entry["statistics"]["state"]["task_encoding"]
    assert set(stats) == {"max", "min", "mean", "std", "q01", "q99"}
    assert all(len(v) == 16 for v in stats.values())
    assert all(lo <= hi for lo, hi in zip(stats["q01"], stats["q99"]))
    json.dumps(entry)   # plain JSON types only


@pytest.mark.parametrize("breakage", ["no_q01", "fps_zero", "shape_int", "bad_tag", "short_stats",
                                      "no_action", "resolution_3"])
def test_metadata_checker_rejects_what_the_schema_rejects(entry, breakage):
    bad = copy.deepcopy(entry)
    state = bad["statistics"]["state"]["task_encoding"]
    if breakage == "no_q01":
        del state["q01"]
    elif breakage == "fps_zero":
        bad["modalities"]["video"]["input_grid"]["fps"] = 0
    elif breakage == "shape_int":
        bad["modalities"]["state"]["task_encoding"]["shape"] = 16
    elif breakage == "bad_tag":
        bad["embodiment_tag"] = "arc"
    elif breakage == "short_stats":
        state["mean"] = state["mean"][:3]
    elif breakage == "no_action":
        del bad["statistics"]["action"]
    elif breakage == "resolution_3":
        bad["modalities"]["video"]["input_grid"]["resolution"] = [900, 900, 3]
    with pytest.raises(ValueError, match="GR00T metadata"):
        sc.check_groot_metadata(bad)


def test_checkpoint_copy_links_weights_and_adds_the_embodiment(tmp_path, entry):
    src = tmp_path / "GR00T-N1.5-3B"
    (src / "experiment_cfg").mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "gr00t_n1_5"}')
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "experiment_cfg" / "conf.yaml").write_text("x: 1")
    original = {"gr1": {"embodiment_tag": "gr1"}}
    (src / "experiment_cfg" / "metadata.json").write_text(json.dumps(original))
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    dst = sc.prepare_groot_checkpoint(src, tmp_path / "copy", entry)
    assert (dst / "model.safetensors").is_symlink() and (dst / "model.safetensors").read_bytes() == b"weights"
    assert (dst / "experiment_cfg" / "conf.yaml").read_text() == "x: 1"
    merged = json.loads((dst / "experiment_cfg" / "metadata.json").read_text())
    assert merged["gr1"] == original["gr1"] and merged["new_embodiment"] == entry
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before   # source untouched
    sc.prepare_groot_checkpoint(src, tmp_path / "copy", entry)                     # rerun is fine


def test_groot_without_package_or_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(RuntimeError) as info:
        sc.load_teacher("groot", "cpu", path=str(tmp_path / "missing"))
    message = str(info.value)
    assert "Isaac-GR00T" in message and "environment-groot.yml" in message
    assert "no config.json" in message and "Nothing is downloaded" in message
    assert "no checkpoint folder given" in sc.groot_status("")


def test_extract_command_builds_a_store(tmp_path):
    code = sc.main(["extract", "--teacher", "standin", "--teacher-preset", "tiny", "--device", "cpu",
                    "--max-tasks", "2", "--batch-size", "4", "--store", str(tmp_path)])
    assert code == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tasks"] == 4 and manifest["teacher"] == "standin"
