"""`make reproduce` end to end at toy size: a two-experiment cpu sweep on a tiny corpus, through the real
scripts (data -> sentencepiece -> train each -> BLEU -> tabulate), then a rerun that skips finished runs."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys

import pytest
from conftest import TINY

SWEEP = [*TINY, "trainer.max_tokens=128", "trainer.max_update=6", "trainer.log_interval=2", "trainer.val_interval=3",
         "trainer.save_interval=3", "eval.max_len_b=8", "schedule.time_scale=1000"]


@pytest.mark.slow
def test_two_experiment_cpu_sweep_end_to_end(tmp_path, repo_root, toy_corpus):
    corpus = toy_corpus
    runs, results = tmp_path / "runs", tmp_path / "results"
    cmd = [sys.executable, str(repo_root / "scripts" / "reproduce.py"), "--scale", "cpu",
           "--experiments", "afx_adam,afx_adafactor", "--schedules", "no_warmup", "--seeds", "1",
           "--data-dir", str(corpus),
           "--runs-dir", str(runs), "--results-dir", str(results), "--jobs", "2",
           "--", f"data.root={tmp_path / 'data'}", *SWEEP]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for name in ("afx_adam-no_warmup-s1", "afx_adafactor-no_warmup-s1"):
        d = runs / name
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["updates"] == 6, summary
        assert set(json.loads((d / "bleu.json").read_text())) == {"test"}  # the cpu scale scores test2016
        assert (d / "hyp.test.txt").read_text().count("\n") == 16
        # each finished run is published (its small files only) under results/<scale>/runs for committing
        pub = results / "runs" / name
        assert sorted(p.name for p in pub.iterdir()) == ["bleu.json", "config.yaml", "hyp.test.txt.gz",
                                                         "metrics.jsonl", "summary.json"]
        assert (pub / "summary.json").read_bytes() == (d / "summary.json").read_bytes()
        # the hypotheses, gzipped with no name or time in the header: the same text gives the same bytes
        assert gzip.decompress((pub / "hyp.test.txt.gz").read_bytes()) == (d / "hyp.test.txt").read_bytes()
        assert (pub / "hyp.test.txt.gz").read_bytes()[4:8] == b"\0\0\0\0"  # mtime 0
    # no momentum buffer: at this toy size (d 32 < min_dim_size_to_factor) nothing is factored, so Adafactor
    # keeps one full second moment where Adam keeps two buffers
    adam = json.loads((runs / "afx_adam-no_warmup-s1" / "summary.json").read_text())["optimizer_state_bytes"]
    afx = json.loads((runs / "afx_adafactor-no_warmup-s1" / "summary.json").read_text())["optimizer_state_bytes"]
    assert afx < 0.6 * adam

    with open(results / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["experiment"], r["warmup"], r["status"]) for r in rows] == [
        ("afx_adam", "no", "completed"), ("afx_adafactor", "no", "completed")]
    assert rows[1]["factored"] == "yes" and rows[1]["beta2"] == "1-t^-0.8"
    assert all(r["BLEU test (test_2016_flickr)"] != "-" for r in rows)
    assert (results / "valid_loss.png").stat().st_size > 5000
    assert (results / "optimizer_memory.png").stat().st_size > 5000

    # a rerun trains nothing: both cells are finished
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("completed, published, skipped") == 2
    assert "scripts/train.py" not in again.stdout

    # on a fresh machine (no runs/ at all) the committed copies are enough: nothing is retrained
    import shutil

    shutil.rmtree(runs)
    fresh = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert fresh.stdout.count("completed, published, skipped") == 2 and "scripts/train.py" not in fresh.stdout

    # the same cells without the sweep's toy overrides: the published toy runs are not those cells, and are
    # refused by name and key instead of being skipped as finished (or published as the real thing)
    real = [a for a in cmd if a not in SWEEP]
    real.insert(real.index("--"), "--dry-run")
    other = subprocess.run(real, capture_output=True, text=True, env=env, timeout=600)
    assert other.returncode == 1, other.stdout[-3000:]
    assert other.stdout.count("refused: ") == 2 and "published, skipped" not in other.stdout
    assert "trainer.max_update: 6 != 1000" in other.stdout and "model.d_model: 32 != 128" in other.stdout


@pytest.mark.parametrize("rc", [0, 4, -9])
def test_a_cell_left_running_fails_the_sweep_and_is_listed(tmp_path, repo_root, monkeypatch, capsys, rc):
    """A cell stopped by a signal (its train.py saved and exited, or was killed) is neither completed nor
    diverged: reproduce lists it and exits non-zero. rc 0 is what a SIGTERM'd train.py returned before."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("reproduce", repo_root / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class Done:  # a child that has exited with `code`
        def __init__(self, code):
            self.code = code

        def poll(self):
            return self.code

    def fake_start(cmd, log, env_extra=None):
        assert cmd[1] == "scripts/train.py", cmd
        run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("run_dir=")))
        run_dir.mkdir(parents=True, exist_ok=True)
        stopped = "experiments=afx_adam" in cmd
        (run_dir / "summary.json").write_text(json.dumps({"status": "running" if stopped else "diverged"}))
        return Done(rc if stopped else 0)

    monkeypatch.setattr(mod, "sh", lambda cmd, dry, log=None, env_extra=None: 0)
    monkeypatch.setattr(mod, "start", fake_start)
    monkeypatch.setattr(mod, "not_the_cell", lambda *a: [])  # the fake writes no config (identity: tested above)
    code = mod.main(["--experiments", "afx_adam,afx_adafactor", "--schedules", "no_warmup", "--seeds", "1",
                     "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 run(s) neither completed nor diverged" in err and "afx_adam-no_warmup-s1 (" in err
    assert "afx_adafactor" not in err  # a diverged cell is a finished one
