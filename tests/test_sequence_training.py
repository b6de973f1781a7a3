"""The sequence student in the training loop and the evaluation, on the CPU at toy sizes."""
import json

import numpy as np
import pytest
import torch

import sage_core as sc


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split():
    return sc.config_split(sc.build_config("smoke", max_tasks=3)["data"])


def config(**kw):
    base = dict(device="cpu", student="sequence", width=32, depth=2, heads=4, augmentations=3, max_tasks=3,
                w_feat=0.0, seconds_budget=0.0, epochs=2, log_every=2, batch_size=4)
    return sc.build_config("smoke", **{**base, **kw})


def test_it_validates_every_val_every_epochs_and_at_the_last(split, tmp_path):
    out = sc.train(config(epochs=5, val_every=2, checkpoint_every=3), split, tmp_path, progress=False)
    assert out["epochs"] == 5                                         # validated: 2 and 4, 3 (a checkpoint), 5 (the last)
    assert [r["epoch"] for r in sc.read_metrics(tmp_path)["val"]] == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="val_every counts epochs"):
        config(val_every=0)


def test_it_trains_validates_and_keeps_checkpoints(split, tmp_path):
    out = sc.train(config(), split, tmp_path, progress=False)
    assert out["student"] == "sequence" and out["stop"] == "epochs" and out["epochs"] == 2
    assert out["task_ids"] == len(split.tasks)                        # one embedding row per task
    records = sc.read_metrics(tmp_path)
    assert len(records["val"]) == 2 and 0 <= records["val"][-1]["exact"] <= 1
    assert all(np.isfinite(r["task"]) and 0 <= r["cell_acc"] <= 1 for r in records["train"])
    model = sc.student_from_checkpoint(sc.load_checkpoint(tmp_path / "checkpoints" / "best.pt"), "cpu")
    assert isinstance(model, sc.SequenceStudent)


def test_an_epoch_takes_every_training_pair_once_in_one_version(split, tmp_path):
    run = sc.setup_training(config(), split, tmp_path, progress=False)
    rows = torch.cat(run.batches(0))
    assert len(rows) == len(run.data.train.examples) == len(split.train)
    assert sorted(run.data.train.pair[rows].tolist()) == list(range(len(split.train)))


@pytest.mark.parametrize("recipe", [{}, {"optimizer": "muon", "decay": "wsd"}, {"optimizer": "normuon", "kv_heads": 2}])
def test_resume_continues_bit_exactly_with_dropout(split, tmp_path, recipe):
    n = 3
    sc.train(config(max_steps=2 * n, epochs=5, **recipe), split, tmp_path / "straight", progress=False)
    sc.train(config(max_steps=n, epochs=5, **recipe), split, tmp_path / "resumed", progress=False)
    sc.train(config(max_steps=2 * n, epochs=5, resume=True, **recipe), split, tmp_path / "resumed", progress=False)
    a, b = (sc.load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["model"] for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = sc.build_student(config()["student"], 3)
    loss = sc.DistillLoss(sc.LossConfig(), 32, 32)
    optimizer = sc.make_optimizer(model, loss, sc.TrainConfig(optimizer="muon", lr=1e-3, muon_lr=4e-3))
    adamw, muon = optimizer.optimizers
    assert isinstance(muon, sc.StackedMuon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == set(sc.muon_matrices(model)) and len(in_muon) == 4 * 2          # qkv, proj, gate_up, down x 2
    assert all(n.startswith("blocks.") and model.get_parameter(n).dim() == 2 for n in in_muon)
    in_adamw = [id(p) for g in adamw.param_groups for p in g["params"]]
    assert len(in_adamw) + len(in_muon) == len(list(model.parameters())) + len(list(loss.parameters()))
    assert not set(in_adamw) & {id(model.get_parameter(n)) for n in in_muon}
    assert muon.param_groups[0]["lr_scale"] * 1e-3 == pytest.approx(4e-3)   # the schedule scales muon_lr


def tiny_split():
    """Three made-up tasks of 2x2 grids (output = input flipped, + 1, or all black): small enough
    to learn by heart in a few seconds."""
    rng = np.random.default_rng(0)
    rules = {"flip": lambda g: g[:, ::-1], "plus": lambda g: (g % 9) + 1, "black": lambda g: 0 * g}
    tasks = {}
    for name, rule in rules.items():
        grids = [rng.integers(1, 9, (2, 2)).astype(np.uint8) for _ in range(3)]
        pairs = tuple(sc.Pair(g, np.ascontiguousarray(rule(g)).astype(np.uint8)) for g in grids)
        tasks[name] = sc.Task(name, pairs[:2], pairs[2:], "made up")
    data = sc.ArcData("made up", tasks)
    return sc.make_split(data, sc.ArcData("none", {}))


def test_validation_exact_means_greedy_decoding_writes_the_answer(tmp_path):
    """Teacher-forced exactness (validate_sequences) is, pair by pair, greedy decoding's."""
    tiny = tiny_split()
    sc.train(config(max_steps=150, epochs=1000, lr=3e-3, dropout=0.0, augmentations=1, batch_size=8, patience=10**6),
             tiny, tmp_path, progress=False)
    model = sc.student_from_checkpoint(sc.load_checkpoint(tmp_path / "checkpoints" / "last.pt"), "cpu")
    pools = sc.version_pools(tiny, "train", 1, 0)
    decoded = sc.greedy_decode(model, [pools.sequence(int(r), prompt=True) for r in pools.start[:-1]])
    written = [sc.tokens_to_grid(d.tokens) for d in decoded]
    right = [g is not None and g.shape == p.output.shape and bool((g == p.output).all())
             for g, p in zip(written, pools.pairs)]
    assert sc.validate_sequences(model, pools, "cpu")["exact"] == pytest.approx(np.mean(right))
    assert np.mean(right) > 0                                          # it learnt pairs by heart


def test_evaluation_writes_every_test_input_and_votes(split, tmp_path):
    sc.train(config(max_steps=4), split, tmp_path, progress=False)
    scores, records = sc.evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", split, "test", "cpu")
    assert len(records) == len(split.test) and scores["predicted_grids"] == len(split.test)
    assert scores["decode_seconds"] > 0 and scores["vote_seconds"] > 0
    assert scores["pass@2 by votes"] == scores["pass@2"]
    assert {"pass@2 by logprob", "pass@2 by probability"} <= set(scores)
    assert scores["pass@2 by versions"]["3"] == scores["pass@2"] and set(scores["pass@2 by versions"]) == {"1", "2", "3"}
    first_stage = [g for g in scores["decode_groups"] if g["stage"] == 1]
    assert sum(g["sequences"] for g in first_stage) == sum(len(r["candidates"]) for r in records)
    import matplotlib.pyplot as plt
    fig = sc.plot_decoding(scores, "toy run")
    assert len(fig.axes) == 2 and len(fig.axes[1].patches) == len(scores["decode_groups"])   # a bar per group
    plt.close(fig)
    assert all(1 <= len(r["candidates"]) <= 3 and 1 <= len(r["attempts"]) <= 2 for r in records)   # <= 3 versions
    entry = sc.submission(records)
    assert sorted(entry) == sorted({e.task_id for e in split.test})
    json.dumps(entry, default=int)
    pools = sc.version_pools(split, "test", 3, prompts=True)
    _, capped, _ = sc.score_checkpoint(sc.load_checkpoint(tmp_path / "checkpoints" / "best.pt"), split, "test", "cpu",
                                       versions=1)
    assert [len(r["candidates"]) for r in capped] == [1] * len(split.test)
    assert [v[:1] for v in pools.versions] == sc.version_pools(split, "test", 1, prompts=True).versions


def test_decoding_in_rounds_stops_an_input_once_a_grid_has_its_votes(split, tmp_path, monkeypatch):
    # A stand-in writer: versions with an odd dihedral write a black 1x1 grid (the same grid
    # mapped back, whatever the version: one more vote for it), the others nothing usable;
    # every call is recorded, so the rounds can be counted.
    calls = []

    def writer(model, prompts, **_):
        calls.append(len(prompts))
        return [sc.Decoded(np.array([0, sc.TOKEN_ROW_END, sc.TOKEN_END] if p.dihedral % 2 else [sc.TOKEN_ROW_END]), -0.1)
                for p in prompts]
    monkeypatch.setattr(sc, "greedy_decode", writer)
    pools = sc.version_pools(split, "test", 6, prompts=True)
    for per_round, stop in [(1, 1), (2, 1), (2, 2)]:
        calls.clear()
        by_round = sc.decode_in_rounds(None, pools, stop_at_votes=stop, round_versions=per_round)
        for p, written in enumerate(by_round):
            voters = np.flatnonzero([v.k % 2 for v in pools.versions[p]])
            needed = voters[stop - 1] + 1 if len(voters) >= stop else len(pools.versions[p])   # versions up to the vote
            assert len(written) == min(len(pools.versions[p]), -(-needed // per_round) * per_round)
        assert len(calls) == max(-(-len(w) // per_round) for w in by_round)   # one decoding per round
        assert sum(map(len, by_round)) < sum(map(len, pools.versions))       # some inputs stopped early


def test_scoring_in_rounds_votes_over_the_versions_written(split, tmp_path):
    sc.train(config(max_steps=2), split, tmp_path, progress=False)
    ck = sc.load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    scores, records, written = sc.score_checkpoint(ck, split, "test", "cpu", stop_at_votes=1)
    assert [len(v) for v in written] == [len(r["candidates"]) for r in records]
    assert 0 < scores["versions written"] <= 1 and "pass@2 by versions" not in scores


def test_teacher_terms_without_a_sequence_teacher_are_refused_before_any_work(split, tmp_path):
    with pytest.raises(ValueError, match="per-token distillation"):
        sc.train(config(w_kd=0.5), split, tmp_path / "a", progress=False)               # the stand-in
    with pytest.raises(sc.StoreMismatch, match="needs its feature store"):
        sc.train(config(w_feat=0.5), split, tmp_path / "a", progress=False)
    grid = tmp_path / "grid"
    sc.train(sc.build_config("smoke", device="cpu", max_tasks=3, max_steps=1, w_feat=0.0, seconds_budget=0.0),
             split, grid, progress=False)
    with pytest.raises(ValueError, match="not a sequence student trained on this split"):
        sc.train(config(w_kd=0.5, teacher="sage", teacher_path=str(grid / "checkpoints" / "best.pt")),
                 split, tmp_path / "b", progress=False)
    assert not (tmp_path / "a" / "metrics.jsonl").exists() and not (tmp_path / "b" / "metrics.jsonl").exists()


def test_distillation_from_a_sequence_teacher_vanishes_for_an_identical_one():
    student = sc.build_student(config(dropout=0.0)["student"], 3)
    rng = np.random.default_rng(3)
    batch = sc.pack_sequences([sc.tokenize_pair(rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (2, 2)), task=t)
                               for t in range(3)])
    loss = sc.DistillLoss(sc.LossConfig(w_feat=0.5, w_kd=1.0), 32, 32)
    import copy
    same = copy.deepcopy(student).eval().requires_grad_(False)
    _, parts = sc.SequenceStep(student, loss, same)(batch)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6) and parts["feat"].item() > 0
    other = copy.deepcopy(same)
    with torch.no_grad():
        other.head.weight.mul_(3)
    _, parts = sc.SequenceStep(student, loss, other)(batch)
    assert parts["kd"].item() > 0.01
    assert parts["total"].item() == pytest.approx(parts["task"].item() + 0.5 * parts["feat"].item() + parts["kd"].item(),
                                                  rel=1e-5)
    parts["total"].backward()
    assert student.head.weight.grad.abs().sum() > 0 and loss.project.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in other.parameters())                   # the teacher never learns


def test_a_sequence_student_trains_against_a_sequence_teacher(split, tmp_path):
    sc.train(config(max_steps=6), split, tmp_path / "teacher", progress=False)
    path = str(tmp_path / "teacher" / "checkpoints" / "best.pt")
    out = sc.train(config(max_steps=4, width=16, heads=2, w_feat=0.5, w_kd=1.0, teacher="sage", teacher_path=path),
                   split, tmp_path / "student", progress=False)
    logged = sc.read_metrics(tmp_path / "student")["train"]
    assert all(np.isfinite(r["kd"]) and np.isfinite(r["feat"]) and r["kd"] > 0 for r in logged)
    ck = sc.load_checkpoint(out["checkpoint"])
    assert ck["meta"]["teacher_checkpoint"] == path and ck["loss"]["project.weight"].shape == (32, 16)
    assert sc.training_teacher(ck["meta"], tmp_path) == f"a trained SAGE sequence student, online ({path})"


def test_a_sequence_student_aligns_with_stored_features_of_another_teacher(tiny, split, tmp_path):
    sc.build_feature_store(tiny, split, tmp_path / "store", batch_size=4, progress=False)
    store = sc.FeatureStore(tmp_path / "store").check("standin")
    cfg = config(max_steps=3, w_feat=0.5, teacher="standin", teacher_preset="tiny")
    run = sc.setup_training(cfg, split, tmp_path / "run", store, progress=False)
    want = store.load(run.data.train.examples).float()
    torch.testing.assert_close(run.data.teacher_pooled, want)           # one vector per pair, every version
    out = sc.train(cfg, split, tmp_path / "run2", store, progress=False)
    logged = sc.read_metrics(tmp_path / "run2")["train"]
    assert logged and all(np.isfinite(r["feat"]) and r["feat"] > 0 and "kd" not in r for r in logged)
    assert sc.load_checkpoint(out["checkpoint"])["loss"]["project.weight"].shape == (64, 32)   # student 32 -> 64


@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_stacked_muon_steps_as_torch_muon_does(adjust):
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 64), (16, 16), (16, 64)]   # tall, wide, square; shared shapes
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    moved = []
    for kind in (torch.optim.Muon, sc.StackedMuon):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = kind(params, lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust)
        for g in grads:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        moved.append([p.detach() for p in params])
        state = opt.state_dict()["state"]
    for reference, stacked, s in zip(*moved, start):
        assert (reference - s).abs().max() > 0.01                        # it moved
        torch.testing.assert_close(stacked, reference, atol=1e-4, rtol=0)  # the same step (equal here on the CPU)
    assert set(state[0]) == {"momentum_buffer"}                           # torch's state layout: checkpoints load in either


def test_scoring_never_reads_the_evaluation_answers(split, tmp_path):
    """The same checkpoint on the same split with the evaluation tasks' test outputs removed
    writes the same attempts: nothing before scoring read them."""
    import dataclasses
    sc.train(config(max_steps=4), split, tmp_path, progress=False)
    best = tmp_path / "checkpoints" / "best.pt"
    scores, records = sc.evaluate_checkpoint(best, split, "test", "cpu")
    evaluation = {e.task_id for e in split.test}
    tasks = {tid: dataclasses.replace(t, test=tuple(sc.Pair(p.input, None) for p in t.test)) if tid in evaluation else t
             for tid, t in split.tasks.items()}
    blind_scores, blind_records = sc.evaluate_checkpoint(best, dataclasses.replace(split, tasks=tasks), "test", "cpu")
    assert sc.submission(blind_records) == sc.submission(records)
    assert scores["grids"] == len(split.test) and blind_scores["grids"] == 0
    assert [r["votes"] for r in blind_records] == [r["votes"] for r in records]


def test_the_evaluation_report_views_take_the_sequence_student(split, tmp_path):
    sc.train(config(max_steps=4), split, tmp_path, progress=False)
    ev = sc.evaluate_run(tmp_path / "checkpoints" / "best.pt", tmp_path / "feature_store", "cpu")
    assert len(ev.versions) == len(ev.records) and all(len(v) == len(r["candidates"])
                                                       for v, r in zip(ev.versions, ev.records))
    assert sc.score_table(ev)[0]["predictor"] == "SAGE sequence student, voted over up to 3 versions"
    box = sc.inspector(ev)
    (_, pair, version), image = box.children[0].children, box.children[2]
    assert bytes(image.value).startswith(b"\x89PNG")
    assert [v for _, v in version.options] == [-1, *range(len(ev.versions[pair.value]))]   # this pair's pool
    version.value = 1                                       # a version's own written grid is drawn
    import matplotlib.pyplot as plt
    fig = sc.plot_inspection(ev, pair.value, 1)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input (this version)", "target (this version)",
                                                       "prediction (this version)"]
    plt.close(fig)
    speed = sc.speed_comparison(ev, "cpu")
    row = speed["rows"][0]
    assert row["model"] == "sequence student (whole answers written, greedy)" and row["ms_batch1"] > 0
    assert row["parameters"] == sum(p.numel() for p in sc.student_from_checkpoint(ev.loaded, "cpu").parameters())
    pairs = sc.pair_scores(ev.records, ev.split)
    metrics = sc.evaluation_metrics(ev, pairs, speed, {"computed": False, "reason": "-"}, {"computed": False, "reason": "-"})
    report = sc.evaluation_report(metrics, sc.score_table(ev), {})
    assert "The sequence student writes each test input's answer greedily" in report


def test_normuon_normalises_each_rows_step_as_the_paper_says():
    """StackedMuon(row_beta) against NorMuon written out for one matrix at a time: Muon's
    orthogonalised momentum, rows divided by the root of their running mean square, the update
    rescaled to its former norm, times sqrt(rows / cols) for a tall matrix."""
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 64)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = sc.StackedMuon(params, lr=0.02, weight_decay=0.1, row_beta=0.9, adjust_lr_fn="original")
    reference = [p.clone() for p in start]
    momentum = [torch.zeros(s) for s in shapes]
    second = [torch.zeros(s[0], 1) for s in shapes]
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
        for i, gi in enumerate(g):
            momentum[i] = 0.95 * momentum[i] + 0.05 * gi
            o = sc.orthogonalise((0.05 * gi + 0.95 * momentum[i])[None], (3.4445, -4.775, 2.0315), 5, 1e-7)[0].float()
            second[i] = 0.9 * second[i] + 0.1 * o.square().mean(1, keepdim=True)
            normed = o / second[i].sqrt()
            update = normed * o.norm() / normed.norm() * max(1, shapes[i][0] / shapes[i][1]) ** 0.5
            reference[i] = reference[i] * (1 - 0.02 * 0.1) - 0.02 * update
    rows_before = [(p - s).norm(dim=1) for p, s in zip(reference, start)]
    for p, r, s in zip(params, reference, start):
        assert (r - s).abs().max() > 0.01
        torch.testing.assert_close(p.detach(), r, atol=1e-5, rtol=0)
    assert set(opt.state_dict()["state"][0]) == {"momentum_buffer", "row_second_moment"}
    assert all(r.std() / r.mean() < 0.5 for r in rows_before)            # rows moved alike


def test_stacked_muon_makes_its_state_on_the_first_step_only(monkeypatch):
    params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4, 8))]
    opt = sc.StackedMuon(params, lr=0.02, row_beta=0.9)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    state = [dict(opt.state[p]) for p in params]

    def no_new_state(*args, **kwargs):
        raise AssertionError("a step after the first made new state")
    monkeypatch.setattr(torch, "zeros_like", no_new_state)
    monkeypatch.setattr(torch.Tensor, "new_zeros", no_new_state)
    opt.step()                                                            # the buffers made once, updated in place
    assert all(opt.state[p][k] is s[k] for p, s in zip(params, state) for k in ("momentum_buffer", "row_second_moment"))


def test_normuon_and_the_attention_decay_reach_their_groups():
    model = sc.build_student(config()["student"], 3)
    loss = sc.DistillLoss(sc.LossConfig(), 32, 32)
    cfg = sc.TrainConfig(optimizer="normuon", muon_lr=1e-3, weight_decay=0.1, attention_decay_scale=0.1)
    adamw, muon = sc.make_optimizer(model, loss, cfg).optimizers
    names = {id(p): n for n, p in [*model.named_parameters(), *loss.named_parameters()]}
    decay_of = {names[id(p)]: g["weight_decay"] for o in (adamw, muon) for g in o.param_groups for p in g["params"]}
    assert decay_of["blocks.0.qkv.weight"] == decay_of["blocks.1.proj.weight"] == pytest.approx(0.01)
    assert decay_of["blocks.0.gate_up.weight"] == decay_of["blocks.0.down.weight"] == 0.1
    assert decay_of["token.weight"] == decay_of["dihedral.weight"] == decay_of["task.weight"] == 0.0
    assert decay_of["head.weight"] == 0.1
    assert all(g["row_beta"] == 0.95 and g["adjust_lr_fn"] == "original" for g in muon.param_groups)


def test_the_cost_table_times_each_student_as_served_against_the_stand_in(split, tmp_path):
    sc.train(config(max_steps=2), split, tmp_path / "seq", progress=False)
    sc.train(sc.build_config("smoke", device="cpu", max_tasks=3, max_steps=1, w_feat=0.0, seconds_budget=0.0),
             split, tmp_path / "grid", progress=False)
    out = tmp_path / "study" / "cost.json"
    assert sc.main(["cost", "--out", str(out), "--device", "cpu", "--preset", "tiny",
                    str(tmp_path / "seq" / "checkpoints" / "best.pt"), str(tmp_path / "grid" / "checkpoints" / "best.pt")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"].split(" (")[0] for r in rows] == ["seq: sequence student", "grid: grid student", "teacher: standin"]
    standin = rows[-1]
    assert standin["stand-in / it, ms at batch 1"] == standin["it / stand-in, examples/s at best batch"] == 1.0
    for r in rows[:2]:
        assert r["ms_batch1"] > 0 and r["stand-in / it, parameters"] == pytest.approx(standin["parameters"] / r["parameters"])
        assert r["stand-in / it, ms at batch 1"] == pytest.approx(standin["ms_batch1"] / r["ms_batch1"])
