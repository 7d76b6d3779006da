#!/usr/bin/env python
"""The paper's optimizer comparison end to end: data -> sentencepiece -> train each experiment ->
evaluate -> tables and plots (scripts/make_report.py). `make reproduce` calls this.

    python scripts/reproduce.py --scale cpu --data-dir ../shared/data/multi30k   # Table 2, 3 seeds per cell
    python scripts/reproduce.py --scale cpu --sweep table2_core --jobs 2     # 10 runs, two at a time
    python scripts/reproduce.py --experiments table2_A,table2_O --schedules no_warmup --seeds 1
    python scripts/reproduce.py --scale gpu                                  # one cell per visible GPU
    python scripts/reproduce.py --scale gpu --launcher slurm                 # the grid as SLURM jobs

Each cell (experiment, schedule, seed) runs in its own process, so one crash cannot take the sweep down, and
seed 1 of every cell runs before any seed 2. A finished run's small files are published to
results/<scale>/runs/<cell>/ (committed); a rerun skips cells finished there or in runs/<scale>/ and resumes
interrupted ones from their checkpoint_last.pt. Extra Hydra overrides after `--` go to every training run
(e.g. `-- trainer.max_update=200`).
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from adafactor_repro.files import run_status

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "configs" / "sweep"


def sweep_cells(sweep: str) -> tuple[list[str], list[str], list[int]]:
    """(experiments, schedules, seeds) of a committed sweep file: the single list of the grid."""
    path = SWEEPS / f"{sweep}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in sorted(SWEEPS.glob("*.yaml")))
        raise SystemExit(f"unknown sweep {sweep!r}: no {path}; known sweeps: {known}")
    params = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
    seeds = [int(s) for s in str(params.get("trainer.seed", "1")).split(",")]
    return params["experiments"].split(","), params["schedule"].split(","), seeds


def cell_name(exp: str, sched: str, seed: int) -> str:
    """The run directory's name (configs/train.yaml run_dir): <experiment>-<schedule>-s<seed>."""
    return f"{exp}-{sched}-s{seed}"


def finished(run_dir: Path) -> str | None:
    """"completed" or "diverged" when the cell needs no more work (a completed run also needs its BLEU)."""
    status = run_status(run_dir)
    if status == "diverged" or (status == "completed" and (run_dir / "bleu.json").exists()):
        return status
    return None


# What a published run keeps: enough to rebuild every table and plot, and to audit each cell (no checkpoints),
# and the detokenized hypotheses, gzipped (hyp*.txt -> hyp*.txt.gz), so that `make rescore` can recompute every
# BLEU and chrF with sacreBLEU.
PUBLISHED = ("config.yaml", "summary.json", "bleu.json", "metrics.jsonl")


def gzip_file(src: Path, dest: Path) -> None:
    """gzip with no name and mtime 0 in the header: the same hypotheses give the same bytes."""
    import gzip

    with open(src, "rb") as f, open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                                         mtime=0, compresslevel=9) as z:
        z.write(f.read())


def publish(run_dir: Path, dest: Path) -> None:
    """Copy a finished run's small files to results/<scale>/runs/<cell> (committed), atomically: a temporary
    sibling directory renamed over the old copy, so an interrupted copy never leaves half a run behind."""
    import shutil
    import tempfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for name in PUBLISHED:
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, tmp / name)
        for hyp in sorted(run_dir.glob("hyp*.txt")):
            gzip_file(hyp, tmp / (hyp.name + ".gz"))
        tmp.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (ids or UUIDs)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except ImportError:
        return []


_say_lock = threading.Lock()


def say(line: str) -> None:
    """One whole line at a time: with --jobs > 1 the cells report from threads, and print() writes the text and
    its newline separately, so two lines could run together."""
    with _say_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def sh(cmd: list[str], dry: bool, log: Path | None = None, env_extra: dict | None = None) -> int:
    say("+ " + " ".join(([f"{k}={v}" for k, v in (env_extra or {}).items()]) + cmd))
    if dry:
        return 0
    env = {**os.environ, "ADAFACTOR_REPRO_ROOT": str(ROOT), **(env_extra or {})}
    if log is None:
        return subprocess.call(cmd, cwd=ROOT, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="cpu", help="cpu | gpu | vaswani (configs/scale)")
    ap.add_argument("--sweep", default="table2",
                    help="a file of configs/sweep/ (table2: every cell of the paper's Table 2 with seeds; "
                         "table2_core: the named core subset; paper: the tensor2tensor afx_* grid)")
    ap.add_argument("--experiments", help="comma-separated subset of the sweep's experiments")
    ap.add_argument("--schedules", help="comma-separated subset of warmup,no_warmup")
    ap.add_argument("--seeds", help="comma-separated subset of the sweep's seeds (trainer.seed)")
    ap.add_argument("--data-dir", help="local copy of the corpus (data.local_dir); default: the data config's "
                                       "embedded copy (Multi30k ships in corpora/), else the hub")
    ap.add_argument("--launcher", default="local", choices=["local", "slurm"])
    ap.add_argument("--runs-dir", type=Path, help="where the run directories go (default runs/<scale>)")
    ap.add_argument("--results-dir", type=Path, help="where tables and plots go (default results/<scale>)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs at once (local launcher); default: one per visible GPU (each run gets its own "
                         "CUDA_VISIBLE_DEVICES), 1 without GPUs. The cpu scale trains on one thread per run, so "
                         "on an N-core machine --jobs N uses every core without threads competing for them")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)

    # GPU scales: one cell per GPU. Job slot k owns GPU k (more jobs than GPUs share them round-robin).
    gpus = visible_gpus() if args.scale != "cpu" else []
    if args.jobs is None:
        args.jobs = max(1, len(gpus))
    exps, scheds, seeds = sweep_cells(args.sweep)
    if args.experiments:
        wanted = args.experiments.split(",")
        unknown = sorted(set(wanted) - {p.stem for p in (ROOT / "experiments").glob("*.yaml")})
        if unknown:
            raise SystemExit(f"unknown experiment(s) {unknown}: see the files in experiments/")
        exps = wanted
    if args.schedules:
        scheds = args.schedules.split(",")
    if args.seeds:
        seeds = [int(x) for x in args.seeds.split(",")]
    py = sys.executable
    runs_dir = (args.runs_dir or ROOT / "runs" / args.scale).resolve()
    results_dir = (args.results_dir or ROOT / "results" / args.scale).resolve()
    published = results_dir / "runs"
    common = [f"scale={args.scale}", *([f"data.local_dir={Path(args.data_dir).resolve()}"] if args.data_dir else [])]

    # 1. data + sentencepiece (cached by a hash of the inputs; the training runs reuse it)
    if sh([py, "scripts/prepare_data.py", *common, *extra], args.dry_run) != 0:
        print("data preparation failed; see the message above", file=sys.stderr)
        return 1

    # 2. training (+ BLEU at the end of each run)
    failed: list[str] = []
    if args.launcher == "slurm":
        # one GPU per cell, as the local launcher: a job-array task per cell on one card
        rc = sh([py, "scripts/train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1",
                 "hydra.launcher.tasks_per_node=1", *common, f"experiments={','.join(exps)}",
                 f"schedule={','.join(scheds)}", f"trainer.seed={','.join(map(str, seeds))}",
                 f"hydra.sweep.dir={runs_dir}",
                 f"run_dir={runs_dir}/${{name}}-${{hydra:runtime.choices.schedule}}-s${{trainer.seed}}", *extra],
                args.dry_run)
        if rc != 0:
            failed.append("slurm sweep")
    else:
        # Seed-major order: every cell gets its first seed before any gets its second, so a sweep cut short
        # (a session's end) leaves the whole table covered, with fewer seeds.
        cells = [(e, s, seed) for seed in seeds for s in scheds for e in exps]
        todo = []
        for k, (exp, sched, seed) in enumerate(cells, 1):
            name = cell_name(exp, sched, seed)
            run_dir = runs_dir / name
            tag = f"[{k}/{len(cells)}] {name}"
            done = finished(published / name)
            if done:
                say(f"{tag}: {done}, published, skipped")
            elif done := finished(run_dir):
                publish(run_dir, published / name)
                say(f"{tag}: {done}, skipped")
            else:
                todo.append((tag, exp, sched, seed, run_dir, run_status(run_dir)))

        slots: queue.Queue[int] = queue.Queue()
        for k in range(max(1, args.jobs)):
            slots.put(k)

        def run_cell(*cell) -> str | None:
            slot = slots.get()
            try:
                gpu = {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {}
                return _run_cell(*cell, gpu)
            finally:
                slots.put(slot)

        def _run_cell(tag: str, exp: str, sched: str, seed: int, run_dir: Path, status: str,
                      gpu: dict) -> str | None:
            # With several jobs at once each cell's output goes to its own log beside the run directories.
            log = runs_dir / "logs" / f"{run_dir.name}.log" if args.jobs > 1 else None
            if status != "completed":
                say(f"{tag}: {'resuming' if status == 'running' else 'training'}"
                    + (f" on GPU {gpu['CUDA_VISIBLE_DEVICES']}" if gpu else "")
                    + (f" (log: {log})" if log else ""))
                rc = sh([py, "scripts/train.py", *common, f"experiments={exp}", f"schedule={sched}",
                         f"trainer.seed={seed}", f"run_dir={run_dir}", *extra], args.dry_run, log, gpu)
                if rc != 0:
                    return f"{run_dir.name} (exit {rc})"
            if not args.dry_run and run_status(run_dir) == "completed" and not (run_dir / "bleu.json").exists():
                if sh([py, "scripts/evaluate.py", f"run_dir={run_dir}"], args.dry_run, log, gpu) != 0:
                    return f"{run_dir.name} (evaluation)"
            if not args.dry_run and finished(run_dir):
                publish(run_dir, published / run_dir.name)
            say(f"{tag}: {run_status(run_dir) if not args.dry_run else 'done'}")
            return None

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            failed += [f for f in pool.map(lambda c: run_cell(*c), todo) if f]
        # A cell is done when it completed (with its BLEU) or diverged; one stopped by a signal exits
        # with its summary still "running" and must not pass for done.
        if not args.dry_run:
            listed = {f.split(" ")[0] for f in failed}
            for *_, run_dir, _ in todo:
                status = run_status(run_dir)
                if run_dir.name not in listed and status not in ("completed", "diverged"):
                    failed.append(f"{run_dir.name} (status {status})")

    # 3. tables and plots, from the published copies (what is committed is what the table shows)
    sh([py, "scripts/make_report.py", "--scale", args.scale,
        "--runs", str(published if args.launcher == "local" else runs_dir), "--out", str(results_dir)], args.dry_run)
    if failed:
        print(f"{len(failed)} run(s) neither completed nor diverged (rerun `make reproduce` to resume them): "
              + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
