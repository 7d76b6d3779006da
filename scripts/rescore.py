#!/usr/bin/env python
"""Recompute every published BLEU and chrF from the committed hypotheses and check them against each run's
bleu.json and the tables (`make rescore`; adafactor_repro.evaluate.rescore says how, and how to do it by hand
with sacreBLEU's command line).

    python scripts/rescore.py --scale cpu          # results/cpu/runs against results/cpu/table2.csv, table3.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adafactor_repro.evaluate.rescore import check_table, rescore_runs
from adafactor_repro.report import find_runs
from adafactor_repro.report.table2 import run_seed
from adafactor_repro.report.table3 import optimizer_of

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="cpu", help="reads results/<scale>/runs and its tables")
    ap.add_argument("--results", type=Path, help="results folder (default results/<scale>)")
    args = ap.parse_args(argv)
    results = args.results or ROOT / "results" / args.scale
    runs = find_runs(results / "runs")
    if not runs:
        print(f"rescore: no run directories under {results / 'runs'}", file=sys.stderr)
        return 1
    by_name = {r.path.name: r for r in runs}
    try:
        rescored = rescore_runs(runs)
    except FileNotFoundError as e:
        print(f"rescore: {e}", file=sys.stderr)
        return 1

    def cell_of(name: str) -> tuple[str, str]:
        r = by_name[name]
        if r.config.get("table3_scheme"):
            return str(r.config["table3_scheme"]), optimizer_of(r)
        return str(r.config.get("paper_row")), "warmup" if r.warmup else "no_warmup"

    problems = [f"{r.run} {r.split}: {p}" for r in rescored for p in r.problems]
    for table in ("table2.csv", "table3.csv"):
        problems += check_table(results / table, rescored, lambda n: run_seed(by_name[n]), cell_of)
    for p in problems:
        print(f"rescore: {p}", file=sys.stderr)
    skipped = sum(r.summary.get("status") != "completed" for r in runs)
    print(f"rescored {len(rescored)} BLEU and chrF scores of {len(runs)} runs in {results.relative_to(ROOT) if results.is_relative_to(ROOT) else results} "
          f"({skipped} not completed: diverged or unfinished, BLEU 0 by the tables' rule): "
          + ("all equal to bleu.json and the tables" if not problems else f"{len(problems)} disagreement(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
