#!/usr/bin/env python
"""Audit a committed run: retrain its first N updates from its own config at this checkout and compare the
logged training losses, bit for bit.

    python scripts/verify_run.py results/cpu/runs/table2_A-no_warmup-s1            # first 30 updates
    python scripts/verify_run.py results/cpu/runs/table2_O-warmup-s2 --updates 50 -- data.local_dir=...
    python scripts/verify_run.py results/cpu/runs/table2_A-no_warmup-s1 --rtol 1e-3   # on another CPU
    python scripts/verify_run.py results/cpu/runs --sample 5 --sample-seed 1         # 5 runs drawn at random

The run is retrained with the overrides that name it (scale, experiment, schedule, seed) in a temporary
directory; every train record both runs logged up to N must agree exactly (or within ``--rtol``), and the retrained
run must have seen the same data, by content: the artifact key (a hash of the options and the input files' sha256)
and the tokenizer file's sha256. Exit 0 when they do, 1 otherwise. Bit for bit holds on the CPU and torch build that trained the run (its summary.json
names them): another vector unit orders float sums differently, and the losses then differ in their last
digits (measured: a run of the 2026-11-28 VM retrained on the AVX2-only VM of 2026-12-04 differed by
1.5e-5 relative at update 10, 1.0e-4 at update 30).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from adafactor_repro.machine import cpu_name

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
    ap.add_argument("run_dir", type=Path, help="a run directory with config.yaml and metrics.jsonl (with --sample: "
                                                "a folder of run directories)")
    ap.add_argument("--updates", type=int, default=30, help="updates to retrain and compare (default 30)")
    ap.add_argument("--rtol", type=float, default=0.0,
                    help="relative tolerance (default 0: bit for bit; use 1e-3 on another CPU)")
    ap.add_argument("--sample", type=int, help="verify this many run directories of RUN_DIR, drawn at random")
    ap.add_argument("--sample-seed", type=int, default=1, help="the draw's seed (printed, so a reader can redo it)")
    args = ap.parse_args(argv)
    if args.sample:
        import random

        pool = sorted(p for p in args.run_dir.iterdir() if (p / "metrics.jsonl").exists())
        if not pool:
            print(f"{args.run_dir}: no run directories to sample", file=sys.stderr)
            return 2
        picked = random.Random(args.sample_seed).sample(pool, min(args.sample, len(pool)))
        print(f"verifying {len(picked)} of {len(pool)} runs drawn with seed {args.sample_seed}: "
              + ", ".join(p.name for p in picked), flush=True)
        bad = []
        for p in picked:
            if verify(p, args.updates, args.rtol, extra) != 0:
                bad.append(p.name)
        print(f"{len(picked) - len(bad)} of {len(picked)} sampled runs verified" + (f"; failed: {', '.join(bad)}"
                                                                                   if bad else ""))
        return 1 if bad else 0
    return verify(args.run_dir, args.updates, args.rtol, extra)


def verify(run_dir: Path, updates: int, rtol: float, extra: list[str]) -> int:
    """Retrain one run's first `updates` and compare; 0 when equal (within rtol) on the same data."""
    cfg_path, metrics = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if not cfg_path.exists() or not metrics.exists():
        print(f"{run_dir}: no config.yaml and metrics.jsonl, so not a run directory to verify", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(cfg_path.read_text())
    summary_path = run_dir / "summary.json"
    recorded = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    # the schedule's name (Table 3's is `own`), or, for runs that predate it in summary.json, from the schedule
    schedule = recorded.get("schedule") or ("warmup" if cfg["schedule"]["linear_warmup"] else "no_warmup")
    want = train_losses(metrics, updates)
    if not want:
        print(f"{metrics}: no training loss logged up to update {updates}", file=sys.stderr)
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
        seen = (yaml.safe_load((Path(tmp) / "run" / "config.yaml").read_text()) or {}).get("data_artifact") or {}
    art = cfg.get("data_artifact") or {}
    for k in ("key", "spm_sha256"):
        if art.get(k) and seen.get(k) != art[k]:
            print(f"{run_dir}: the retrained run saw data {k} {seen.get(k)}, the committed run {art[k]}: not the same "
                  "data (rebuild it from the run's data config, or pass the corpus it used with -- data.local_dir=)",
                  file=sys.stderr)
            return 1
    rel = {u: abs(got[u] - want[u]) / max(abs(want[u]), 1e-30) if u in got else math.inf for u in want}
    bad = [u for u in want if rel[u] > rtol]
    for u in sorted(want):
        tag = "identical" if rel[u] == 0 else f"rel {rel[u]:.1e}" + (" DIFFERS" if u in bad else " ok")
        print(f"update {u:>6}: committed {want[u]!r:>22}  retrained {got.get(u)!r:>22}  {tag}")
    if bad:
        worst = max(rel.values())
        print(f"{len(bad)} of {len(want)} logged losses differ (max relative difference {worst:.1e}, --rtol "
              f"{rtol:g})", file=sys.stderr)
        trained_on = recorded.get("cpu")
        if worst < 1e-3:  # last-digit differences compound over updates; a wrong config differs at update 1
            print(f"The differences are at float rounding level. The run was trained on "
                  f"{trained_on or 'a machine it does not record'}; this is {cpu_name()}. If they differ, "
                  f"compare with --rtol 1e-3 instead of bit for bit.", file=sys.stderr)
        return 1
    print(f"{len(want)} logged losses " + ("identical" if max(rel.values()) == 0 else f"within --rtol {rtol:g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
