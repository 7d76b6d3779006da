"""The paper's Table 2 cell by cell: our runs (every seed) beside the paper's BLEU, with one collapse rule.

A cell is (row, schedule): row A-P or Q<k> (SGD with lr = k s_t), schedule warmup | no_warmup. Its runs are
the seeds of one experiment file (``paper_row`` in the run's config). The paper's numbers are data
(``paper_table2.csv``, arXiv:1804.04235v1 Table 2), never restated here.

**Collapse** (stated once, used everywhere): a run has collapsed when its BLEU is below
``COLLAPSE_FRACTION`` x the best warmup cell of its own table (the best mean over seeds), or when it diverged.
The paper's own cells get the same rule against the paper's best warmup cell (25.9, row N): 0.1-0.5 BLEU
against 25.9 is the paper's case. A cell's verdict uses its mean BLEU (a diverged seed counts as 0); the seeds
that collapsed are counted beside it, so a split cell reads e.g. "collapsed (split: 2/3 seeds collapsed)".
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from . import loss_verdict as LV
from .runs import Run
from .table import to_csv  # noqa: F401  (the same CSV writer for both tables)

COLLAPSE_FRACTION = 0.2
# Not the rule: the agreement recounted at other fractions, printed under the table so a reader sees how far
# the verdicts sit from the line (an agreement that flips between 0.1 and 0.3 rests on the line's choice).
SENSITIVITY_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
ROWS = [*"ABCDEFGHIJKLMNOP", "Q1", "Q10", "Q100", "Q150", "Q200", "Q300"]
SCHEDULES = ("warmup", "no_warmup")


def paper_table() -> dict[tuple[str, str], dict[str, str]]:
    """{(row, schedule): {"bleu": "25.6" | "diverged", "factored": ..., "beta1": ..., ...}} from the CSV."""
    text = resources.files(__package__).joinpath("paper_table2.csv").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    out = {}
    for rec in csv.DictReader(lines):
        for sched in SCHEDULES:
            out[(rec["row"], sched)] = {**{k: rec[k] for k in ("factored", "beta1", "beta2", "clip_d", "step")},
                                        "bleu": rec[sched]}
    return out


def _paper_value(bleu: str) -> float:
    """A paper cell's BLEU as a number: "diverged" is 0 (it produced no translation model)."""
    return 0.0 if bleu == "diverged" else float(bleu)


def run_bleu(run: Run, split: str) -> float | None:
    """sacreBLEU of a run on a split (bleu.json), 0.0 for a diverged run (it has no model to score)."""
    if run.summary.get("status") == "diverged":
        return 0.0
    entry = run.bleu.get(split)
    if isinstance(entry, dict) and isinstance(entry.get("bleu"), (int, float)):
        return float(entry["bleu"])
    return None


def step_run(config: dict[str, Any]) -> str:
    """The step a run actually took, in the paper's notation, from its resolved config: lr(t) = optim.lr x
    rsqrt(schedule.d_model) x s_t, so an absolute step written as 0.1 x sqrt(512) is 0.1 s_t at d_model 512
    and 0.2 s_t at the cpu scale's 128; a relative step (Adafactor's scale_parameter, no width factor) is
    rho_t = optim.lr x s_t."""
    optim, sched = config.get("optim") or {}, config.get("schedule") or {}
    lr = optim.get("lr")
    if not isinstance(lr, (int, float)):
        return "-"
    d = sched.get("d_model")
    if isinstance(d, str) and d.startswith("${") and d.endswith("}"):  # an unresolved config: follow it
        node: Any = config
        for key in d[2:-1].split("."):
            node = node.get(key) if isinstance(node, dict) else None
        d = node
    k = lr / math.sqrt(d) if isinstance(d, (int, float)) and d else lr
    relative = str(optim.get("_target_", "")).endswith("Adafactor") and optim.get("scale_parameter", True)
    if relative and not d:
        return "rho_t = s_t" if math.isclose(k, 1.0) else f"rho_t = {k:.3g} s_t"
    return f"{k:.3g} s_t"


def run_seed(run: Run) -> int | None:
    seed = (run.config.get("trainer") or {}).get("seed")
    return int(seed) if seed is not None else None


@dataclass
class Cell:
    row: str
    schedule: str
    runs: list[Run] = field(default_factory=list)
    bleus: list[float] = field(default_factory=list)  # one per scored seed, in seed order

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.bleus) if self.bleus else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.bleus) if len(self.bleus) > 1 else None


def build_cells(runs: list[Run], split: str) -> list[Cell]:
    """The scored cells in the paper's row order (warmup, then no_warmup), from runs with a ``paper_row``."""
    cells: dict[tuple[str, str], Cell] = {}
    for r in sorted(runs, key=lambda r: (run_seed(r) or 0, str(r.path))):
        row = r.config.get("paper_row")
        if row not in ROWS:
            continue
        sched = "warmup" if r.warmup else "no_warmup"
        c = cells.setdefault((row, sched), Cell(row, sched))
        b = run_bleu(r, split)
        if b is not None:
            c.runs.append(r)
            c.bleus.append(b)
    order = {(row, s): i for i, (row, s) in enumerate((row, s) for row in ROWS for s in SCHEDULES)}
    return sorted((c for c in cells.values() if c.bleus), key=lambda c: order[(c.row, c.schedule)])


def collapse_threshold(cells: list[Cell], fraction: float = COLLAPSE_FRACTION) -> float | None:
    """``fraction`` x the best warmup cell's mean BLEU; None without a scored warmup cell."""
    best = max((c.mean for c in cells if c.schedule == "warmup"), default=None)
    return None if best is None else fraction * best


def paper_threshold(paper: dict, fraction: float = COLLAPSE_FRACTION) -> float:
    return fraction * max(_paper_value(v["bleu"]) for (row, s), v in paper.items() if s == "warmup")


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def cell_rows(cells: list[Cell], split: str, fraction: float = COLLAPSE_FRACTION) -> list[dict[str, str]]:
    """One dict per cell: the paper's settings and BLEU, ours (mean, sd, n, seeds), verdicts, agreement;
    collapse at ``fraction`` (the rule's unless recounting for `sensitivity`)."""
    paper = paper_table()
    ours_thr, paper_thr = collapse_threshold(cells, fraction), paper_threshold(paper, fraction)
    # the loss verdict (loss_verdict.py; docs/cpu_scale.md): progress from the context-free baseline
    u, best = LV.baseline([r for c in cells for r in c.runs]), LV.best_nll(cells)
    rows = []
    for c in cells:
        p = paper[(c.row, c.schedule)]
        paper_collapsed = _paper_value(p["bleu"]) < paper_thr
        n_coll = sum(b < ours_thr for b in c.bleus) if ours_thr is not None else None
        collapsed = c.mean < ours_thr if ours_thr is not None else None
        n = len(c.bleus)
        verdict = "-" if collapsed is None else ("collapsed" if collapsed else "trains")
        if n_coll is not None and 0 < n_coll < n:
            verdict += f" (split: {n_coll}/{n} seeds collapsed)"
        fs = [LV.progress(r, u, best) for r in c.runs]
        f_mean = statistics.fmean(fs) if fs and None not in fs else None
        n_lcoll = None if f_mean is None else sum(f < LV.LOSS_COLLAPSE_FRACTION for f in fs)
        loss_collapsed = None if f_mean is None else f_mean < LV.LOSS_COLLAPSE_FRACTION
        loss_verdict = "-" if loss_collapsed is None else ("collapsed" if loss_collapsed else "trains")
        if n_lcoll is not None and 0 < n_lcoll < n:
            loss_verdict += f" (split: {n_lcoll}/{n})"
        # fragile: the seeds straddle either line (the cell's verdict could flip with another seed)
        fragile = any(k is not None and 0 < k < n for k in (n_coll, n_lcoll))
        s0 = c.runs[0].summary
        state, params = s0.get("optimizer_state_bytes"), s0.get("num_parameters")
        rows.append({
            "row": c.row, "schedule": c.schedule,
            "factored": p["factored"], "beta1": p["beta1"], "beta2": p["beta2"], "clip_d": p["clip_d"] or "-",
            "step": p["step"],
            "step_run": " / ".join(dict.fromkeys(step_run(r.config) for r in c.runs)),
            "paper_bleu": p["bleu"], "paper_verdict": "collapsed" if paper_collapsed else "trains",
            "bleu_mean": _f(c.mean), "bleu_sd": _f(c.sd), "n_seeds": str(n),
            "n_collapsed": "-" if n_coll is None else str(n_coll),
            "n_diverged": str(sum(r.summary.get("status") == "diverged" for r in c.runs)),
            "verdict": verdict,
            "agrees": "-" if collapsed is None else ("yes" if collapsed == paper_collapsed else "no"),
            "progress_mean": _f(f_mean), "seeds_progress": " ".join(
                f"s{run_seed(r)}:{_f(f)}" for r, f in zip(c.runs, fs)),
            "loss_verdict": loss_verdict,
            "loss_agrees": "-" if loss_collapsed is None else ("yes" if loss_collapsed == paper_collapsed else "no"),
            "fragile": "yes" if fragile else "no",
            "distinct_hyps_mean": _f(statistics.fmean(d) if (d := [x for r in c.runs
                                                                 if (x := r.distinct_hypotheses(split)) is not None])
                                     else None),
            "seeds_bleu": " ".join(f"s{run_seed(r)}:{b:.2f}" for r, b in zip(c.runs, c.bleus)),
            "valid_ppl_mean": _f(statistics.fmean([r.summary["valid_ppl"] for r in c.runs
                                                    if isinstance(r.summary.get("valid_ppl"), (int, float))] or [math.nan]), ".4g"),
            "opt_state_bytes": str(state) if state is not None else "-",
            "opt_state_B_per_param": _f(state / params if state is not None and params else None, ".3f"),
            "wall_min_mean": _f(statistics.fmean([(r.summary.get("wall_time_s") or 0) / 60 for r in c.runs]), ".1f"),
            "split": split,
        })
    return rows


def agreement(rows: list[dict[str, str]], column: str = "agrees") -> dict[str, tuple[int, int]]:
    """{"no_warmup": (agree, judged), "all": (agree, judged)} over the cells with a verdict (`column`:
    "agrees" for the BLEU verdict, "loss_agrees" for the loss verdict)."""
    out = {}
    for key, pick in (("no_warmup", lambda r: r["schedule"] == "no_warmup"), ("all", lambda r: True)):
        judged = [r for r in rows if pick(r) and r.get(column, "-") != "-"]
        out[key] = (sum(r[column] == "yes" for r in judged), len(judged))
    return out


def sensitivity(cells: list[Cell], split: str) -> dict[float, dict[str, tuple[int, int]]]:
    """{fraction: agreement(...)} with the collapse line moved to each of SENSITIVITY_FRACTIONS, for both
    tables at once (ours and the paper's lines move together)."""
    return {f: agreement(cell_rows(cells, split, f)) for f in SENSITIVITY_FRACTIONS}


# The markdown table shows these columns (the CSV has them all).
MD_COLUMNS = ["row", "schedule", "factored", "beta1", "beta2", "clip_d", "step", "step_run", "paper_bleu", "paper_verdict",
              "bleu_mean", "bleu_sd", "n_seeds", "verdict", "agrees", "seeds_bleu", "progress_mean", "loss_verdict",
              "loss_agrees", "fragile", "distinct_hyps_mean", "opt_state_B_per_param"]


def to_markdown(rows: list[dict[str, str]], cells: list[Cell]) -> str:
    if not rows:
        return "_no scored Table 2 runs found_\n"
    lines = ["| " + " | ".join(MD_COLUMNS) + " |", "|" + "|".join("---" for _ in MD_COLUMNS) + "|"]
    lines += ["| " + " | ".join(r[c] for c in MD_COLUMNS) + " |" for r in rows]
    thr = collapse_threshold(cells)
    paper_thr = paper_threshold(paper_table())
    ag = agreement(rows)
    lines += [
        "",
        f"Collapse: BLEU below {COLLAPSE_FRACTION:g} x the best warmup cell of the same table "
        f"(ours: {_f(thr)}; the paper's: {paper_thr:.2f} = {COLLAPSE_FRACTION:g} x 25.9, row N); a diverged run "
        "counts as BLEU 0. The verdict and `agrees` use the cell's mean over seeds.",
        "",
        f"**Agreement with the paper's collapse/train verdict: no-warmup cells {ag['no_warmup'][0]}/"
        f"{ag['no_warmup'][1]}; all cells {ag['all'][0]}/{ag['all'][1]}.**",
        "",
        loss_footer(cells, rows),
        "",
        "The same agreement with the collapse line moved (not the rule; it shows how far the verdicts sit from "
        "the line): " + "; ".join(
            f"{f:g} x best warmup: no-warmup {a['no_warmup'][0]}/{a['no_warmup'][1]}, all {a['all'][0]}/"
            f"{a['all'][1]}" for f, a in sensitivity(cells, rows[0]["split"]).items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def loss_footer(cells: list[Cell], rows: list[dict[str, str]]) -> str:
    """The loss verdict's rule with this table's numbers, its agreement, and the fragile cells."""
    u, best = LV.baseline([r for c in cells for r in c.runs]), LV.best_nll(cells)
    la = agreement(rows, "loss_agrees")
    fragile = [f"{r['row']} {r['schedule'].replace('_', '-')}" for r in rows if r["fragile"] == "yes"]
    return (f"Loss verdict (declared in docs/cpu_scale.md before the sweep): progress f = (U - final validation NLL) "
            f"/ (U - best warmup cell's mean), U = {_f(u, '.3f')} nats (the context-free unigram baseline), best = "
            f"{_f(best, '.3f')}; collapsed when the cell's mean f < {LV.LOSS_COLLAPSE_FRACTION:g}; a diverged run has "
            f"f = 0. **Loss verdict agreement with the paper: no-warmup {la['no_warmup'][0]}/{la['no_warmup'][1]}, "
            f"all {la['all'][0]}/{la['all'][1]}.** Fragile (seeds on both sides of the BLEU or the loss line): "
            + (", ".join(fragile) if fragile else "none") + ".")


def to_wide_markdown(rows: list[dict[str, str]]) -> str:
    """The paper's layout: one line per row, the warmup and no-warmup cells side by side, ours as
    mean ± sd (n) with the verdict, the paper's number beside each."""
    by = {(r["row"], r["schedule"]): r for r in rows}

    def ours(r: dict[str, str] | None) -> str:
        if r is None:
            return "not run yet"
        sd = f" ± {r['bleu_sd']}" if r["bleu_sd"] != "-" else ""
        mark = "" if r["agrees"] in ("yes", "-") else " **≠**"
        loss = "" if r.get("loss_verdict", "-") == "-" else (
            f"; loss f {r['progress_mean']} {r['loss_verdict']}" + ("" if r["loss_agrees"] != "no" else " **≠**"))
        return (f"{r['bleu_mean']}{sd} (n={r['n_seeds']}) {r['verdict']}{mark}{loss}"
                + ("; *fragile*" if r.get("fragile") == "yes" else ""))

    head = ["row", "factored", "β1", "β2", "d", "step, paper", "step, ours", "paper, warmup", "ours, warmup",
            "paper, no warmup", "ours, no warmup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    paper = paper_table()
    for row in ROWS:
        w, nw = by.get((row, "warmup")), by.get((row, "no_warmup"))
        if w is None and nw is None:
            continue
        p = paper[(row, "warmup")]
        steps = " / ".join(dict.fromkeys(r["step_run"] for r in (w, nw) if r is not None))
        lines.append("| " + " | ".join([
            row, p["factored"], p["beta1"] or "-", p["beta2"] or "-", p["clip_d"] or "-", p["step"], steps,
            p["bleu"], ours(w), paper[(row, "no_warmup")]["bleu"], ours(nw)]) + " |")
    return "\n".join(lines) + "\n"


def scored_split(runs: list[Run]) -> str:
    """The split the table scores: the paper's newstest2013 is `valid` at the gpu scale; the cpu scale scores
    `test` (test2016) only. The first split any run has a BLEU for, valid first."""
    for split in ("valid", "test"):
        if any(run_bleu(r, split) is not None and r.summary.get("status") != "diverged" for r in runs):
            return split
    return "test"


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Everything the writer needs: split, cells, rows, agreement."""
    split = scored_split(runs)
    cells = build_cells(runs, split)
    rows = cell_rows(cells, split)
    return {"split": split, "cells": cells, "rows": rows, "agreement": agreement(rows)}
