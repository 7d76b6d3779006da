"""`make gpu-check`: what one GPU says about this project in at most ~8 minutes, written to results/gpu/check.md.

1. The optimizer step alone, timed by CUDA events (`bench.optim`): fused Adam, this Adafactor on each of its
   paths (Triton, eager), the peers; whether our step is free of host syncs and allocations.
2. `transformer_base` training at the paper's batch (~4,096 + 4,096 tokens) in bf16 autocast, with Adam and
   with Adafactor, eager and compiled: tokens/s, step time and MFU (model FLOPs / time / the card's bf16 peak).
3. Host-device syncs per update, as CUDA reports them (`torch.cuda.set_sync_debug_mode("warn")`).
4. A few hundred updates of `transformer_base` through the real loop (`train()`) on the WMT news dev sets
   (`data=wmt14_local_dev`: newstest2008-2012 train, newstest2013 valid), then BLEU on newstest2013.

5. The Triton kernels: the compile tier's registers, spills and vectorised loads for this GPU's target
   (bench/kernels.py), and the registers and spills the driver reports for the kernels the step launched.

Targets: >= 40% MFU in bf16 on an H100/H200; Adafactor's training step within 5% of Adam's; the Triton
Adafactor step (beta1 = 0) <= 0.85x fused Adam's (docs/optimizer.md, "Bytes moved per step"). Without CUDA the
script refuses; `--smoke` runs the same code with `tiny()` settings on CPU (tests/test_gpu_check.py), so the
check cannot rot where no GPU is at hand, and the report's title says it is a smoke run.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data import collate
from ..files import atomic_write_text
from ..machine import machine_header
from ..model import Transformer, TransformerConfig
from ..optim import Adafactor
from ..train import step as S
from ..train.perf import peak_flops
from .syncs import HostSyncCounter

TARGET_MFU = 0.40
TARGET_ADAFACTOR_OVER_ADAM = 1.05
TARGET_OPTIM_STEP_OVER_ADAM = 0.85  # the Triton Adafactor step against fused Adam's (the bytes-moved model)


@dataclass
class CheckSettings:
    """What the check runs; the defaults are the GPU check, `tiny()` its CPU smoke version."""

    device: str = "auto"
    model: dict = field(default_factory=dict)  # TransformerConfig overrides (transformer_base when empty)
    vocab_size: int = 32000
    tokens_per_batch: int = 4096               # per side: the paper's batch (section 8)
    sentence_len: int = 32                     # synthetic batches: sentences of ~WMT's mean length
    optim_steps: int = 30
    throughput_steps: int = 30
    warmup_steps: int = 5
    sync_updates: int = 5
    compile: bool = True                       # also time the compiled model
    train_overrides: list[str] = field(default_factory=lambda: [
        "scale=gpu", "data=wmt14_local_dev", "trainer.max_update=300", "trainer.log_interval=50",
        "trainer.val_interval=300", "trainer.save_interval=100000", "eval.splits=[valid]",
        "schedule.time_scale=100.0", "logger.mode=disabled"])
    data_dir: str | None = None                # data.local_dir for the training section
    run_dir: str | None = None                 # where the short run goes (default: beside the output)
    budget_s: float = 480.0                    # sections not started by then are skipped, and say so


def tiny(**kw) -> CheckSettings:
    """Seconds on a CPU: a 2-layer d=32 model, a 256-token batch, a handful of steps, no compile."""
    model = {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "encoder_layers": 1, "decoder_layers": 1}
    s = CheckSettings(device="cpu", model=model, vocab_size=64, tokens_per_batch=256, sentence_len=8,
                      optim_steps=3, throughput_steps=3, warmup_steps=1, sync_updates=2, compile=False,
                      budget_s=600.0,
                      train_overrides=["data=multi30k", "data.spm.vocab_size=48", "data.min_eval_pairs=1",
                                       "data.num_workers=1", *[f"model.{k}={v}" for k, v in model.items()],
                                       "trainer.max_tokens=256", "trainer.max_update=4", "trainer.log_interval=2",
                                       "trainer.val_interval=4", "trainer.save_interval=1000",
                                       "trainer.num_threads=1", "eval.splits=[valid]", "eval.beam=2",
                                       "eval.max_len_b=8", "logger.mode=disabled"])
    return replace(s, **kw)


# ---------------------------------------------------------------------------------------------- timing
class _Timer:
    """Elapsed milliseconds of a region: CUDA events on a GPU (what the device spent, launch gaps
    included), wall time on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def _model_config(s: CheckSettings) -> TransformerConfig:
    return TransformerConfig(vocab_size=s.vocab_size, **s.model)


def optimizer_steps(s: CheckSettings, device: torch.device) -> list[dict]:
    """bench.optim's side-by-side step timing (CUDA events on a GPU, with its host-sync and allocation checks)
    on this model's parameter set: fused Adam, this Adafactor on each of its paths, the peers."""
    from .optim import bench

    with torch.device("meta"):
        shapes = [tuple(p.shape) for p in Transformer(_model_config(s)).parameters()]
    return bench(device, steps=s.optim_steps, warmup=s.warmup_steps, cpu_steps=0, shapes=shapes)


# ---------------------------------------------------------------------------------------------- training
def synthetic_batch(s: CheckSettings, seed: int = 0) -> dict:
    """Sentence pairs of `sentence_len` tokens (eos included) filling `tokens_per_batch` on each side:
    the paper's batch without padding (real batches of sorted lengths pad a few %)."""
    rng = np.random.default_rng(seed)
    n = max(1, s.tokens_per_batch // s.sentence_len)
    ids = lambda: rng.integers(4, s.vocab_size, s.sentence_len - 1)  # noqa: E731
    return collate([(ids(), ids()) for _ in range(n)])


def _optimizer(name: str, model: torch.nn.Module, device: torch.device):
    if name == "adam":  # configs/optim/adam.yaml
        return torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-9, fused=device.type == "cuda")
    return Adafactor(model.parameters(), lr=1e-3)  # configs/optim/adafactor.yaml's paper defaults


def training_throughput(s: CheckSettings, device: torch.device) -> list[dict]:
    """Updates of one micro-batch at the paper's batch through train/step.py's train_step (bf16 autocast on
    CUDA), per optimizer, eager and (with `compile`) compiled."""
    batch = S.to_device(synthetic_batch(s), device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    peak = peak_flops(device)
    rows = []
    for compiled in ([False, True] if s.compile else [False]):
        torch.manual_seed(0)
        raw = Transformer(_model_config(s)).to(device)
        model = torch.compile(raw) if compiled else raw
        flops = raw.training_flops(tuple(batch["src_tokens"].shape), tuple(batch["target"].shape))
        tokens = batch["src_tokens"].numel() + batch["target"].numel()
        for opt_name in ("adam", "adafactor"):
            opt = _optimizer(opt_name, raw, device)
            for _ in range(s.warmup_steps):  # compile, autotune, allocator warm-up
                S.train_step(model, opt, [batch], label_smoothing=0.1, autocast_dtype=autocast)
            with _Timer(device) as t:
                for _ in range(s.throughput_steps):
                    S.train_step(model, opt, [batch], label_smoothing=0.1, autocast_dtype=autocast)
            step_s = t.ms / 1e3 / s.throughput_steps
            rows.append({"optimizer": opt_name, "compiled": compiled, "step_ms": step_s * 1e3,
                         "tokens_per_s": tokens / step_s, "mfu": flops / step_s / peak if peak else None})
    return rows


def syncs_per_update(s: CheckSettings, device: torch.device) -> list[dict]:
    """Host syncs inside train_step per update: CUDA's own report on a GPU (set_sync_debug_mode("warn")
    warns at every synchronising call), the dispatcher-level HostSyncCounter on CPU."""
    batch = S.to_device(synthetic_batch(s), device)
    rows = []
    for opt_name in ("adam", "adafactor"):
        torch.manual_seed(0)
        model = Transformer(_model_config(s)).to(device)
        opt = _optimizer(opt_name, model, device)
        autocast = torch.bfloat16 if device.type == "cuda" else None
        S.train_step(model, opt, [batch], label_smoothing=0.1, autocast_dtype=autocast)  # state built
        counts = []
        for _ in range(s.sync_updates):
            if device.type == "cuda":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        S.train_step(model, opt, [batch], label_smoothing=0.1, autocast_dtype=autocast)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                counts.append(sum("synchroniz" in str(w.message) for w in caught))
            else:
                with HostSyncCounter(ignore=("torch/optim/",)) as c:
                    S.train_step(model, opt, [batch], label_smoothing=0.1)
                counts.append(c.total)
        rows.append({"optimizer": opt_name, "syncs": statistics.median(counts),
                     "how": "cuda sync debug mode" if device.type == "cuda" else "HostSyncCounter (CPU)"})
    return rows


def short_training(s: CheckSettings, out_dir: Path) -> dict:
    """The real loop, end to end: data build, `train_overrides`, BLEU of the valid split at the end."""
    import os

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from ..config import config_root
    from ..train import train

    run_dir = Path(s.run_dir or out_dir / "check_run")
    overrides = [*s.train_overrides, f"run_dir={run_dir}", "experiments=afx_adafactor"]
    if s.data_dir:
        overrides.append(f"data.local_dir={Path(s.data_dir).resolve()}")
    os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(config_root().parent))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_root()), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=overrides)
    HydraConfig.instance().set_config(cfg)
    t0 = time.perf_counter()
    summary = train(cfg)
    return {"overrides": overrides, "run_dir": str(run_dir), "seconds": time.perf_counter() - t0, **summary}


# ---------------------------------------------------------------------------------------------- kernels
def kernel_figures(device: torch.device) -> tuple[list[tuple], str]:
    """The Triton kernels the earlier sections launched, with the registers and spills their loaded cubins
    report (CUDA only), and the compile tier's table (a child process: it needs TRITON_INTERPRET unset and a
    stub driver, which must not replace this process's real one)."""
    import os
    import subprocess
    import sys

    from ..optim import _triton

    launched = []
    if device.type == "cuda" and _triton.available() and not _triton.interpreting():
        for fn in _triton.kernels():
            for cache in getattr(fn, "device_caches", {}).values():
                for k in cache[0].values():  # device_caches[device][0]: the compiled kernels of that device
                    k._init_handles()  # loads the cubin; n_regs and n_spills come from the driver
                    launched.append((fn.fn.__name__, f"num_warps={k.metadata.num_warps}, hash {k.hash[:8]}",
                                     k.n_regs, k.n_spills))  # fmt: skip
    root = Path(__file__).resolve().parents[3]
    script = root / "scripts" / "compile_kernels.py"
    if not script.is_file():
        return launched, "(scripts/compile_kernels.py not found: run from a checkout)"
    import tempfile

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as d:  # not results/gpu/kernels.md: that one is `make kernels`'
        out = Path(d) / "kernels.md"
        p = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
        if not out.is_file():
            return launched, f"compile tier failed (exit {p.returncode}): {(p.stderr or p.stdout)[-500:]}"
        table = "\n".join(line for line in out.read_text().splitlines() if line.startswith("|"))
    status = "" if p.returncode == 0 else f"\n\n**The compile tier reported problems (exit {p.returncode}).**"
    return launched, table + status


# ---------------------------------------------------------------------------------------------- report
def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def run_check(s: CheckSettings, out: Path, say=print) -> str:
    """Run the sections within the time budget; write `out` (markdown) and return its text."""
    from ..train.distributed import resolve_device

    device = resolve_device(s.device)
    t_start = time.perf_counter()
    out = Path(out)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    title = "# GPU check" if device.type == "cuda" else "# GPU check: SMOKE RUN ON CPU (tiny settings, no GPU figures)"
    lines = [title, "", f"Machine: {machine_header(torch.get_num_threads())}; device: {gpu or device}.",
             f"Command: `make gpu-check` (scripts/gpu_check.py). Model: {_model_config(s)}.", ""]
    if device.type != "cuda":
        lines += ["**No GPU: a smoke run on CPU with tiny settings. These figures say nothing about a GPU.**", ""]
    results: dict[str, object] = {}

    def section(title: str, fn):
        if time.perf_counter() - t_start > s.budget_s:
            lines.extend([f"## {title}", "", f"Skipped: the {s.budget_s:.0f} s budget was spent.", ""])
            return None
        say(f"gpu-check: {title} ...")
        t0 = time.perf_counter()
        value = fn()
        lines.extend([f"## {title}", ""])
        results[title] = value
        return value, time.perf_counter() - t0

    r = section("Optimizer step", lambda: optimizer_steps(s, device))
    if r:
        rows, sec = r
        lines += [f"Median of {s.optim_steps} round-robin steps on the model's parameters "
                  f"({'CUDA events' if gpu else 'wall time'}; adafactor_repro.bench.optim).", "",
                  "| optimizer | step (ms) | vs fused Adam | state (MB) |"
                  + (" peak transient (MB) | host-sync free | allocations per step |" if gpu else ""),
                  "|---|---:|---:|---:|" + ("---:|---|---:|" if gpu else "")]
        for x in rows:
            line = f"| {x['name']} | {x['ms']:.3f} | {_fmt(x['ratio'])} | {x['state'] / 1e6:.2f} |"
            if gpu:
                free = "" if x.get("sync_free") is None else ("yes" if x["sync_free"] else "NO")
                line += f" {x['peak'] / 1e6:.1f} | {free} | {_fmt(x.get('allocations'), 'd')} |"
            lines.append(line)
        tri = next((x for x in rows if "beta1=0, Triton" in x["name"]), None)
        if tri and tri.get("ratio"):
            ok = tri["ratio"] <= TARGET_OPTIM_STEP_OVER_ADAM
            lines += ["", f"- Triton Adafactor (beta1=0) / fused Adam step time {tri['ratio']:.3f} (target <= "
                      f"{TARGET_OPTIM_STEP_OVER_ADAM}: {'met' if ok else 'NOT met'})"]
        lines += ["", f"({sec:.0f} s)", ""]

    r = section("Training throughput at the paper's batch", lambda: training_throughput(s, device))
    if r:
        rows, sec = r
        lines += [f"One micro-batch of {s.tokens_per_batch} + {s.tokens_per_batch} tokens "
                  f"({s.tokens_per_batch // s.sentence_len} pairs of {s.sentence_len}), "
                  f"{'bf16 autocast' if gpu else 'fp32'}, {s.throughput_steps} timed updates after "
                  f"{s.warmup_steps}. MFU = model FLOPs (Transformer.training_flops) / time / bf16 peak.", "",
                  "| optimizer | compiled | update (ms) | tokens/s (src+tgt) | MFU |", "|---|---|---:|---:|---:|"]
        lines += [f"| {x['optimizer']} | {'yes' if x['compiled'] else 'no'} | {x['step_ms']:.2f} | "
                  f"{x['tokens_per_s']:,.0f} | {_fmt(x['mfu'], '.1%')} |" for x in rows]
        verdicts = []
        for compiled in sorted({x["compiled"] for x in rows}):
            by = {x["optimizer"]: x for x in rows if x["compiled"] == compiled}
            ratio = by["adafactor"]["step_ms"] / by["adam"]["step_ms"]
            mfu = max((x["mfu"] or 0.0) for x in by.values()) if gpu else None
            verdicts.append(
                f"- {'compiled' if compiled else 'eager'}: Adafactor / Adam update time {ratio:.3f} (target <= "
                f"{TARGET_ADAFACTOR_OVER_ADAM}: {'met' if ratio <= TARGET_ADAFACTOR_OVER_ADAM else 'NOT met'})"
                + (f"; best MFU {mfu:.1%} (target >= {TARGET_MFU:.0%}: {'met' if mfu >= TARGET_MFU else 'NOT met'})"
                   if mfu is not None and peak_flops(device) else ""))
        lines += ["", *verdicts, "", f"({sec:.0f} s)", ""]

    r = section("Host syncs per update", lambda: syncs_per_update(s, device))
    if r:
        rows, sec = r
        lines += ["Inside train_step (forward, backward, norm, finite check, optimizer step); the loop adds "
                  "one read per log interval.", "", "| optimizer | syncs per update | counted by |", "|---|---:|---|"]
        lines += [f"| {x['optimizer']} | {x['syncs']:g} | {x['how']} |" for x in rows]
        lines += ["", f"({sec:.0f} s)", ""]

    r = section("A short run of the real loop, BLEU on newstest2013", lambda: short_training(s, out.parent))
    if r:
        summ, sec = r
        bleu = (summ.get("bleu") or {}).get("valid")
        lines += [f"`train()` with {' '.join(summ['overrides'])}", "",
                  "| updates | status | valid loss | BLEU (valid) | tokens/s | wall (s) |", "|---:|---|---:|---:|---:|---:|",
                  f"| {summ.get('updates')} | {summ.get('status')} | {_fmt(summ.get('valid_loss'), '.3f')} | "
                  f"{_fmt(bleu)} | {_fmt(summ.get('tokens_per_s'), ',.0f')} | {summ['seconds']:.0f} |", ""]

    r = section("Triton kernels", lambda: kernel_figures(device))
    if r:
        (launched, tier), sec = r
        lines += ["Registers and spills the driver reports for the kernels this check launched "
                  "(`CompiledKernel.n_regs`, `n_spills`):", "",
                  "| kernel | specialisation | registers/thread | spills |", "|---|---|---:|---:|"]
        lines += [f"| {k} | {spec} | {regs} | {sp} |" for k, spec, regs, sp in launched] or ["| (none launched) | | | |"]  # fmt: skip
        lines += ["", "The compile tier for every target (`make kernels`, no GPU needed):", "", tier, "",
                  f"({sec:.0f} s)", ""]

    lines += [f"Total: {time.perf_counter() - t_start:.0f} s.", ""]
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return text
