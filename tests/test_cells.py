"""A published run is the cell it claims to be (issue 17, item 1): its resolved config is compared with the
cell's canonical config on every result-changing key, and a table's runs share one data artifact and commit."""

from __future__ import annotations

import json

import yaml

from adafactor_repro.report import find_runs
from adafactor_repro.report.cells import canonical_config, mismatch, provenance


def _nest(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        d = out
        *parents, last = k.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = v
    return out


def _write_run(root, name, flat, *, scale="cpu", schedule="no_warmup", commit="abc", art=("k1", "s1")):
    d = root / name
    d.mkdir(parents=True)
    cfg = _nest(flat)
    cfg["data_artifact"] = {"dir": "/somewhere", "key": art[0], "spm_sha256": art[1]}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "summary.json").write_text(json.dumps({"status": "completed", "scale": scale, "schedule": schedule,
                                                "git_commit": commit}))
    return d


def test_the_canonical_run_matches_and_an_override_hiding_behind_the_name_is_named(repo_root, tmp_path):
    flat = canonical_config("cpu", "table2_Q1", "warmup", 3, repo_root)
    assert flat["trainer.max_update"] == 1000 and flat["model.d_model"] == 128 and flat["trainer.seed"] == 3
    # where the files went and how often it logged do not change a result
    same = {**flat, "run_dir": "/elsewhere", "data.local_dir": "/x", "trainer.log_interval": 1, "logger.mode": "x"}
    _write_run(tmp_path, "table2_Q1-warmup-s3", same, schedule="warmup")
    # the case: a 20-update toy run written under the cell's name
    toy = {**flat, "trainer.max_update": 20, "model.d_model": 32}
    _write_run(tmp_path / "b", "table2_Q1-warmup-s3", toy, schedule="warmup")
    good, = find_runs(tmp_path)
    bad, = find_runs(tmp_path / "b")
    assert mismatch(good, repo_root) == []
    assert mismatch(bad, repo_root) == ["model.d_model: 32 != 128", "trainer.max_update: 20 != 1000"]


def test_a_run_under_another_cells_name_or_unknown_cell_is_refused(repo_root, tmp_path):
    flat = canonical_config("cpu", "table2_A", "no_warmup", 1, repo_root)
    _write_run(tmp_path, "table2_B-no_warmup-s1", flat)
    run, = find_runs(tmp_path)
    assert mismatch(run, repo_root) == ["directory table2_B-no_warmup-s1 != table2_A-no_warmup-s1"]
    gone = {**flat, "name": "table2_Z"}
    _write_run(tmp_path / "z", "table2_Z-no_warmup-s1", gone)
    z, = find_runs(tmp_path / "z")
    assert mismatch(z, repo_root)[0].startswith("no such cell here (scale=cpu experiments=table2_Z")


def test_provenance_names_the_runs_of_other_data_or_code(tmp_path):
    flat = {"name": "x", "trainer.seed": 1}
    for i in range(3):
        _write_run(tmp_path, f"x-no_warmup-s{i}", flat)
    _write_run(tmp_path, "y-no_warmup-s1", flat, art=("k2", "s2"))
    _write_run(tmp_path, "z-no_warmup-s1", flat, commit="old")
    p = provenance(find_runs(tmp_path))
    assert p["artifact"] == ("k1", "s1") and p["commit"] == "abc"
    assert set(p["odd"]) == {"y-no_warmup-s1", "z-no_warmup-s1"}
    assert "data artifact k2" in p["odd"]["y-no_warmup-s1"] and "commit old" in p["odd"]["z-no_warmup-s1"]


def test_make_report_tabulates_only_runs_that_are_their_cell_and_lists_the_rest(repo_root, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_report_cells", repo_root / "scripts" / "make_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = tmp_path / "runs"
    for sched in ("warmup", "no_warmup"):
        flat = canonical_config("cpu", "table2_B", sched, 1, repo_root)
        d = _write_run(runs, f"table2_B-{sched}-s1", flat, schedule=sched)
        (d / "bleu.json").write_text(json.dumps({"test": {"bleu": 20.0 if sched == "warmup" else 10.0}}))
    toy = {**canonical_config("cpu", "table2_A", "warmup", 1, repo_root), "trainer.max_update": 20}
    (_write_run(runs, "table2_A-warmup-s1", toy, schedule="warmup") / "bleu.json").write_text('{"test": {"bleu": 30}}')
    other = canonical_config("cpu", "table2_C", "warmup", 1, repo_root)
    (_write_run(runs, "table2_C-warmup-s1", other, schedule="warmup", commit="zzz") / "bleu.json").write_text(
        '{"test": {"bleu": 5}}')
    assert mod.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--twin", str(tmp_path / "none")]) == 0
    err = capsys.readouterr().err
    assert "left out table2_A-warmup-s1: not its cell: trainer.max_update: 20 != 1000" in err
    assert "left out table2_C-warmup-s1: commit zzz != abc" in err
    md = (tmp_path / "out" / "table2.md").read_text()
    assert "- runs: 2 tabulated, trained at commit abc on data artifact k1 (spm.model sha256 s1); 2 left out" in md
    assert "| A |" not in md and "| C |" not in md and "| B |" in md  # the toy A (BLEU 30) did not set the line
    assert "## Runs left out" in md and "`table2_A-warmup-s1`: not its cell: trainer.max_update: 20 != 1000" in md
