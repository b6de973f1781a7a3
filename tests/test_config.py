import dataclasses
import json

import pytest

import sage_core as sc


def test_unknown_and_mistyped_parameters_raise():
    with pytest.raises(TypeError, match="unknown parameter"):
        sc.build_config(batchsize=3)
    with pytest.raises(TypeError, match="batch_size must be int"):
        sc.build_config(batch_size="3")
    with pytest.raises(ValueError, match="profile must be one of auto"):
        sc.build_config("huge")
    with pytest.raises(ValueError, match="split"):
        sc.build_config("smoke", split="random")


def test_profile_fills_untouched_fields_and_explicit_values_win():
    smoke = sc.build_config("smoke")
    assert smoke["data"].max_tasks == sc.PROFILES["smoke"]["max_tasks"]
    assert smoke["run"].profile == "smoke"
    mine = sc.build_config("smoke", max_tasks=5, holdout_fraction=1)
    assert mine["data"].max_tasks == 5
    assert mine["data"].holdout_fraction == 1.0
    assert sc.build_config()["data"].max_tasks == 0


def test_resolve_device():
    assert sc.resolve_device("cpu") == "cpu"
    assert sc.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError):
        sc.resolve_device("tpu")


def test_results_table_lists_what_a_run_changed_and_what_it_scored(tmp_path):
    run = tmp_path / "short"
    assert sc.main(["train", "--profile", "smoke", "--run-dir", str(run), "--set", "device=cpu",
                    "max_steps=2", "w_feat=0", "seconds_budget=0", "augmentations=3", "batch_size=64"]) == 0
    (row,) = sc.results_table([run])
    assert row["run"] == "short" and row["steps"] == 2 and row["profile"] == "smoke"
    assert "max_steps=2" in row["changes"] and "augmentations=3" in row["changes"] and "device" not in row["changes"]
    # batch_size=64 is the dataclass default but not smoke's 8: set explicitly, it holds and shows
    assert "batch_size=64" in row["changes"] and "width" not in row["changes"]
    assert row["val exact"].endswith("%") and row["test pass@2"] == "-"   # not evaluated


def test_a_sweep_trains_each_variant_into_its_folder_and_tabulates_them(tmp_path, capsys):
    code = sc.main(["sweep", "--runs-root", str(tmp_path), "--profile", "smoke", "--slots", "2",
                    "--set", "device=cpu", "max_steps=2", "w_feat=0", "seconds_budget=0",
                    "--variant", "plain", "--variant", "more", "augmentations=3", "translate=true"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| plain |" in out and "| more |" in out and "augmentations=3 translate=True" in out
    for name in ("plain", "more"):
        summary = json.loads((tmp_path / name / "train_summary.json").read_text())
        assert summary["steps"] == 2 and "pass@2" in summary["test"]        # trained, then evaluated
        assert (tmp_path / name / "predictions.json").exists()
    with pytest.raises(TypeError, match="unknown parameter"):
        sc.main(["sweep", "--runs-root", str(tmp_path), "--variant", "typo", "augmentationz=3"])


def test_an_explicit_setting_holds_even_where_it_equals_the_default():
    assert sc.PROFILES["full"]["w_feat"] == 0.0 != sc.LossConfig.w_feat
    assert sc.build_config("full")["loss"].w_feat == 0.0                  # not given: the profile's
    assert sc.build_config("full", w_feat=None)["loss"].w_feat == 0.0     # None is "not given"
    cfg = sc.build_config("full", w_feat=0.5, epochs=20, augmentations=8)  # the dataclass defaults
    assert (cfg["loss"].w_feat, cfg["run"].epochs, cfg["data"].augmentations) == (0.5, 20, 8)
    assert sc.build_config("full", **sc.flat_config(cfg)) == cfg


def test_a_parameters_cell_of_nones_leaves_everything_to_the_profile():
    cell = {"profile": "full", "w_feat": None, "epochs": None, "lr": None, "unrelated": 1}
    cfg = sc.build_config(**sc.config_params(cell))
    assert cfg["loss"].w_feat == 0.0 and cfg["run"].epochs == 1000 and cfg["train"].lr == sc.TrainConfig.lr
    cell.update(w_feat=0.5, epochs=20)                                         # typed into the cell
    cfg = sc.build_config(**sc.config_params(cell))
    assert cfg["loss"].w_feat == 0.5 and cfg["run"].epochs == 20


def test_profile_auto_follows_the_device():
    assert sc.build_config(device="cpu")["run"].profile == "cpu"
    assert sc.build_config(None, device="cpu")["run"].profile == "cpu"
    assert sc.build_config("smoke", device="cpu")["run"].profile == "smoke"


@pytest.mark.parametrize("field, typo", [
    ("student", "gird"), ("teacher", "gr00t"), ("schedule", "budgte"), ("task_optimizer", "sgd"),
    ("split", "random"), ("on_error", "ignore"), ("device", "tpu"), ("device", "cuda:x"),
    ("teacher_preset", "huge"), ("train_set", "arc1/evalution"), ("eval_set", "arc3/evaluation")])
def test_an_unknown_choice_fails_when_the_config_is_built_naming_the_valid_ones(field, typo):
    with pytest.raises(ValueError) as info:
        sc.build_config("smoke", **{field: typo})
    message = str(info.value)
    assert field in message and repr(typo) in message
    valid = {"student": "grid | features", "teacher": "standin | groot | sage", "schedule": "epochs | budget",
             "task_optimizer": "adamw | signsgd", "split": "protocol | task_holdout", "on_error": "raise | skip",
             "device": "auto | cpu | cuda | cuda:N", "teacher_preset": "auto | full | tiny",
             "train_set": "arc1/training | arc1/evaluation", "eval_set": "arc1/training | arc1/evaluation"}
    assert valid[field] in message


def test_every_choice_field_is_checked_and_lists_what_the_code_accepts():
    fields = {f.name: f for cls in sc.CONFIG_CLASSES.values() for f in dataclasses.fields(cls)}
    choices = {name: f.metadata["choices"] for name, f in fields.items() if f.metadata.get("choices")}
    assert set(choices) == {"split", "on_error", "teacher", "teacher_preset", "student", "task_optimizer",
                            "schedule", "profile", "device", "optimizer", "decay", "extra_train", "compile"}
    assert set(choices["profile"]) == set(sc.PROFILES)
    assert set(choices["teacher"]) == set(sc.TEACHERS) == set(sc.TEACHER_NAMES)
    assert set(choices["teacher_preset"]) == {"auto", *sc.STANDIN_PRESETS}


def test_cli_flags_equal_to_the_defaults_still_win(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(sc, "extract_features", lambda cfg, store: seen.setdefault("cfg", cfg) and {
        "teacher": "x", "examples": 0, "computed_now": 0, "bytes_per_example": 0, "seconds_per_example": 0})
    assert sc.main(["extract", "--profile", "full", "--store", str(tmp_path), "--batch-size", "64",
                    "--device", "cpu", "--set", "w_feat=0.5"]) == 0
    assert sc.PROFILES["full"]["batch_size"] != 64
    assert seen["cfg"]["run"].batch_size == 64 and seen["cfg"]["loss"].w_feat == 0.5
    seen.clear()
    assert sc.main(["extract", "--profile", "full", "--store", str(tmp_path), "--device", "cpu"]) == 0
    assert seen["cfg"]["run"].batch_size == sc.PROFILES["full"]["batch_size"]     # not given: the profile's
