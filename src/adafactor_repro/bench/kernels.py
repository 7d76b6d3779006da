"""The compile tier: every Triton kernel the optimizer launches, compiled for real GPUs without one.

The interpreter (TRITON_INTERPRET=1, what the CPU tests run) never type-checks a kernel, so a kernel can pass
every interpreted test and still fail to compile (issue 16: `phase1` mixed a [BLOCK] and a [ROWS, COLS] value
across a runtime branch). Here the optimizer itself runs a step through its real launch path
(``Adafactor.step`` -> ``_triton.Plan.step`` -> ``JITFunction.run``) with a stub driver that names a target and
no device, and triton's own ``jit_cache_hook`` records what would be compiled (the kernel, its signature as
triton's binder specialised it, its constexprs and alignment attributes) and skips the launch. Each recorded
specialisation is then compiled by ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
for sm_80 / sm_90 / sm_100; the PyPI triton wheel ships ptxas, and ``ptxas -v`` on the kernel's own PTX gives
registers and spills (``CompiledKernel.n_regs`` needs a driver to load the cubin).

Must run with TRITON_INTERPRET unset (triton picks interpreted or compiled ``jit`` at import): use
``scripts/compile_kernels.py`` (``make kernels``), which writes results/gpu/kernels.md.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

TARGETS = (80, 90, 100)  # A100, H100/H200, B200
NAMES = {80: "sm_80 (A100)", 90: "sm_90 (H100/H200)", 100: "sm_100 (B200)"}


@dataclass
class Launch:
    """One specialisation the optimizer would compile: what triton's jit_cache_hook sees."""

    fn: object  # the JITFunction
    signature: dict
    constants: dict
    attrs: dict
    options: dict
    scenario: str

    @property
    def name(self) -> str:
        return self.fn.fn.__name__

    def key(self) -> tuple:
        return (self.name, tuple(self.signature.items()), tuple(sorted(self.constants.items())),
                repr(sorted(self.attrs.items())), tuple(sorted(self.options.items())))  # fmt: skip

    def label(self) -> str:
        """The constexprs by name (the specialisation a reader needs to tell rows apart)."""
        names = list(self.signature)
        parts = [f"{names[p[0]]}={v}" for p, v in sorted(self.constants.items()) if len(p) == 1]
        return ", ".join(parts)


class _StubDriver:
    """Just enough of triton's driver for JITFunction.run to bind and specialise arguments for `target`."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def is_active(self):
        return True


def transformer_shapes(big: bool = False, distinct: bool = True) -> list[tuple[int, ...]]:
    """The parameter shapes of Transformer base (or big), from the model code on the meta device: each shape
    once (what the compile tier needs), or one per parameter tensor (the bytes-moved model)."""
    from ..model import Transformer, TransformerConfig

    kw = dict(d_model=1024, n_heads=16, ffn_dim=4096) if big else {}
    with torch.device("meta"):
        model = Transformer(TransformerConfig(vocab_size=32000, **kw))
    shapes = [tuple(p.shape) for p in model.parameters()]
    return sorted(set(shapes), key=lambda s: (len(s), s)) if distinct else shapes


# Shapes no alignment hint may assume: odd row lengths, an odd vector, a 3-D tensor.
ODD_SHAPES = [(37, 45), (2, 19, 21), (301,), (5, 300)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def scenarios() -> list[tuple[str, list, dict, tuple]]:
    """(name, shapes, optimizer kwargs, (param dtype, grad dtype)): the switch grid on every dtype pair, on
    Transformer base's own shapes, on unaligned shapes and on a single tensor (triton specialises an int
    argument equal to 1)."""
    base = transformer_shapes()
    out = []
    switches = [
        dict(beta1=0.0, factored=True, clip_threshold=1.0, scale_parameter=True),  # the paper's Adafactor
        dict(beta1=0.9, factored=False, clip_threshold=None, scale_parameter=False, weight_decay=0.1),
        dict(beta1=0.0, factored="row", stochastic_rounding=True),
        dict(beta1=0.9, factored="col", stochastic_rounding=True, weight_decay=0.01),
    ]
    for pd in DTYPES:
        for gd in DTYPES:
            for i, sw in enumerate(switches):
                shapes, kw = (base, sw) if i == 0 else (ODD_SHAPES, dict(sw, min_dim_size_to_factor=4))
                out.append((f"{pd}/{gd} {'base' if i == 0 else 'odd'} {kw}", shapes, kw, (pd, gd)))
    out.append(("fp32/fp32 one tensor", [(512, 512)], dict(beta1=0.0), ("fp32", "fp32")))
    return out


def record_launches(target_cc: int = 90) -> list[Launch]:
    """Run one optimizer step per scenario through the real launch path and record every distinct
    specialisation it would compile (nothing is compiled or launched here)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    from ..optim import Adafactor, _triton

    if _triton.interpreting():
        raise RuntimeError("the compile tier needs TRITON_INTERPRET unset (run scripts/compile_kernels.py)")
    seen: dict[tuple, Launch] = {}
    current = [""]

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        opts = {k: compile[k] for k in ("num_warps", "num_stages", "num_ctas")}
        ln = Launch(fn.jit_function, dict(compile["signature"]), dict(compile["constants"]),
                    dict(compile["configs"][0]), opts, current[0])  # fmt: skip
        seen.setdefault(ln.key(), ln)
        return True  # skip compile and launch

    old_hook, old_driver = knobs.runtime.jit_cache_hook, driver._active
    driver.set_active(_StubDriver(GPUTarget("cuda", target_cc, 32)))
    knobs.runtime.jit_cache_hook = hook
    try:
        # CPU tensors stand in for CUDA ones: the optimizer sends them to the Triton path only when it believes
        # it is interpreting; the tables, dtypes and data pointers it builds are the ones a GPU would get.
        with mock.patch.object(_triton, "interpreting", lambda: True):
            for name, shapes, sw, (pd, gd) in scenarios():
                current[0] = name
                params = [torch.nn.Parameter(torch.empty(s, dtype=DTYPES[pd]).normal_()) for s in shapes]
                for p in params:
                    if pd != gd:
                        p.grad_dtype = None  # torch refuses a gradient of another dtype unless told
                    p.grad = torch.empty(p.shape, dtype=DTYPES[gd]).normal_()
                Adafactor(params, lr=1e-3, fused="triton", **sw).step()
    finally:
        knobs.runtime.jit_cache_hook = old_hook
        driver._active = old_driver  # reset_active() would create the real driver, which needs a GPU
    assert triton.__version__
    return list(seen.values())


@dataclass
class Figures:
    kernel: str
    label: str
    cc: int
    regs: int | None = None
    spill_bytes: int | None = None
    shared: int | None = None
    ld_v4: int = 0
    ld_v2: int = 0
    ld_scalar: int = 0
    st_vec: int = 0
    st_scalar: int = 0
    seconds: float = 0.0
    error: str | None = None


_LD = re.compile(r"\bld\.global[\w.:]*")
_ST = re.compile(r"\bst\.global[\w.:]*")
_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_stats(ptx: str, cc: int) -> tuple[int, int]:
    """Registers and spill bytes (stores + loads) of the kernel's PTX, from the ptxas triton itself uses, with
    its flags (triton reads these from the loaded cubin, which needs a driver)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        p = subprocess.run([get_ptxas(cc).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                            f"--gpu-name={sm_arch_from_capability(cc)}", str(src), "-o", str(Path(d) / "k.o")],
                           capture_output=True, text=True, check=True)  # fmt: skip
    log = p.stdout + p.stderr
    regs = max(int(r) for r in _PTXAS.findall(log))
    spills = sum(int(a) + int(b) for a, b in _SPILL.findall(log))
    return regs, spills


def compile_one(ln: Launch, cc: int) -> Figures:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    f = Figures(ln.name, ln.label(), cc)
    t0 = time.perf_counter()
    try:
        k = triton.compile(ASTSource(ln.fn, ln.signature, ln.constants, ln.attrs),
                           target=GPUTarget("cuda", cc, 32), options=ln.options)  # fmt: skip
        ptx = k.asm["ptx"]
        f.regs, f.spill_bytes = _ptxas_stats(ptx, cc)
        f.shared = int(k.metadata.shared)
        for op in _LD.findall(ptx):
            if ".v4" in op:
                f.ld_v4 += 1
            elif ".v2" in op:
                f.ld_v2 += 1
            else:
                f.ld_scalar += 1
        for op in _ST.findall(ptx):
            if ".v2" in op or ".v4" in op:
                f.st_vec += 1
            else:
                f.st_scalar += 1
    except Exception as e:  # noqa: BLE001 - every failure is reported, and fails the tier
        f.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        msg = str(e)
        m = re.search(r"(Mismatched type[^\n]*|error[^\n]*)", msg)
        if m:
            f.error += f" [{m.group(1)[:300]}]"
    f.seconds = time.perf_counter() - t0
    return f


def run_tier(targets=TARGETS) -> tuple[list[Launch], list[Figures], float]:
    t0 = time.perf_counter()
    launches = record_launches()
    figs = [compile_one(ln, cc) for ln in sorted(launches, key=lambda x: (x.name, x.label())) for cc in targets]
    return launches, figs, time.perf_counter() - t0


def problems(figs: list[Figures]) -> list[str]:
    out = []
    for f in figs:
        if f.error:
            out.append(f"{f.kernel} [{f.label}] sm_{f.cc}: {f.error}")
        elif f.spill_bytes:
            out.append(f"{f.kernel} [{f.label}] sm_{f.cc}: {f.spill_bytes} bytes of register spills")
    return out


def report(launches: list[Launch], figs: list[Figures]) -> str:
    """results/gpu/kernels.md: deterministic for a given triton and kernel source (no timings), so the test
    can tell whether the committed file is current."""
    import triton

    lines = [
        "# Triton kernels compiled for real GPUs (no GPU needed)",
        "",
        f"triton {triton.__version__} (the version torch's CUDA wheel requires: see `requirements/torch-triton.txt`); "
        "regenerate with `make kernels` (scripts/compile_kernels.py). Every specialisation the optimizer launches, "
        "recorded through its own launch path (Adafactor.step -> Plan.step -> JITFunction.run, a stub driver and "
        "triton's jit_cache_hook), compiled with `triton.compile(ASTSource, GPUTarget)`; registers and spills "
        "from `ptxas -v` on the kernel's PTX. Loads: global load instructions in the PTX, 128-bit (v4), 64-bit "
        "(v2) and scalar; a masked tail or a gather through the tables stays scalar.",
        "",
        "| kernel | specialisation | target | registers/thread | spill bytes | shared bytes | loads v4 / v2 / scalar | vectorised | stores vec / scalar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        if f.error:
            lines.append(f"| {f.kernel} | {f.label} | {NAMES[f.cc]} | FAILED: {f.error} | | | | | |")
            continue
        vec = "yes" if f.ld_v4 or f.ld_v2 else "no"
        lines.append(f"| {f.kernel} | {f.label} | {NAMES[f.cc]} | {f.regs} | {f.spill_bytes} | {f.shared} | "
                     f"{f.ld_v4} / {f.ld_v2} / {f.ld_scalar} | {vec} | {f.st_vec} / {f.st_scalar} |")
    lines += ["", f"{len(launches)} specialisations x {len(TARGETS)} targets; scenarios that produced them:", ""]
    for ln in sorted(launches, key=lambda x: (x.name, x.label())):
        lines.append(f"- `{ln.name}` [{ln.label()}]: first seen in `{ln.scenario}`; "
                     f"num_warps={ln.options['num_warps']}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- bytes moved
HBM_TBPS = {"H100 SXM (3.35 TB/s)": 3.35e12, "H200 (4.8 TB/s)": 4.8e12}


def bytes_per_step(shapes: list[tuple[int, ...]], tile_elems: int = 1 << 16, min_dim: int = 128) -> dict:
    """HBM bytes of one optimizer step over `shapes`, fp32 parameters and gradients (autocast keeps fp32
    masters), for this Adafactor's Triton kernels (beta1 = 0, factored, Section 9's proposal) and for torch's
    fused Adam (one pass: read X, G, M, V, write X, M, V = 28 bytes a parameter).

    Adafactor, per element of a factored matrix: phase 1 reads G and X (X for RMS(X), Section 8), phase 3 reads
    G and X and writes X: 20 bytes. Phase 1's second sweep over G (D_j = sum_i G_ij^2 / R_i, Alg. 4) re-reads
    the ROWS x m block it has just read, from L2 (counted 0; `adafactor_worst` counts it: 24). Per matrix of n
    rows, m columns and k tiles: column partials written and read (16 k m), the C row read by every tile of
    phase 3 (4 k m), R read and written and read again (12 n), C read and written (8 m). Unfactored tensors:
    G and X twice, V read twice and written once, X written: 32 bytes an element."""
    n_params = adam = ada = worst = 0
    for s in shapes:
        numel = 1
        for d in s:
            numel *= d
        n_params += numel
        adam += 28 * numel
        if len(s) >= 2 and min(s[-2:]) >= min_dim:
            n, m = s[-2], s[-1]
            nb = numel // (n * m)
            k = -(-n // max(8, -(-max(1, tile_elems // m) // 8) * 8))
            extra = nb * (16 * k * m + 4 * k * m + 12 * n + 8 * m)
            ada += 20 * numel + extra
            worst += 24 * numel + extra
        else:
            ada += 32 * numel
            worst += 32 * numel
    return dict(params=n_params, adam=adam, adafactor=ada, adafactor_worst=worst)


def bytes_table() -> str:
    """The table of docs/optimizer.md, "Bytes moved per step" (tests/test_kernels_compile.py keeps it current)."""
    lines = ["| model | parameters | fused Adam (MB) | Adafactor (MB) | bytes/param Adam / Adafactor | "
             + " | ".join(f"roofline {g}: Adam / Adafactor (us)" for g in HBM_TBPS) + " | predicted ratio |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(HBM_TBPS) + "---:|"]
    for name, big in (("Transformer base", False), ("Transformer big", True)):
        b = bytes_per_step(transformer_shapes(big, distinct=False))
        roof = " | ".join(f"{b['adam'] / bw * 1e6:.0f} / {b['adafactor'] / bw * 1e6:.0f}" for bw in HBM_TBPS.values())
        lines.append(f"| {name} | {b['params'] / 1e6:.1f}M | {b['adam'] / 1e6:.0f} | {b['adafactor'] / 1e6:.0f} | "
                     f"{b['adam'] / b['params']:.1f} / {b['adafactor'] / b['params']:.1f} | {roof} | "
                     f"{b['adafactor'] / b['adam']:.3f} ({b['adafactor_worst'] / b['adam']:.3f} if phase 1 "
                     "re-reads G from HBM) |")
    return "\n".join(lines)

