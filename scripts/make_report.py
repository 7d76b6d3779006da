#!/usr/bin/env python
"""Rebuild results/<scale>/table2.{md,csv} and the plots from the run directories under runs/<scale>/.

    python scripts/make_report.py --scale cpu
    python scripts/make_report.py --runs runs/cpu --out results/cpu --note "partial: 3 of 30 runs"
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

from adafactor_repro.machine import git_commit, machine_header
from adafactor_repro.report import build_rows, find_runs, write_table
from adafactor_repro.report.plots import plot_optimizer_memory, plot_rms_update, plot_valid_loss

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="cpu", help="scale name: reads runs/<scale>, writes results/<scale>")
    ap.add_argument("--runs", type=Path, help="run directories root (default runs/<scale>)")
    ap.add_argument("--out", type=Path, help="output folder (default results/<scale>)")
    ap.add_argument("--note", default="", help="a line added to the header, e.g. 'partial: ...'")
    args = ap.parse_args(argv)
    runs_root = args.runs or ROOT / "runs" / args.scale
    out = args.out or ROOT / "results" / args.scale

    runs = find_runs(runs_root)
    if not runs:
        print(f"no run directories under {runs_root}: run `make reproduce SCALE={args.scale}` first",
              file=sys.stderr)
        return 1
    devices = sorted({str(r.summary.get("device")) for r in runs if r.summary.get("device")})
    header = "\n".join([
        f"# Optimizer comparison (paper's Table 2), `{args.scale}` scale",
        "",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', 'scripts/make_report.py', *(argv or sys.argv[1:])])}`"
        f" over {len(runs)} run directories in `{runs_root.relative_to(ROOT) if runs_root.is_relative_to(ROOT) else runs_root}`",
        f"- commit: {git_commit(short=True) or 'unknown'}; tabulated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_header()}" + (f"; runs on: {', '.join(devices)}" if devices else ""),
        "- BLEU: sacreBLEU on the detokenized output (signature in each run's bleu.json); `tok. BLEU` is the"
        " tokenized, compound-split score (tensor2tensor/fairseq style), labelled separately.",
        "- opt. state: bytes held in optimizer state (exact); B/param divides by the model's parameter count.",
        *([f"- note: {args.note}"] if args.note else []),
    ])
    rows = build_rows(runs)
    md, cs = write_table(rows, out, header)
    made = [md, cs]
    for fn, name in ((plot_valid_loss, "valid_loss.png"), (plot_rms_update, "rms_update.png"),
                     (plot_optimizer_memory, "optimizer_memory.png")):
        p = fn(runs, out / name)
        if p is not None:
            made.append(p)
        else:
            print(f"skipped {name}: the runs log nothing to plot for it", file=sys.stderr)
    for p in made:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
