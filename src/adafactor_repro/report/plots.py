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
    if not runs:
        return None
    colors = _colors(_sorted_names(runs))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, warm in zip(axes, (True, False)):
        for r in runs:
            if r.warmup != warm:
                continue
            x, y = r.series("loss", "valid")
            label = r.name + (" (diverged)" if r.summary.get("status") == "diverged" else "")
            ax.plot(x, y, color=colors[r.name], label=label, lw=1.4)
        ax.set_title(("with" if warm else "without") + " linear warmup")
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("validation loss (label-smoothed CE)")
    fig.suptitle(title or "Validation loss")
    return _save(fig, path)


def _rms_series(run: Run, stat: str = "mean") -> tuple[list[int], list[float]]:
    """RMS(U) before clipping, over tensors, as the training loop logs Adafactor.stats()."""
    return run.series(f"optim_rms_u_{stat}")


def plot_rms_update(runs: list[Run], path: Path, title: str = "") -> Path | None:
    """Figure 1 of the paper: RMS of the unclipped update for b2 0.999 without warmup, with and without
    update clipping. Uses afx_base / afx_clip (no_warmup), or any such pair of runs."""
    def fixed_slow_b2(r: Run) -> bool:
        o = r.config.get("optim", {})
        return "Adafactor" in str(o.get("_target_", "")) and o.get("beta2") == 0.999 and not r.warmup

    picks = [r for r in runs if fixed_slow_b2(r) and _rms_series(r)[0]]
    if not picks:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in sorted(picks, key=lambda r: r.name):
        clip = r.config["optim"].get("clip_threshold")
        x, y = _rms_series(r)
        line, = ax.plot(x, y, lw=1.4, label=f"{r.name}: clipping {'off' if clip is None else f'd={clip:g}'} (mean)")
        xm, ym = _rms_series(r, "max")
        ax.plot(xm, ym, lw=0.8, ls=":", color=line.get_color(), label=f"{r.name} (max over tensors)")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("update")
    ax.set_ylabel("RMS(U) before clipping")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "b2 = 0.999, no warmup: RMS of the unclipped update (paper's Figure 1)")
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
