#!/usr/bin/env python
"""Optimizer step time and state memory on the parameter set of a Transformer base (shared 32k vocabulary).

Times ``step()`` (median over --steps after --warmup untimed steps, gradients fixed) for this package's
Adafactor and its peers, measured side by side in one process, and writes a markdown table with ratios
against fused ``torch.optim.Adam`` to --out (default results/bench_optim.md; results/bench_optim_<device>.md
for a non-CPU device).

    make bench-optim                          # CPU, the defaults
    make bench-optim ARGS='--device cuda'     # adds peak transient memory and a host-sync check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Python puts this script's folder first on sys.path, where scripts/tabulate.py would shadow the `tabulate`
# package that torch._dynamo imports (imported lazily by torch.optim.Adafactor / transformers).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch  # noqa: E402

from adafactor_repro.machine import cpu_name  # noqa: E402
from adafactor_repro.optim import Adafactor, optimizer_state_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def transformer_base_shapes(vocab: int = 32000, d: int = 512, ffn: int = 2048, layers: int = 6) -> list[tuple]:
    """Parameter shapes of a pre-norm Transformer base with one shared embedding/softmax matrix: separate
    q/k/v/out projections with biases (fairseq layout), two layer norms per encoder layer, three per decoder
    layer, and a final layer norm on each side. 60.5M parameters with a 32k vocabulary."""
    attn = [(d, d), (d,)] * 4
    ffn_ = [(ffn, d), (ffn,), (d, ffn), (d,)]
    ln = [(d,), (d,)]
    enc = attn + ffn_ + ln * 2
    dec = attn + attn + ffn_ + ln * 3
    return [(vocab, d)] + enc * layers + dec * layers + ln * 2


def make_params(shapes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).to(device))
        p.grad = (torch.randn(s, generator=g) * 1e-3).to(device)
        params.append(p)
    return params


def candidates(args):
    c = {
        "Adafactor (this, beta1=0)": lambda ps: Adafactor(ps, lr=1e-2),
        "Adafactor (this, beta1=0.9)": lambda ps: Adafactor(ps, lr=1e-2, beta1=0.9),
        "Adafactor (this, beta1=0, eager)": lambda ps: Adafactor(ps, lr=1e-2, fused=False),
        "torch.optim.Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "torch.optim.Adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "torch.optim.Adafactor foreach": lambda ps: torch.optim.Adafactor(ps, lr=1e-2, foreach=True),
    }
    try:
        from transformers.optimization import Adafactor as HFAdafactor

        c["transformers Adafactor"] = lambda ps: HFAdafactor(
            ps, lr=1e-2, scale_parameter=True, relative_step=False, warmup_init=False
        )
    except ImportError:
        print("transformers not installed: its Adafactor is left out", file=sys.stderr)
    if args.only:
        c = {k: v for k, v in c.items() if any(s in k for s in args.only)}
    return c


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_time_1thread(opts: dict, steps: int) -> dict:
    """Median CPU time of the calling thread per step with torch (and the kernel) on one thread. On a shared
    machine wall time measures the neighbours as much as the step; one thread's CPU time measures the work
    (memory stalls included) and is not inflated by threads waiting for each other to be scheduled."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = {name: [] for name in opts}
        for r in range(steps + 1):
            for name, opt in opts.items():
                t0 = time.thread_time()
                opt.step()
                if r > 0:
                    times[name].append(time.thread_time() - t0)
    finally:
        torch.set_num_threads(before)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def bench_all(makers: dict, shapes, device, steps: int, warmup: int, cpu_steps: int) -> dict:
    """Round-robin: every round steps each optimizer once, so load from other processes on a shared machine
    falls on all of them alike. All optimizers share one parameter set and one set of gradients (the values
    drift, which does not change the work of a step)."""
    params = make_params(shapes, device)
    n = sum(p.numel() for p in params)
    opts = {name: make(params) for name, make in makers.items()}
    times = {name: [] for name in opts}
    for r in range(warmup + steps):
        for name, opt in opts.items():
            sync(device)
            t0 = time.perf_counter()
            opt.step()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    cpu_ms = cpu_time_1thread(opts, cpu_steps) if device.type == "cpu" and cpu_steps > 0 else {}
    rows = {}
    for name, opt in opts.items():
        state = optimizer_state_bytes(opt)
        rows[name] = dict(ms=statistics.median(times[name]) * 1e3, state=state, bpp=state / n, n=n, peak=None,
                          sync_free=None, cpu_ms=cpu_ms.get(name))  # fmt: skip
        if device.type == "cuda":
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            if isinstance(opt, Adafactor):
                torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
                rows[name]["sync_free"] = True
            except RuntimeError:
                rows[name]["sync_free"] = False
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize(device)
            rows[name]["peak"] = torch.cuda.max_memory_allocated(device) - base
            if not isinstance(opt, Adafactor):
                rows[name]["sync_free"] = None
    return rows


def machine_info(device) -> str:
    info = f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        info += f", GPU {torch.cuda.get_device_name(device)}"
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per optimizer (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (state allocation, kernel build)")
    ap.add_argument("--cpu-steps", type=int, default=5,
                    help="CPU only: steps of a second, one-thread round-robin timed by thread CPU time (0: skip)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--only", nargs="*", help="substrings of the optimizer names to run (default all)")
    ap.add_argument("--out", type=Path, default=None, help="markdown output (default results/bench_optim.md)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    shapes = transformer_base_shapes(args.vocab)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = bench_all(candidates(args), shapes, device, args.steps, args.warmup, args.cpu_steps)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu_cols = all(r["cpu_ms"] is not None for r in rows.values())
    for name, r in rows.items():
        print(f"{name:36s} {r['ms']:8.2f} ms  {r['bpp']:.4f} B/param", flush=True)
    ref = rows.get("torch.optim.Adam fused")
    n = next(iter(rows.values()))["n"]
    cmd = "python scripts/bench_optim.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Optimizer step: Transformer base parameter set ({n / 1e6:.1f}M parameters, {len(shapes)} tensors, "
        f"vocab {args.vocab})",
        "",
        f"Machine: {machine_info(device)}  ",
        f"Command: `{cmd.strip()}`  ",
        f"1-minute load average before / after: {load_before:.2f} / {load_after:.2f}"
        + (" (above the core count: other processes competed for the cores, so wall times are noisy)  "
           if max(load_before, load_after) > (os.cpu_count() or 1) else "  "),
        f"Median of {args.steps} timed steps after {args.warmup} warm-up steps; gradients fixed; the optimizers "
        "step in turn (round-robin, one shared parameter set), so the ratios compare steps made side by side. "
        f"`1-thread CPU`: median over {args.cpu_steps} more round-robin steps with torch on one thread, timed by "
        "the thread's CPU time, which a busy shared machine does not inflate.",
        "",
        "| optimizer | step (ms) | vs fused Adam |"
        + (" 1-thread CPU (ms) | vs fused Adam |" if cpu_cols else "")
        + " state (MB) | bytes/param |"
        + (" peak transient (MB) | host-sync free |" if device.type == "cuda" else ""),
        "|---|---:|---:|" + ("---:|---:|" if cpu_cols else "") + "---:|---:|" + ("---:|---|" if device.type == "cuda" else ""),
    ]
    for name, r in rows.items():
        ratio = f"{r['ms'] / ref['ms']:.2f}" if ref else "n/a"
        line = f"| {name} | {r['ms']:.1f} | {ratio} |"
        if cpu_cols:
            cratio = f"{r['cpu_ms'] / ref['cpu_ms']:.2f}" if ref else "n/a"
            line += f" {r['cpu_ms']:.1f} | {cratio} |"
        line += f" {r['state'] / 1e6:.2f} | {r['bpp']:.4f} |"
        if device.type == "cuda":
            sf = "" if r["sync_free"] is None else ("yes" if r["sync_free"] else "NO")
            line += f" {r['peak'] / 1e6:.1f} | {sf} |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or ROOT / "results" / ("bench_optim.md" if device.type == "cpu" else f"bench_optim_{device.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".md.tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
