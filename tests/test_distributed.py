"""Data-parallel training and store builds under torchrun: gloo, 2 processes on the CPU."""
import json

import pytest
import torch

import sage_core as sc


@pytest.fixture(scope="module")
def split():
    return sc.config_split(sc.build_config("smoke")["data"])


def config(**kw):
    base = dict(device="cpu", epochs=2, log_every=2, w_feat=0.0, seconds_budget=0.0, augmentations=2)
    return sc.build_config("smoke", **{**base, **kw})


def weights(run_dir):
    return sc.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_processes_share_each_batch_and_see_every_row_once_per_epoch(split):
    versions = sc.task_versions(split.tasks, 2, seed=0)
    bank = sc.make_bank(split, "train", versions, 5, "cpu")
    single = sc.epoch_batches(bank, 8 * 904, 4, seed=0, epoch=3)
    for world in (2, 3):
        batches = sc.epoch_batches(bank, 8 * 904, 4, seed=0, epoch=3, min_rows=world)
        assert len(batches) == len(single)        # positions mean the same for any world size
        seen = []
        for rows, alone in zip(batches, single):
            shares = [sc.rank_rows(rows, r, world) for r in range(world)]
            assert all(len(s) >= 1 for s in shares)                      # nobody idles
            assert torch.equal(torch.cat(shares), rows)                  # disjoint, complete
            assert set(rows.tolist()) == set(alone.tolist())             # small ones repeat rows
            seen += alone.tolist()
        assert sorted(seen) == list(range(len(bank.cells)))


def test_two_processes_train_like_one_with_the_same_batch(split, tmp_path):
    recipe = dict(max_steps=6, translate=True, ema_decay=0.9)   # offsets and average: any world size
    two = sc.torchrun("train", config(gpus=2, **recipe), tmp_path / "two")
    assert two["processes"] == 2 and two["replicas_identical"] and two["steps"] == 6
    one = sc.train(config(**recipe), split, tmp_path / "one", progress=False)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    sc.seed_everything(0)
    start = sc.build_student(config()["student"], one["task_ids"]).state_dict()
    assert max_difference(a, b) < 1e-5 < max_difference(a, start) / 100   # training moved them far more
    averages = [sc.load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["ema"] for d in ("one", "two")]
    assert max_difference(*averages) < 1e-5
    # rank 0 alone wrote the logs: one line per logged step
    logged = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [2, 4, 6]


def test_a_checkpoint_resumes_with_another_number_of_processes(split, tmp_path):
    sc.train(config(max_steps=8), split, tmp_path / "straight", progress=False)
    sc.torchrun("train", config(gpus=2, max_steps=4), tmp_path / "switched")
    assert sc.load_checkpoint(tmp_path / "switched" / "checkpoints" / "last.pt")["meta"]["processes"] == 2
    sc.train(config(max_steps=8, resume=True), split, tmp_path / "switched", progress=False)
    assert max_difference(weights(tmp_path / "straight"), weights(tmp_path / "switched")) < 1e-5


def test_store_build_shards_tasks_across_processes_and_merges_one_manifest(tmp_path):
    cfg = sc.build_config("smoke", device="cpu", teacher_preset="tiny", gpus=2, max_tasks=3)
    manifest = sc.torchrun("extract", cfg, tmp_path / "store")
    split = sc.config_split(cfg["data"], cfg["run"].seed)
    assert manifest["processes"] == 2 and manifest["computed_now"] == manifest["examples"]
    assert manifest["examples"] == len(split.train) + len(split.val) + len(split.test)
    assert len(list((tmp_path / "store" / "shards").glob("*.safetensors"))) == len(split.tasks)
    # the same store built by one process holds the same features
    teacher = sc.load_teacher("standin", "cpu", preset="tiny")
    sc.build_feature_store(teacher, split, tmp_path / "alone", progress=False)
    many, alone = sc.FeatureStore(tmp_path / "store"), sc.FeatureStore(tmp_path / "alone")
    assert torch.allclose(many.load(split.train).float(), alone.load(split.train).float(), atol=1e-2)
    # a rerun under torchrun resumes: nothing left to compute
    again = sc.torchrun("extract", cfg, tmp_path / "store")
    assert again["computed_now"] == 0 and again["reused_shards"] == len(split.tasks)
