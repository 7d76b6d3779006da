"""The paper's pictures from run directories: validation loss, RMS(U) before clipping (Figure 1), and
optimizer-state memory per configuration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on
import matplotlib.pyplot as plt  # noqa: E402

from ..files import atomic_write  # noqa: E402
from .runs import Run  # noqa: E402
from .table import ORDER  # noqa: E402


def _save(fig, path: Path) -> Path:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"), binary=True)
    finally:
        plt.close(fig)
    return path


def _colors(names: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab20")
    # the dark shades first, then the light ones: neighbours in the paper's order stay distinguishable
    return {n: cmap((2 * i) % 20 + (2 * i // 20) % 2) for i, n in enumerate(names)}


def _sorted_names(runs: list[Run]) -> list[str]:
    order = {n: i for i, n in enumerate(ORDER)}
    return sorted({r.name for r in runs}, key=lambda n: (order.get(n, len(ORDER)), n))


def plot_valid_loss(runs: list[Run], path: Path, title: str = "") -> Path | None:
    runs = [r for r in runs if r.series("loss", "valid")[0]]
    # one curve per configuration and schedule: its lowest seed
    first: dict[tuple[str, bool], Run] = {}
    for r in sorted(runs, key=lambda r: (r.config.get("trainer") or {}).get("seed", 0)):
        first.setdefault((r.name, r.warmup), r)
    runs = list(first.values())
    if not runs:
        return None
    colors = _colors(_sorted_names(runs))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, warm in zip(axes, (True, False)):
        for r in runs:
            if r.warmup != warm:
                continue
            x, y = r.series("loss", "valid")
            label = str(r.config.get("paper_row") or r.name) + (" (diverged)" if r.summary.get("status") == "diverged" else "")
            ax.plot(x, y, color=colors[r.name], label=label, lw=1.4)
        ax.set_title(("with" if warm else "without") + " linear warmup")
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("validation loss (label-smoothed CE)")
    fig.suptitle(title or "Validation loss (one seed per configuration)")
    return _save(fig, path)


# The weight matrix of Figure 1 (the paper does not name its matrix): the first FFN matrix of the first
# encoder layer. Any matrix the run logged (logger.track_rms_u) can be passed instead.
FIGURE1_MATRIX = "encoder.0.ffn.fc1.weight"


def _rms_series(run: Run, matrix: str) -> tuple[list[int], list[float]]:
    """RMS(U) before clipping of one weight matrix, as the loop logs Adafactor.rms_u() (optim_rms_u/<name>)."""
    return run.series(f"optim_rms_u/{matrix}")


def plot_figure1(runs: list[Run], path: Path, matrix: str = FIGURE1_MATRIX, rows=("A", "G")) -> Path | None:
    """The paper's Figure 1: RMS(U) of one weight matrix over the updates for b2 = 0.999 (Table 2 row A)
    against b2 = 0.9 (row G), with warmup (the paper's figure) and without (a second panel), beside the
    validation loss of the same runs. One seed per curve (the lowest)."""
    def pick(row: str, warm: bool) -> Run | None:
        cands = [r for r in runs if r.config.get("paper_row") == row and r.warmup == warm
                 and _rms_series(r, matrix)[0]]
        return min(cands, key=lambda r: (r.config.get("trainer") or {}).get("seed", 0), default=None)

    chosen = {(row, warm): pick(row, warm) for row in rows for warm in (True, False)}
    if not any(chosen.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    colors = dict(zip(rows, ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    for ax, warm in zip(axes[:2], (True, False)):
        for row in rows:
            r = chosen[(row, warm)]
            if r is None:
                continue
            b2 = r.config.get("optim", {}).get("beta2")
            x, y = _rms_series(r, matrix)
            ax.plot(x, y, color=colors[row], lw=1.2, label=f"row {row}: b2 = {b2}")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"RMS(U) of {matrix}, {'with' if warm else 'without'} warmup")
        ax.set_xlabel("update")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if len(ax.lines) > 1:  # the d = 1 reference line alone gets no legend
            ax.legend(fontsize=8)
    axes[0].set_ylabel("RMS of the unclipped update U")
    ax = axes[2]
    for (row, warm), r in chosen.items():
        if r is not None:
            x, y = r.series("loss", "valid")
            ax.plot(x, y, color=colors[row], ls="-" if warm else "--", lw=1.2,
                    label=f"row {row}, {'warmup' if warm else 'no warmup'}")
    ax.set_title("validation loss of the same runs")
    ax.set_xlabel("update")
    ax.set_ylabel("validation loss (label-smoothed CE)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.suptitle("Figure 1 of the paper (b2 0.999 vs 0.9, no momentum, no clipping)")
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
