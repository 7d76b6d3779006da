"""Process-group setup on a GPU node, on CPU: ranks map onto the visible cards (faked counts), and the process
group gets an explicit, generous timeout."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from adafactor_repro.train import distributed as D


@pytest.fixture
def fake_cuda(monkeypatch):
    def set_count(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


@pytest.mark.parametrize("visible, local_rank, expected", [
    (8, 5, 5),   # torchrun on an 8-GPU node: LOCAL_RANK-th card
    (1, 5, 0),   # SLURM binds one card per task: every task sees its own card as cuda:0
    (4, 6, 2),   # 8 ranks on 4 visible cards (two per card): wraps instead of failing
])
def test_each_rank_lands_on_a_visible_card(fake_cuda, visible, local_rank, expected):
    fake_cuda(visible)
    for pref in ("auto", "cuda"):
        assert D.resolve_device(pref, local_rank) == torch.device("cuda", expected)


def test_an_explicit_card_that_is_not_visible_is_refused(fake_cuda):
    fake_cuda(1)
    assert D.resolve_device("cuda:0", 3) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match=r"trainer\.device=cuda:2 but only 1 CUDA device"):
        D.resolve_device("cuda:2", 0)


def test_no_cuda_means_cpu_and_cuda_requested_without_it_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto", 3) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        D.resolve_device("cuda", 0)


def test_process_group_gets_an_explicit_generous_timeout(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: seen.update(kw))
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.device) == (1, 2, torch.device("cpu"))
    assert seen["backend"] == "gloo" and seen["timeout"] == timedelta(minutes=D.DEFAULT_TIMEOUT_MIN)
    assert seen["timeout"] > timedelta(minutes=10)  # NCCL's default, shorter than a slow rank may lag
    D.init_distributed("cpu", timeout_min=5)
    assert seen["timeout"] == timedelta(minutes=5)


@pytest.mark.parametrize("ok, expected", [(True, ["barrier", "sleep", "destroy"]), (False, ["destroy"])])
def test_teardown_meets_at_a_barrier_only_after_a_clean_run(monkeypatch, ok, expected):
    # a clean run: every rank reaches the barrier, then the GIL is released so gloo's workers can free what the
    # last object collectives held before the group's destructor joins them (a deadlock otherwise, 1 in ~40);
    # after an error a peer may never reach a barrier, so there is none
    calls = []
    monkeypatch.setattr(D.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(D.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(D.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(D.time, "sleep", lambda s: calls.append("sleep"))
    monkeypatch.setattr(D.dist, "destroy_process_group", lambda: calls.append("destroy"))
    D.cleanup(ok)
    assert calls == expected
