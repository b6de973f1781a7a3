"""Evaluation pieces: attention recomputed from SDPA blocks, rollout, the sage-teacher path,
the alignment's honesty about an untrained projection, and the inspector without a display."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sage_core as sc


@pytest.fixture(scope="module")
def evaluation(smoke_run):
    return sc.evaluate_run(smoke_run / "checkpoints" / "best.pt", smoke_run / "feature_store", "cpu")


def test_recomputed_attention_weights_are_the_ones_sdpa_applies():
    torch.manual_seed(0)
    block = sc.EncoderBlock(32, 4)
    x = block.norm1(torch.randn(2, 10, 32))
    probs = sc.block_attention(block, x)
    q, k, v = block.qkv(x).view(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(probs @ v, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 10))


def test_rollout_of_uniform_attention_equals_the_hand_computed_share():
    torch.manual_seed(0)
    cfg = sc.StudentConfig(width=32, depth=1, heads=4, task_tokens=2)
    model = sc.GridStudent(cfg, 1)
    with torch.no_grad():
        model.encoder.blocks[0].qkv.weight[:64] = 0     # q = k = 0: every token attends to all alike
    side = 5
    n = cfg.task_tokens + side * side
    rollout = sc.attention_rollout(model, torch.randint(0, 10, (3, side, side)), torch.zeros(3, dtype=torch.long))
    # one layer: 0.5 * (1/n everywhere) + 0.5 * identity, averaged over the cell rows
    torch.testing.assert_close(rollout, torch.full((3, side, side), 0.5 / n + 0.5 / side ** 2))


def test_map_correlations_leave_out_constant_maps():
    a = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones((1, 1)), np.array([[1.0, 0.0]])]
    b = [np.array([[2.0, 4.0], [6.0, 8.0]]), np.ones((1, 1)), np.array([[0.0, 1.0]])]
    np.testing.assert_allclose(sc.map_correlations(a, b), [1.0, -1.0])


def test_attention_against_a_sage_teacher_runs_over_each_query_grid(evaluation):
    ev = evaluation
    as_teacher = dataclasses.replace(ev.config["teacher"], teacher="sage", teacher_path=ev.checkpoint)
    result = sc.attention_similarity(dataclasses.replace(ev, config={**ev.config, "teacher": as_teacher}), "cpu")
    assert result["computed"] and result["pairs"] > 0
    np.testing.assert_allclose(result["correlation"], 1.0, atol=1e-5)   # the student is its own teacher
    maps = sc.cell_attention_maps(sc.SageTeacher(ev.checkpoint), ev.split.tasks, ev.split.test)
    assert [m.shape for m in maps] == [ev.split.pair(e).input.shape for e in ev.split.test]
    assert not sc.attention_similarity(ev, "cpu")["computed"]       # the stand-in reads image patches


def test_alignment_says_when_the_projection_never_trained(evaluation, smoke_run):
    trained = sc.feature_alignment(evaluation, smoke_run / "feature_store", "cpu")
    assert trained["computed"] and trained["projection_trained"]
    no_teacher = {**evaluation.config, "loss": dataclasses.replace(evaluation.config["loss"], w_feat=0.0)}
    untrained = sc.feature_alignment(dataclasses.replace(evaluation, config=no_teacher),
                                     smoke_run / "feature_store", "cpu")
    assert not untrained["projection_trained"]
    np.testing.assert_allclose(untrained["matched"], trained["matched"])
    assert "UNTRAINED" in sc.plot_alignment(untrained, "x").axes[0].get_title()
    assert "UNTRAINED" not in sc.plot_alignment(trained, "x").axes[0].get_title()
    missing = sc.feature_alignment(evaluation, smoke_run / "no-store", "cpu")
    assert not missing["computed"] and "no teacher features" in missing["reason"]


def test_inspector_builds_without_a_display_and_redraws_for_every_control(evaluation):
    box = sc.inspector(evaluation)
    (task, pair, version), (difference, frames) = box.children[0].children, box.children[1].children
    image = box.children[2]
    assert bytes(image.value).startswith(b"\x89PNG")
    assert [o[1] for o in version.options] == [-1, 0, 1]     # the vote, then each version
    seen = [bytes(image.value)]
    for control, value in ((version, 1), (difference, True), (frames, True), (task, task.options[-1][1])):
        control.value = value
        seen.append(bytes(image.value))
    assert len(set(seen)) == len(seen)
    assert all(evaluation.records[i]["task_id"] == task.value for _, i in pair.options)
