"""`make gpu-check`: optimizer step, training tokens/s and MFU, host syncs, a short real run with BLEU, on one
GPU in at most ~8 minutes; writes results/gpu/check.md. The logic is adafactor_repro.bench.gpu_check.

    python scripts/gpu_check.py            # on a GPU machine (refuses in one line without CUDA)
    python scripts/gpu_check.py --smoke    # the CPU smoke version the tests run -> results/gpu/check-smoke.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Python puts scripts/ first on sys.path; its make_report.py etc. must not shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "scripts"]
os.environ.setdefault("ADAFACTOR_REPRO_ROOT", str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    from adafactor_repro.bench import gpu_check as G

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="default results/gpu/check.md (check-smoke.md with --smoke)")
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "wmt14-en-de",
                    help="the WMT news sets (newstest2008-2014) for the short run")
    ap.add_argument("--smoke", "--tiny", dest="smoke", action="store_true",
                    help="tiny model and steps on CPU: a smoke run that says so in its title (tests)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile timings")
    ap.add_argument("--budget-s", type=float, help="skip sections that would start after this many seconds")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the short run (e.g. data.root=...)")
    args = ap.parse_args(argv)
    if not args.smoke and args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing measured. "
                  "`make gpu-check ARGS=--smoke` runs the CPU smoke version.", file=sys.stderr)
            return 2
    elif not args.smoke:
        print("gpu-check: --device cpu is the smoke run: pass --smoke", file=sys.stderr)
        return 2
    args.out = args.out or ROOT / "results" / "gpu" / ("check-smoke.md" if args.smoke else "check.md")
    s = G.tiny() if args.smoke else G.CheckSettings()
    s = replace(s, device=args.device if not args.smoke or args.device != "auto" else "cpu",
                data_dir=str(args.data_dir), compile=s.compile and not args.no_compile,
                budget_s=args.budget_s or s.budget_s, train_overrides=[*s.train_overrides, *args.overrides])
    if not args.smoke and not (args.data_dir / "newstest2013.en").is_file():
        raise SystemExit(f"{args.data_dir} lacks newstest2013.en: pass --data-dir <folder of the WMT news sets> "
                         "(../shared/data/wmt14-en-de in this project's layout)")
    print(G.run_check(s, args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
