"""Table 2 of the paper, rebuilt from run directories: optimizer settings, then what we measured."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .runs import Run

# Row order: the paper's Table 2 cells (experiments/table2_*), then tensor2tensor's afx_* configurations.
ORDER = [
    *(f"table2_{r}" for r in [*"ABCDEFGHIJKLMNOP", "Q1", "Q10", "Q100", "Q150", "Q200", "Q300"]),
    "afx_adam", "vaswani_adam", "afx_mimic_adam", "afx_base", "afx_factored", "afx_fast", "afx_clip",
    "afx_clip2", "afx_clip_factored", "afx_pow05", "afx_pow08", "afx_pow10", "afx_pow08_clip",
    "afx_relative", "afx_adafactor",
]


def describe_optimizer(config: dict[str, Any]) -> dict[str, str]:
    """The paper's columns from a resolved config: b1, b2 or decay schedule, clipping d, factored, scale."""
    optim = config.get("optim", {})
    target = str(optim.get("_target_", ""))
    if target.endswith("SGD"):
        return {"optimizer": "SGD", "beta1": f"{optim.get('momentum', 0.0):g}", "beta2": "-", "clip_d": "-",
                "factored": "-", "relative_step": "no"}
    if target.endswith("Adam") or target.endswith("AdamW"):
        b1, b2 = (optim.get("betas") or [0.9, 0.999])[:2]
        return {"optimizer": "Adam", "beta1": f"{b1:g}", "beta2": f"{b2:g}", "clip_d": "-",
                "factored": "no", "relative_step": "no"}
    beta2 = optim.get("beta2")
    decay = f"1-t^-{optim.get('decay_exponent', 0.8):g}" if beta2 is None else f"{beta2:g}"
    clip = optim.get("clip_threshold")
    return {
        "optimizer": "Adafactor",
        "beta1": f"{optim.get('beta1', 0.0):g}",
        "beta2": decay,
        "clip_d": "-" if clip is None else f"{clip:g}",
        "factored": {True: "yes", False: "no"}.get(optim.get("factored", True), f"{optim.get('factored')} only"),
        "relative_step": "yes" if optim.get("scale_parameter", True) else "no",
    }


def _bleu(entry: Any, *keys: str) -> float | None:
    if isinstance(entry, (int, float)):
        return float(entry)
    if isinstance(entry, dict):
        for k in keys:
            v = entry.get(k)
            if isinstance(v, (int, float)):
                return float(v)
            if isinstance(v, dict) and isinstance(v.get("score"), (int, float)):
                return float(v["score"])
    return None


def _fmt(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _split_label(run: Run, split: str) -> str:
    data = run.config.get("data", {})
    stem = (data.get("splits") or {}).get(split, split)
    return f"{split} ({stem})" if isinstance(stem, str) else split


def build_rows(runs: list[Run]) -> list[dict[str, str]]:
    order = {n: i for i, n in enumerate(ORDER)}
    runs = sorted(runs, key=lambda r: (order.get(r.name, len(ORDER)), r.name, not r.warmup,
                                       (r.config.get("trainer") or {}).get("seed", 0)))
    rows = []
    for r in runs:
        s = r.summary
        status = s.get("status", "missing")
        n_params = s.get("num_parameters") or 0
        state = s.get("optimizer_state_bytes")
        row: dict[str, str] = {"experiment": r.name, "paper_row": str(r.config.get("paper_row") or "-"),
                               "warmup": "yes" if r.warmup else "no",
                               "seed": str((r.config.get("trainer") or {}).get("seed", "-"))}
        row.update(describe_optimizer(r.config))
        for split in ("valid", "test"):
            entry = r.bleu.get(split)
            label = _split_label(r, split)
            row[f"BLEU {label}"] = _fmt(_bleu(entry, "bleu"))
            row[f"tok. BLEU {label}"] = _fmt(_bleu(entry, "tok_bleu_compound_split"))
        row.update({
            "valid ppl": _fmt(s.get("valid_ppl")),
            "status": status,
            "diverged at": str(s["diverged_at"]) if s.get("diverged_at") is not None else "-",
            "updates": str(s.get("updates", "-")),
            "opt. state MiB": _fmt(state / 2**20 if state is not None else None, ".3f"),
            "B/param": _fmt(state / n_params if state is not None and n_params else None, ".3f"),
            "peak mem MiB": _fmt((s.get("peak_memory_bytes") or 0) / 2**20 or None, ".0f"),
            "tokens/s": _fmt(s.get("tokens_per_s"), ".0f"),
            "wall min": _fmt((s.get("wall_time_s") or 0) / 60 or None, ".1f"),
        })
        rows.append(row)
    return _with_delta_vs_adam(_drop_empty_bleu_columns(rows))


def _drop_empty_bleu_columns(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """A split nobody scored (the cpu scale scores test2016 only) would be a column of dashes."""
    empty = [c for c in (rows[0] if rows else {}) if "BLEU" in c and all(r[c] == "-" for r in rows)]
    return [{k: v for k, v in r.items() if k not in empty} for r in rows]


def _with_delta_vs_adam(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """BLEU minus the Adam baseline's (afx_adam with warmup), on the first scored split: valid (newstest2013,
    the paper's table) at the gpu scale, test2016 at the cpu scale."""
    cols = [c for c in (rows[0] if rows else {}) if c.startswith("BLEU ")]
    base = next((r for r in rows if r["experiment"] == "afx_adam" and r["warmup"] == "yes"), None)
    if not cols or base is None or base[cols[0]] == "-":
        return rows
    col, ref = cols[0], float(base[cols[0]])
    out = []
    for r in rows:
        delta = "-" if r[col] == "-" else f"{float(r[col]) - ref:+.2f}"
        items = list(r.items())
        i = [k for k, _ in items].index(col) + 1
        out.append(dict(items[:i] + [(f"Δ vs afx_adam ({col.split(' ', 1)[1]})", delta)] + items[i:]))
    return out


def to_markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no runs found_\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_table(rows: list[dict[str, str]], out_dir: str | Path, header: str, stem: str = "runs") -> tuple[Path, Path]:
    """results/<scale>/<stem>.md (header + markdown table) and <stem>.csv."""
    out_dir = Path(out_dir)
    md, cs = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    atomic_write_text(md, header.rstrip() + "\n\n" + to_markdown(rows))
    atomic_write_text(cs, to_csv(rows))
    return md, cs
