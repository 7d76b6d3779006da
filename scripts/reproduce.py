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

Watching and stopping (the bookkeeping is adafactor_repro.sweep):
- a plan line first (cells to run, skipped, running elsewhere, the time estimated from the committed runs'
  wall times divided by --jobs), then one line per finished cell with the elapsed and remaining time;
- `kill -USR1 <pid of reproduce.py>` prints each running cell's latest update and loss; from another shell,
  `python scripts/reproduce.py --status` prints the same for every cell any sweep holds under the runs dir;
- Ctrl-C (or SIGTERM) stops the running cells cleanly - each saves checkpoint_last.pt and its summary - and
  exits 130 with one line; a second Ctrl-C kills them. The children die with the sweep (`kill -9` included).
- Two sweeps over the same runs dir split the cells: a cell another sweep holds (`<run_dir>/.sweep.lock`) is
  reported "running elsewhere" and left to it.
- A subset sweep (--experiments/--schedules/--seeds, or a sweep other than table2) publishes its runs but
  leaves the committed tables and plots of results/<scale>/ alone (`make tabulate` rebuilds them from every
  committed run); --tabulate yes forces the rebuild.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from adafactor_repro import sweep
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


def not_the_cell(run_dir: Path, scale: str, exp: str, sched: str, seed: int, extra: list[str]) -> list[str]:
    """Why a finished run directory is not the cell (scale, exp, sched, seed) of this sweep (with the sweep's
    own `--` overrides): every result-changing key of its config.yaml that differs from the cell's canonical
    config (adafactor_repro.report.cells). Empty when it is the cell."""
    from adafactor_repro.report import load_run
    from adafactor_repro.report.cells import mismatch

    if not (run_dir / "config.yaml").is_file():
        return ["no config.yaml to say what it ran"]
    return mismatch(load_run(run_dir), ROOT, (scale, exp, sched, seed), overrides=tuple(extra))


def refusal(where: str, problems: list[str]) -> str:
    shown = "; ".join(problems)  # every key: the fix is to know them all
    return (f"refused: {where} is not this cell ({shown}); move it away (or delete it) and rerun to train the "
            "cell itself")


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


def rel(p: Path | str) -> str:
    """A path as printed: relative to the repository when inside it."""
    p = Path(p)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def show(cmd: list[str], env_extra: dict | None = None) -> str:
    return "+ " + " ".join([f"{k}={v}" for k, v in (env_extra or {}).items()]
                           + [shlex.quote(a.replace(str(ROOT) + "/", "")) for a in cmd])


def start(cmd: list[str], log: Path | None, env_extra: dict | None = None) -> subprocess.Popen:
    """One command of a cell, started in the background (its own process group, dies with this process)."""
    env = {**os.environ, "ADAFACTOR_REPRO_ROOT": str(ROOT), **(env_extra or {})}
    return sweep.start_child(cmd, cwd=ROOT, env=env, log=log)


def sh(cmd: list[str], dry: bool, log: Path | None = None, env_extra: dict | None = None) -> int:
    say(show(cmd, env_extra))
    if dry:
        return 0
    env = {**os.environ, "ADAFACTOR_REPRO_ROOT": str(ROOT), **(env_extra or {})}
    if log is None:
        return subprocess.call(cmd, cwd=ROOT, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def print_status(runs_dir: Path, logs: Path, running: list[sweep.Cell] | None = None, started: dict | None = None) -> None:
    """The latest update and loss of each running cell: this sweep's (`running`) or, without it, of every cell
    any sweep holds under runs_dir."""
    if running is not None:
        say(f"status: {len(running)} cell(s) running")
        for c in running:
            say(sweep.cell_status_line(c.run_dir, c.log, (started or {}).get(c.name)))
        return
    claimed = sweep.claimed_cells(runs_dir)
    say(f"{len(claimed)} cell(s) held by a sweep under {rel(runs_dir)}"
        + ("" if claimed else " (no sweep is running there)"))
    for run_dir, who, training in claimed:
        if training:
            say(sweep.cell_status_line(run_dir, logs / f"{run_dir.name}.log") + f" [{who}]")
        else:
            say(f"  {run_dir.name}: queued [{who}]")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    # hydra.launcher.* (SLURM partition, time, ...) configures the SLURM launcher only: data preparation and
    # tabulation compose the config without that launcher, and Hydra refuses an override of a node it lacks
    launcher = [x for x in extra if x.lstrip("+~").startswith("hydra.launcher.")]
    extra = [x for x in extra if x not in launcher]
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
    ap.add_argument("--tabulate", default="auto", choices=["auto", "yes", "no"],
                    help="rebuild the tables and plots at the end (auto: yes, except for a subset sweep into the "
                         "committed results/<scale>/, whose tables cover every cell)")
    ap.add_argument("--status", action="store_true",
                    help="print the cells sweeps hold under the runs dir (latest update, loss) and exit")
    ap.add_argument("--skip-prepare", action="store_true",
                    help="do not build the data first (each training run builds or reuses it anyway)")
    ap.add_argument("--train-cmd", help="the command standing in for `python scripts/train.py` (tests)")
    ap.add_argument("--verbose", action="store_true", help="one line per skipped cell, however many")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    if launcher and args.launcher != "slurm":
        ap.error(f"{' '.join(launcher)}: hydra.launcher.* overrides configure the SLURM launcher; add --launcher slurm "
                 "(make reproduce LAUNCHER=slurm) or drop them")

    py = sys.executable
    runs_dir = (args.runs_dir or ROOT / "runs" / args.scale).resolve()
    results_dir = (args.results_dir or ROOT / "results" / args.scale).resolve()
    logs = runs_dir / "logs"
    if args.status:
        print_status(runs_dir, logs)
        return 0

    # GPU scales: one cell per GPU. Job slot k owns GPU k (more jobs than GPUs share them round-robin).
    gpus = visible_gpus() if args.scale != "cpu" else []
    if args.jobs is None:
        args.jobs = max(1, len(gpus))
    exps, scheds, seeds = sweep_cells(args.sweep)
    subset = bool(args.experiments or args.schedules or args.seeds) or args.sweep != "table2"
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
    published = results_dir / "runs"
    common = [f"scale={args.scale}", *([f"data.local_dir={Path(args.data_dir).resolve()}"] if args.data_dir else [])]
    train_cmd = shlex.split(args.train_cmd) if args.train_cmd else [py, "scripts/train.py"]

    # 1. data + sentencepiece (cached by a hash of the inputs; the training runs reuse it)
    if not args.skip_prepare and sh([py, "scripts/prepare_data.py", *common, *extra], args.dry_run) != 0:
        print("data preparation failed; see the message above", file=sys.stderr)
        return 1

    # 2. training (+ BLEU at the end of each run)
    failed: list[str] = []
    n_done = 0
    if args.launcher == "slurm":
        # one GPU per cell, as the local launcher: a job-array task per cell on one card
        rc = sh([py, "scripts/train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1",
                 "hydra.launcher.tasks_per_node=1", *common, f"experiments={','.join(exps)}",
                 f"schedule={','.join(scheds)}", f"trainer.seed={','.join(map(str, seeds))}",
                 f"hydra.sweep.dir={runs_dir}",
                 f"run_dir={runs_dir}/${{name}}-${{hydra:runtime.choices.schedule}}-s${{trainer.seed}}", *extra, *launcher],
                args.dry_run)
        if rc != 0:
            failed.append("slurm sweep")
    else:
        rc, failed, n_done = run_local(args, exps, scheds, seeds, runs_dir, published, logs, gpus, common, extra,
                                       train_cmd)
        if rc is not None:
            return rc

    # 3. tables and plots, from the published copies (what is committed is what the table shows)
    committed = results_dir == (ROOT / "results" / args.scale).resolve()
    if args.tabulate == "yes" or (args.tabulate == "auto" and not (subset and committed)):
        sh([py, "scripts/make_report.py", "--scale", args.scale,
            "--runs", rel(published if args.launcher == "local" else runs_dir), "--out", rel(results_dir),
            *(["--", *extra] if extra else [])], args.dry_run)
    elif args.tabulate == "no":
        say(f"tables and plots not rebuilt (--tabulate no); {n_done} cell(s) run, published under {rel(published)}/")
    else:
        say(f"subset sweep: {n_done} cell(s) run, published under {rel(published)}/; the tables and plots of "
            f"{rel(results_dir)}/ cover every committed run and are left as they are (`make tabulate "
            f"SCALE={args.scale}` rebuilds them, or rerun with --tabulate yes)")
    if failed:
        print(f"{len(failed)} run(s) neither completed nor diverged (rerun `make reproduce` to resume them): "
              + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def run_local(args, exps, scheds, seeds, runs_dir: Path, published: Path, logs: Path, gpus: list[str],
              common: list[str], extra: list[str], train_cmd: list[str]) -> tuple[int | None, list[str], int]:
    """The local launcher: (exit status to return at once or None, failed cells, cells run)."""
    py = sys.executable
    # Seed-major order: every cell gets its first seed before any gets its second, so a sweep cut short
    # (a session's end) leaves the whole table covered, with fewer seeds.
    grid = [(e, s, seed) for seed in seeds for s in scheds for e in exps]
    todo: list[sweep.Cell] = []
    skipped: list[str] = []
    elsewhere: list[str] = []
    failed: list[str] = []

    def check(run_dir: Path, c: sweep.Cell) -> list[str]:
        # a stand-in trainer (--train-cmd, the tests) writes no real config to compare
        return [] if args.train_cmd else not_the_cell(run_dir, args.scale, c.exp, c.sched, c.seed, extra)

    for k, (exp, sched, seed) in enumerate(grid, 1):
        c = sweep.Cell(k, len(grid), exp, sched, seed, runs_dir / cell_name(exp, sched, seed))
        done = finished(published / c.name)
        if done:
            bad = check(published / c.name, c)
            if bad:
                say(f"{c.tag}: {refusal(rel(published / c.name), bad)}")
                failed.append(f"{c.name} (published run is another config)")
                continue
            skipped.append(f"{c.tag}: {done}, published, skipped")
            continue
        if not args.dry_run:
            # The cell is this sweep's from here until it ends: a concurrent sweep leaves it alone.
            c.lock, who = sweep.try_lock_cell(c.run_dir)
            if c.lock is None:
                say(f"{c.tag}: running elsewhere ({who}), skipped")
                elsewhere.append(c.name)
                continue
        if done := finished(c.run_dir):
            if c.lock:
                c.lock.release()
            bad = check(c.run_dir, c)
            if bad:
                say(f"{c.tag}: {refusal(rel(c.run_dir), bad)}")
                failed.append(f"{c.name} (run directory holds another config)")
                continue
            publish(c.run_dir, published / c.name)
            skipped.append(f"{c.tag}: {done}, skipped")
            continue
        todo.append(c)
    if len(skipped) <= 12 or args.verbose:
        for line in skipped:
            say(line)
    elif skipped:
        say(f"skipped {len(skipped)} finished cells ({skipped[0].split(': ')[0]} ... {skipped[-1].split(': ')[0]}; "
            "--verbose lists them)")

    # the sweep's own published runs time it; a fresh results dir goes by the committed ones
    est = sweep.Estimates.from_runs(published)
    if not est.n_runs:
        est = sweep.Estimates.from_runs(ROOT / "results" / args.scale / "runs")
    progress = sweep.Progress(args.jobs, {
        c.name: (None if (s := est.seconds(c.exp, c.sched)) is None else s * sweep.left_fraction(c.run_dir))
        for c in todo})
    say(progress.plan_line(len(skipped), len(elsewhere), est.n_runs))

    def train_args(c: sweep.Cell) -> list[str]:
        return [*train_cmd, *common, f"experiments={c.exp}", f"schedule={c.sched}", f"trainer.seed={c.seed}",
                f"run_dir={c.run_dir}", *extra]

    if args.dry_run:
        for c in todo:
            say(f"{c.tag}: training")
            say(show(train_args(c)))
        return None, failed, 0

    stop = {"n": 0, "status": False}

    def on_stop(signum, frame):
        stop["n"] += 1

    def on_usr1(signum, frame):
        stop["status"] = True

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig, h in ((signal.SIGINT, on_stop), (signal.SIGTERM, on_stop), (signal.SIGUSR1, on_usr1)):
            handlers[sig] = signal.signal(sig, h)

    pending, running = list(todo), []
    free = list(range(max(1, args.jobs)))
    interrupted: list[str] = []
    n_run = 0

    def launch(c: sweep.Cell, stage: str, cmd: list[str]) -> None:
        c.stage, c.proc = stage, start(cmd, c.log, c.gpu)
        running.append(c)

    def finish(c: sweep.Cell, problem: str | None) -> None:
        nonlocal n_run
        if finished(c.run_dir):
            bad = check(c.run_dir, c)
            if bad:  # a run of this sweep's own command is its cell; anything else is a bug to see
                problem = refusal(rel(c.run_dir), bad)
            else:
                publish(c.run_dir, published / c.name)
        if c.lock:
            c.lock.release()
        free.append(c.slot)
        progress.finish(c.name)
        n_run += 1
        status = run_status(c.run_dir)
        s = sweep.read_summary(c.run_dir) or {}
        bleu = ", ".join(f"BLEU {k} {v:.2f}" for k, v in (s.get("bleu") or {}).items() if isinstance(v, (int, float)))
        if problem is None and status in ("completed", "diverged"):
            what = status + (f" ({bleu})" if bleu else "")
        elif stop["n"]:
            interrupted.append(c.name)
            return say(f"{c.tag}: stopped at update {s.get('updates', 0)} (summary {status}; rerun to resume)")
        else:
            what = f"{problem or 'status ' + status}" + (f"; log: {rel(c.log)}" if c.log else "")
            failed.append(f"{c.name} ({problem or 'status ' + status})")
        say(progress.finished_line(c.name, c.tag, what))

    def advance(c: sweep.Cell, rc: int | None) -> None:
        """Start the cell's next command, or finish it."""
        if rc is not None and rc != 0:
            return finish(c, f"exit {rc}" if c.stage == "train" else "evaluation")
        status = run_status(c.run_dir)
        if stop["n"]:
            return finish(c, "stopped")
        if c.stage == "" and status != "completed":
            say(f"{c.tag}: {'resuming' if status == 'running' else 'training'}"
                + (f" on GPU {c.gpu['CUDA_VISIBLE_DEVICES']}" if c.gpu else "")
                + (f" (log: {rel(c.log)})" if c.log else ""))
            return launch(c, "train", train_args(c))
        if c.stage != "evaluate" and status == "completed" and not (c.run_dir / "bleu.json").exists():
            return launch(c, "evaluate", [py, "scripts/evaluate.py", f"run_dir={c.run_dir}"])
        finish(c, None)

    announced = killed = False
    try:
        while pending or running:
            if stop["n"] and not announced:
                announced = True
                say(f"stopping: {len(running)} running cell(s) save checkpoint_last.pt and their summary, "
                    f"{len(pending)} not started; Ctrl-C again kills them")
                for c in running:
                    sweep.signal_child(c.proc, signal.SIGTERM)
                for c in pending:
                    if c.lock:
                        c.lock.release()
                pending.clear()
            if stop["n"] >= 2 and not killed:
                killed = True
                for c in running:
                    sweep.signal_child(c.proc, signal.SIGKILL)
            while pending and free and not stop["n"]:
                c = pending.pop(0)
                c.slot = free.pop(0)
                c.gpu = {"CUDA_VISIBLE_DEVICES": gpus[c.slot % len(gpus)]} if gpus else {}
                # With several jobs at once each cell's output goes to its own log beside the run directories.
                c.log = logs / f"{c.name}.log" if args.jobs > 1 else None
                progress.start(c.name)
                advance(c, None)
            for c in list(running):
                rc = c.proc.poll()
                if rc is not None:
                    running.remove(c)
                    advance(c, rc)
            if stop["status"]:
                stop["status"] = False
                print_status(runs_dir, logs, running, progress.started)
            time.sleep(0.1)
    finally:
        for c in running:  # only reached on an error of this loop: do not leave children behind
            sweep.signal_child(c.proc, signal.SIGTERM)
        for sig, h in handlers.items():
            signal.signal(sig, h)
    if stop["n"]:
        say(f"stopped: {len(interrupted)} cell(s) interrupted with a checkpoint ({', '.join(interrupted) or '-'}), "
            f"{len(todo) - n_run} not started; rerun the same command to resume")
        return 130, failed, n_run
    if elsewhere:
        say(f"{len(elsewhere)} cell(s) left to the sweep running them ({', '.join(elsewhere)})")
    # A cell is done when it completed (with its BLEU) or diverged; one stopped by a signal exits
    # with its summary still "running" and must not pass for done.
    listed = {f.split(" ")[0] for f in failed}
    for c in todo:
        status = run_status(c.run_dir)
        if c.name not in listed and status not in ("completed", "diverged"):
            failed.append(f"{c.name} (status {status})")
    return None, failed, n_run


if __name__ == "__main__":
    sys.exit(main())
