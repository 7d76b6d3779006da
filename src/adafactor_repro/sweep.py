"""The bookkeeping of a sweep (scripts/reproduce.py keeps the grid and the commands; this module the rest):
time estimates from the committed runs, the plan and progress lines, the per-cell lock that tells two sweeps
apart, child processes that die with the sweep, and the status of the cells a sweep is running.

- Estimates: a cell's time is the mean `wall_time_s` (+ its BLEU decode, `decode_seconds` in bleu.json) of the
  committed runs of the same experiment and schedule (results/<scale>/runs/*/summary.json), else of the same
  experiment, else of every committed run; a sweep's time is the sum over its cells divided by --jobs. Once
  cells finish, the remaining estimate is scaled by how fast the finished ones were against their estimate.
- Cell lock: `<run_dir>/.sweep.lock`, an flock held by the sweep that runs (or queued) the cell, for as long as
  it does. A second sweep finds it held and reports the cell as "running elsewhere" instead of training it
  too; the kernel drops the lock when the holder dies, so a killed sweep leaves none behind. The file names
  the holder (pid, host, start). It is not the run's own `.lock` (train.py holds that one).
- Children: each in its own process group (a terminal's Ctrl-C reaches the sweep only, which stops them with
  SIGTERM: the training loop saves checkpoint_last.pt and its summary, then exits) and, on Linux, with a
  parent-death signal (SIGTERM when the sweep dies, `kill -9` included).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import DirectoryLocked, DirLock, read_json, read_summary
from .train.metrics import fmt_duration

SWEEP_LOCK = ".sweep.lock"


# ---------------------------------------------------------------------------------------------- estimates
def run_seconds(run_dir: Path) -> float | None:
    """Wall time of a finished run: training (summary.json) plus its BLEU decodes (bleu.json)."""
    s = read_summary(run_dir) or {}
    wall = s.get("wall_time_s")
    if not isinstance(wall, (int, float)) or wall <= 0:
        return None
    bleu = read_json(run_dir / "bleu.json", {}) or {}
    decode = sum(v.get("decode_seconds") or 0 for v in bleu.values() if isinstance(v, dict))
    return float(wall) + float(decode)


@dataclass
class Estimates:
    """Seconds per cell from committed runs, keyed by (experiment name, schedule)."""

    by_cell: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    @classmethod
    def from_runs(cls, root: Path) -> Estimates:
        est = cls()
        for summary in sorted(Path(root).glob("*/summary.json")) if Path(root).is_dir() else []:
            s = read_summary(summary.parent) or {}
            secs = run_seconds(summary.parent)
            if secs is not None and s.get("name") and s.get("status") in ("completed", "diverged"):
                est.by_cell.setdefault((s["name"], str(s.get("schedule"))), []).append(secs)
        return est

    @property
    def n_runs(self) -> int:
        return sum(len(v) for v in self.by_cell.values())

    def seconds(self, exp: str, sched: str) -> float | None:
        same = self.by_cell.get((exp, sched))
        if same:
            return statistics.fmean(same)
        same_exp = [x for (e, _), v in self.by_cell.items() if e == exp for x in v]
        pool = same_exp or [x for v in self.by_cell.values() for x in v]
        return statistics.fmean(pool) if pool else None


def left_fraction(run_dir: Path) -> float:
    """How much of a cell is left: an interrupted run resumes at its summary's update."""
    s = read_summary(run_dir) or {}
    done = s.get("updates") or 0
    cfg_total = None
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        cfg_total = (cfg.get("trainer") or {}).get("max_update")
    except (OSError, ValueError, ImportError):
        pass
    if s.get("status") == "completed":
        return 0.1  # only its BLEU is missing
    if cfg_total and done:
        return max(0.0, 1.0 - done / cfg_total)
    return 1.0


# ---------------------------------------------------------------------------------------------- progress
@dataclass
class Progress:
    """The plan line and one line per finished cell, with the elapsed time and the remaining estimate."""

    jobs: int
    estimate: dict[str, float | None]  # cell -> seconds (None: no committed run to go by)
    t0: float = field(default_factory=time.monotonic)
    started: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)  # cell -> seconds it took

    def plan_line(self, n_skip: int, n_elsewhere: int, n_runs: int) -> str:
        todo = len(self.estimate)
        known = [s for s in self.estimate.values() if s is not None]
        if not todo:
            eta = "nothing to train"
        elif not known:
            eta = "no estimate (no committed runs to time it by)"
        else:
            total = sum(known) / max(1, self.jobs)
            eta = (f"about {fmt_duration(total)} at --jobs {self.jobs} (from the wall times of {n_runs} committed "
                   f"runs" + (f"; {todo - len(known)} cell(s) without one" if len(known) < todo else "") + ")")
        return (f"plan: {todo} cell(s) to run, {n_skip} skipped (finished)"
                + (f", {n_elsewhere} running elsewhere" if n_elsewhere else "") + f"; {eta}")

    def start(self, cell: str) -> None:
        self.started[cell] = time.monotonic()

    def finish(self, cell: str) -> float:
        took = time.monotonic() - self.started.get(cell, self.t0)
        self.done[cell] = took
        return took

    def speed(self) -> float:
        """Measured / estimated time of the finished cells (1.0 before any has an estimate)."""
        pairs = [(t, self.estimate.get(c)) for c, t in self.done.items() if self.estimate.get(c)]
        est = sum(e for _, e in pairs)
        return sum(t for t, _ in pairs) / est if est > 0 else 1.0

    def remaining(self) -> float | None:
        now, k, left = time.monotonic(), self.speed(), 0.0
        for cell, est in self.estimate.items():
            if cell in self.done:
                continue
            if est is None:
                return None
            left += max(0.0, est * k - (now - self.started[cell])) if cell in self.started else est * k
        return left / max(1, self.jobs)

    def finished_line(self, cell: str, tag: str, what: str) -> str:
        took = self.done.get(cell)
        n, todo = len(self.done), len(self.estimate)
        rem = self.remaining()
        left = "done" if n >= todo else ("about " + fmt_duration(rem) + " left" if rem is not None else "? left")
        return (f"{tag}: {what}" + (f" in {fmt_duration(took)}" if took is not None else "")
                + f"; {n}/{todo} cells, {fmt_duration(time.monotonic() - self.t0)} elapsed, {left}")


# ---------------------------------------------------------------------------------------------- cell locks
class SweepLock(DirLock):
    """`<run_dir>/.sweep.lock`: held by the sweep that runs the cell (see the module docstring)."""

    NAME = SWEEP_LOCK


def try_lock_cell(run_dir: Path) -> tuple[SweepLock | None, str]:
    """(the lock, "") when this sweep now owns the cell, else (None, who holds it)."""
    try:
        return SweepLock(run_dir).acquire(), ""
    except DirectoryLocked:
        return None, holder(run_dir) or "another process"


def _held(path: Path) -> str | None:
    """The holder's note of an flock'd file, or None when nobody holds it (a non-blocking test lock)."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            return text.split(" (")[0] or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def holder(run_dir: Path) -> str | None:
    """Who holds the cell's sweep lock ("pid N on HOST since ..."), or None when no sweep does."""
    return _held(Path(run_dir) / SWEEP_LOCK)


def training_now(run_dir: Path) -> bool:
    """A train.py holds the run directory's own lock (the cell is training, not queued)."""
    return _held(Path(run_dir) / DirLock.NAME) is not None


# ---------------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One (experiment, schedule, seed) of the grid as the local launcher runs it: train, then evaluate."""

    k: int
    of: int
    exp: str
    sched: str
    seed: int
    run_dir: Path
    lock: SweepLock | None = None
    stage: str = ""  # "" (not started) | train | evaluate
    proc: subprocess.Popen | None = None
    slot: int = -1
    gpu: dict = field(default_factory=dict)
    log: Path | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def tag(self) -> str:
        return f"[{self.k}/{self.of}] {self.name}"


# ---------------------------------------------------------------------------------------------- children
def _child_setup(parent: int) -> None:  # pragma: no cover - runs in the forked child
    """preexec_fn: SIGTERM when the sweep dies (Linux prctl PR_SET_PDEATHSIG), even by SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the sweep died between fork and prctl
        os.kill(os.getpid(), signal.SIGTERM)


def start_child(cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path | None) -> subprocess.Popen:
    """Start one command of a cell in its own process group, bound to this process's life; its output goes to
    `log` (appended) or, without one, to this process's stdout."""
    out = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")
    parent = os.getpid()
    try:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT if out else None, process_group=0,
                                preexec_fn=lambda: _child_setup(parent))
    finally:
        if out is not None:
            out.close()  # the child has its own copy


def signal_child(p: Any, sig: int) -> None:
    """Send `sig` to a child's process group (the run and its data-loader workers)."""
    if not isinstance(p, subprocess.Popen) or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------- status
def last_train_record(run_dir: Path) -> dict[str, Any] | None:
    """The newest training record of a run's metrics.jsonl (read from its end)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65536))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("split") == "train" and "loss" in rec:
            return rec
    return None


def max_update(run_dir: Path) -> int | None:
    try:
        import yaml

        return ((yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("trainer") or {}).get(
            "max_update")
    except (OSError, ValueError):
        return None


def cell_status_line(run_dir: Path, log: Path | None = None, since: float | None = None) -> str:
    """`<cell>: update 340/1000, loss 4.12, lr 0.0021, 2m10s since its last record [log ...]`."""
    rec = last_train_record(run_dir)
    total = max_update(run_dir)
    if rec is None:
        what = "starting (no training record yet)"
    else:
        what = (f"update {rec['update']}/{total or '?'}, loss {rec['loss']:.4g}"
                + (f", lr {rec['lr']:.3g}" if isinstance(rec.get("lr"), (int, float)) else "")
                + (f", record {fmt_duration(time.time() - rec['time'])} old" if rec.get("time") else ""))
    if since is not None:
        what += f"; running {fmt_duration(time.monotonic() - since)}"
    return f"  {run_dir.name}: {what}" + (f" (log: {log})" if log is not None and log.exists() else "")


def claimed_cells(runs_dir: Path) -> list[tuple[Path, str, bool]]:
    """(run_dir, holder, training now) of every cell under runs_dir a sweep holds (runs or has queued)."""
    out = []
    for lock in sorted(Path(runs_dir).glob(f"*/{SWEEP_LOCK}")):
        who = holder(lock.parent)
        if who:
            out.append((lock.parent, who, training_now(lock.parent)))
    return out
