import itertools

import pytest
import torch

import sage_core as sc


@pytest.fixture(scope="module")
def split():
    cfg = sc.build_config("smoke")
    return sc.config_split(cfg["data"])


def config(**kw):
    base = dict(device="cpu", epochs=3, log_every=4, w_feat=0.0, seconds_budget=0.0, augmentations=2)
    return sc.build_config("smoke", **{**base, **kw})


def weights(run_dir, name="last.pt"):
    return sc.load_checkpoint(run_dir / "checkpoints" / name)["model"]


def test_resume_continues_bit_exactly(split, tmp_path):
    n = 7   # mid-epoch on purpose
    sc.train(config(max_steps=2 * n), split, tmp_path / "straight", progress=False)
    sc.train(config(max_steps=n), split, tmp_path / "resumed", progress=False)
    assert sc.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["state"]["step"] == n
    sc.train(config(max_steps=2 * n, resume=True), split, tmp_path / "resumed", progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_folder_has_checkpoints_metrics_and_tensorboard(split, tmp_path):
    out = sc.train(config(), split, tmp_path, progress=False)
    assert out["epochs"] == 3 and out["stop"] == "epochs"
    for name in ("best.pt", "last.pt", "best.safetensors"):
        assert (tmp_path / "checkpoints" / name).exists()
    ck = sc.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert set(ck) == {"model", "loss", "optimizer", "state", "rng", "meta"}
    assert ck["meta"]["config"]["train"]["lr"] == 3e-4 and len(ck["meta"]["version_ids"]) == out["task_ids"]
    records = sc.read_metrics(tmp_path)
    assert len(records["val"]) == 3
    assert {"total", "task", "cell_acc", "lr", "grad_norm", "examples_per_s"} <= set(records["train"][0])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "checkpoints" / "best.safetensors")).keys() == ck["model"].keys()


def test_epoch_batches_cover_every_version_once_with_one_canvas_per_batch(split):
    versions = sc.task_versions(split.tasks, 3, seed=0)
    bank = sc.make_bank(split, "train", versions, 5, "cpu")
    batches = sc.epoch_batches(bank, 8 * 904, 4, seed=0, epoch=1)
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(3 * len(bank.examples)))   # every version once
    assert all(len(set(bank.side[b].tolist())) == 1 for b in batches)
    again = sc.epoch_batches(bank, 8 * 904, 4, seed=0, epoch=1)
    assert all(torch.equal(x, y) for x, y in zip(batches, again))
    assert not torch.equal(rows, torch.cat(sc.epoch_batches(bank, 8 * 904, 4, seed=0, epoch=2)))
    # the versions are real: inverting the augmentation gives back the original pair
    r = int(rows[0])
    ex, aug = bank.examples[r // 3], versions[bank.examples[r // 3].task_id][r % 3]
    side = sc.grid_shape(bank.target[r].numpy())
    restored = aug.invert(bank.target[r].numpy()[: side[0], : side[1]])
    assert (restored == split.pair(ex).output).all()


class MadeUpStore:
    """Teacher targets of width 8: random, or NaN to poison the feature loss."""
    manifest = {"teacher": "made-up"}

    def __init__(self, value=None):
        self.value = value

    def load(self, examples, key="pooled"):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(len(examples), 8, generator=g)
        return x if self.value is None else torch.full_like(x, self.value)


def test_nan_stops_with_step_and_part_and_keeps_the_last_good_checkpoint(split, tmp_path):
    sc.train(config(max_steps=4, w_feat=0.5), split, tmp_path, store=MadeUpStore(), progress=False)
    good = weights(tmp_path)
    with pytest.raises(sc.TrainingDiverged, match=r"loss part 'feat_mse' became nan at step 4"):
        sc.train(config(max_steps=8, resume=True, w_feat=0.5), split, tmp_path,
                 store=MadeUpStore(float("nan")), progress=False)
    after = weights(tmp_path)
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_interrupt_leaves_a_loadable_checkpoint(split, tmp_path, monkeypatch):
    real = sc.lr_at

    def interrupt_at_5(step, total, cfg):
        if step == 5:
            raise KeyboardInterrupt
        return real(step, total, cfg)
    monkeypatch.setattr(sc, "lr_at", interrupt_at_5)
    with pytest.raises(KeyboardInterrupt):
        sc.train(config(), split, tmp_path, progress=False)
    assert sc.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["step"] == 5


def test_teacher_terms_without_a_store_are_refused_before_training(split, tmp_path):
    with pytest.raises(sc.StoreMismatch, match="no feature store"):
        sc.train(config(w_feat=0.5), split, tmp_path, progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_learning_rate_warms_up_then_decays():
    cfg = sc.TrainConfig(warmup_fraction=0.1)
    lrs = [sc.lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_wsd_warms_up_holds_then_decays_linearly_to_zero():
    cfg = sc.TrainConfig(warmup_fraction=0.1, decay="wsd", decay_fraction=0.2)
    lrs = [sc.lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == 1.0 and set(lrs[10:80]) == {1.0}
    assert lrs[80] == pytest.approx(1.0) and lrs[90] == pytest.approx(0.5) and 0 < lrs[-1] <= 0.05
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))


def test_augmented_logits_predict_the_augmented_grid():
    import numpy as np
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 10, (4, 7))
    logits = np.eye(11)[sc.encode_grid(grid)] * 5 + rng.normal(0, 0.1, (30, 30, 11))
    for aug in sc.sample_augmentations(6, seed=1):
        mapped = sc.augment_logits(logits, aug)
        np.testing.assert_array_equal(mapped.argmax(-1), sc.encode_grid(aug.apply(grid)))


def test_a_trained_student_teaches_a_smaller_one(split, tmp_path):
    """The sage backend: a trained checkpoint gives pooled features and per-cell logits through
    the teacher interface; a feature store of it trains a student with feature and logit KD."""
    sc.train(config(epochs=1), split, tmp_path / "teacher", progress=False)
    teacher = sc.load_teacher("sage", "cpu", path=str(tmp_path / "teacher" / "checkpoints" / "best.pt"))
    obs = sc.make_observations(split.tasks, split.val[:3])
    out = teacher.extract(obs)
    assert out.pooled.shape == (3, 64) and out.cell_logits.shape == (3, 30, 30, 11)
    assert teacher.describe()["pretrained"] is True
    sc.build_feature_store(teacher, split, tmp_path / "store", batch_size=8, progress=False)
    store = sc.FeatureStore(tmp_path / "store").check("sage", 64)
    assert store.load(split.train[:2], "cell_logits").shape == (2, 30, 30, 11)
    student = sc.train(config(epochs=1, width=32, heads=4, w_feat=0.5, w_kd=1.0), split,
                       tmp_path / "student", store=store, progress=False)
    rec = sc.read_metrics(tmp_path / "student")["train"][0]
    assert rec["kd"] > 0 and rec["feat"] > 0 and student["parameters"] < 0.5 * sum(
        p.numel() for p in teacher.model.parameters())
    with pytest.raises(FileNotFoundError, match="train one"):
        sc.load_teacher("sage", "cpu", path=str(tmp_path / "nothing.pt"))


def test_a_second_fresh_run_into_the_same_folder_is_refused(split, tmp_path):
    sc.train(config(max_steps=2), split, tmp_path, progress=False)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True"):
        sc.train(config(max_steps=2), split, tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_the_features_student_trains_on_stored_teacher_tokens(split, tmp_path, tiny):
    sc.build_feature_store(tiny, split, tmp_path / "pooled_only", progress=False)
    cfg = config(student="features", width=32, heads=4, decoder_hidden=64, epochs=4, w_feat=0.5)
    with pytest.raises(sc.StoreMismatch, match="keeps no 'tokens'"):
        sc.train(cfg, split, tmp_path / "refused", sc.FeatureStore(tmp_path / "pooled_only"), progress=False)
    sc.build_feature_store(tiny, split, tmp_path / "store", store_tokens=True, progress=False)
    store = sc.FeatureStore(tmp_path / "store")
    out = sc.train(cfg, split, tmp_path / "run", store, progress=False)
    # one version per pair: the teacher's tokens belong to the original orientation
    assert out["student"] == "features" and out["task_ids"] == len(split.tasks)
    model = sc.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    tokens, mask = store.load_tokens(split.train[:3])
    assert model["pos"].shape[0] == tokens.shape[1] and model["project.weight"].shape[1] == tiny.feature_dim
    logs = sc.read_metrics(tmp_path / "run")["train"]
    assert logs[-1]["task"] < logs[0]["task"] and logs[0]["feat"] > 0
    # scored once per held-out pair from the stored tokens: its single attempt is both pass@k
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    with pytest.raises(sc.StoreMismatch, match="feature store it was trained with"):
        sc.evaluate_checkpoint(best, split, "test", "cpu")
    scores, records = sc.evaluate_checkpoint(best, split, "test", "cpu", store)
    assert len(records) == len(split.test) and all(len(r["candidates"]) == 1 for r in records)
    assert scores["pass@1"] == scores["pass@2"] and 0 <= scores["pixel"] <= 1


def test_sign_sgd_moves_only_the_rows_a_batch_touched():
    table = torch.nn.Embedding(5, 3)
    before = table.weight.detach().clone()
    opt = sc.SignSGD(table.parameters(), lr=0.01, weight_decay=0.1)
    (table(torch.tensor([1, 3])) * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    opt.step()
    moved = (table.weight.detach() - before).abs().sum(1) > 0
    assert moved.tolist() == [False, True, False, True, False]
    expected = before[1] * (1 - 0.01 * 0.1) - 0.01 * torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(table.weight[1], expected)


def test_weight_average_and_sign_sgd_resume_bit_exactly_and_are_what_predicts(split, tmp_path):
    recipe = dict(ema_decay=0.9, task_optimizer="signsgd", task_lr_scale=30.0)
    sc.train(config(max_steps=10, **recipe), split, tmp_path / "straight", progress=False)
    sc.train(config(max_steps=5, **recipe), split, tmp_path / "resumed", progress=False)
    sc.train(config(max_steps=10, resume=True, **recipe), split, tmp_path / "resumed", progress=False)
    a, b = (sc.load_checkpoint(p / "checkpoints" / "last.pt") for p in (tmp_path / "straight", tmp_path / "resumed"))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["ema"])   # a real average
    from safetensors.torch import load_file
    best = sc.load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.pt")
    exported = load_file(str(tmp_path / "straight" / "checkpoints" / "best.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in best["ema"].items())
    teacher = sc.load_teacher("sage", "cpu", path=str(tmp_path / "straight" / "checkpoints" / "best.pt"))
    assert torch.equal(teacher.model.task.weight, best["ema"]["task.weight"])


def test_a_resumed_run_gets_its_own_seconds_budget(split, tmp_path):
    first = sc.train(config(seconds_budget=0.5, epochs=50), split, tmp_path, progress=False)
    assert first["stop"] == "seconds_budget"
    again = sc.train(config(seconds_budget=0.5, epochs=50, resume=True), split, tmp_path, progress=False)
    assert again["stop"] == "seconds_budget" and again["steps"] > first["steps"]
    assert again["seconds"] > first["seconds"]   # the record counts every piece


def test_translation_moves_input_and_output_together_inside_the_canvas():
    import numpy as np
    rng = np.random.default_rng(0)
    grid_in, grid_out = rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (5, 2))
    cells = torch.as_tensor(sc.encode_grid(grid_in)[:10, :10]).long()[None].repeat(64, 1, 1)
    target = torch.as_tensor(sc.encode_grid(grid_out)).long()[None].repeat(64, 1, 1)
    moved_in, moved_out = sc.translate_pairs(cells, target, torch.rand(64, 2, generator=torch.Generator().manual_seed(0)))
    offsets = set()
    for a, b in zip(moved_in, moved_out):
        rows, cols = torch.nonzero(a != sc.OUTSIDE).min(0).values.tolist()
        assert (rows, cols) == tuple(torch.nonzero(b != sc.OUTSIDE).min(0).values.tolist())   # one offset
        assert (a[rows:rows + 3, cols:cols + 4].numpy() == grid_in).all()
        assert (b[rows:rows + 5, cols:cols + 2].numpy() == grid_out).all()
        assert (b != sc.OUTSIDE).sum() == 10 and rows + 5 <= 10 and cols + 4 <= 10         # inside the canvas
        offsets.add((rows, cols))
    assert len(offsets) > 10


def test_translated_training_resumes_bit_exactly(split, tmp_path):
    sc.train(config(max_steps=6, translate=True), split, tmp_path / "straight", progress=False)
    sc.train(config(max_steps=3, translate=True), split, tmp_path / "resumed", progress=False)
    sc.train(config(max_steps=6, translate=True, resume=True), split, tmp_path / "resumed", progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = sc.train(config(max_steps=6), split, tmp_path / "plain", progress=False)
    assert plain["steps"] == 6 and any(not torch.equal(a[k], weights(tmp_path / "plain")[k]) for k in a)


def test_a_budget_schedule_ends_its_cosine_within_the_seconds_budget(split, tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "FIT_STEPS", (2, 6))   # a CPU steps slowly: measure early
    ticks = itertools.count()                        # a clock that a busy machine cannot slow down
    monkeypatch.setattr(sc.time, "perf_counter", lambda: 0.01 * next(ticks))
    out = sc.train(config(schedule="budget", seconds_budget=1.0, epochs=100_000, log_every=1), split,
                   tmp_path, progress=False)
    # "schedule", not "seconds_budget": the fitted schedule ran out before the budget did
    assert out["stop"] == "schedule" and sc.FIT_STEPS[1] < out["total_steps"] == out["steps"] < 100_000
    lrs = [r["lr"] for r in sc.read_metrics(tmp_path)["train"]]
    peak = sc.TrainConfig.lr
    assert lrs[sc.FIT_STEPS[1]] == pytest.approx(peak)       # warm-up until the fit, then its cosine
    assert lrs[-1] == pytest.approx(0.1 * peak)              # at its floor (10% of the peak) in time
    assert sc.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["total_steps"] == out["total_steps"]


def test_a_budget_schedule_absorbs_a_stall_after_its_first_fit(split, tmp_path, monkeypatch):
    # A graph compiling for seconds after the first fit (a validation's, a new shape's) must not
    # end the schedule early: later fits take the piece's mean speed, not the stalled window's.
    monkeypatch.setattr(sc, "FIT_STEPS", (2, 6))
    clock = {"t": 0.0}
    def tick():
        clock["t"] += 0.01
        return clock["t"]
    monkeypatch.setattr(sc.time, "perf_counter", tick)
    step = sc.train_step
    def stalling_step(run, rows):
        if run.state.step == 8:
            clock["t"] += 0.3
        return step(run, rows)
    monkeypatch.setattr(sc, "train_step", stalling_step)
    out = sc.train(config(schedule="budget", seconds_budget=2.0, epochs=100_000, log_every=1), split,
                   tmp_path, progress=False)
    assert out["stop"] == "schedule" and out["seconds"] > 0.85 * 2.0


def test_a_budget_schedule_can_span_resumed_pieces(split, tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "FIT_STEPS", (2, 6))
    ticks = itertools.count()
    monkeypatch.setattr(sc.time, "perf_counter", lambda: 0.01 * next(ticks))
    piece = dict(schedule="budget", schedule_seconds=1.6, seconds_budget=0.8, epochs=100_000, log_every=1)
    first = sc.train(config(**piece), split, tmp_path, progress=False)
    assert first["stop"] == "seconds_budget" and first["steps"] < first["total_steps"]   # fitted beyond this piece
    second = sc.train(config(**piece, resume=True), split, tmp_path, progress=False)
    # the second piece refits the schedule to its own speed (its compilations cost time too)
    assert second["stop"] == "schedule" and second["steps"] == second["total_steps"]
    assert abs(second["total_steps"] - first["total_steps"]) <= 0.2 * first["total_steps"]
    lrs = [r["lr"] for r in sc.read_metrics(tmp_path)["train"]]
    assert lrs[-1] == pytest.approx(0.1 * sc.TrainConfig.lr)   # the cosine ended in the second piece


def test_logged_rates_count_every_step_but_not_validation(split, tmp_path, monkeypatch):
    # Each step takes 1 s of a fake clock, the first epoch's last step 1,000 s (a graph
    # compiling), each validation 100 s: the stall shows in one logged rate, though no line
    # falls between it and the validation; no rate counts a validation.
    clock = {"t": 0.0}
    monkeypatch.setattr(sc.time, "perf_counter", lambda: clock["t"])
    step, validate = sc.train_step, sc.validate_run
    per_epoch = len(sc.training_batches(config(), sc.training_data(config(), split, None, "cpu").train, 0, 1))
    def timed_step(run, rows):
        clock["t"] += 1000.0 if run.state.step == per_epoch - 1 else 1.0
        return step(run, rows)
    def slow_validation(run):
        clock["t"] += 100.0
        return validate(run)
    monkeypatch.setattr(sc, "train_step", timed_step)
    monkeypatch.setattr(sc, "validate_run", slow_validation)
    sc.train(config(epochs=3, log_every=5), split, tmp_path, progress=False)
    records = sc.read_metrics(tmp_path)["train"]
    assert per_epoch % 5 and len(records) >= 3               # the stalled step ends an epoch between two lines
    stalled = [r for r in records if r["examples_per_s"] < 1]
    assert [r["step"] for r in stalled] == [5 * (per_epoch // 5 + 1)]
    assert all(r["examples_per_s"] >= 1 for r in records if r not in stalled)   # at least a row per step
