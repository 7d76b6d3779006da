"""tabulate on fabricated run directories: the table's columns and rows, a diverged row, the plots."""

from __future__ import annotations

import csv
import json

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from adafactor_repro.report import build_rows, find_runs
from adafactor_repro.report.table import describe_optimizer


def _config(repo_root, exp, sched):
    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiments={exp}", f"schedule={sched}"])
    return OmegaConf.to_container(cfg, resolve=False)


def _fake_run(root, repo_root, exp, sched, *, status, diverged_at=None, bleu=None, state=1000, params=2000):
    d = root / f"{exp}-{sched}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(_config(repo_root, exp, sched)))
    summary = {"name": exp, "schedule": sched, "scale": "cpu", "status": status, "diverged_at": diverged_at,
               "updates": diverged_at or 100, "wall_time_s": 120.0, "tokens_per_s": 5000.0, "valid_loss": 2.0,
               "valid_nll": 1.8, "valid_ppl": 3.48, "num_parameters": params, "optimizer_state_bytes": state,
               "peak_memory_bytes": 3 * 2**20}
    (d / "summary.json").write_text(json.dumps(summary))
    lines = [{"split": "train", "update": u, "loss": 5.0 - u / 100, "optim_rms_u_mean": 1.0 + u / 50,
              "optim_rms_u_max": 2.0 + u / 50} for u in (10, 20, 30)]
    lines += [{"split": "valid", "update": u, "loss": 4.0 - u / 100} for u in (50, 100)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in lines) + "\n{torn")
    if bleu is not None:
        (d / "bleu.json").write_text(json.dumps({
            "valid": {"bleu": bleu, "signature": "nrefs:1|...", "chrf": 50.0, "tok_bleu_compound_split": bleu + 1},
            "test": {"bleu": bleu - 1, "signature": "nrefs:1|...", "chrf": 49.0, "tok_bleu_compound_split": bleu},
        }))
    return d


def test_describe_optimizer_columns(repo_root):
    assert describe_optimizer(_config(repo_root, "afx_adam", "warmup")) == {
        "optimizer": "Adam", "beta1": "0.9", "beta2": "0.999", "clip_d": "-", "factored": "no",
        "relative_step": "no"}
    assert describe_optimizer(_config(repo_root, "afx_adafactor", "warmup")) == {
        "optimizer": "Adafactor", "beta1": "0", "beta2": "1-t^-0.8", "clip_d": "1", "factored": "yes",
        "relative_step": "yes"}
    assert describe_optimizer(_config(repo_root, "afx_clip2", "warmup"))["clip_d"] == "2"


def test_table_rows_including_a_diverged_run(tmp_path, repo_root):
    runs_root = tmp_path / "runs" / "cpu"
    _fake_run(runs_root, repo_root, "afx_adafactor", "no_warmup", status="completed", bleu=30.0, state=500)
    _fake_run(runs_root, repo_root, "afx_adam", "warmup", status="completed", bleu=31.5, state=16000)
    _fake_run(runs_root, repo_root, "afx_adam", "no_warmup", status="diverged", diverged_at=42)
    rows = build_rows(find_runs(runs_root))
    # the paper's order: afx_adam first (warmup before no_warmup), the full proposal last
    assert [(r["experiment"], r["warmup"]) for r in rows] == [
        ("afx_adam", "yes"), ("afx_adam", "no"), ("afx_adafactor", "no")]
    adam, diverged, afx = rows
    assert adam["BLEU test (test_2016_flickr)"] == "30.50" and adam["tok. BLEU valid (val)"] == "32.50"
    assert adam["B/param"] == "8.000" and afx["B/param"] == "0.250"
    assert diverged["status"] == "diverged" and diverged["diverged at"] == "42"
    assert diverged["BLEU valid (val)"] == "-"
    # the baseline is afx_adam with warmup on the first scored split (valid here)
    delta = "Δ vs afx_adam (valid (val))"
    assert (adam[delta], diverged[delta], afx[delta]) == ("+0.00", "-", "-1.50")
    assert afx["factored"] == "yes" and afx["beta2"] == "1-t^-0.8"


def test_tabulate_script_writes_table_and_plots(tmp_path, repo_root, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_report", repo_root / "scripts" / "make_report.py")
    tab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tab)
    runs_root = tmp_path / "runs"
    _fake_run(runs_root, repo_root, "afx_base", "no_warmup", status="completed", bleu=20.0)
    _fake_run(runs_root, repo_root, "afx_clip", "no_warmup", status="completed", bleu=25.0)
    _fake_run(runs_root, repo_root, "afx_adam", "no_warmup", status="diverged", diverged_at=7)
    out = tmp_path / "results"
    # an ad-hoc folder of runs (named without seeds, configs written by hand): tabulated as they are
    assert tab.main(["--runs", str(runs_root), "--out", str(out), "--note", "partial", "--no-cell-check"]) == 0
    md = (out / "runs.md").read_text()
    assert md.startswith("# Every run") and "- note: partial" in md and "- commit:" in md
    assert md.count("\n| afx_") == 3
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["experiment"] for r in rows] == ["afx_adam", "afx_base", "afx_clip"]
    # no Table 2 run among them: the cell table says so rather than inventing rows
    assert "_no scored Table 2 runs found_" in (out / "table2.md").read_text()
    for png in ("valid_loss.png", "optimizer_memory.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(out.glob(".*")), "temporary files left behind"


def test_tabulate_without_runs_says_what_to_do(tmp_path, repo_root, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_report", repo_root / "scripts" / "make_report.py")
    tab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tab)
    assert tab.main(["--runs", str(tmp_path / "nothing")]) == 1
    assert "make reproduce" in capsys.readouterr().err


def test_a_split_nobody_scored_gets_no_column(tmp_path, repo_root):
    runs_root = tmp_path / "runs"
    d = _fake_run(runs_root, repo_root, "afx_adam", "warmup", status="completed", bleu=30.0)
    scores = json.loads((d / "bleu.json").read_text())
    (d / "bleu.json").write_text(json.dumps({"test": scores["test"]}))  # the cpu scale scores test only
    (row,) = build_rows(find_runs(runs_root))
    assert not any("valid" in c and "BLEU" in c for c in row)
    assert row["BLEU test (test_2016_flickr)"] == "29.00" and row["Δ vs afx_adam (test (test_2016_flickr))"] == "+0.00"


def test_commit_stamp_counts_tabulated_runs_not_in_head(tmp_path, repo_root):
    import importlib.util
    import subprocess
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("make_report", repo_root / "scripts" / "make_report.py")
    tab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tab)
    runs_root = tmp_path / "results" / "runs"
    for name in ("a-s1", "b-s1"):
        (runs_root / name).mkdir(parents=True)
        (runs_root / name / "summary.json").write_text("{}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "results/runs/a-s1"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    runs = [SimpleNamespace(path=runs_root / n) for n in ("a-s1", "b-s1")]
    assert tab.uncommitted(runs, runs_root) == " + 1 of these run directories not committed yet"
    subprocess.run([*git, "add", "results/runs/b-s1"], check=True)
    subprocess.run([*git, "commit", "-qm", "b"], check=True)
    assert tab.uncommitted(runs, runs_root) == ""
    assert tab.uncommitted(runs, tmp_path / "elsewhere") == ""  # not a checkout: no claim either way
