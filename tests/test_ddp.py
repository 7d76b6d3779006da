"""2-process gloo DistributedDataParallel equals one process on the same global batch.

The ranks get micro-batches with very different token counts, so a per-rank or per-micro-batch mean (instead
of the per-target-token mean of the whole update) would weight them differently and fail; SGD (not Adam)
makes a wrong overall gradient scale visible too.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adafactor_repro.model import Transformer, TransformerConfig
from adafactor_repro.train.distributed import cleanup
from adafactor_repro.train.step import train_step

V, UPDATES = 40, 3


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=V, d_model=32, n_heads=2, ffn_dim=64, encoder_layers=1,
                                         decoder_layers=1, dropout=0.0, attention_dropout=0.0,
                                         activation_dropout=0.0))


def _batch(g: torch.Generator, n: int, s: int, t: int) -> dict:
    """n sentences, source length <= s, target length <= t, right-padded with 0, eos 3, bos 2."""
    src = torch.zeros(n, s, dtype=torch.long)
    prev = torch.zeros(n, t, dtype=torch.long)
    tgt = torch.zeros(n, t, dtype=torch.long)
    for i in range(n):
        ls = int(torch.randint(1, s, (1,), generator=g))
        lt = int(torch.randint(1, t, (1,), generator=g))
        src[i, :ls] = torch.randint(4, V, (ls,), generator=g)
        src[i, ls] = 3
        ids = torch.randint(4, V, (lt,), generator=g)
        prev[i, 0], prev[i, 1:lt + 1] = 2, ids
        tgt[i, :lt], tgt[i, lt] = ids, 3
    return {"src_tokens": src, "prev_output_tokens": prev, "target": tgt, "ntokens": int(tgt.ne(0).sum()),
            "nsentences": n}


def _global_batches() -> list[list[list[dict]]]:
    """[update][rank] -> that rank's 2 micro-batches (update_freq 2); rank 0's are ~4x larger."""
    g = torch.Generator().manual_seed(1)
    return [[[_batch(g, 8, 9, 12), _batch(g, 6, 7, 10)], [_batch(g, 2, 5, 6), _batch(g, 1, 4, 5)]]
            for _ in range(UPDATES)]


def _run(model, micro_per_update, world_size=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for micro in micro_per_update:
        r = train_step(model, opt, micro, label_smoothing=0.1, pad_id=0, world_size=world_size)
        assert r.finite
        losses.append((r.loss_sum.item(), r.ntokens))
    return losses


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ok = False
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        losses = _run(model, [per_rank[rank] for per_rank in _global_batches()], world_size=2)
        if rank == 0:
            torch.save({"params": model.module.state_dict(), "losses": losses}, out)
        ok = True
    finally:
        cleanup(ok)  # a barrier first: see its docstring (a teardown deadlock)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    # spawn, not fork: a fork of a pytest process that already ran OpenMP and multiprocessing pools can
    # deadlock in the child (seen once in the full suite); spawn costs a few seconds of re-imports
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(out, weights_only=True)

    torch.set_num_threads(1)
    single = _model()
    # the same 4 micro-batches per update, accumulated in one process
    losses = _run(single, [per_rank[0] + per_rank[1] for per_rank in _global_batches()])
    for (la, na), (lb, nb) in zip(ddp["losses"], losses):
        assert na == nb
        assert la == pytest.approx(lb, rel=1e-5)
    initial = _model().state_dict()
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp["params"][k], v, rtol=1e-5, atol=1e-6)
    moved = sum(float((v - initial[k]).abs().sum()) for k, v in single.state_dict().items() if v.is_floating_point())
    assert moved > 1e-2  # the comparison is not between two untouched models


@pytest.mark.slow
def test_torchrun_two_process_training_run(tmp_path, toy_corpus):
    """The loop itself under torchrun (gloo): rank 0 alone writes, the checkpoint holds both ranks' RNG."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import TINY

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "scripts" / "train.py"), f"data.local_dir={toy_corpus}", f"data.root={tmp_path / 'data'}",
           *TINY, "trainer.max_update=10", "trainer.log_interval=5", "trainer.val_interval=10",
           "trainer.save_interval=10", "trainer.bleu_at_end=false", f"run_dir={run}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["update"] for x in lines] == [5, 10, 10]  # train 5, train 10, valid 10: written once
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank dropout streams
    assert state["sampler"]["num_replicas"] == 2
