"""TokenBatchSampler and collate: budget, coverage, determinism, exact resume, DDP sharding."""

import numpy as np
import pytest
import torch

from adafactor_repro.data import TokenBatchSampler, collate, padding_efficiency

torch.manual_seed(0)


def _lengths(n=700, seed=0):
    rng = np.random.default_rng(seed)
    src = np.clip(rng.lognormal(3.0, 0.6, n).astype(np.int64), 1, 120)
    tgt = np.clip((src * rng.uniform(0.7, 1.4, n)).astype(np.int64), 1, 120)
    return src, tgt


def _samples(idx, src, tgt):
    return [(np.arange(4, 4 + src[i]), np.arange(4, 4 + tgt[i])) for i in idx]


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


@pytest.mark.parametrize("max_tokens", [256, 1000, 4096])
def test_every_batch_within_budget_as_collated(max_tokens):
    src, tgt = _lengths()
    sampler = TokenBatchSampler(src, tgt, max_tokens, seed=3)
    for batch in _epoch(sampler, 1):
        out = collate(_samples(batch, src, tgt))
        assert out["src_tokens"].numel() <= max_tokens
        assert out["prev_output_tokens"].numel() <= max_tokens
        assert out["target"].numel() <= max_tokens


def test_each_pair_exactly_once_per_epoch():
    src, tgt = _lengths()
    sampler = TokenBatchSampler(src, tgt, 512, seed=1)
    for epoch in (1, 2):
        seen = np.concatenate(_epoch(sampler, epoch))
        assert len(seen) == len(src)
        assert np.array_equal(np.sort(seen), np.arange(len(src)))
        assert len(_epoch(sampler, epoch + 10)) == len(sampler)


def test_same_seed_same_batches_and_epochs_reshuffle():
    src, tgt = _lengths()
    a = TokenBatchSampler(src, tgt, 512, seed=7)
    b = TokenBatchSampler(src, tgt, 512, seed=7)
    c = TokenBatchSampler(src, tgt, 512, seed=8)
    assert _epoch(a, 1) == _epoch(b, 1)
    assert _epoch(a, 1) != _epoch(a, 2)  # order reshuffled per epoch
    assert _epoch(a, 1) != _epoch(c, 1)
    # Without shuffle the batches come in length order (validation).
    v = TokenBatchSampler(src, tgt, 512, shuffle=False)
    longest = [max(max(src[i], tgt[i]) for i in b) for b in _epoch(v, 1)]
    assert longest == sorted(longest)
    assert _epoch(v, 1) == _epoch(v, 5)


def test_length_bucketing_keeps_padding_low():
    src, tgt = _lengths(5000)
    sampler = TokenBatchSampler(src, tgt, 4096)
    eff = padding_efficiency(sampler, src, tgt)
    # The same batch sizes with random membership: what the sampler's length bucketing saves.
    sizes = [len(b) for b in _epoch(sampler, 1)]
    perm = np.random.default_rng(0).permutation(len(src))
    real = padded = 0
    for b in np.split(perm, np.cumsum(sizes)[:-1]):
        real += int((src[b] + 1).sum() + (tgt[b] + 1).sum())
        padded += len(b) * int(src[b].max() + 1 + tgt[b].max() + 1)
    assert eff > 0.85 and eff > real / padded + 0.15


@pytest.mark.parametrize("stop_at", [0, 1, 9, "end"])
def test_resume_mid_epoch_gives_the_remaining_batches(stop_at):
    src, tgt = _lengths()
    full = _epoch(TokenBatchSampler(src, tgt, 512, seed=5), 3)
    run = TokenBatchSampler(src, tgt, 512, seed=5)
    run.set_epoch(3)
    k = len(full) if stop_at == "end" else stop_at
    it = iter(run)
    got = [next(it) for _ in range(k)]
    state = run.state_dict()
    assert state["epoch"] == 3 and state["position"] == k
    resumed = TokenBatchSampler(src, tgt, 512, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # what the loop does at the top of an epoch: keeps the position
    rest = [list(b) for b in resumed]
    if stop_at == "end":
        assert got == full and rest == full  # iterating an exhausted epoch again restarts it
    else:
        assert got + rest == full
    # The next epoch after a resume is the same as an uninterrupted run's.
    assert _epoch(resumed, 4) == _epoch(TokenBatchSampler(src, tgt, 512, seed=5), 4)


def test_state_dict_position_override_and_mismatch_errors():
    src, tgt = _lengths()
    s = TokenBatchSampler(src, tgt, 512)
    assert s.state_dict(position=4)["position"] == 4
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBatchSampler(src, tgt, 1024).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="seed"):
        TokenBatchSampler(src, tgt, 512, seed=9).load_state_dict(s.state_dict())
    # Another GPU count cannot resume exactly: same fraction of the epoch, with a warning.
    half = TokenBatchSampler(src, tgt, 512, num_replicas=2)
    with pytest.warns(UserWarning, match="num_replicas=1"):
        half.load_state_dict(s.state_dict(position=len(s) // 2))
    assert abs(half.position - len(half) // 2) <= 1


@pytest.mark.parametrize("replicas", [2, 3, 4, 7])
def test_ddp_shards_disjoint_covering_equal(replicas):
    src, tgt = _lengths(333)
    shards = []
    for rank in range(replicas):
        s = TokenBatchSampler(src, tgt, 700, seed=2, num_replicas=replicas, rank=rank)
        batches = _epoch(s, 2)
        assert len(batches) == len(s)
        shards.append(batches)
        for b in batches:
            out = collate(_samples(b, src, tgt))
            assert max(out["src_tokens"].numel(), out["target"].numel()) <= 700
    assert len({len(sh) for sh in shards}) == 1  # equal step counts per rank
    flat = [i for sh in shards for b in sh for i in b]
    assert sorted(flat) == list(range(len(src)))  # disjoint and covering


def test_bad_sampler_inputs():
    with pytest.raises(ValueError, match="do not fit max_tokens=50"):
        TokenBatchSampler(np.array([10, 60]), np.array([10, 10]), 50)
    with pytest.raises(ValueError, match="must be 1-d and equal"):
        TokenBatchSampler(np.array([1, 2]), np.array([1]), 50)
    with pytest.raises(ValueError, match="fewer than num_replicas"):
        TokenBatchSampler(np.array([3]), np.array([3]), 50, num_replicas=2, rank=1)


def test_collate_layout():
    out = collate([(np.array([5, 6, 7]), np.array([8, 9])), (np.array([10]), np.array([11, 12, 13]))])
    assert out["src_tokens"].tolist() == [[5, 6, 7, 3], [10, 3, 0, 0]]
    assert out["prev_output_tokens"].tolist() == [[2, 8, 9, 0], [2, 11, 12, 13]]
    assert out["target"].tolist() == [[8, 9, 3, 0], [11, 12, 13, 3]]
    assert out["ntokens"] == 7 and out["nsentences"] == 2
    assert out["src_tokens"].dtype == torch.long
    with pytest.raises(ValueError, match="empty"):
        collate([])
