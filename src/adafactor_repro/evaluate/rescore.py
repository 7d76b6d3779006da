"""Every published BLEU recomputed from its committed hypotheses (`make rescore`, issue 18 item 3).

A published run keeps its detokenized hypotheses gzipped (`hyp.<split>.txt.gz`, one line per reference line).
This rescoring reads them with the split's raw references (the data artifact rebuilt from the run's data config,
and checked to be the artifact the run recorded), recomputes sacreBLEU's BLEU and chrF, and compares them with
the run's bleu.json and with the tables that quote it. The same check by hand, with sacreBLEU's command line:

    gunzip -k results/cpu/runs/table2_O-no_warmup-s1/hyp.test.txt.gz
    sacrebleu data/multi30k/<key>/test.raw.de -i results/cpu/runs/table2_O-no_warmup-s1/hyp.test.txt -m bleu chrf
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..data import load_raw, prepare
from . import bleu as bleu_mod


@dataclass
class Rescored:
    run: str
    split: str
    recorded: dict
    bleu: float
    chrf: float
    problems: list[str] = field(default_factory=list)


def read_hypotheses(run_dir: Path, name: str) -> list[str]:
    """`name` (bleu.json's "hypotheses") from the run directory, gzipped (published) or plain (a live run)."""
    for path in (run_dir / f"{name}.gz", run_dir / name):
        if path.is_file():
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            text = raw.decode("utf-8")
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            return lines
    raise FileNotFoundError(f"{run_dir}: no {name}.gz (nor {name}); publish the run again with scripts/reproduce.py")


def _data_dir(config: dict, cache: dict) -> Path:
    """The run's data artifact, rebuilt (or reused) from its data config wherever this checkout keeps the corpus:
    the recorded local_dir is a path on the machine that trained it, so it is dropped when it does not exist here."""
    data = dict(config["data"])
    if data.get("local_dir") and not Path(data["local_dir"]).is_dir():
        data["local_dir"] = None
    key = repr(sorted((k, repr(v)) for k, v in data.items()))
    if key not in cache:
        cache[key] = prepare(data)
    return cache[key]


def rescore_runs(runs, refs_cache: dict | None = None, tol: float = 1e-9) -> list[Rescored]:
    """Recompute BLEU and chrF of every scored split of every run (report.Run objects)."""
    refs_cache = {} if refs_cache is None else refs_cache
    dirs: dict = {}
    out = []
    for run in runs:
        if run.summary.get("status") != "completed":
            continue  # a diverged run has no model and no hypotheses: its BLEU is 0 by the tables' rule
        for split, rec in sorted(run.bleu.items()):
            if not isinstance(rec, dict) or "hypotheses" not in rec:
                continue
            d = _data_dir(run.config, dirs)
            want = (run.config.get("data_artifact") or {}).get("key")
            problems = [] if not want or want == d.name else [f"data artifact here {d.name} != the run's {want}"]
            if (d, split) not in refs_cache:
                refs_cache[(d, split)] = load_raw(d, split)[1]
            hyps = read_hypotheses(run.path, rec["hypotheses"])
            s = bleu_mod.score(hyps, refs_cache[(d, split)], lang=run.config["data"].get("tgt_lang", "de"),
                               compound_split=False)
            for k in ("bleu", "chrf"):
                if abs(s[k] - float(rec.get(k, float("nan")))) > tol:
                    problems.append(f"{k} {s[k]:.4f} != bleu.json {rec.get(k)}")
            out.append(Rescored(run.path.name, split, rec, s["bleu"], s["chrf"], problems))
    return out


_SEED = re.compile(r"s(\d+):([0-9.]+)")


def check_table(csv_path: Path, rescored: list[Rescored], run_seed_of, cell_of) -> list[str]:
    """The table's per-seed BLEU (`seeds_bleu`: "s1:21.32 s2:...") against the rescored numbers, to the 2
    decimals it prints. `cell_of(run name) -> (key columns)`, `run_seed_of(run name) -> seed`."""
    if not csv_path.is_file():
        return []
    by_cell: dict = {}
    for r in rescored:
        by_cell.setdefault(cell_of(r.run), {})[run_seed_of(r.run)] = r.bleu
    problems = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            key = tuple(row[k] for k in ("row", "schedule")) if "row" in row else (row["scheme"], row["optimizer"])
            for seed, value in _SEED.findall(row.get("seeds_bleu", "")):
                got = by_cell.get(key, {}).get(int(seed))
                if got is not None and f"{got:.2f}" != value:
                    problems.append(f"{csv_path.name} {'/'.join(key)} seed {seed}: table {value} != rescored {got:.2f}")
    return problems
