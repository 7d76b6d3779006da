"""The paper's pictures from run directories: validation loss, RMS(U) before clipping (Figure 1), and
optimizer-state memory per configuration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on
import math  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from ..files import atomic_write  # noqa: E402
from .runs import Run  # noqa: E402
from .table import ORDER  # noqa: E402


def _save(fig, path: Path) -> Path:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"), binary=True)
    finally:
        plt.close(fig)
    return path


# Panels of the validation-loss figure: the rows of Table 2 in groups of at most 10, so each panel's curves
# take distinct colours of one qualitative palette (tab10); anything else (afx_* runs) goes in a last group.
ROW_GROUPS = (("A-G: momentum, beta2, factoring", tuple("ABCDEFG")),
              ("H-P: clipping, decay schedule, the proposal", tuple("HIJKLMNOP")),
              ("Q: SGD", ("Q1", "Q10", "Q100", "Q150", "Q200", "Q300")))


def _sorted_names(runs: list[Run]) -> list[str]:
    order = {n: i for i, n in enumerate(ORDER)}
    return sorted({r.name for r in runs}, key=lambda n: (order.get(n, len(ORDER)), n))


def _seed(r: Run) -> int:
    return int((r.config.get("trainer") or {}).get("seed", 0) or 0)


def _label(r: Run) -> str:
    return str(r.config.get("paper_row") or r.name)


def loss_limits(runs: list[Run]) -> tuple[float, float] | None:
    """The y range of the validation-loss axes: the span of the runs that did not diverge (5% margin), so a
    diverged run's last loss (1e15 has been seen) cannot squash every other curve to a line."""
    ys = [v for r in runs if r.summary.get("status") != "diverged" for v in r.series("loss", "valid")[1]
          if v is not None and math.isfinite(v)]
    if not ys:
        ys = [v for r in runs for v in r.series("loss", "valid")[1] if v is not None and math.isfinite(v)]
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def plot_valid_loss(runs: list[Run], path: Path, title: str = "") -> Path | None:
    """Validation loss over the updates, one curve per configuration and schedule (its lowest seed, named in
    the legend), in panels: a row per schedule, a column per group of Table 2 rows (ROW_GROUPS), each panel
    with distinct colours. The y axis spans the runs that did not diverge; a diverged run is drawn up to where
    it leaves the axis and ends in an x marker at its last validation (clamped to the top edge, its value in
    the legend), or at the top edge at its divergence update if it never validated."""
    runs = [r for r in runs if r.series("loss", "valid")[0] or r.summary.get("status") == "diverged"]
    first: dict[tuple[str, bool], Run] = {}
    for r in sorted(runs, key=_seed):
        first.setdefault((r.name, r.warmup), r)
    runs = list(first.values())
    limits = loss_limits(runs)
    if not runs or limits is None:
        return None
    lo, hi = limits
    groups = [(name, rows) for name, rows in ROW_GROUPS if any(r.config.get("paper_row") in rows for r in runs)]
    others = [r for r in runs if not any(r.config.get("paper_row") in rows for _, rows in ROW_GROUPS)]
    if others:
        groups.append(("other configurations", tuple(sorted({_label(r) for r in others}))))
    ncols = len(groups)
    fig, axes = plt.subplots(2, ncols, figsize=(6.2 * ncols, 9.0), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10" if max(len(rows) for _, rows in groups) <= 10 else "tab20")
    styles = ("-", "--", "-.", ":")
    for i, warm in enumerate((True, False)):
        for j, (gname, rows) in enumerate(groups):
            ax = axes[i][j]
            members = sorted((r for r in runs if r.warmup == warm and _label(r) in rows),
                             key=lambda r: rows.index(_label(r)))
            for r in members:
                k = rows.index(_label(r))
                color, ls = cmap(k % cmap.N), styles[(k // cmap.N) % len(styles)]
                x, y = r.series("loss", "valid")
                label = f"{_label(r)} (s{_seed(r)})"
                if r.summary.get("status") == "diverged":
                    at = r.summary.get("diverged_at")
                    shown = [min(v, hi) if v is not None and math.isfinite(v) else hi for v in y]
                    end_x = x[-1] if x else (at or 0)
                    end_y = shown[-1] if shown else hi
                    off = bool(y) and (y[-1] is None or not math.isfinite(y[-1]) or y[-1] > hi)
                    label += f" diverged at update {at}" + (f" (last loss {y[-1]:.2g}, off scale)" if off else "")
                    if x:
                        ax.plot(x, shown, color=color, ls=ls, lw=1.2, alpha=0.8)
                    ax.plot([end_x], [end_y], marker="x", ms=9, mew=2.2, color=color, ls="none", label=label,
                            clip_on=False)
                else:
                    ax.plot(x, y, color=color, ls=ls, lw=1.4, label=label)
            ax.set_ylim(lo, hi)
            ax.set_title(f"{gname}, {'with' if warm else 'without'} warmup", fontsize=10)
            ax.grid(alpha=0.3)
            if i == 1:
                ax.set_xlabel("update")
            if j == 0:
                ax.set_ylabel("validation loss (label-smoothed CE)")
            if ax.lines:
                ax.legend(fontsize=7, ncol=1 if len(members) <= 5 else 2, loc="best")
    fig.suptitle(title or "Validation loss (one seed per configuration: the lowest, sN in the legend; x: a diverged "
                 "run's last validation, the axis spans the runs that did not diverge)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


# The weight matrix of Figure 1 (the paper does not name its matrix): the first FFN matrix of the first
# encoder layer. Any matrix the run logged (logger.track_rms_u) can be passed instead.
FIGURE1_MATRIX = "encoder.0.ffn.fc1.weight"


def _rms_series(run: Run, matrix: str) -> tuple[list[int], list[float]]:
    """RMS(U) before clipping of one weight matrix, as the loop logs Adafactor.rms_u() (optim_rms_u/<name>)."""
    return run.series(f"optim_rms_u/{matrix}")


# The paper's colours (Section 5: "With fast decay (red), RMS(U_t) stays close to 1 as expected, while with slow
# decay (blue), it fluctuates"): beta2 = 0.9 (row G) red, beta2 = 0.999 (row A) blue.
FIGURE1_COLORS = {"G": "tab:red", "A": "tab:blue"}


def log_ticks(lo: float, hi: float) -> list[float]:
    """Labelled ticks of a log axis over [lo, hi]: 1-2-5 and 1-1.5-2-3-4-5-7 steps, enough to label a range that
    spans less than a decade (matplotlib's default labels only the powers of ten there)."""
    out = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 1.5, 2, 3, 4, 5, 7):
            v = round(m * 10.0**e, 10)
            if lo <= v <= hi:
                out.append(v)
    if len(out) > 12:  # a wide range: 1-2-5 only
        out = [v for v in out if round(v / 10 ** math.floor(math.log10(v)), 6) in (1, 2, 5)]
    return out


def plot_figure1(runs: list[Run], path: Path, matrix: str = FIGURE1_MATRIX, rows=("A", "G")) -> Path | None:
    """The paper's Figure 1: RMS(U) of one weight matrix over the updates for b2 = 0.999 (Table 2 row A, blue)
    against b2 = 0.9 (row G, red), the paper's colours, with warmup (the paper's figure) and without (a second
    panel), beside the validation loss of the same runs. One seed per curve (the lowest), named in the legend
    and the title. The log axis is labelled across the data's whole range."""
    def pick(row: str, warm: bool) -> Run | None:
        cands = [r for r in runs if r.config.get("paper_row") == row and r.warmup == warm
                 and _rms_series(r, matrix)[0]]
        return min(cands, key=_seed, default=None)

    chosen = {(row, warm): pick(row, warm) for row in rows for warm in (True, False)}
    if not any(chosen.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    spare = iter(("tab:green", "tab:purple", "tab:orange"))
    colors = {row: FIGURE1_COLORS.get(row) or next(spare) for row in rows}
    for ax, warm in zip(axes[:2], (True, False)):
        ys = []
        for row in rows:
            r = chosen[(row, warm)]
            if r is None:
                continue
            b2 = r.config.get("optim", {}).get("beta2")
            x, y = _rms_series(r, matrix)
            ys += [v for v in y if v is not None and v > 0 and math.isfinite(v)]
            ax.plot(x, y, color=colors[row], lw=1.2, label=f"row {row}: b2 = {b2} (seed {_seed(r)})")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"RMS(U) of {matrix}, {'with' if warm else 'without'} warmup", fontsize=10)
        ax.set_xlabel("update")
        ax.set_yscale("log")
        if ys:
            lo, hi = min(min(ys), 1.0) / 1.1, max(max(ys), 1.0) * 1.1
            ax.set_ylim(lo, hi)
            ax.set_yticks(log_ticks(lo, hi))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        if len(ax.lines) > 1:  # the d = 1 reference line alone gets no legend
            ax.legend(fontsize=8)
    axes[0].set_ylabel("RMS of the unclipped update U")
    ax = axes[2]
    for (row, warm), r in chosen.items():
        if r is not None:
            x, y = r.series("loss", "valid")
            ax.plot(x, y, color=colors[row], ls="-" if warm else "--", lw=1.2,
                    label=f"row {row}, {'warmup' if warm else 'no warmup'} (seed {_seed(r)})")
    ax.set_title("validation loss of the same runs", fontsize=10)
    ax.set_xlabel("update")
    ax.set_ylabel("validation loss (label-smoothed CE)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    seeds = sorted({_seed(r) for r in chosen.values() if r is not None})
    fig.suptitle("Figure 1 of the paper (b2 0.999 blue vs 0.9 red, no momentum, no clipping); "
                 f"seed {', '.join(map(str, seeds))} of each cell")
    return _save(fig, path)


def plot_optimizer_memory(runs: list[Run], path: Path, title: str = "") -> Path | None:
    best: dict[str, Run] = {}
    for r in runs:  # one bar per configuration; a run that has not stepped yet reports no state
        state = r.summary.get("optimizer_state_bytes") or 0
        if state and (r.name not in best or state > best[r.name].summary["optimizer_state_bytes"]):
            best[r.name] = r
    if not best:
        return None
    names = _sorted_names(list(best.values()))
    mib = [best[n].summary["optimizer_state_bytes"] / 2**20 for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.bar(range(len(names)), mib, color=["tab:red" if "adam" in n and "mimic" not in n else "tab:blue"
                                                 for n in names])
    for b, n in zip(bars, names):
        p = best[n].summary.get("num_parameters")
        if p:
            ax.annotate(f"{best[n].summary['optimizer_state_bytes'] / p:.2f} B/p",
                        (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("optimizer state (MiB)")
    ax.set_title(title or "Optimizer state per configuration")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
