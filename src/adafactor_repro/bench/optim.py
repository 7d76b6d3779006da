"""Optimizer step benchmark (`make bench-optim`): step time and state memory on the parameter set of this
project's Transformer base (shared 32k vocabulary, 197 tensors, 60.5M parameters), for this package's Adafactor
(each implementation) and its peers, measured side by side in one process, with ratios against fused
``torch.optim.Adam``. Writes results/bench_optim.md (results/bench_optim_cuda.md with --device cuda).

    python scripts/bench_optim.py                  # CPU: the C kernel and the eager path
    python scripts/bench_optim.py --device cuda    # CUDA events: the Triton kernels, the eager path, peers

All optimizers step in turn (round-robin) on one shared parameter set with fixed gradients, so load from other
processes falls on all of them alike. On CUDA each step is timed with CUDA events, and the Adafactor rows are
also checked for host syncs (``torch.cuda.set_sync_debug_mode("error")``) and for allocations after the first
step. :func:`run_cuda_bench` is the function a GPU check calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from ..config import config_root
from ..files import atomic_write_text
from ..machine import machine_header
from ..optim import Adafactor, optimizer_state_bytes

ROOT = config_root().parent
REFERENCE = "torch.optim.Adam fused"


def transformer_base_shapes(vocab: int = 32000) -> list[tuple[int, ...]]:
    """The parameter shapes of this project's Transformer base (configs/model/transformer_base.yaml: fused
    q/k/v and k/v projections, pre-norm, one shared embedding/softmax matrix), built on the meta device."""
    from ..model import Transformer, TransformerConfig

    with torch.device("meta"):
        model = Transformer(TransformerConfig(vocab_size=vocab))
    return [tuple(p.shape) for p in model.parameters()]


def make_params(shapes, device, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).to(device))
        p.grad = (torch.randn(s, generator=g) * 1e-3).to(device)
        params.append(p)
    return params


def candidates(device: torch.device, only: list[str] | None = None) -> dict:
    """name -> constructor(params). The fused Adafactor is the C kernel on CPU and the Triton kernels on CUDA."""
    fused = "C kernel" if device.type == "cpu" else "Triton"
    c = {
        f"Adafactor (this, beta1=0, {fused})": lambda ps: Adafactor(ps, lr=1e-2, fused=True),
        f"Adafactor (this, beta1=0.9, {fused})": lambda ps: Adafactor(ps, lr=1e-2, beta1=0.9, fused=True),
        "Adafactor (this, beta1=0, eager)": lambda ps: Adafactor(ps, lr=1e-2, fused=False),
        REFERENCE: lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
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
    if only:
        c = {k: v for k, v in c.items() if any(s in k for s in only)}
    return c


def cpu_time_1thread(opts: dict, steps: int) -> dict[str, float]:
    """Median CPU time (ms) of the calling thread per step with torch (and the kernel) on one thread. On a
    shared machine wall time measures the neighbours as much as the step; one thread's CPU time measures the
    work (memory stalls included) and is not inflated by threads waiting for each other to be scheduled."""
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


def _time_steps(opts: dict, device: torch.device, steps: int, warmup: int) -> dict[str, list[float]]:
    """Round-robin step times in ms: CUDA events on a GPU (one synchronisation per round, after it), wall
    time around a synchronous step on CPU."""
    times = {name: [] for name in opts}
    for r in range(warmup + steps):
        events = []
        for name, opt in opts.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                opt.step()
                end.record()
                events.append((name, start, end))
            else:
                t0 = time.perf_counter()
                opt.step()
                if r >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            if r >= warmup:
                for name, start, end in events:
                    times[name].append(start.elapsed_time(end))
    return times


def _cuda_checks(opt, device: torch.device) -> dict:
    """Peak transient memory of one step, and for this package's Adafactor whether the step is free of host
    syncs and of allocations."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    allocs = torch.cuda.memory_stats(device).get("allocation.all.allocated", 0)
    torch.cuda.reset_peak_memory_stats(device)
    ours = isinstance(opt, Adafactor)
    sync_free = None
    if ours:
        torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
        sync_free = True if ours else None
    except RuntimeError:
        sync_free = False
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    new_allocs = torch.cuda.memory_stats(device).get("allocation.all.allocated", 0) - allocs
    return dict(peak=torch.cuda.max_memory_allocated(device) - base, sync_free=sync_free,
                allocations=new_allocs if ours else None)  # fmt: skip


def bench(device: str | torch.device = "cpu", steps: int = 15, warmup: int = 3, cpu_steps: int = 5,
          vocab: int = 32000, only: list[str] | None = None, shapes: list | None = None) -> list[dict]:  # fmt: skip
    """Time every candidate's step side by side on ``shapes`` (default: the Transformer base's); one row per
    optimizer: name, ms (median), ratio (against fused Adam, None without it), cpu_ms / cpu_ratio (CPU only),
    state (bytes), bytes_per_param, tensors, params, and on CUDA peak (transient bytes of one step),
    sync_free and allocations (this package's Adafactor only)."""
    device = torch.device(device)
    shapes = shapes or transformer_base_shapes(vocab)
    params = make_params(shapes, device)
    n = sum(p.numel() for p in params)
    opts = {name: make(params) for name, make in candidates(device, only).items()}
    times = _time_steps(opts, device, steps, warmup)
    cpu_ms = cpu_time_1thread(opts, cpu_steps) if device.type == "cpu" and cpu_steps > 0 else {}
    rows = []
    for name, opt in opts.items():
        state = optimizer_state_bytes(opt)
        row = dict(name=name, ms=statistics.median(times[name]), state=state, bytes_per_param=state / n,
                   tensors=len(shapes), params=n, cpu_ms=cpu_ms.get(name))  # fmt: skip
        if device.type == "cuda":
            row.update(_cuda_checks(opt, device))
        rows.append(row)
    ref = next((r for r in rows if r["name"] == REFERENCE), None)
    for r in rows:
        r["ratio"] = r["ms"] / ref["ms"] if ref else None
        r["cpu_ratio"] = r["cpu_ms"] / ref["cpu_ms"] if ref and r["cpu_ms"] is not None else None
    return rows


def run_cuda_bench(steps: int = 30, warmup: int = 5, vocab: int = 32000, only: list[str] | None = None) -> list[dict]:
    """The CUDA benchmark as rows (see :func:`bench`): what a GPU check calls. Raises RuntimeError without a
    GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("run_cuda_bench: torch.cuda.is_available() is False; run it on a machine with a GPU")
    return bench("cuda", steps=steps, warmup=warmup, cpu_steps=0, vocab=vocab, only=only)


def markdown(rows: list[dict], device: torch.device, command: str, steps: int, warmup: int, cpu_steps: int,
             load: tuple) -> str:  # fmt: skip
    r0 = rows[0]
    cpu_cols = all(r["cpu_ms"] is not None for r in rows)
    cuda = device.type == "cuda"
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if cuda else ""
    busy = max((x for x in load if x is not None), default=0) > (os.cpu_count() or 1)
    lines = [
        f"# Optimizer step: Transformer base parameter set ({r0['params'] / 1e6:.1f}M parameters, "
        f"{r0['tensors']} tensors)",
        "",
        f"Machine: {machine_header(torch.get_num_threads())}{gpu}  ",
        f"Command: `{command}`  ",
        f"1-minute load average before / after: {load[0]:.2f} / {load[1]:.2f}"
        + (" (above the core count: other processes competed for the cores, so wall times are noisy)  "
           if busy else "  "),  # fmt: skip
        f"Median of {steps} timed steps after {warmup} warm-up steps; gradients fixed; the optimizers step in "
        "turn (round-robin, one shared parameter set), so the ratios compare steps made side by side"
        + (" (CUDA events)." if cuda else ".")
        + (f" `1-thread CPU`: median over {cpu_steps} more round-robin steps with torch on one thread, timed "
           "by the thread's CPU time, which a busy shared machine does not inflate." if cpu_cols else ""),  # fmt: skip
        "",
        "| optimizer | step (ms) | vs fused Adam |"
        + (" 1-thread CPU (ms) | vs fused Adam |" if cpu_cols else "")
        + " state (MB) | bytes/param |"
        + (" peak transient (MB) | host-sync free | allocations per step |" if cuda else ""),
        "|---|---:|---:|" + ("---:|---:|" if cpu_cols else "") + "---:|---:|" + ("---:|---|---:|" if cuda else ""),
    ]
    fmt = lambda x, f: "n/a" if x is None else format(x, f)
    for r in rows:
        line = f"| {r['name']} | {r['ms']:.2f} | {fmt(r['ratio'], '.2f')} |"
        if cpu_cols:
            line += f" {r['cpu_ms']:.1f} | {fmt(r['cpu_ratio'], '.2f')} |"
        line += f" {r['state'] / 1e6:.2f} | {r['bytes_per_param']:.4f} |"
        if cuda:
            sf = "" if r["sync_free"] is None else ("yes" if r["sync_free"] else "NO")
            line += f" {r['peak'] / 1e6:.1f} | {sf} | {fmt(r['allocations'], 'd')} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per optimizer (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel builds, tables)")
    ap.add_argument("--cpu-steps", type=int, default=5,
                    help="CPU only: more steps, one-thread round-robin timed by thread CPU time (0: skip)")  # fmt: skip
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--only", nargs="*", help="substrings of the optimizer names to run (default all)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown output (default results/bench_optim.md, or results/bench_optim_<device>.md)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = bench(device, args.steps, args.warmup, args.cpu_steps, args.vocab, args.only)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python scripts/bench_optim.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, device, command.strip(), args.steps, args.warmup, args.cpu_steps, (load_before, load_after))
    print(text)
    name = "bench_optim.md" if device.type == "cpu" else f"bench_optim_{device.type}.md"
    out = args.out or ROOT / "results" / name
    atomic_write_text(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
