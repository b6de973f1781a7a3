
import pytest
import torch

import sage_core as sc


@pytest.fixture(scope="module")
def split(arc1_training, arc1_evaluation):
    return sc.make_split(arc1_training.subset(3), arc1_evaluation.subset(2))


def test_store_holds_pooled_targets_equal_to_the_teacher(tiny, split, tmp_path):
    manifest = sc.build_feature_store(tiny, split, tmp_path, batch_size=4, progress=False)
    n = len(split.train) + len(split.val) + len(split.test)
    assert manifest["examples"] == n and manifest["tasks"] == 5 and manifest["computed_now"] == n
    assert manifest["pretrained"] is False
    assert 0 < manifest["bytes_per_example"] < 64 * 1024
    store = sc.FeatureStore(tmp_path).check("standin", 64)
    got = store.load(split.val)
    want = tiny.extract(sc.make_observations(split.tasks, split.val)).pooled
    torch.testing.assert_close(got.float(), want, atol=0.02, rtol=0.02)   # stored in bf16
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == \
        sorted(f"{t}.safetensors" for t in split.tasks)


def test_rerun_resumes_and_rebuilds_only_broken_shards(tiny, split, tmp_path):
    sc.build_feature_store(tiny, split, tmp_path, batch_size=4, progress=False)
    first = sc.FeatureStore(tmp_path).load(split.train)
    victim = sorted(split.tasks)[0]
    path = tmp_path / "shards" / f"{victim}.safetensors"
    path.write_bytes(path.read_bytes()[:100])                    # a shard cut short
    (tmp_path / "shards" / f"{sorted(split.tasks)[1]}.safetensors").unlink()   # and one missing
    again = sc.build_feature_store(tiny, split, tmp_path, batch_size=4, progress=False)
    assert again["reused_shards"] == 3
    untouched = sc.build_feature_store(tiny, split, tmp_path, batch_size=4, progress=False)
    assert untouched["computed_now"] == 0
    assert untouched["seconds_per_example"] == again["seconds_per_example"] > 0   # timings kept
    assert again["computed_now"] == sum(len(v) for k, v in sc._examples_by_task(split).items()
                                        if k in sorted(split.tasks)[:2])
    torch.testing.assert_close(sc.FeatureStore(tmp_path).load(split.train), first)
    assert not list(tmp_path.rglob("*.tmp"))


def test_store_of_another_teacher_is_refused_and_kept(tiny, split, tmp_path):
    sc.build_feature_store(tiny, split, tmp_path, batch_size=8, progress=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(sc.StoreMismatch, match="choose another store_dir"):
        sc.build_feature_store(tiny, split, tmp_path, batch_size=8, store_tokens=True, progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    with pytest.raises(sc.StoreMismatch, match="teacher 'standin', not 'groot'"):
        sc.FeatureStore(tmp_path).check("groot")
    with pytest.raises(sc.StoreMismatch, match="64-dim features, expected 2048"):
        sc.FeatureStore(tmp_path).check(feature_dim=2048)
    with pytest.raises(sc.StoreMismatch, match="no feature store"):
        sc.FeatureStore(tmp_path / "nowhere")


def test_store_tokens_keeps_every_token(tiny, split, tmp_path):
    sc.build_feature_store(tiny, split, tmp_path, batch_size=8, store_tokens=True, progress=False)
    store = sc.FeatureStore(tmp_path)
    tokens = store.load(split.test, "tokens")
    mask = store.load(split.test, "token_mask")
    assert tokens.shape[:2] == mask.shape and tokens.shape[-1] == 64
    assert store.manifest["bytes_per_example"] > 64 * tokens.shape[1]


def test_tokens_of_different_lengths_come_padded_with_their_mask(tmp_path):
    from sage_core import Example
    store = tmp_path / "store"
    (store / "shards").mkdir(parents=True)
    examples = {"a": [Example("a", "train", 0)], "b": [Example("b", "train", 0), Example("b", "test", 0)]}
    for task_id, n in (("a", 3), ("b", 5)):
        rows = examples[task_id]
        sc._write_shard(sc._shard_path(store, task_id),
                        {"pooled": torch.zeros(len(rows), 4), "tokens": torch.full((len(rows), n, 4), float(n)),
                         "token_mask": torch.ones(len(rows), n, dtype=torch.bool)}, rows, "hash")
    (store / "manifest.json").write_text("{}")
    tokens, mask = sc.FeatureStore(store).load_tokens([examples["b"][1], examples["a"][0]])
    assert tokens.shape == (2, 5, 4) and tokens.dtype == torch.bfloat16
    assert mask.sum(1).tolist() == [5, 3] and (tokens[1, 3:] == 0).all() and (tokens[1, :3] == 3).all()
    assert (tokens[0] == 5).all()
