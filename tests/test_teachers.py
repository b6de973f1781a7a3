
import pytest
import torch

import sage_core as sc


@pytest.fixture(scope="module")
def small_split(arc1_training, arc1_evaluation):
    return sc.make_split(arc1_training.subset(4), arc1_evaluation.subset(3))


def test_standin_output_shapes_and_token_count(tiny, small_split):
    obs = sc.make_observations(small_split.tasks, small_split.train[:3])
    out = tiny.extract(obs)
    per_frame = sc.EAGLE_TILES * (56 // 14) ** 2     # 3x3 tiles + thumbnail, 16 tokens each
    n = out.features.shape[1]
    assert out.features.shape == (3, n, 64) and out.mask.shape == (3, n)
    assert 2 * per_frame < n < 2 * per_frame + 80   # both frames plus a short text
    assert out.pooled.shape == (3, 64) and out.pooled.dtype == torch.float32
    assert torch.isfinite(out.features).all()
    info = tiny.describe()
    assert info["pretrained"] is False and "no knowledge" in info["note"]
    assert "random weights" in sc.teacher_label(info)


def test_full_preset_has_n15_backbone_shapes():
    with torch.device("meta"):
        model = sc.StandinBackbone(sc.STANDIN_PRESETS["full"])
    n = sum(p.numel() for p in model.parameters())
    assert 1.30e9 < n < 1.36e9
    assert model.mlp1.in_features == 1152 and model.mlp1.out_features == 2048
    layers = [m for m in model.vision.modules() if type(m).__name__ == "SiglipEncoderLayer"]
    assert len(model.llm.layers) == 12 and len(layers) == 27


def test_standin_is_deterministic_and_sees_the_frames(tiny, small_split):
    obs = sc.make_observations(small_split.tasks, small_split.train[:2])
    again = sc.load_teacher("standin", "cpu", preset="tiny").extract(obs).pooled
    torch.testing.assert_close(tiny.extract(obs).pooled, again)
    changed = sc.Observations(obs.examples, obs.query.copy(), obs.pair, obs.state, obs.text)
    changed.query[0, 0, 0] = (changed.query[0, 0, 0] + 1) % 10
    assert not torch.allclose(tiny.extract(changed).pooled[0], again[0])
    torch.testing.assert_close(tiny.extract(changed).pooled[1], again[1])  # batch rows independent


def test_padding_tokens_do_not_change_pooled_features(tiny, small_split):
    ex = small_split.train[0]
    obs = sc.make_observations(small_split.tasks, [ex, small_split.train[1]])
    obs.text[1] += " with many more words to make this row longer than the other one"
    pair = tiny.extract(obs)
    alone = tiny.extract(sc.make_observations(small_split.tasks, [ex]))
    assert pair.mask[0].sum() < pair.mask[1].sum()
    torch.testing.assert_close(pair.pooled[0], alone.pooled[0], atol=1e-4, rtol=1e-4)


def test_unknown_teacher_and_preset_are_clear_errors():
    with pytest.raises(ValueError, match="unknown teacher"):
        sc.load_teacher("gpt")
    with pytest.raises(ValueError, match="preset"):
        sc.load_teacher("standin", "cpu", preset="huge")
