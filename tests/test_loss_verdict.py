"""The Table 2 loss verdict beside BLEU (issue 18, item 4): progress from the unigram baseline, its own
agreement count, and cells whose seeds straddle either line flagged fragile."""

from __future__ import annotations

import json

import pytest
import yaml

from adafactor_repro.report import find_runs, table2


def _run(root, row, sched, seed, bleu, nll, u=5.9, status="completed"):
    d = root / f"table2_{row}-{sched}-s{seed}"
    d.mkdir(parents=True)
    cfg = {"name": f"table2_{row}", "paper_row": row, "trainer": {"seed": seed},
           "schedule": {"linear_warmup": sched == "warmup"}, "optim": {"lr": 1.0}, "model": {"d_model": 128}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "summary.json").write_text(json.dumps({"status": status, "valid_nll": nll, "valid_unigram_nll": u}))
    if status == "completed":
        (d / "bleu.json").write_text(json.dumps({"test": {"bleu": bleu}}))


def test_loss_verdict_progress_agreement_and_fragile(tmp_path):
    _run(tmp_path, "A", "warmup", 1, 20.0, 3.5)
    _run(tmp_path, "A", "warmup", 2, 20.0, 3.6)
    # no warmup: one stalled seed (above the baseline), one learning below the BLEU cliff, one diverged
    _run(tmp_path, "A", "no_warmup", 1, 0.0, 5.95)
    _run(tmp_path, "A", "no_warmup", 2, 3.0, 4.3)
    _run(tmp_path, "A", "no_warmup", 3, None, None, status="diverged")
    import gzip

    # the warmup seeds translate (every line its own), the learning no-warmup seed writes one sentence twice
    for seed, lines in ((1, ["a b", "c d", "e f", "g h"]), (2, ["a b", "c d", "e f", "g h"])):
        (tmp_path / f"table2_A-warmup-s{seed}" / "hyp.test.txt.gz").write_bytes(gzip.compress(
            "".join(x + "\n" for x in lines).encode()))
    (tmp_path / "table2_A-no_warmup-s2" / "hyp.test.txt.gz").write_bytes(gzip.compress(b"x y\nx y\nx y\nz\n"))
    s = table2.summarize(find_runs(tmp_path))
    w, nw = s["rows"]
    assert w["distinct_hyps_mean"] == "1.00" and nw["distinct_hyps_mean"] == "0.50"  # the seeds that have them
    assert w["progress_mean"] == "1.00" and w["loss_verdict"] == "trains" and w["fragile"] == "no"
    f = [(5.9 - 5.95) / 2.35, (5.9 - 4.3) / 2.35, 0.0]
    assert nw["progress_mean"] == f"{sum(f) / 3:.2f}" and nw["seeds_progress"] == "s1:-0.02 s2:0.68 s3:0.00"
    assert nw["verdict"] == "collapsed"  # BLEU 0, 3, 0 all below 0.2 x 20
    assert nw["loss_verdict"] == "trains (split: 2/3)" and nw["fragile"] == "yes"
    assert (nw["agrees"], nw["loss_agrees"]) == ("yes", "no")  # the paper's A no-warmup collapsed (0.1)
    assert table2.agreement(s["rows"], "loss_agrees") == {"no_warmup": (0, 1), "all": (1, 2)}
    md = table2.to_markdown(s["rows"], s["cells"])
    assert "Loss verdict agreement with the paper: no-warmup 0/1, all 1/2." in md
    assert "U = 5.900 nats" in md and "Fragile (seeds on both sides of the BLEU or the loss line): A no-warmup." in md
    assert "loss f 0.22 trains (split: 2/3) **≠**; *fragile*" in table2.to_wide_markdown(s["rows"])


def test_without_the_baseline_the_loss_verdict_is_absent_not_invented(tmp_path):
    _run(tmp_path, "A", "warmup", 1, 20.0, 3.5, u=None)
    row, = table2.summarize(find_runs(tmp_path))["rows"]
    assert row["loss_verdict"] == "-" and row["loss_agrees"] == "-" and row["progress_mean"] == "-"
    assert row["verdict"] == "trains"
    with pytest.raises(KeyError):
        row["no_such_column"]
