"""The sequence student (sage_core 7b) and its augmentation pools (3): tokens, positions,
packing, attention within sequences, KV-cache decoding, and a tiny model that learns."""
import numpy as np
import pytest
import torch

import sage_core as sc

E, R, S, X = sc.TOKEN_END, sc.TOKEN_ROW_END, sc.TOKEN_SEPARATOR, sc.TOKEN_START


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model(n_tasks=3, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = sc.StudentConfig(**{"width": 32, "depth": 2, "heads": 4, "dropout": 0.0, **kw})
    return sc.SequenceStudent(cfg, n_tasks).eval()


def grid(rng, h, w):
    return rng.integers(0, 10, (h, w)).astype(np.uint8)


# --- tokens and positions ---

def test_a_two_by_three_pair_by_hand():
    seq = sc.tokenize_pair(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[7, 8]]), task=5, dihedral=3)
    assert seq.tokens.tolist() == [X, 1, 2, 3, R, 4, 5, 6, R, S, 7, 8, R, E]
    assert seq.positions.tolist() == [
        [0, 0, 0],                                       # start
        [0, 0, 1], [1, 0, 1], [2, 0, 1], [3, 0, 1],      # input row 0, its row end at x = width
        [0, 1, 1], [1, 1, 1], [2, 1, 1], [3, 1, 1],      # input row 1
        [0, 0, 2],                                       # separator
        [0, 0, 3], [1, 0, 3], [2, 0, 3],                 # output row 0 and its row end
        [0, 0, 4]]                                       # end
    assert seq.mask.tolist() == [False] * 10 + [True] * 4
    assert (seq.task, seq.dihedral) == (5, 3)
    prompt = sc.tokenize_pair(np.array([[1, 2, 3], [4, 5, 6]]))
    assert prompt.tokens.tolist() == seq.tokens[:10].tolist() and not prompt.mask.any()
    np.testing.assert_array_equal(prompt.positions, seq.positions[:10])


def test_positions_are_clamped_on_a_30_by_30_grid():
    seq = sc.tokenize_pair(np.zeros((30, 30), np.uint8), np.zeros((30, 30), np.uint8))
    assert len(seq.tokens) == 2 * 30 * 31 + 3 and seq.mask.sum() == sc.MAX_NEW_TOKENS
    assert seq.positions[:, 0].max() == 30 and seq.positions[:, 1].max() == 29


def test_every_arc1_training_pair_round_trips(arc1_training):
    n = 0
    for task in arc1_training:
        for pair in task.train + task.test:
            seq = sc.tokenize_pair(pair.input, pair.output)
            out = seq.tokens[seq.mask]                   # output cells, row ends, end
            np.testing.assert_array_equal(sc.tokens_to_grid(out), pair.output)
            np.testing.assert_array_equal(sc.output_positions(out), seq.positions[seq.mask])
            sep = int(np.flatnonzero(seq.tokens == S)[0])
            np.testing.assert_array_equal(sc.tokens_to_grid(np.append(seq.tokens[1:sep], E)), pair.input)
            (h, w), (h2, w2) = pair.input.shape, pair.output.shape
            assert len(seq.tokens) == h * (w + 1) + h2 * (w2 + 1) + 3
            assert seq.mask.sum() == h2 * (w2 + 1) + 1
            n += 1
    assert n > 1700


@pytest.mark.parametrize("tokens", [
    [1, 2, R],                 # no end
    [E],                       # empty
    [1, 2, R, 3, R, E],        # rows of different widths
    [1, 2, R, 3, 4, E],        # last row left open
    [R, E],                    # an empty row
    [1, S, R, E],              # a separator inside
    [1] * 31 + [R, E],         # wider than 30
    [1, R] * 31 + [E],         # taller than 30
])
def test_malformed_outputs_give_none(tokens):
    assert sc.tokens_to_grid(np.array(tokens)) is None


def test_tokens_after_the_end_are_ignored():
    np.testing.assert_array_equal(sc.tokens_to_grid(np.array([1, 2, R, 3, 4, R, E, 5, R])), [[1, 2], [3, 4]])


def test_written_positions_follow_the_structure():
    pos = sc.output_positions(np.array([3, 4, R, 5, R, E]))
    assert pos.tolist() == [[0, 0, 3], [1, 0, 3], [2, 0, 3], [0, 1, 3], [1, 1, 3], [0, 0, 4]]
    assert sc.output_positions(np.array([], np.int64)).shape == (0, 3)


# --- rotary positions ---

def test_rotary_split_follows_mdlarc_at_head_dim_64_and_generalises():
    assert sc.rotary_split(64) == (10, 10, 12)
    for d in (8, 16, 32, 48, 128):
        x, y, z = sc.rotary_split(d)
        assert x == y >= 1 and z >= 1 and x + y + z == d // 2
    with pytest.raises(ValueError):
        sc.rotary_split(7)


def test_rotary_scores_depend_on_offsets_along_each_axis_only():
    rot = sc.Rotary3D(16)
    q, k = torch.randn(1, 2, 16), torch.randn(1, 2, 16)

    def score(pq, pk):
        cq, sq = rot(torch.tensor([pq]))
        ck, sk = rot(torch.tensor([pk]))
        return (sc.apply_rotary(q, cq, sq) * sc.apply_rotary(k, ck, sk)).sum(-1)

    base = score([2, 3, 1], [5, 1, 3])
    torch.testing.assert_close(score([9, 7, 2], [12, 5, 4]), base, atol=1e-4, rtol=1e-4)   # same offsets
    for axis in range(3):
        moved = [5, 1, 3]
        moved[axis] += 1
        assert not torch.allclose(score([2, 3, 1], moved), base, atol=1e-3)              # each axis counts
    cq, sq = rot(torch.tensor([[4, 7, 3]]))
    torch.testing.assert_close(sc.apply_rotary(q, cq, sq).norm(dim=-1), q.norm(dim=-1))   # a rotation


# --- packing, the loss mask, attention within sequences ---

def test_packing_lays_sequences_end_to_end_and_scores_only_outputs():
    rng = np.random.default_rng(0)
    seqs = [sc.tokenize_pair(grid(rng, 2, 3), grid(rng, 1, 2), task=1, dihedral=4),
            sc.tokenize_pair(grid(rng, 3, 1), grid(rng, 2, 2), task=2, dihedral=0)]
    b = sc.pack_sequences(seqs, pad_to=16)
    lengths = [len(s.tokens) for s in seqs]
    assert b.cu_seqlens.dtype == torch.int32 and b.cu_seqlens.tolist() == [0, lengths[0], sum(lengths)]
    assert b.max_len == max(lengths) and len(b.tokens) == 32 and b.n_sequences == 2
    assert b.doc.tolist() == [0] * lengths[0] + [1] * lengths[1] + [2] * (32 - sum(lengths))
    assert b.task.tolist()[:sum(lengths)] == [1] * lengths[0] + [2] * lengths[1]
    assert b.dihedral.tolist()[:sum(lengths)] == [4] * lengths[0] + [0] * lengths[1]
    for i, s in enumerate(seqs):
        a = b.bounds[i]
        np.testing.assert_array_equal(b.tokens[a:a + len(s.tokens)].numpy(), s.tokens)
        np.testing.assert_array_equal(b.positions[a:a + len(s.tokens)].numpy(), s.positions)
        np.testing.assert_array_equal(b.targets[a:a + len(s.tokens) - 1].numpy(), s.tokens[1:])
        scored = b.loss_mask[a:a + len(s.tokens)].numpy()
        # predictions from the separator on: their targets are exactly output cells, row ends, end
        assert scored.tolist() == s.mask[1:].tolist() + [False]
        assert scored.sum() == s.mask.sum() and s.tokens[np.flatnonzero(scored)[0]] == S
    assert not b.loss_mask[sum(lengths):].any()


def test_the_loss_is_cross_entropy_on_scored_predictions_only():
    rng = np.random.default_rng(1)
    b = sc.pack_sequences([sc.tokenize_pair(grid(rng, 2, 2), grid(rng, 2, 2))])
    logits = torch.randn(len(b.tokens), sc.SEQUENCE_VOCAB)
    expected = torch.nn.functional.cross_entropy(logits[b.loss_mask], b.targets[b.loss_mask])
    torch.testing.assert_close(sc.sequence_loss(logits, b), expected)
    logits[~b.loss_mask] = 1e4 * torch.randn(int((~b.loss_mask).sum()), sc.SEQUENCE_VOCAB)
    torch.testing.assert_close(sc.sequence_loss(logits, b), expected)   # unscored positions count nothing


def test_a_sequence_does_not_see_its_neighbours_in_the_pack():
    m, rng = model(), np.random.default_rng(2)
    a = sc.tokenize_pair(grid(rng, 3, 3), grid(rng, 2, 3))
    b1 = sc.tokenize_pair(grid(rng, 4, 2), grid(rng, 3, 3))
    b2 = sc.tokenize_pair(grid(rng, 2, 5), grid(rng, 3, 3), task=2)   # as long as b1: a starts at the same place
    assert len(b1.tokens) == len(b2.tokens)
    first, second = m(sc.pack_sequences([b1, a, b1])), m(sc.pack_sequences([b2, a, b2]))
    n, at = len(a.tokens), len(b1.tokens)
    torch.testing.assert_close(first.logits[at:at + n], second.logits[at:at + n])   # neither before nor after
    torch.testing.assert_close(first.pooled[1], second.pooled[1])
    assert not torch.allclose(first.logits[:at], second.logits[:at])


def test_a_token_does_not_see_later_tokens():
    m, rng = model(), np.random.default_rng(3)
    a = sc.tokenize_pair(grid(rng, 3, 3), grid(rng, 3, 3))
    tokens = a.tokens.copy()
    cut = 20
    tokens[cut] = (tokens[cut] + 1) % 10
    before = m(sc.pack_sequences([a])).logits
    after = m(sc.pack_sequences([a._replace(tokens=tokens)])).logits
    torch.testing.assert_close(before[:cut], after[:cut])
    assert not torch.allclose(before[cut:], after[cut:])


def test_the_packed_forward_equals_each_sequence_alone():
    m, rng = model(), np.random.default_rng(4)
    seqs = [sc.tokenize_pair(grid(rng, h, w), grid(rng, w, h), task=t, dihedral=d)
            for h, w, t, d in [(3, 4, 0, 1), (1, 1, 2, 7), (5, 2, 1, 0)]]
    packed = m(sc.pack_sequences(seqs, pad_to=100))
    for i, s in enumerate(seqs):
        alone = m(sc.pack_sequences([s]))
        a = sum(len(x.tokens) for x in seqs[:i])
        torch.testing.assert_close(packed.logits[a:a + len(s.tokens)], alone.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed.pooled[i], alone.pooled[0], atol=1e-5, rtol=1e-5)
    assert packed.logits.shape == (100, sc.SEQUENCE_VOCAB) and packed.pooled.shape == (3, 32)


def test_grouped_keys_and_values_equal_full_heads_that_repeat_them():
    """kv_heads=2 of 4 heads: each key/value head serves two query heads, exactly as a model
    with four key/value heads whose pairs of heads hold the same weights."""
    grouped, full, rng = model(kv_heads=2), model(seed=1), np.random.default_rng(8)
    hs, C = 8, 32
    assert grouped.blocks[0].qkv.weight.shape == (C + 2 * 2 * hs, C)
    state = grouped.state_dict()
    for i, block in enumerate(grouped.blocks):
        q, k, v = block.qkv.weight.detach().split([C, 2 * hs, 2 * hs])
        repeat = lambda w: w.view(2, hs, C).repeat_interleave(2, 0).reshape(4 * hs, C)  # noqa: E731
        state[f"blocks.{i}.qkv.weight"] = torch.cat([q, repeat(k), repeat(v)])
    full.load_state_dict(state)
    seqs = [sc.tokenize_pair(grid(rng, h, w), grid(rng, w, h), task=t) for h, w, t in [(3, 4, 0), (2, 2, 1)]]
    batch = sc.pack_sequences(seqs)
    torch.testing.assert_close(grouped(batch).logits, full(batch).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of kv_heads"):
        model(kv_heads=3)
    # decoding's cache holds half the keys and values per slot, so groups take twice the slots
    cpu = torch.device("cpu")
    assert sc.decode_cache_tokens(grouped, cpu) == 2 * sc.decode_cache_tokens(full, cpu)


def test_the_task_and_dihedral_vectors_change_the_output_and_learn():
    m, rng = model(), np.random.default_rng(5)
    s = sc.tokenize_pair(grid(rng, 2, 2), grid(rng, 2, 2))
    base = m(sc.pack_sequences([s])).logits
    assert not torch.allclose(m(sc.pack_sequences([s._replace(task=1)])).logits, base)
    assert not torch.allclose(m(sc.pack_sequences([s._replace(dihedral=5)])).logits, base)
    b = sc.pack_sequences([s._replace(task=2, dihedral=6)])
    sc.sequence_loss(m(b).logits, b).backward()
    assert m.task.weight.grad[2].abs().sum() > 0 and m.task.weight.grad[[0, 1]].abs().sum() == 0
    assert m.dihedral.weight.grad[6].abs().sum() > 0 and m.dihedral.weight.grad[:6].abs().sum() == 0
    assert all(p.grad is not None for p in m.parameters())


# --- decoding ---

@pytest.mark.parametrize("tokens, kept", [
    ([1, 2, R, 3, 4, R, E], 7),        # a 2x2 grid and its end
    ([1, 2, R, 3, R], 5),              # a row shorter than the first: the row end stops it
    ([1, 2, R, 3, 4, 5], 6),           # a cell past the first row's width
    ([R], 1),                          # an empty row
    ([1] * 31, 31),                    # a 31st cell
    ([1, R] * 30 + [1], 61),           # a 31st row
    ([1, 2, S, 3], 3),                 # a separator where a cell belongs
    ([1, 2, R, 3], None)])             # still writing
def test_writing_stops_where_no_grid_can_follow(tokens, kept):
    stop = sc.writing_stops(tokens)
    assert (None if stop is None else stop + 1) == kept


@pytest.mark.parametrize("cache_tokens, first_stage, kv_heads", [(None, 256, 0), (60, 256, 0), (None, 7, 0), (60, 5, 0),
                                                                (60, 5, 2), (None, 256, 1)])
def test_cached_greedy_decoding_equals_full_forwards(cache_tokens, first_stage, kv_heads):
    """One group or groups of one or two prompts; in one stage, or in two whose second continues
    from prompts that end inside a row (first_stage 7, 5) with that row's place and width; with
    every head's own keys and values, or grouped (kv_heads 2, 1)."""
    m, rng = model(seed=1, kv_heads=kv_heads), np.random.default_rng(6)
    with torch.no_grad():   # a random model that writes rows (positions move), some to the cap
        m.head.weight[[X, S, E]] = 0
        m.head.weight[R] *= 5
    prompts = [sc.tokenize_pair(grid(rng, h, w), task=t, dihedral=d)
               for h, w, t, d in [(2, 3, 0, 0), (4, 4, 1, 3), (1, 6, 2, 5), (3, 1, 0, 7), (1, 1, 2, 1)]]
    cached = sc.greedy_decode(m, prompts, max_new_tokens=40, cache_tokens=cache_tokens, first_stage=first_stage)
    full = sc.greedy_decode_uncached(m, prompts, max_new_tokens=40)
    for c, f in zip(cached, full):
        assert c.tokens.tolist() == f.tokens.tolist()
        assert abs(c.logprob - f.logprob) < 1e-3 and c.logprob < 0
    lengths = [len(c.tokens) for c in cached]
    assert max(lengths) <= 40 and any(R in c.tokens for c in cached)
    assert len(set(lengths)) > 2 and min(lengths) < 16 < max(lengths)   # some leave the batch early


@pytest.mark.parametrize("written, state", [([], (0, 0, 0)), ([1, 2], (2, 0, 0)), ([1, 2, R], (0, 1, 2)),
                                             ([1, 2, R, 3], (1, 1, 2)), ([4, R, 5, R, 6], (1, 2, 1))])
def test_writing_state_is_where_the_writer_stands(written, state):
    assert sc.writing_state(np.array(written)) == state


def test_a_tiny_model_memorises_three_tasks_and_writes_their_outputs():
    rng = np.random.default_rng(7)
    rules = [lambda g: g[::-1], lambda g: np.where(g == 0, 5, g), lambda g: g[:1, ::-1]]   # flip, fill, cut
    pairs = [(t, grid(rng, 3, 3) % 3) for t in range(3) for _ in range(3)]
    data = [sc.tokenize_pair(g, rules[t](g), task=t) for t, g in pairs]
    torch.manual_seed(0)
    m = sc.SequenceStudent(sc.StudentConfig(width=64, depth=2, heads=4, dropout=0.0), 3)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    batch = sc.pack_sequences(data)
    for step in range(200):
        loss = sc.sequence_loss(m(batch).logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    prompts = [sc.tokenize_pair(g, task=t) for t, g in pairs]
    written = sc.greedy_decode(m, prompts)
    for (t, g), w in zip(pairs, written):
        np.testing.assert_array_equal(sc.tokens_to_grid(w.tokens), rules[t](g))
        assert w.tokens[-1] == E and -1.0 < w.logprob <= 0
    assert [w.tokens.tolist() for w in sc.greedy_decode_uncached(m, prompts[:3])] == \
        [w.tokens.tolist() for w in written[:3]]
    assert m.training   # decoding gives the model back in the mode it found it


# --- augmentation pools ---

def test_output_only_colours_by_hand():
    task = sc.Task("t", (sc.Pair(np.array([[1, 0]]), np.array([[1, 4]])),
                         sc.Pair(np.array([[2, 2]]), np.array([[7, 4]]))),
                   (sc.Pair(np.array([[7, 0]]), None),))
    assert sc.output_only_colours(task) == {4}   # 7 occurs in a test input, 0 and 1 and 2 in inputs
    pool = sc.augmentation_pool(task, task.train[0].input, 40, seed=1)
    assert all(a.colours[4] == 4 for a in pool) and any(a.colours[7] != 7 for a in pool)


def test_pools_start_with_the_identity_and_hold_distinct_inputs_with_exact_inverses(arc1_training):
    for tid in sorted(arc1_training.tasks)[:12]:
        task = arc1_training.tasks[tid]
        fixed = sc.output_only_colours(task)
        for pair in task.train[:2]:
            pool = sc.augmentation_pool(task, pair.input, 24, seed=0)
            assert pool[0] == sc.Augmentation() and 1 <= len(pool) <= 24
            inputs = {(a.apply(pair.input).shape, a.apply(pair.input).tobytes()) for a in pool}
            assert len(inputs) == len(pool)
            for a in pool:
                assert all(a.colours[c] == c for c in fixed)
                np.testing.assert_array_equal(a.invert(a.apply(pair.input)), pair.input)
                np.testing.assert_array_equal(a.invert(a.apply(pair.output)), pair.output)
            again = sc.augmentation_pool(task, pair.input, 24, seed=0)
            assert [a.name for a in again] == [a.name for a in pool]
        other = sc.augmentation_pool(task, task.train[0].input, 24, seed=1)
        assert [a.name for a in other] != [a.name for a in sc.augmentation_pool(task, task.train[0].input, 24)]


def test_a_pool_is_short_when_the_input_has_few_versions():
    task = sc.Task("blank", (sc.Pair(np.zeros((3, 3), np.uint8), np.ones((1, 1), np.uint8)),), ())
    assert sc.augmentation_pool(task, task.train[0].input, 50) == [sc.Augmentation()]
    stripe = np.array([[1, 1], [0, 0]], np.uint8)   # 4 placements x 9 colours = 36 distinct inputs
    task = sc.Task("stripe", (sc.Pair(stripe, stripe),), ())
    assert len(sc.augmentation_pool(task, stripe, 100)) == 36


def test_a_pair_sequence_carries_its_versions_dihedral():
    pair = sc.Pair(np.array([[1, 2, 3]], np.uint8), np.array([[3]], np.uint8))
    aug = sc.Augmentation(1, (0, 2, 1, *range(3, 11)))
    seq = sc.pair_sequence(pair, aug, task=4)
    assert (seq.task, seq.dihedral) == (4, 1)
    np.testing.assert_array_equal(sc.tokens_to_grid(seq.tokens[seq.mask]), aug.apply(pair.output))
    assert not sc.pair_sequence(pair, aug, prompt=True).mask.any()


def test_a_compiled_block_never_recompiles_for_new_lengths_or_attention_closures():
    """Each call brings a new `attend` closure and a new number of tokens: compiled whole, the
    block would recompile every time (and after torch's limit fall back to eager)."""
    import torch._dynamo
    torch._dynamo.reset()
    m = model()
    block = m.blocks[0]
    block.compile(backend="eager")
    rng = np.random.default_rng(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for h, w in [(2, 3), (4, 5), (1, 7), (3, 3)]:
            batch = sc.pack_sequences([sc.tokenize_pair(grid(rng, h, w), grid(rng, w, h))])
            x = m.embed(batch.tokens, batch.task, batch.dihedral)
            cos, sin = m.rotary(batch.positions)
            seen = []
            out = block(x, cos, sin, lambda q, k, v: seen.append(len(q)) or
                        sc.packed_attention(q, k, v, *sc.attention_bounds(batch)))
            assert out.shape == x.shape and seen == [len(x)]
    torch._dynamo.reset()


def test_the_whole_compiled_trunk_gives_the_eager_logits_for_any_batch():
    """compile(whole=True) wraps the packed trunk as one torch.compile'd function; batches of
    new lengths, counts and padding give what the eager model gives (the CPU's per-sequence
    attention runs outside the graph, as @torch.compiler.disable says)."""
    import torch._dynamo
    torch._dynamo.reset()
    eager, compiled = model(seed=3), model(seed=3)
    compiled.compile(whole=True, backend="eager")
    eager.eval(), compiled.eval()
    rng = np.random.default_rng(1)
    for shapes, pad in [([(2, 3), (4, 4)], 1), ([(1, 5)], 1), ([(3, 2), (2, 2), (5, 1)], 64)]:
        batch = sc.pack_sequences([sc.tokenize_pair(grid(rng, h, w), grid(rng, w, h)) for h, w in shapes], pad_to=pad)
        torch.testing.assert_close(compiled(batch).logits, eager(batch).logits)
    assert hasattr(compiled.packed, "_torchdynamo_orig_callable") and not hasattr(eager.packed, "_torchdynamo_orig_callable")
    torch._dynamo.reset()


def test_a_padding_tail_joins_the_last_sequence_for_attention():
    rng = np.random.default_rng(2)
    seqs = [sc.tokenize_pair(grid(rng, 2, 2), grid(rng, 1, 1)), sc.tokenize_pair(grid(rng, 1, 3), grid(rng, 2, 1))]
    exact = sc.pack_sequences(seqs)
    assert sc.attention_bounds(exact) == (exact.cu_seqlens, exact.max_len)
    padded = sc.pack_sequences(seqs, pad_to=32)
    cu, longest = sc.attention_bounds(padded)
    assert cu.tolist() == [0, len(seqs[0].tokens), 32] and longest == 32 - len(seqs[0].tokens)
    assert padded.cu_seqlens.tolist()[-1] == exact.bounds[-1]          # the batch itself keeps its bounds


def test_static_bounds_pad_sequences_and_tail_into_few_shapes():
    rng = np.random.default_rng(9)
    seqs = [sc.tokenize_pair(grid(rng, 2, 2), grid(rng, 1, 1)), sc.tokenize_pair(grid(rng, 1, 3), grid(rng, 2, 1))]
    real = sum(len(s.tokens) for s in seqs)
    batch = sc.pack_sequences(seqs, pad_to=sc.GRAPH_TOKENS)
    cu, longest = sc.static_bounds(batch)
    assert longest == sc.GRAPH_MAX_LEN and len(cu) == sc.GRAPH_SLOTS + 1
    assert cu.tolist() == [*batch.bounds, *[sc.GRAPH_TOKENS] * (sc.GRAPH_SLOTS - 2)]   # the tail, then empty ones
    long_tail = sc.pack_sequences(seqs, pad_to=3 * sc.GRAPH_MAX_LEN)                    # the tail cut to fit
    cu = sc.static_bounds(long_tail)[0].tolist()
    assert cu[:5] == [*batch.bounds, real + sc.GRAPH_MAX_LEN, real + 2 * sc.GRAPH_MAX_LEN]
    assert cu[5:] == [3 * sc.GRAPH_MAX_LEN] * (len(cu) - 5) and np.diff(cu).max() <= sc.GRAPH_MAX_LEN


def test_a_graphed_training_forward_on_a_padded_batch_gives_the_plain_logits():
    """What compile="graphs" changes besides replay: the batch padded to GRAPH_TOKENS and the
    attention bounds of static_bounds. The real tokens' logits and the loss stay the same."""
    plain, graphed, rng = model(seed=4), model(seed=4), np.random.default_rng(10)
    graphed.graphed_trunk, graphed.graphed = graphed.packed, True     # as compile(graphs=True), without CUDA
    plain.train(), graphed.train()                                     # dropout 0: training mode is deterministic
    seqs = [sc.tokenize_pair(grid(rng, h, w), grid(rng, w, h), task=t) for h, w, t in [(3, 4, 0), (2, 2, 1), (1, 5, 2)]]
    exact, padded = sc.pack_sequences(seqs), sc.pack_sequences(seqs, pad_to=sc.GRAPH_TOKENS)
    a, b = plain(exact), graphed(padded)
    n = exact.bounds[-1]
    torch.testing.assert_close(b.logits[:n], a.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.pooled, a.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sc.sequence_loss(b.logits, padded), sc.sequence_loss(a.logits, exact))
    graphed.eval()
    torch.testing.assert_close(graphed(exact).logits, a.logits)        # evaluation takes the plain path
