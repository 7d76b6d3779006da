#!/usr/bin/env python
"""Audit a committed run: retrain its first N updates from its own config at this checkout and compare the
logged training losses, bit for bit.

    python scripts/verify_run.py results/cpu/runs/table2_A-no_warmup-s1            # first 30 updates
    python scripts/verify_run.py results/cpu/runs/table2_O-warmup-s2 --updates 50 -- data.local_dir=...

The run is retrained with the overrides that name it (scale, experiment, schedule, seed) in a temporary
directory; every train record both runs logged up to N must agree exactly. Exit 0 when they do, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def train_losses(metrics: Path, upto: int) -> dict[int, float]:
    out = {}
    for line in metrics.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("split") == "train" and "loss" in r and r.get("update", upto + 1) <= upto:
            out[int(r["update"])] = float(r["loss"])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run directory with config.yaml and metrics.jsonl")
    ap.add_argument("--updates", type=int, default=30, help="updates to retrain and compare (default 30)")
    args = ap.parse_args(argv)
    cfg_path, metrics = args.run_dir / "config.yaml", args.run_dir / "metrics.jsonl"
    if not cfg_path.exists() or not metrics.exists():
        print(f"{args.run_dir}: no config.yaml and metrics.jsonl, so not a run directory to verify", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(cfg_path.read_text())
    schedule = "warmup" if cfg["schedule"]["linear_warmup"] else "no_warmup"
    want = train_losses(metrics, args.updates)
    if not want:
        print(f"{metrics}: no training loss logged up to update {args.updates}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), f"scale={cfg['scale_name']}",
               f"experiments={cfg['name']}", f"schedule={schedule}", f"trainer.seed={cfg['trainer']['seed']}",
               f"trainer.max_update={max(want)}", "trainer.bleu_at_end=false", "logger.mode=disabled",
               f"run_dir={tmp}/run", *extra]
        print("+", " ".join(cmd), flush=True)
        env = {**os.environ, "ADAFACTOR_REPRO_ROOT": str(ROOT)}
        if subprocess.call(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) != 0:
            print("the retraining failed; rerun the command above to see why", file=sys.stderr)
            return 1
        got = train_losses(Path(tmp) / "run" / "metrics.jsonl", max(want))
    bad = [u for u in want if got.get(u) != want[u]]
    for u in sorted(want):
        print(f"update {u:>6}: committed {want[u]!r:>22}  retrained {got.get(u)!r:>22}  "
              f"{'ok' if u not in bad else 'DIFFERS'}")
    if bad:
        print(f"{len(bad)} of {len(want)} logged losses differ", file=sys.stderr)
        return 1
    print(f"{len(want)} logged losses identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
