import json

import pytest

import sage_core as sc


def test_unknown_and_mistyped_parameters_raise():
    with pytest.raises(TypeError, match="unknown parameter"):
        sc.build_config(batchsize=3)
    with pytest.raises(TypeError, match="batch_size must be int"):
        sc.build_config(batch_size="3")
    with pytest.raises(ValueError, match="unknown profile"):
        sc.build_config("huge")
    with pytest.raises(ValueError, match="split"):
        sc.build_config(split="random")


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
    assert sc.build_config("full", w_feat=0.5)["loss"].w_feat == 0.0    # a parameters cell's default: no choice
    cfg = sc.build_config("full", forced={"w_feat": 0.5})
    assert cfg["loss"].w_feat == 0.5
    assert sc.build_config("full", forced=sc.flat_config(cfg)) == cfg


def test_a_notebook_keeps_a_setting_the_pipeline_was_given_even_where_it_equals_the_default():
    cell = {"profile": "full", "w_feat": 0.5, "lr": 3e-4, "unrelated": 1}   # the parameters cell's values
    assert sc.build_config(**sc.config_params(cell))["loss"].w_feat == 0.0     # the profile's
    injected = {**cell, "forced_settings": {"w_feat": 0.5}}                  # `pipeline --set w_feat=0.5`
    assert sc.build_config(**sc.config_params(injected))["loss"].w_feat == 0.5
