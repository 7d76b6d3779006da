"""Optimizer state per rank under FSDP2, and the communication of one optimizer step, for Transformer base and
big (`python scripts/bench_fsdp_memory.py`; the table is in docs/optimizer.md, "Under FSDP2").

No accelerator and no second process: the model is built on the meta device, ``fully_shard``-ed per layer as
``trainer.parallel=fsdp`` does (train/fsdp.py) over a fake process group of W ranks (torch's testing backend,
which runs collectives as no-ops), and Adafactor allocates its state as it does in a real run: the bytes are
those of rank 0's local state tensors (the largest shards when a dim does not divide). One step on meta
tensors, with ``torch.distributed.all_reduce`` counted, gives the optimizer's collectives and their bytes.
Adam keeps exp_avg and exp_avg_sq (4 B each) per local element and a 4-byte step per tensor (torch's rule; it
allocates lazily, so it is counted, not built). The gradient reduce-scatter is FSDP2's: every gradient element
once, in fp32 (MixedPrecisionPolicy(reduce_dtype=fp32)).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ..model import Transformer, TransformerConfig
from ..optim import Adafactor, optimizer_state_breakdown
from ..train import fsdp as F

ROOT = Path(__file__).resolve().parents[3]
VOCAB = 32000  # configs/data/wmt14.yaml


def _config(name: str) -> TransformerConfig:
    cfg = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
    base = OmegaConf.load(ROOT / "configs" / "model" / "transformer_base.yaml") if "defaults" in cfg else None
    merged = OmegaConf.merge(base, cfg) if base is not None else cfg
    args = {k: v for k, v in OmegaConf.to_container(merged).items() if k != "defaults"}
    return TransformerConfig(vocab_size=VOCAB, **args)


def _measure(name: str, world: int, **optim_kw) -> dict:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        with torch.device("meta"):
            model = Transformer(_config(name))
        n_params = model.num_parameters()
        F.shard(model, torch.device("cpu"))
        params = list(model.parameters())
        local = sum(p.to_local().numel() for p in params)
        opt = Adafactor(params, lr=1.0, **optim_kw)
        state = optimizer_state_breakdown(opt)
        for p in params:
            p.grad = torch.zeros_like(p)
        calls, nbytes = [0], [0]
        all_reduce = dist.all_reduce

        def counting(t, *args, **kwargs):
            calls[0] += 1
            nbytes[0] += t.numel() * t.element_size()
            return all_reduce(t, *args, **kwargs)

        dist.all_reduce = counting
        try:
            opt.step()
        finally:
            dist.all_reduce = all_reduce
        return dict(model=name, world=world, params=n_params, tensors=len(params), local_params=local,
                    adafactor=state["total"], adam=8 * local + 4 * len(params), all_reduces=calls[0],
                    all_reduce_bytes=nbytes[0], grad_rs_bytes=4 * n_params)  # fmt: skip
    finally:
        dist.destroy_process_group()


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, nargs="+", default=[1, 8, 64])
    args = ap.parse_args(argv)
    rows = []
    for name in ("transformer_base", "transformer_big"):
        for w in args.world:
            r = _measure(name, w)
            r["adafactor_m"] = _measure(name, w, beta1=0.9)["adafactor"]
            rows.append(r)
    print("| model | ranks | params | fp32 params / rank (MiB) | Adam state / rank (MiB) | Adafactor state / rank "
          "(MiB) | Adafactor β1=0.9 (MiB) | Adafactor / Adam | optimizer all-reduces / step | bytes all-reduced "
          "/ step (KiB) | gradient reduce-scatter / step (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model'].removeprefix('transformer_')} | {r['world']} | {r['params'] / 1e6:.1f}M | "
              f"{_mib(4 * r['local_params'])} | {_mib(r['adam'])} | {_mib(r['adafactor'])} | "
              f"{_mib(r['adafactor_m'])} | {r['adafactor'] / r['adam']:.3f} | {r['all_reduces']} | "
              f"{r['all_reduce_bytes'] / 1024:,.1f} | {_mib(r['grad_rs_bytes'])} |")
    assert all(math.isfinite(r["adafactor"]) for r in rows)
    return 0
