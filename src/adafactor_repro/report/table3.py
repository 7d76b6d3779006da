"""The paper's Table 3 (Section 8.1): relative step sizes against differently-scaled embeddings.

A cell is (scheme, optimizer): scheme `scaled` | `unit` | `small` (token-embedding init sigma x multiplier:
(d^-0.5, sqrt(d)), (1, 1), (d^-0.5, 1)), optimizer Adam (Vaswani et al.'s settings) or Adafactor (Algorithm 6).
Its runs are the seeds of one experiment file (`table3_scheme` in the run's config). The paper's numbers are data
(`paper_table3.csv`), never restated here. The paper's claim is about differences: each naive scheme costs Adam
more BLEU than Adafactor (Adam 26.4 -> 25.8 / 24.2, Adafactor 26.6 -> 26.4 / 25.4). So the table reports each
cell's drop from its optimizer's `scaled` cell beside the paper's, and whether Adafactor's drop is the smaller.
Reads run directories only.
"""

from __future__ import annotations

import csv
import statistics
from importlib import resources

from .loss_verdict import run_nll
from .runs import Run
from .table2 import run_bleu, run_seed

SCHEMES = ("scaled", "unit", "small")
OPTIMIZERS = ("adam", "adafactor")


def paper_table3() -> dict[str, dict[str, str]]:
    text = resources.files(__package__).joinpath("paper_table3.csv").read_text()
    return {r["scheme"]: r for r in csv.DictReader(ln for ln in text.splitlines() if ln and not ln.startswith("#"))}


def optimizer_of(run: Run) -> str:
    target = str((run.config.get("optim") or {}).get("_target_", ""))
    return "adafactor" if target.endswith("Adafactor") else "adam" if target.endswith("Adam") else target


def _f(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def cell_rows(runs: list[Run], split: str = "test") -> list[dict[str, str]]:
    """One row per (scheme, optimizer) in the paper's order; cells without a scored run are left out."""
    cells: dict[tuple[str, str], list[tuple[int, float, Run]]] = {}
    for r in runs:
        scheme = r.config.get("table3_scheme")
        b = run_bleu(r, split)
        if scheme in SCHEMES and b is not None:
            cells.setdefault((scheme, optimizer_of(r)), []).append((run_seed(r) or 0, b, r))
    paper = paper_table3()
    means = {k: statistics.fmean(b for _, b, _ in v) for k, v in cells.items()}
    rows = []
    for scheme in SCHEMES:
        for opt in OPTIMIZERS:
            seeds = sorted(cells.get((scheme, opt), []), key=lambda x: x[0])
            if not seeds:
                continue
            bleus = [b for _, b, _ in seeds]
            base = means.get(("scaled", opt))
            p, p_base = float(paper[scheme][opt]), float(paper["scaled"][opt])
            nll = [run_nll(r) for _, _, r in seeds]
            rows.append({
                "scheme": scheme, "optimizer": opt, "init_sigma": paper[scheme]["init_sigma"],
                "multiplier": paper[scheme]["multiplier"], "paper_bleu": paper[scheme][opt],
                "bleu_mean": _f(statistics.fmean(bleus)),
                "bleu_sd": _f(statistics.stdev(bleus) if len(bleus) > 1 else None), "n_seeds": str(len(bleus)),
                "seeds_bleu": " ".join(f"s{s}:{b:.2f}" for s, b, _ in seeds),
                "drop_vs_scaled": _f(None if base is None else base - statistics.fmean(bleus)),
                "paper_drop_vs_scaled": _f(p_base - p, ".1f"),
                "valid_nll_mean": _f(statistics.fmean(nll) if nll and None not in nll else None, ".3f"),
                "n_diverged": str(sum(r.summary.get("status") == "diverged" for _, _, r in seeds)),
                "distinct_hyps_mean": _f(statistics.fmean(d) if (d := [x for _, _, r in seeds
                                                                     if (x := r.distinct_hypotheses(split)) is not None])
                                         else None),
                "split": split,
            })
    return rows


def claim(rows: list[dict[str, str]]) -> dict[str, str]:
    """{naive scheme: "yes" | "no" | "-"}: is Adafactor's drop from `scaled` smaller than Adam's (the paper: yes,
    for both)?"""
    by = {(r["scheme"], r["optimizer"]): r for r in rows}
    out = {}
    for scheme in SCHEMES[1:]:
        a, f = by.get((scheme, "adam")), by.get((scheme, "adafactor"))
        if not a or not f or "-" in (a["drop_vs_scaled"], f["drop_vs_scaled"]):
            out[scheme] = "-"
        else:
            out[scheme] = "yes" if float(f["drop_vs_scaled"]) < float(a["drop_vs_scaled"]) else "no"
    return out


COLUMNS = ["scheme", "init_sigma", "multiplier", "optimizer", "paper_bleu", "bleu_mean", "bleu_sd", "n_seeds",
           "seeds_bleu", "paper_drop_vs_scaled", "drop_vs_scaled", "valid_nll_mean", "n_diverged",
           "distinct_hyps_mean"]


def to_markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no scored Table 3 runs found_\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    c = claim(rows)
    lines += ["", "**The paper's claim, each naive scheme costs Adafactor less BLEU than Adam** (drop from the "
              "`scaled` cell of the same optimizer; the paper: yes for both): "
              + "; ".join(f"`{s}`: {v}" for s, v in c.items()) + "."]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, str]]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*COLUMNS, "split"], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
