"""`make reproduce` end to end at toy size: a two-experiment cpu sweep on a tiny corpus, through the real
scripts (data -> sentencepiece -> train each -> BLEU -> tabulate), then a rerun that skips finished runs."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys

import pytest

WORDS = {"a": "ein", "dog": "hund", "cat": "katze", "runs": "rennt", "red": "rot", "big": "gross",
         "the": "der", "man": "mann", "sees": "sieht", "small": "klein", "house": "haus", "tree": "baum"}


def write_corpus(root, n_train=200, n_eval=12, seed=0):
    rng = random.Random(seed)
    keys = sorted(WORDS)
    root.mkdir(parents=True)
    for stem, n in (("train", n_train), ("val", n_eval), ("test_2016_flickr", n_eval)):
        src = [[rng.choice(keys) for _ in range(rng.randint(2, 6))] for _ in range(n)]
        (root / f"{stem}.en").write_text("".join(" ".join(s) + "\n" for s in src))
        (root / f"{stem}.de").write_text("".join(" ".join(WORDS[w] for w in s) + "\n" for s in src))
    return root


TINY = ["data.spm.vocab_size=40", "data.num_workers=1", "model.d_model=32", "model.n_heads=2", "model.ffn_dim=64",
        "model.encoder_layers=1", "model.decoder_layers=1", "trainer.max_tokens=128", "trainer.max_update=6",
        "trainer.log_interval=2", "trainer.val_interval=3", "trainer.save_interval=3", "logger.mode=disabled",
        "eval.beam=2", "eval.max_len_b=8", "schedule.time_scale=1000"]


@pytest.mark.slow
def test_two_experiment_cpu_sweep_end_to_end(tmp_path, repo_root):
    corpus = write_corpus(tmp_path / "corpus")
    runs, results = tmp_path / "runs", tmp_path / "results"
    cmd = [sys.executable, str(repo_root / "scripts" / "reproduce.py"), "--scale", "cpu",
           "--experiments", "afx_adam,afx_adafactor", "--schedules", "no_warmup", "--seeds", "1",
           "--data-dir", str(corpus),
           "--runs-dir", str(runs), "--results-dir", str(results), "--jobs", "2",
           "--", f"data.root={tmp_path / 'data'}", *TINY]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for name in ("afx_adam-no_warmup-s1", "afx_adafactor-no_warmup-s1"):
        d = runs / name
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["updates"] == 6, summary
        assert set(json.loads((d / "bleu.json").read_text())) == {"test"}  # the cpu scale scores test2016
        assert (d / "hyp.test.txt").read_text().count("\n") == 12
        # each finished run is published (its small files only) under results/<scale>/runs for committing
        pub = results / "runs" / name
        assert sorted(p.name for p in pub.iterdir()) == ["bleu.json", "config.yaml", "metrics.jsonl", "summary.json"]
        assert (pub / "summary.json").read_bytes() == (d / "summary.json").read_bytes()
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
