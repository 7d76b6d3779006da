#!/usr/bin/env python
"""Rebuild results/<scale>/ from run directories: table2.{md,csv} (the paper's Table 2 cell by cell, seeds
aggregated, the paper's BLEU beside ours), runs.{md,csv} (every run), and the plots.

    python scripts/make_report.py --scale cpu                       # reads results/cpu/runs (the committed runs)
    python scripts/make_report.py --runs runs/cpu --out /tmp/table  # any folder of run directories
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import subprocess
import sys
from pathlib import Path

from adafactor_repro.files import atomic_write_text
from adafactor_repro.machine import git_commit, machine_header
from adafactor_repro.report import build_rows, find_runs, table2, write_table
from adafactor_repro.report.plots import plot_figure1, plot_optimizer_memory, plot_valid_loss

ROOT = Path(__file__).resolve().parents[1]


def rel(p: str | Path) -> str:
    """A path as the report prints it: relative to the repository when inside it (never this machine's
    absolute checkout path, which would differ on every clone)."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        return str(p)


def command_line(argv: list[str]) -> str:
    """The command that made the report, its path arguments repository-relative."""
    args = [rel(a) if a.startswith("/") else a for a in argv]
    return " ".join(shlex.quote(a) for a in ["python", "scripts/make_report.py", *args])


def uncommitted(runs: list, runs_root: Path) -> str:
    """The commit stamp names HEAD; say so when some of the tabulated runs are not in it yet (a sweep tabulates
    before its runs are committed), so the stamp never vouches for files it does not hold."""
    try:  # ls-files prints paths relative to its working directory: "<run>/summary.json"
        out = subprocess.run(["git", "ls-files", "--others", "--modified", "--exclude-standard", "--", "."],
                             cwd=runs_root, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""  # not a git checkout: the stamp says "unknown" already
    changed = {line.split("/", 1)[0] for line in out.splitlines()}
    dirty = [r for r in runs if r.path.name in changed]
    return f" + {len(dirty)} of these run directories not committed yet" if dirty else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="cpu", help="scale name: reads results/<scale>/runs, writes results/<scale>")
    ap.add_argument("--runs", type=Path, help="run directories root (default results/<scale>/runs)")
    ap.add_argument("--out", type=Path, help="output folder (default results/<scale>)")
    ap.add_argument("--note", default="", help="a line added to the header, e.g. 'partial: ...'")
    args = ap.parse_args(argv)
    out = args.out or ROOT / "results" / args.scale
    runs_root = args.runs or out / "runs"

    runs = find_runs(runs_root)
    if not runs:
        print(f"no run directories under {runs_root}: run `make reproduce SCALE={args.scale}` first",
              file=sys.stderr)
        return 1
    devices = sorted({str(r.summary.get("device")) for r in runs if r.summary.get("device")})
    where = rel(runs_root)
    common = [
        f"- command: `{command_line(list(argv or sys.argv[1:]))}` over {len(runs)} run directories in `{where}`",
        f"- commit: {git_commit(short=True) or 'unknown'}{uncommitted(runs, runs_root)};"
        f" tabulated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_header()}" + (f"; runs on: {', '.join(devices)}" if devices else ""),
        *([f"- note: {args.note}"] if args.note else []),
    ]
    summary = table2.summarize(runs)
    split = summary["split"]
    stems = {(r.config.get("data") or {}).get("splits", {}).get(split) for r in runs} - {None}
    t2_header = "\n".join([
        f"# The paper's Table 2, `{args.scale}` scale: every cell, the paper's BLEU beside ours",
        "",
        "- paper: Shazeer & Stern, arXiv:1804.04235v1, Table 2 (BLEU on newstest2013, WMT14 En-De, Transformer,"
        " 100k steps); our BLEU: sacreBLEU on the detokenized output of "
        f"`{split}` ({', '.join(sorted(stems)) or split}), beam and length penalty of configs/eval, signature in"
        " each run's bleu.json. The two BLEU columns are on different corpora and model sizes: compare verdicts"
        " (collapsed / trains), not numbers.",
        "- bleu_mean, bleu_sd over seeds (`seeds_bleu` lists them); opt_state_B_per_param: optimizer state bytes"
        " per model parameter (exact).",
        "- step, paper: the paper's step at d_model 512; step, ours (`step_run`): the step these runs took, from"
        " their resolved config (optim.lr x rsqrt(schedule.d_model) x s_t: the experiments write an absolute"
        " step as k x sqrt(512), so a narrower model takes a larger multiple of s_t, e.g. 0.2 s_t at d_model"
        " 128; the relative step rho_t has no width factor).",
        *common,
    ])
    wide = ("## Side by side (the paper's layout; **≠**: our collapse/train verdict differs from the paper's)\n\n"
            + table2.to_wide_markdown(summary["rows"]))
    atomic_write_text(out / "table2.md", t2_header + "\n\n" + wide + "\n## Every cell\n\n"
                      + table2.to_markdown(summary["rows"], summary["cells"]))
    atomic_write_text(out / "table2.csv", table2.to_csv(summary["rows"]))
    runs_header = "\n".join([
        f"# Every run, `{args.scale}` scale (one row per run directory, seeds apart)",
        "",
        "- BLEU: sacreBLEU on the detokenized output (signature in each run's bleu.json); `tok. BLEU` is the"
        " tokenized, compound-split score (tensor2tensor/fairseq style), labelled separately.",
        "- opt. state: bytes held in optimizer state (exact); B/param divides by the model's parameter count.",
        *common,
    ])
    md, cs = write_table(build_rows(runs), out, runs_header, stem="runs")
    made = [out / "table2.md", out / "table2.csv", md, cs]
    for fn, name in ((plot_valid_loss, "valid_loss.png"), (plot_figure1, "figure1_rms_update.png"),
                     (plot_optimizer_memory, "optimizer_memory.png")):
        p = fn(runs, out / name)
        if p is not None:
            made.append(p)
        else:
            print(f"skipped {name}: the runs log nothing to plot for it", file=sys.stderr)
    for p in made:
        print(rel(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
