"""The gpu scales' batching: budgets on real tokens, a global batch split over ranks x micro-batches, and the
DataLoader pipeline (workers, resume mid-epoch) that yields what the in-process collate path yields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_batching import _lengths

from adafactor_repro.data import TokenBatchSampler, collate, update_budget
from adafactor_repro.data.loader import EpochBatches


class _Pairs:
    """A map-style dataset of synthetic pairs with the given lengths (what TranslationDataset returns)."""

    def __init__(self, src, tgt):
        self.src, self.tgt = src, tgt

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        return np.arange(4, 4 + self.src[i]) % 97 + 4, np.arange(5, 5 + self.tgt[i]) % 89 + 4


def test_real_budget_counts_real_tokens_and_packs_to_the_budget():
    src, tgt = _lengths(3000, seed=1)
    real = TokenBatchSampler(src, tgt, 4096, seed=1, budget="real")
    padded = TokenBatchSampler(src, tgt, 4096, seed=1)
    per_batch = []
    for b in range(real.num_batches):
        idx = real._order[real._starts[b]:real._starts[b + 1]]
        s, t = int((src[idx] + 1).sum()), int((tgt[idx] + 1).sum())
        assert s <= 4096 and t <= 4096
        per_batch.append(max(s, t))
    # every batch but the last is full to within one sentence of the budget
    assert min(per_batch[:-1]) > 4096 - 2 * 122
    # the padded budget leaves the real count short of 4,096 by the padding
    padded_real = [max(int((src[i] + 1).sum()), int((tgt[i] + 1).sum()))
                   for i in (padded._order[padded._starts[b]:padded._starts[b + 1]] for b in range(padded.num_batches - 1))]
    assert np.mean(padded_real) < np.mean(per_batch[:-1]) - 100
    assert real.num_batches < padded.num_batches
    assert real.state_dict()["budget"] == "real" and "budget" not in padded.state_dict()
    with pytest.raises(ValueError, match="budget='tokens'"):
        TokenBatchSampler(src, tgt, 4096, budget="tokens")


@pytest.mark.parametrize("tokens, max_tokens, world, expected", [
    (4096, 4096, 1, (4096, 1)), (4096, 4096, 2, (2048, 1)), (4096, 4096, 8, (512, 1)),
    (25000, 4096, 1, (3125, 8)), (25000, 4096, 8, (3125, 1)), (24576, 4096, 1, (4096, 6)),
    (8192, 3000, 2, (2048, 2)),
])
def test_global_batch_split_over_ranks_and_micro_batches(tokens, max_tokens, world, expected):
    per_rank, freq = update_budget(tokens, max_tokens, world)
    assert (per_rank, freq) == expected
    assert per_rank * freq * world == tokens and per_rank <= max_tokens


def test_a_global_batch_that_cannot_be_split_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"tokens_per_update=4096 cannot be split evenly over 3 rank\(s\).*"
                                         r"multiple of 3"):
        update_budget(4096, 4096, 3)
    with pytest.raises(ValueError, match="leaves 1 token"):
        update_budget(8, 4096, 8)


def _plain_batches(ds, sampler, n):
    out, epoch = [], sampler.state_dict()["epoch"]
    while len(out) < n:
        sampler.set_epoch(epoch)
        out += [(epoch, collate([ds[i] for i in idx])) for idx in sampler]
        epoch += 1
    return out[:n]


def _same(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for k, v in a[1].items():
        assert torch.equal(v, b[1][k]) if torch.is_tensor(v) else v == b[1][k], k


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_the_in_process_batches_across_epochs_and_leaves_the_global_rng_alone(workers):
    src, tgt = _lengths(200, seed=2)
    ds = _Pairs(src, tgt)
    n = len(TokenBatchSampler(src, tgt, 600, seed=4))
    want = _plain_batches(ds, TokenBatchSampler(src, tgt, 600, seed=4), 2 * n + 3)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    stream = EpochBatches(ds, TokenBatchSampler(src, tgt, 600, seed=4), pad_id=0, bos_id=2, eos_id=3,
                          num_workers=workers)
    got = [next(stream) for _ in range(len(want))]
    assert torch.equal(torch.get_rng_state(), rng_before)  # dropout streams unchanged by the pipeline
    for a, b in zip(got, want):
        _same(a, b)
    assert [e for e, _ in got].count(1) == n and got[-1][0] == 3


@pytest.mark.parametrize("cut", [1, 5, "end"])
def test_loader_resumes_mid_epoch_exactly_although_workers_read_ahead(cut):
    src, tgt = _lengths(200, seed=2)
    ds = _Pairs(src, tgt)
    n = len(TokenBatchSampler(src, tgt, 600, seed=4))
    cut = n if cut == "end" else cut
    want = _plain_batches(ds, TokenBatchSampler(src, tgt, 600, seed=4), cut + 6)
    first = EpochBatches(ds, TokenBatchSampler(src, tgt, 600, seed=4), pad_id=0, bos_id=2, eos_id=3, num_workers=2)
    for _ in range(cut):
        next(first)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, cut)
    if cut < n:  # the workers have been handed batches the loop has not used: those must come again
        assert first.sampler.state_dict()["position"] > cut
    sampler = TokenBatchSampler(src, tgt, 600, seed=4)
    sampler.load_state_dict(state)
    resumed = EpochBatches(ds, sampler, pad_id=0, bos_id=2, eos_id=3, num_workers=2)
    for a, b in zip([next(resumed) for _ in range(6)], want[cut:]):
        _same(a, b)


def test_a_global_batch_resumes_on_another_number_of_ranks():
    """Preempted on 1 GPU, resumed on 2: each rank's budget halves (tokens_per_update split anew), so the
    batches cannot be the same ones; the position moves to the same fraction of the epoch, with a warning."""
    src, tgt = _lengths(400, seed=5)
    one = TokenBatchSampler(src, tgt, 512, seed=2, budget="real")
    one.set_epoch(3)
    for _, _ in zip(range(len(one) // 2), one):
        pass
    state = one.state_dict()
    two = TokenBatchSampler(src, tgt, 256, seed=2, budget="real", num_replicas=2, rank=1)
    with pytest.raises(ValueError, match=r"max_tokens \(saved 512, now 256\)"):
        two.load_state_dict(state)
    with pytest.warns(UserWarning, match="num_replicas=1 and max_tokens=512, resumed with 2 and 256"):
        two.load_state_dict(state, rebatch=True)
    assert two.state_dict()["epoch"] == 3
    assert abs(two.state_dict()["position"] / len(two) - state["position"] / len(one)) < 0.05
