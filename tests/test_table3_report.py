"""Table 3's report (cells, drops from the `scaled` scheme, the paper's claim), the loss verdict's progress, and
`make rescore`'s recomputation from the committed hypotheses: each from run directories written here."""

from __future__ import annotations

import gzip
import json

import pytest
import yaml

from adafactor_repro.report import find_runs, table3
from adafactor_repro.report.loss_verdict import baseline, progress


def _run(root, name, *, scheme=None, opt="adam", seed=1, bleu=20.0, nll=3.5, status="completed", u=5.9,
         row=None, warmup=True, data=None, hyps=None):
    d = root / name
    d.mkdir(parents=True)
    target = "adafactor_repro.optim.Adafactor" if opt == "adafactor" else "torch.optim.Adam"
    cfg = {"name": name, "table3_scheme": scheme, "paper_row": row, "optim": {"_target_": target},
           "trainer": {"seed": seed}, "schedule": {"linear_warmup": warmup}, "data": data or {"tgt_lang": "de"}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "summary.json").write_text(json.dumps({"status": status, "valid_nll": nll, "valid_unigram_nll": u}))
    if status == "completed":
        rec = {"bleu": bleu, "chrf": 50.0, "hypotheses": "hyp.test.txt"}
        (d / "bleu.json").write_text(json.dumps({"test": rec}))
        if hyps is not None:
            (d / "hyp.test.txt.gz").write_bytes(gzip.compress("".join(h + "\n" for h in hyps).encode()))
    return d


def test_table3_rows_drops_and_claim(tmp_path):
    for opt, vals in (("adam", {"scaled": (20, 22), "unit": (18, 18), "small": (10, 12)}),
                      ("adafactor", {"scaled": (21, 21), "unit": (21, 20), "small": (19, 19)})):
        for scheme, bs in vals.items():
            for seed, b in enumerate(bs, 1):
                _run(tmp_path, f"table3_{opt}_{scheme}-own-s{seed}", scheme=scheme, opt=opt, seed=seed, bleu=b)
    _run(tmp_path, "table2_A-warmup-s1", row="A", bleu=30.0)  # not a Table 3 cell
    rows = table3.cell_rows(find_runs(tmp_path))
    assert [(r["scheme"], r["optimizer"]) for r in rows] == [(s, o) for s in table3.SCHEMES for o in table3.OPTIMIZERS]
    by = {(r["scheme"], r["optimizer"]): r for r in rows}
    assert by[("scaled", "adam")]["bleu_mean"] == "21.00" and by[("scaled", "adam")]["seeds_bleu"] == "s1:20.00 s2:22.00"
    assert by[("unit", "adam")]["drop_vs_scaled"] == "3.00" and by[("unit", "adafactor")]["drop_vs_scaled"] == "0.50"
    assert by[("small", "adam")]["paper_drop_vs_scaled"] == "2.2"  # 26.4 - 24.2, from paper_table3.csv
    assert table3.claim(rows) == {"unit": "yes", "small": "yes"}
    assert "`unit`: yes; `small`: yes" in table3.to_markdown(rows)
    assert table3.to_csv(rows).splitlines()[0].startswith("scheme,init_sigma,multiplier,optimizer,paper_bleu")


def test_loss_progress_is_zero_at_the_baseline_one_at_the_best_and_zero_when_diverged(tmp_path):
    _run(tmp_path, "a", nll=5.9)
    _run(tmp_path, "b", nll=3.9)
    _run(tmp_path, "c", nll=4.9)
    _run(tmp_path, "d", status="diverged", nll=None)
    a, b, c, d = find_runs(tmp_path)
    u = baseline([a, b, c, d])
    assert u == 5.9
    assert progress(a, u, 3.9) == 0.0 and progress(b, u, 3.9) == 1.0
    assert progress(c, u, 3.9) == pytest.approx(0.5) and progress(d, u, 3.9) == 0.0
    assert progress(c, None, 3.9) is None


def test_rescore_recomputes_bleu_from_the_gzipped_hypotheses(tmp_path, toy_corpus):
    from adafactor_repro.data import load_raw, prepare
    from adafactor_repro.data.build import data_config
    from adafactor_repro.evaluate import bleu
    from adafactor_repro.evaluate.rescore import rescore_runs

    data = data_config("multi30k")
    data.update(local_dir=str(toy_corpus), root=str(tmp_path / "data"), num_workers=1, min_eval_pairs=1)
    data["spm"] = {**data["spm"], "vocab_size": 60, "hard_vocab_limit": False}
    refs = load_raw(prepare(data), "test")[1]
    hyps = [r if i % 3 else r.split(" ")[0] for i, r in enumerate(refs)]
    s = bleu.score(hyps, refs, compound_split=False)
    d = _run(tmp_path / "runs", "x-own-s1", data=data, hyps=hyps, bleu=s["bleu"])
    rec = json.loads((d / "bleu.json").read_text())
    rec["test"]["chrf"] = s["chrf"]
    (d / "bleu.json").write_text(json.dumps(rec))
    good, = rescore_runs(find_runs(tmp_path / "runs"))
    assert good.problems == [] and good.bleu == s["bleu"] and 0 < good.bleu < 100
    rec["test"]["bleu"] = s["bleu"] + 0.01  # a published number that its hypotheses do not give
    (d / "bleu.json").write_text(json.dumps(rec))
    bad, = rescore_runs(find_runs(tmp_path / "runs"))
    assert bad.problems == [f"bleu {s['bleu']:.4f} != bleu.json {s['bleu'] + 0.01}"]
