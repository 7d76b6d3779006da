"""The second verdict, from the validation loss (declared in docs/cpu_scale.md before the sweep it judges).

BLEU falls off a cliff at this scale: runs at validation loss 4.34-4.37 scored 1.2-5.3 BLEU, runs at <= 4.12
scored >= 10.2, and a stalled run (loss ~6.4) scores 0.00; a BLEU line cannot tell "learning, below the cliff"
from "learned nothing". This verdict measures progress on the loss instead:

- U: the validation NLL of the context-free baseline (each target token from the training targets' frequencies;
  `valid_unigram_nll` in every summary). A run not below U has learned no translation.
- a run's progress f = (U - its final validation NLL) / (U - the best warmup cell's mean final validation NLL):
  0 at the baseline, 1 at the best cell of its own table; a diverged run has f = 0.
- a cell *collapsed by loss* when its mean f is below LOSS_COLLAPSE_FRACTION (0.2, the BLEU rule's fraction).
Reads run directories only.
"""

from __future__ import annotations

import statistics

from .runs import Run

LOSS_COLLAPSE_FRACTION = 0.2


def run_nll(run: Run) -> float | None:
    """The final validation NLL (nats per target token); None for a diverged run or one without it."""
    if run.summary.get("status") == "diverged":
        return None
    v = run.summary.get("valid_nll")
    return float(v) if isinstance(v, int | float) else None


def baseline(runs: list[Run]) -> float | None:
    """U, the context-free validation NLL the runs recorded (one artifact: one value; the median otherwise)."""
    us = [float(r.summary["valid_unigram_nll"]) for r in runs
          if isinstance(r.summary.get("valid_unigram_nll"), int | float)]
    return statistics.median(us) if us else None


def best_nll(cells) -> float | None:
    """The best (lowest) mean final validation NLL over the warmup cells (`cells` from table2.build_cells)."""
    means = []
    for c in cells:
        if c.schedule != "warmup":
            continue
        nll = [run_nll(r) for r in c.runs]
        if nll and all(x is not None for x in nll):
            means.append(statistics.fmean(nll))
    return min(means, default=None)


def progress(run: Run, u: float | None, best: float | None) -> float | None:
    """f for one run; 0.0 when it diverged; None when the table has no baseline or no best cell."""
    if u is None or best is None or u <= best:
        return None
    if run.summary.get("status") == "diverged":
        return 0.0
    nll = run_nll(run)
    return None if nll is None else (u - nll) / (u - best)
