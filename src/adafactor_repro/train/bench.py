"""The training loop's per-update overhead over a plain forward+backward+step (issue target: <= 5%).

Called by scripts/bench_train.py (`loop_overhead_row`). Both sides run on the same model, optimizer and
batches, alternating which goes first; the plain side is bench_train's `ours, masked` step (output_mask,
F.cross_entropy with label smoothing, backward, Adam, zero_grad). The loop side is what train() does per
update: collate the samples, move them to the device, `train_step` (token-count all-reduce, label-smoothed
loss + NLL, backward, global grad norm, the finite check with its host sync, optimizer and schedule step),
the model-FLOPs count and the device-side metric accumulation.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..data import collate
from ..model import Transformer, TransformerConfig
from .step import to_device, train_step

SMALL = dict(d_model=256, n_heads=4, ffn_dim=1024, encoder_layers=3, decoder_layers=3)  # transformer_small


def _samples(n_batches: int, max_tokens: int, vocab: int, seed: int = 1) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Batches of (src ids, tgt ids) with log-normal lengths around 28 (newstest-like), within max_tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        length = int(np.clip(np.exp(rng.normal(np.log(28), 0.5)), 3, 120))
        n = max(1, max_tokens // (length + 3))
        b = []
        for _ in range(n):
            s = int(np.clip(length + rng.integers(-2, 3), 2, length + 2))
            t = int(np.clip(length + rng.integers(-2, 3), 2, length + 2))
            b.append((rng.integers(4, vocab, s), rng.integers(4, vocab, t)))
        out.append(b)
    return out


def bench_loop_overhead(args) -> str:
    """A markdown line: loop tokens/s, plain tokens/s and the overhead, on transformer_small (V = 8000)."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=8000, **SMALL)
    model = Transformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    device = torch.device("cpu")
    warmup, steps = int(getattr(args, "warmup", 2)), int(getattr(args, "train_steps", 6))
    batches = _samples(warmup + steps, int(getattr(args, "max_tokens", 2048)), cfg.vocab_size)
    pre = [collate(b) for b in batches]  # the plain side gets its tensors for free

    def plain(i):
        b = pre[i]
        keep = b["target"].ne(0)
        logits = model(b["src_tokens"], b["prev_output_tokens"], output_mask=keep)
        loss = F.cross_entropy(logits.float(), b["target"][keep], label_smoothing=0.1, reduction="sum") / keep.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    win = {"loss": torch.zeros(()), "nll": torch.zeros(()), "gnorm": torch.zeros(())}

    def loop(i):
        b = collate(batches[i])
        model.training_flops(tuple(b["src_tokens"].shape), tuple(b["target"].shape))
        r = train_step(model, opt, [to_device(b, device)], label_smoothing=0.1, scheduler=sched)
        win["loss"] += r.loss_sum / r.ntokens
        win["nll"] += r.nll_sum / r.ntokens
        win["gnorm"] += r.gnorm

    model.train()
    elapsed = {"plain": 0.0, "loop": 0.0}
    runners = [("plain", plain), ("loop", loop)]
    tokens = 0
    for i in range(len(batches)):
        for name, fn in (runners if i % 2 == 0 else runners[::-1]):
            t0 = time.perf_counter()
            fn(i)
            if i >= warmup:
                elapsed[name] += time.perf_counter() - t0
        if i >= warmup:
            tokens += int(pre[i]["ntokens"])
    rate = {k: tokens / v for k, v in elapsed.items()}
    overhead = elapsed["loop"] / elapsed["plain"] - 1.0
    return (f"- Loop overhead (transformer_small, {steps} timed updates, target tokens/s): loop "
            f"{rate['loop']:,.0f} vs plain masked step {rate['plain']:,.0f} -> **{overhead * 100:+.1f}%** "
            f"(target <= 5%; measured by adafactor_repro.train.bench_loop_overhead, steps alternate).")
