"""A sweep you can watch and stop (scripts/reproduce.py + adafactor_repro.sweep): the plan line and its
estimate from committed wall times, progress lines, Ctrl-C and parent death with a fake trainer
(tests/helpers/fake_train.py), a cell another sweep holds, and a subset sweep that leaves the tables alone."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adafactor_repro import sweep

ROOT = Path(__file__).resolve().parents[1]
FAKE = [sys.executable, str(ROOT / "tests" / "helpers" / "fake_train.py")]


@pytest.fixture
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_sweep_test", ROOT / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _committed(root: Path, name: str, sched: str, seed: int, wall: float, decode: float = 0.0) -> None:
    d = root / f"{name}-{sched}-s{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"status": "completed", "name": name, "schedule": sched,
                                                "wall_time_s": wall, "updates": 10}))
    (d / "bleu.json").write_text(json.dumps({"test": {"bleu": 1.0, "decode_seconds": decode}}))
    (d / "config.yaml").write_text("trainer:\n  max_update: 10\n")


def test_estimates_and_plan_line_from_committed_wall_times(tmp_path):
    _committed(tmp_path, "table2_A", "warmup", 1, 300.0, decode=60.0)
    _committed(tmp_path, "table2_A", "warmup", 2, 420.0, decode=60.0)
    _committed(tmp_path, "table2_B", "no_warmup", 1, 600.0)
    est = sweep.Estimates.from_runs(tmp_path)
    assert est.n_runs == 3
    assert est.seconds("table2_A", "warmup") == 420.0           # mean of its seeds, decode included
    assert est.seconds("table2_A", "no_warmup") == 420.0        # same experiment, other schedule
    assert est.seconds("table2_Z", "warmup") == pytest.approx((360 + 480 + 600) / 3)  # every committed run
    p = sweep.Progress(2, {"a": 420.0, "b": 600.0, "c": 480.0})
    line = p.plan_line(n_skip=7, n_elsewhere=1, n_runs=3)
    assert line == ("plan: 3 cell(s) to run, 7 skipped (finished), 1 running elsewhere; about 12m30s at --jobs 2 "
                    "(from the wall times of 3 committed runs)")
    # a finished cell: its time, the count, and the rest at the measured pace (twice the estimate here)
    p.started = {"a": time.monotonic() - 840.0}
    p.t0 = time.monotonic() - 840.0
    p.finish("a")
    line = p.finished_line("a", "[1/3] a", "completed")
    assert line.startswith("[1/3] a: completed in 14m00s; 1/3 cells, 14m00s elapsed, about 18m00s left"), line
    assert sweep.Progress(1, {"a": None}).plan_line(0, 0, 0).endswith("no estimate (no committed runs to time it by)")


def test_sweep_prints_plan_and_per_cell_progress(tmp_path, reproduce, capsys):
    results = tmp_path / "results"
    _committed(results / "runs", "table2_A", "warmup", 1, 120.0)
    code = reproduce.main(["--experiments", "table2_A,table2_B", "--schedules", "warmup", "--seeds", "1,2",
                           "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(results), "--jobs", "2",
                           "--skip-prepare", "--tabulate", "no", "--train-cmd", " ".join(FAKE)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, out
    plan = next(ln for ln in out if ln.startswith("plan: "))
    assert plan == ("plan: 3 cell(s) to run, 1 skipped (finished); about 3m00s at --jobs 2 (from the wall times "
                    "of 1 committed runs)")
    done = [ln for ln in out if ": completed (BLEU test 1.00) in " in ln]
    assert len(done) == 3 and all(" elapsed, " in ln for ln in done) and done[-1].endswith("3/3 cells, "
                                                                                            + done[-1].split("3/3 cells, ")[1])
    assert done[-1].endswith(", done") and "left" in done[0]
    assert sorted(p.name for p in (results / "runs").iterdir()) == [
        "table2_A-warmup-s1", "table2_A-warmup-s2", "table2_B-warmup-s1", "table2_B-warmup-s2"]


def _start_sweep(tmp_path, seconds=30.0):
    env = {**os.environ, "FAKE_TRAIN_SECONDS": str(seconds), "FAKE_TRAIN_UPDATES": "300", "WANDB_MODE": "disabled"}
    runs = tmp_path / "runs"
    p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--experiments", "table2_A,table2_B",
                          "--schedules", "warmup", "--seeds", "1", "--runs-dir", str(runs), "--results-dir",
                          str(tmp_path / "results"), "--jobs", "2", "--skip-prepare", "--tabulate", "no",
                          "--train-cmd", " ".join(FAKE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    cells = [runs / "table2_A-warmup-s1", runs / "table2_B-warmup-s1"]
    deadline = time.monotonic() + 30
    while not all((c / "metrics.jsonl").exists() and (c / "metrics.jsonl").stat().st_size for c in cells):
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    return p, cells


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_stops_the_children_cleanly_with_one_line(tmp_path):
    p, cells = _start_sweep(tmp_path)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    assert sum(ln.startswith("stopping: 2 running cell(s)") for ln in out.splitlines()) == 1, out
    assert out.splitlines()[-1].startswith("stopped: 2 cell(s) interrupted with a checkpoint"), out
    for c in cells:  # each child got SIGTERM, wrote its summary and exited
        assert (c / "stopped_by").read_text() == str(int(signal.SIGTERM))
        s = json.loads((c / "summary.json").read_text())
        assert s["status"] == "running" and 0 < s["updates"] < 300
        assert _gone(int((c / "pid").read_text()))
        assert sweep.holder(c) is None  # the cell locks went with the sweep


def test_children_die_with_a_killed_sweep(tmp_path):
    p, cells = _start_sweep(tmp_path)
    p.kill()  # SIGKILL: no handler runs; the children's parent-death signal stops them
    p.communicate(timeout=30)
    for c in cells:
        pid = int((c / "pid").read_text())
        assert _gone(pid), f"training child {pid} outlived its sweep"
        assert (c / "stopped_by").read_text() == str(int(signal.SIGTERM))  # stopped cleanly, summary written
        assert json.loads((c / "summary.json").read_text())["status"] == "running"


def test_a_cell_held_by_another_sweep_is_running_elsewhere(tmp_path, reproduce, capsys):
    runs = tmp_path / "runs"
    other = sweep.SweepLock(runs / "table2_A-warmup-s1").acquire()  # the other sweep holds this cell
    try:
        code = reproduce.main(["--experiments", "table2_A,table2_B", "--schedules", "warmup", "--seeds", "1",
                               "--runs-dir", str(runs), "--results-dir", str(tmp_path / "results"),
                               "--skip-prepare", "--tabulate", "no", "--train-cmd", " ".join(FAKE)])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err  # not a failure: the other sweep finishes it
        assert f"[1/2] table2_A-warmup-s1: running elsewhere (pid {os.getpid()} on " in out.out
        assert "1 running elsewhere" in next(ln for ln in out.out.splitlines() if ln.startswith("plan: "))
        assert not (runs / "table2_A-warmup-s1" / "summary.json").exists()  # left alone
        assert json.loads((runs / "table2_B-warmup-s1" / "summary.json").read_text())["status"] == "completed"
        # --status, from another shell, lists what a sweep holds
        reproduce.main(["--status", "--runs-dir", str(runs)])
        assert "1 cell(s) held by a sweep" in capsys.readouterr().out
    finally:
        other.release()


def test_a_subset_sweep_leaves_the_committed_tables_alone(reproduce, monkeypatch, capsys, tmp_path):
    # a checkout of its own (results/cpu/runs holding every cell of the subset, finished), so the test neither
    # depends on nor writes to this repository's committed results
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    for exp in ("table2_A", "table2_B", "table2_H", "table2_L", "table2_O"):
        for sched in ("warmup", "no_warmup"):
            d = tmp_path / "results" / "cpu" / "runs" / f"{exp}-{sched}-s1"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"status": "completed"}))
            (d / "bleu.json").write_text("{}")
    calls = []
    monkeypatch.setattr(reproduce, "sh", lambda cmd, dry, log=None, env_extra=None: calls.append(cmd) or 0)
    fake = ["--train-cmd", " ".join(FAKE)]  # nothing may train; a stand-in writes no config to compare
    # every cell of this subset is committed already: nothing trains, nothing is written
    assert reproduce.main(["--sweep", "table2_core", "--seeds", "1", "--skip-prepare", *fake]) == 0
    out = capsys.readouterr().out
    assert not any("make_report.py" in " ".join(c) for c in calls)
    assert "subset sweep: 0 cell(s) run, published under results/cpu/runs/; the tables and plots of results/cpu/ " in out
    assert str(tmp_path) not in out  # repository-relative paths
    calls.clear()
    assert reproduce.main(["--sweep", "table2_core", "--seeds", "1", "--skip-prepare", "--tabulate", "yes",
                           "--dry-run", *fake]) == 0
    report = next(c for c in calls if "scripts/make_report.py" in c)
    assert report[-4:] == ["--runs", "results/cpu/runs", "--out", "results/cpu"]
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_make_report_command_line_is_repository_relative():
    spec = importlib.util.spec_from_file_location("make_report_test", ROOT / "scripts" / "make_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    line = mod.command_line(["--runs", str(ROOT / "results" / "cpu" / "runs"), "--out", "/tmp/x"])
    assert line == "python scripts/make_report.py --runs results/cpu/runs --out /tmp/x"
