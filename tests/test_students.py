import math

import numpy as np
import pytest
import torch

import sage_core as sc

SMALL = dict(width=32, depth=2, heads=4, task_tokens=2, decoder_hidden=48)


def small(student="grid", **kw):
    return sc.StudentConfig(student=student, **{**SMALL, **kw})


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("side", [5, 30])
def test_grid_student_shapes(k, side):
    torch.manual_seed(0)
    model = sc.build_student(small(refine_steps=k), n_task_ids=7)
    out = model(torch.randint(0, 11, (4, side, side)), torch.tensor([0, 3, 6, 6]))
    assert out.logits.shape == (4, 30, 30, 11) and out.pooled.shape == (4, 32)
    assert len(out.steps) == k and out.steps[-1] is out.logits
    if side < 30:   # beyond the canvas every cell is predicted outside the grid
        assert (out.logits[:, side:].argmax(-1) == sc.OUTSIDE).all()
        assert (out.logits[:, :, side:].argmax(-1) == sc.OUTSIDE).all()


def test_features_student_shapes_and_padding_is_ignored():
    torch.manual_seed(0)
    model = sc.build_student(small("features"), teacher_dim=24, max_tokens=50).eval()
    tokens, mask = torch.randn(2, 40, 24), torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    out = model(tokens, mask)
    assert out.logits.shape == (2, 30, 30, 11) and out.pooled.shape == (2, 32)
    noisy = tokens.clone()
    noisy[1, 30:] = 1e3                                # garbage in the padding
    torch.testing.assert_close(model(noisy, mask).logits, out.logits)
    with pytest.raises(ValueError, match="at most 50"):
        model(torch.randn(1, 51, 24), torch.ones(1, 51, dtype=torch.bool))


def test_canvas_side_rounds_up_and_ignores_test_outputs():
    g = lambda h, w: np.zeros((h, w), np.uint8)  # noqa: E731
    task = sc.Task("t", (sc.Pair(g(3, 7), g(6, 2)),), (sc.Pair(g(4, 4), g(30, 30)),))
    assert sc.canvas_side(task, 5) == 10
    assert sc.canvas_side(task, 1) == 7
    assert sc.canvas_side(task, 4) == 8


def test_seed_size_parameter_counts_match_the_plan():
    with torch.device("meta"):
        grid = sc.parameter_table(sc.build_student(sc.StudentConfig(), n_task_ids=1))
        feats = sc.parameter_table(sc.build_student(sc.StudentConfig(student="features")))
    assert 24e6 < grid["encoder"] < 26e6 and grid["encoder"] == feats["encoder"]
    assert abs(feats["total"] - sc.SEED_PARAMETERS["total"]) / sc.SEED_PARAMETERS["total"] < 0.05
    assert abs(feats["project"] - 1.05e6) < 1e4


def test_loss_parts_equal_hand_computed_values():
    loss = sc.DistillLoss(sc.LossConfig(w_task=1.0, w_feat=0.5), student_width=2, teacher_dim=2)
    with torch.no_grad():
        loss.project.weight.copy_(torch.eye(2))
        loss.project.bias.zero_()
    logits = torch.zeros(1, 30, 30, 11)
    logits[..., 3] = math.log(2.0)              # p(3) = 2/12, every other class 1/12
    target = torch.full((1, 30, 30), 3)
    out = sc.StudentOutput(logits, torch.tensor([[1.0, 0.0]]), [logits])
    parts = loss(out, target, teacher_pooled=torch.tensor([[0.0, 2.0]]))
    ce = -math.log(2 / 12)
    mse = (1 + 4) / 2                            # mean of (1-0)^2 and (0-2)^2
    cos = 1 - 0.0                                # orthogonal vectors
    assert parts["task"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["feat_mse"].item() == pytest.approx(mse)
    assert parts["feat_cos"].item() == pytest.approx(cos)
    assert parts["total"].item() == pytest.approx(ce + 0.5 * (mse + 0.5 * cos), rel=1e-5)


def test_kd_is_zero_when_student_equals_teacher_and_positive_otherwise():
    loss = sc.DistillLoss(sc.LossConfig(w_kd=1.0, w_feat=0.0), 2, 2)
    logits = torch.randn(2, 30, 30, 11)
    out = sc.StudentOutput(logits, torch.zeros(2, 2), [logits])
    target = torch.zeros(2, 30, 30, dtype=torch.long)
    assert loss(out, target, teacher_logits=logits)["kd"].item() == pytest.approx(0, abs=1e-5)
    assert loss(out, target, teacher_logits=torch.randn(2, 30, 30, 11))["kd"].item() > 0.01


def test_masks_drop_what_they_should():
    loss = sc.DistillLoss(sc.LossConfig(ignore_outside=True), 4, 3)
    logits = torch.randn(2, 30, 30, 11)
    target = torch.full((2, 30, 30), sc.OUTSIDE)
    target[:, :3, :3] = 1
    out = sc.StudentOutput(logits, torch.randn(2, 4), [logits])
    changed = logits.clone()
    changed[:, 10:] = torch.randn(2, 20, 30, 11)          # only outside-target cells differ
    pooled = torch.randn(2, 3)
    keep = torch.tensor([True, False])
    a = loss(out, target, pooled, keep)
    b = loss(sc.StudentOutput(changed, out.pooled, [changed]), target, pooled, keep)
    torch.testing.assert_close(a["task"], b["task"])
    other_target = pooled.clone()
    other_target[1] = 100.0                               # a dropped row changes nothing
    torch.testing.assert_close(loss(out, target, other_target, keep)["feat"], a["feat"])
    assert not torch.allclose(loss(out, target, other_target)["feat"], a["feat"])


@pytest.mark.parametrize("student", ["grid", "features"])
def test_every_trainable_parameter_gets_a_gradient(student):
    torch.manual_seed(0)
    model = sc.build_student(small(student, refine_steps=2), n_task_ids=3, teacher_dim=16, max_tokens=20)
    loss = sc.DistillLoss(sc.LossConfig(w_kd=0.5), 32, 16)
    if student == "grid":
        out = model(torch.randint(0, 11, (2, 10, 10)), torch.tensor([0, 2]))
    else:
        out = model(torch.randn(2, 20, 16), torch.ones(2, 20, dtype=torch.bool))
    target = torch.randint(0, 11, (2, 30, 30))
    loss(out, target, torch.randn(2, 16), None, torch.randn(2, 30, 30, 11))["total"].backward()
    for name, p in list(model.named_parameters()) + list(loss.named_parameters()):
        if name == "task.weight":   # only the rows of the ids in the batch
            assert p.grad[[0, 2]].abs().sum() > 0 and p.grad[1].abs().sum() == 0
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_agrees_with_fp32():
    torch.manual_seed(0)
    model = sc.build_student(small(), n_task_ids=2)
    with torch.no_grad():
        model.task.weight.normal_()
    cells, idx = torch.randint(0, 11, (2, 10, 10)), torch.tensor([0, 1])
    loss = sc.DistillLoss(sc.LossConfig(), 32, 8)
    target, teacher = torch.randint(0, 11, (2, 30, 30)), torch.randn(2, 8)
    fp32 = loss(model(cells, idx), target, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss(model(cells, idx), target, teacher)
    for key in fp32:                       # bf16 keeps ~3 significant digits
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=0.03, abs=0.01), key


def test_overfits_a_few_examples_to_every_cell_right():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 10, (5, 5)) for _ in range(4)]
    cells = torch.tensor(np.stack([sc.encode_grid(g)[:10, :10] for g in grids])).long()
    target = torch.tensor(np.stack([sc.encode_grid(np.rot90(g)) for g in grids])).long()
    model = sc.build_student(sc.StudentConfig(width=64, depth=2, heads=4, task_tokens=1), n_task_ids=4)
    loss = sc.DistillLoss(sc.LossConfig(), 64, 8)
    teacher = torch.randn(4, 8)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss.parameters()), lr=3e-3)
    for step in range(300):
        out = model(cells, torch.arange(4))
        parts = loss(out, target, teacher)
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        opt.step()
        accuracy = (out.logits.argmax(-1) == target).float().mean().item()
        if accuracy == 1.0:
            break
    assert accuracy == 1.0, f"cell accuracy {accuracy:.3f} after {step + 1} steps"
