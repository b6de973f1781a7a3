"""The sequence student's data (sage_core 9a) and its votes (10a): task rows, version pools,
the epoch's choice of one version per pair, packed token batches, and voting over written grids."""
import math

import numpy as np
import pytest
import torch

import sage_core as sc

SEED = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split(arc1_training, arc1_evaluation):
    return sc.make_split(arc1_training.subset(40), arc1_evaluation.subset(10))


@pytest.fixture(scope="module")
def pools(split):
    return sc.version_pools(split, "train", 24, SEED)


def choices(pools, epochs, seed=SEED):
    """(epochs, P) rows chosen at each epoch."""
    return torch.stack([sc.epoch_versions(pools, seed, e) for e in epochs])


# --- task rows and pools ---

def test_one_task_row_per_task_in_sorted_order(split, pools):
    rows = sc.task_rows(split.tasks)
    assert list(rows) == sorted(split.tasks) and list(rows.values()) == list(range(len(split.tasks)))
    assert pools.task.tolist() == [rows[ex.task_id] for ex in pools.examples]


def test_pools_are_augmentation_pools_identity_first_with_distinct_inputs(split, pools):
    assert pools.examples == split.train and len(pools.versions) == len(split.train)
    sizes = pools.sizes.tolist()
    assert sizes == [len(v) for v in pools.versions] and int(pools.start[-1]) == sum(sizes) == len(pools.pair)
    for ex, pair, versions in zip(pools.examples, pools.pairs, pools.versions):
        assert versions[0] == sc.Augmentation() and 1 <= len(versions) <= 24
        inputs = {(a.apply(pair.input).shape, a.apply(pair.input).tobytes()) for a in versions}
        assert len(inputs) == len(versions)
        # The replayed candidate stream gives exactly augmentation_pool's pool.
        assert versions == sc.augmentation_pool(split.tasks[ex.task_id], pair.input, 24, SEED)


def test_a_task_keeps_its_pools_whatever_else_is_loaded(split, pools):
    tid = next(ex.task_id for ex, v in zip(pools.examples, pools.versions) if len(v) == 24)
    alone = sc.Split("one", {tid: split.tasks[tid]}, [ex for ex in split.train if ex.task_id == tid], [], [])
    mine = [v for ex, v in zip(pools.examples, pools.versions) if ex.task_id == tid]
    assert sc.version_pools(alone, "train", 24, SEED).versions == mine
    assert sc.version_pools(alone, "train", 24, SEED + 1).versions != mine


def test_predicted_lengths_equal_tokenized_lengths_of_every_version(split, pools):
    val = sc.version_pools(split, "val", 16, SEED)
    for p in (pools, val):
        assert (p.output_length > 0).all()
        for row in range(len(p.pair)):
            seq, prompt = p.sequence(row), p.sequence(row, prompt=True)
            assert len(seq.tokens) == int(p.lengths[row])
            assert len(prompt.tokens) == int(p.prompt_length[row])
            assert seq.mask.sum() == int(p.output_length[row])


def test_test_pairs_without_outputs_are_never_in_training_pools(split):
    ids = sorted({ex.task_id for ex in split.test})
    tasks = dict(split.tasks)
    for tid in ids[:3]:          # these tasks lose their test answers, as in an ARC Prize challenges file
        tasks[tid] = sc.Task(tid, tasks[tid].train, tuple(sc.Pair(p.input, None) for p in tasks[tid].test))
    hidden = sc.Split(split.name, tasks, split.train, split.val, split.test)
    trainable = sc.version_pools(hidden, "test", 8, SEED)
    assert all(hidden.pair(ex).output is not None for ex in trainable.examples)
    assert {ex.task_id for ex in trainable.examples}.isdisjoint(ids[:3]) and trainable.examples
    # Decoding pools hold every test pair as prompts and never touch an output.
    poisoned = {tid: sc.Task(tid, t.train, tuple(sc.Pair(p.input, Unreadable()) for p in t.test))
                for tid, t in tasks.items()}
    every = sc.version_pools(sc.Split(split.name, poisoned, [], [], split.test), "test", 8, SEED, prompts=True)
    assert every.examples == split.test and every.prompts and not every.output_length.any()
    for row in range(len(every.pair)):
        seq = every.sequence(row)
        assert len(seq.tokens) == int(every.lengths[row]) == int(every.prompt_length[row])
        assert seq.tokens[-1] == sc.TOKEN_SEPARATOR and not seq.mask.any()
    assert every.versions == sc.version_pools(split, "test", 8, SEED, prompts=True).versions


class Unreadable:
    """An output that fails any use: proves that decoding pools never read one."""

    def __getattr__(self, name):
        raise AssertionError(f"an output was read ({name})")

    def __array__(self, *args, **kwargs):
        raise AssertionError("an output was read")


# --- an epoch's choice ---

def test_an_epoch_visits_every_pair_once_in_one_of_its_versions(pools):
    for epoch in (0, 1, 7, 500):
        rows = sc.epoch_versions(pools, SEED, epoch)
        assert pools.pair[rows].tolist() == list(range(len(pools.examples)))


def test_a_cycle_of_len_pool_epochs_shows_every_version_once_then_reshuffles(pools):
    sizes, start = pools.sizes, pools.start[:-1]
    longest = int(sizes.max())
    chosen = choices(pools, range(2 * longest)) - start        # (epochs, P) version in pool
    reshuffled = 0
    for p, s in enumerate(sizes.tolist()):
        first, second = chosen[:s, p], chosen[s:2 * s, p]
        assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(s))
        reshuffled += s >= 5 and first.tolist() != second.tolist()
    assert reshuffled >= 0.9 * int((sizes >= 5).sum()) > 0
    # Over many epochs every version is seen about equally: within one of each other per pair.
    many = choices(pools, range(3 * longest + 5)) - start
    for p, s in enumerate(sizes.tolist()):
        counts = np.bincount(many[:, p].numpy(), minlength=s)
        assert counts.max() - counts.min() <= 1


def test_the_choice_is_a_pure_function_of_seed_and_epoch(split, pools):
    rebuilt = sc.version_pools(split, "train", 24, SEED)       # as another process builds them
    a = sc.epoch_versions(pools, SEED, 12)
    assert torch.equal(a, sc.epoch_versions(rebuilt, SEED, 12)) and torch.equal(a, sc.epoch_versions(pools, SEED, 12))
    assert not torch.equal(a, sc.epoch_versions(pools, SEED + 1, 12))
    assert not torch.equal(a, sc.epoch_versions(pools, SEED, 13))


# --- an epoch's batches ---

@pytest.mark.parametrize("budget", [600, 4096, 16384])
def test_batches_cover_the_epochs_rows_once_in_equal_shares_of_the_budget(pools, budget):
    for epoch in (0, 5):
        batches = sc.sequence_batches(pools, budget, SEED, epoch)
        rows = torch.cat(batches)
        assert sorted(rows.tolist()) == sorted(sc.epoch_versions(pools, SEED, epoch).tolist())
        tokens = [int(pools.lengths[b].sum()) for b in batches]
        longest = int(pools.lengths[rows].max())
        count = -(-sum(tokens) // budget)                        # as few batches as the budget allows
        share = sum(tokens) / count
        assert all(n < share + longest and int(pools.lengths[b[:-1]].sum()) < share + 1 for b, n in zip(batches, tokens))
        if budget > longest:                                     # about equal: a share, give or take one sequence
            assert len(batches) == count and all(n > share - longest for n in tokens)
        again = sc.sequence_batches(pools, budget, SEED, epoch)
        assert all(torch.equal(x, y) for x, y in zip(batches, again)) and len(batches) == len(again)
    assert not torch.equal(torch.cat(sc.sequence_batches(pools, budget, SEED, 1)), rows)


def test_a_small_batch_repeats_its_rows_so_every_process_gets_one(pools):
    batches = sc.sequence_batches(pools, 1, SEED, 0, min_rows=4)     # one sequence per batch
    assert all(len(b) == 4 and len(set(b.tolist())) == 1 for b in batches)
    assert [len(sc.rank_rows(batches[0], r, 4)) for r in range(4)] == [1, 1, 1, 1]
    single = sc.sequence_batches(pools, 1, SEED, 0)
    assert [b[0] for b in batches] == [b[0] for b in single]


def test_a_packed_batch_holds_the_predicted_tokens_of_its_rows(split, pools):
    rows = sc.sequence_batches(pools, 3000, SEED, 2)[0]
    batch = sc.pack_rows(pools, rows, pad_to=64)
    lengths = pools.lengths[rows]
    assert batch.bounds[-1] == int(lengths.sum()) and batch.n_sequences == len(rows)
    assert np.diff(batch.bounds).tolist() == lengths.tolist() and len(batch.tokens) % 64 == 0
    rows_task = sc.task_rows(split.tasks)
    for i, r in enumerate(rows.tolist()):
        p = int(pools.pair[r])
        aug = pools.versions[p][r - int(pools.start[p])]
        a, b = batch.bounds[i], batch.bounds[i + 1]
        seq = sc.pair_sequence(pools.pairs[p], aug, rows_task[pools.examples[p].task_id])
        assert batch.tokens[a:b].tolist() == seq.tokens.tolist()
        assert set(batch.task[a:b].tolist()) == {seq.task} and set(batch.dihedral[a:b].tolist()) == {aug.k}
    assert int(batch.loss_mask.sum()) == int(pools.output_length[rows].sum())   # every output token


# --- voting over written grids ---

QUERY = np.array([[1, 2, 0], [0, 3, 0]], np.uint8)
ANSWER = np.array([[4, 4], [0, 1], [2, 3]], np.uint8)
OTHER = np.array([[5]], np.uint8)
PERM = (0, 3, 1, 2, 5, 4, 7, 6, 9, 8, 10)
VERSIONS = [sc.Augmentation(), sc.Augmentation(5, PERM), sc.Augmentation(1), sc.Augmentation(6, PERM)]


def written(grid, logprob=-0.1):
    """What a version writes for `grid` (its own, already transformed): cells, row ends, end."""
    seq = sc.tokenize_pair(np.zeros((1, 1), np.uint8), grid)
    return sc.Decoded(seq.tokens[seq.mask], logprob)


def one_task(answer=ANSWER):
    task = sc.Task("t", (sc.Pair(QUERY, ANSWER),), (sc.Pair(QUERY, answer),))
    return sc.Split("protocol", {"t": task}, [], [], [sc.Example("t", "test", 0)])


def vote_on(decoded, rank_by="votes", versions=VERSIONS):
    split = one_task()
    return sc.voted_decodings(split, split.test, [versions], [decoded], rank_by)[0]


def test_votes_count_grids_mapped_back_with_each_versions_exact_inverse():
    # Versions 1-3 (flips and rotations, two with a colour permutation) write the answer in
    # their own frames; mapped back, each is the answer, and it wins over version 0's other grid.
    decoded = [written(OTHER)] + [written(a.apply(ANSWER)) for a in VERSIONS[1:]]
    assert all(not np.array_equal(a.apply(ANSWER), ANSWER) for a in VERSIONS[1:])
    record = vote_on(decoded)
    np.testing.assert_array_equal(record["attempts"][0], ANSWER)
    np.testing.assert_array_equal(record["attempts"][1], OTHER)
    assert record["votes"] == [3, 1] and record["logprobs"] == pytest.approx([-0.3, -0.1])
    assert [c.shape for c in record["candidates"]] == [OTHER.shape] + [ANSWER.shape] * 3
    assert all(np.array_equal(c, ANSWER) for c in record["candidates"][1:])
    assert (record["task_id"], record["kind"], record["index"]) == ("t", "test", 0)


def test_a_tie_in_votes_goes_to_the_higher_summed_log_probability_then_to_the_first_written():
    tie = [written(VERSIONS[0].apply(OTHER), -1.0), written(VERSIONS[1].apply(OTHER), -1.0),
           written(VERSIONS[2].apply(ANSWER), -0.1), written(VERSIONS[3].apply(ANSWER), -0.1)]
    record = vote_on(tie)
    np.testing.assert_array_equal(record["attempts"][0], ANSWER)
    np.testing.assert_array_equal(record["attempts"][1], OTHER)
    assert record["votes"] == [2, 2] and record["logprobs"] == pytest.approx([-0.2, -2.0])
    even = [written(VERSIONS[0].apply(OTHER)), written(VERSIONS[1].apply(ANSWER))]
    record = vote_on(even, versions=VERSIONS[:2])
    np.testing.assert_array_equal(record["attempts"][0], OTHER)     # exact tie: the first written
    np.testing.assert_array_equal(record["attempts"][1], ANSWER)


def test_malformed_outputs_and_copies_of_the_versions_input_are_no_candidates():
    broken = sc.Decoded(np.array([1, 2, sc.TOKEN_ROW_END, 3, sc.TOKEN_END]), -0.01)   # ragged rows
    unfinished = sc.Decoded(np.array([1, 2, sc.TOKEN_ROW_END]), -0.01)                 # no end
    copy = written(VERSIONS[1].apply(QUERY), -0.01)         # version 1's own input, written back
    not_a_copy = written(QUERY, -0.5)   # the query itself is not version 2's input: a candidate
    record = vote_on([broken, copy, not_a_copy, unfinished])
    assert [c.size for c in record["candidates"]] == [0, 0, QUERY.size, 0]
    np.testing.assert_array_equal(record["attempts"][0], VERSIONS[2].invert(QUERY))
    assert record["votes"] == [1] and len(record["attempts"]) == 1


def test_no_grid_from_any_version_gives_the_placeholder():
    copy = written(QUERY)
    record = vote_on([copy, sc.Decoded(np.array([sc.TOKEN_END]), 0.0)], versions=VERSIONS[:2])
    assert [a.tolist() for a in record["attempts"]] == [[[0]]] and record["votes"] == [0]
    assert record["logprobs"] == [-math.inf] and [c.shape for c in record["candidates"]] == [(0, 0), (0, 0)]
    assert sc.submission([record]) == {"t": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}


def test_the_log_probability_ranking_differs_from_votes_on_a_case_built_for_it():
    # ANSWER written by three versions, each fairly sure (-0.1 each, -0.3 summed); OTHER by one,
    # surer (-0.05). Votes and summed probabilities (2.71 vs 0.95) choose ANSWER; summed
    # log-probabilities (-0.3 vs -0.05) choose OTHER: every extra version lowers the sum.
    decoded = [written(VERSIONS[0].apply(OTHER), -0.05)] + [written(a.apply(ANSWER), -0.1) for a in VERSIONS[1:]]
    by = {rank: vote_on(decoded, rank) for rank in sc.CANDIDATE_RANKINGS}
    np.testing.assert_array_equal(by["votes"]["attempts"][0], ANSWER)
    np.testing.assert_array_equal(by["probability"]["attempts"][0], ANSWER)
    np.testing.assert_array_equal(by["logprob"]["attempts"][0], OTHER)
    assert by["logprob"]["votes"] == [1, 3] and by["logprob"]["logprobs"] == pytest.approx([-0.05, -0.3])
    with pytest.raises(ValueError, match="rank_by"):
        vote_on(decoded, "mean")


def test_records_score_and_submit_unchanged():
    split = one_task()
    decoded = [written(a.apply(OTHER)) for a in VERSIONS[:2]] + [written(VERSIONS[2].apply(ANSWER))]
    records = sc.voted_decodings(split, split.test, [VERSIONS[:3]], [decoded])
    assert sc.score_voted(records, split)["pass@2"] == 1.0 and sc.score_voted(records, split)["pass@1"] == 0.0
    assert sc.submission(records)["t"][0]["attempt_2"] == ANSWER.tolist()
    with pytest.raises(ValueError):            # one decoded output per version
        sc.voted_decodings(split, split.test, [VERSIONS], [decoded])


def test_pass_at_2_by_versions_votes_over_each_prefix_of_the_versions():
    # The first two versions write two wrong grids; the last two the answer: fewer versions miss it.
    split = one_task()
    wrong = np.array([[6, 6]], np.uint8)
    decoded = ([written(VERSIONS[0].apply(OTHER)), written(VERSIONS[1].apply(wrong))]
               + [written(a.apply(ANSWER)) for a in VERSIONS[2:]])
    by_versions = sc.pass_at_2_by_versions(split, split.test, [VERSIONS], [decoded], counts=(1, 2, 8))
    assert by_versions == {"1": 0.0, "2": 0.0, "4": 1.0}           # counts beyond the pool: all of it


def test_stopping_early_writes_versions_in_rounds_until_a_grid_has_enough_votes():
    # Two test inputs of one task, eight versions each: the first agrees at once, the second
    # writes a wrong grid in its first round and the answer only later.
    task = sc.Task("t", (sc.Pair(QUERY, ANSWER),), (sc.Pair(QUERY, ANSWER), sc.Pair(QUERY, ANSWER)))
    split = sc.Split("protocol", {"t": task}, [], [], [sc.Example("t", "test", 0), sc.Example("t", "test", 1)])
    versions = [VERSIONS * 2, VERSIONS * 2]
    sure = [written(a.apply(ANSWER)) for a in versions[0]]
    late = [written(a.apply(OTHER)) for a in versions[1][:2]] + [written(a.apply(ANSWER)) for a in versions[1][2:]]
    stats = sc.pass_at_2_stopping_early(split, split.test, versions, [sure, late], agree=(2, 3), step=2)
    assert stats["2"] == {"pass@2": 0.0, "share written": 4 / 16}   # OTHER agrees first in the second
    assert stats["3"] == {"pass@2": 1.0, "share written": (4 + 6) / 16}
