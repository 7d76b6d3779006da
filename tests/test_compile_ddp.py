"""torch.compile wraps the DDP module (not the reverse), so DDP's gradient buckets stay visible to the compiler
(its DDPOptimizer splits the graph at them) and all-reduce overlaps backward; the step still finds DDP
through the compiled wrapper for no_sync."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
from test_ddp import _batch, _model
from torch.nn.parallel import DistributedDataParallel as DDP

from adafactor_repro.train import distributed as D
from adafactor_repro.train import loop as L
from adafactor_repro.train import step as S


@pytest.fixture
def one_rank_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_trainer_compiles_the_ddp_module(make_cfg, monkeypatch, one_rank_group):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or m)
    monkeypatch.setattr(L.D, "init_distributed", lambda *a, **k: D.DistInfo(0, 2, 0, torch.device("cpu")))
    monkeypatch.setattr(L.D, "cleanup", lambda ok=True: None)
    trainer = L.Trainer(make_cfg("trainer.compile=true"))
    try:
        trainer.setup()
    finally:
        trainer.close()
    assert len(compiled) == 1 and isinstance(compiled[0], DDP) and trainer.model is compiled[0]


@pytest.mark.slow
def test_compiled_ddp_module_steps_like_the_plain_model(one_rank_group):
    g = torch.Generator().manual_seed(3)
    micro = [_batch(g, 4, 7, 8), _batch(g, 3, 6, 9)]
    plain, wrapped = _model(), _model()
    model = torch.compile(DDP(wrapped), backend="eager")  # dynamo tracing through DDP, no code generation
    seen = []
    real_no_sync = DDP.no_sync
    DDP.no_sync = lambda self: seen.append(1) or real_no_sync(self)
    try:
        for m in (plain, model):
            opt = torch.optim.SGD(m.parameters(), lr=0.5)
            r = S.train_step(m, opt, micro, label_smoothing=0.1)
            assert r.finite
    finally:
        DDP.no_sync = real_no_sync
    assert seen == [1]  # the first of the two micro-batches skipped the all-reduce
    for (k, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
