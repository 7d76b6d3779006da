"""`make kernels`: compile every Triton kernel the optimizer launches for sm_80 / sm_90 / sm_100 without a GPU
and write results/gpu/kernels.md (registers, spills, shared memory, vectorised loads). Exit status 1 on a
compile error or a register spill. The logic is adafactor_repro.bench.kernels.

    python scripts/compile_kernels.py                 # writes results/gpu/kernels.md
    python scripts/compile_kernels.py --out /tmp/k.md # elsewhere (the test does this)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "scripts"]
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(ROOT))
# Compiled, never interpreted: triton chooses when it is imported, and tests/conftest.py sets it to 1.
os.environ.pop("TRITON_INTERPRET", None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu" / "kernels.md")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from adafactor_repro.bench import kernels as K
    from adafactor_repro.files import atomic_write_text

    launches, figs, seconds = K.run_tier()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, K.report(launches, figs))
    for f in figs:
        print(f"{f.kernel:8s} sm_{f.cc:<3d} regs {f.regs} spills {f.spill_bytes} shared {f.shared} "
              f"ld v4/v2/scalar {f.ld_v4}/{f.ld_v2}/{f.ld_scalar}  {f.seconds:.1f}s  [{f.label}]"
              + (f"  FAILED {f.error}" if f.error else ""))
    print(f"{len(launches)} specialisations x {len(K.TARGETS)} targets in {seconds:.1f}s; wrote {args.out}")
    bad = K.problems(figs)
    for b in bad:
        print("PROBLEM:", b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
