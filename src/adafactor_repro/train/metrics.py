"""Metrics of a run: `metrics.jsonl` always (rank 0), wandb as a mirror, a progress bar on a terminal.

Printed lines: off a terminal every record is one line (`[train] epoch=1 update=340/1000 loss=... eta=2m10s`,
the ETA from this process's own pace); on a terminal the training records feed the tqdm bar (which shows the
count and ETA itself) with a short postfix - loss and lr - so the bar keeps its width, and the other records
(validation, BLEU) are written above it. `summary_line` is the one line a run ends with.

Each record is one JSON object on one line, written with a single `write()` on a file opened O_APPEND, so a
reader never sees half a line from a live run (a crash can at worst tear the very last line). On resume the
records past the checkpoint's update are dropped first (they belong to the lost part of the run), so the
file of a resumed run equals that of an uninterrupted one apart from wall-clock fields.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from ..files import FILE_MODE, atomic_write_text

METRICS = "metrics.jsonl"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def fmt_duration(seconds: float | None) -> str:
    """3725 -> '1h02m', 130 -> '2m10s', 7.2 -> '7s'; None -> '?'."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def summary_line(s: dict[str, Any], where: str | Path = "") -> str:
    """The one line a run ends with: status, updates, wall time, optimizer state (total and its kinds), BLEU."""
    parts = [f"{s.get('status', '?')}"]
    if s.get("status") == "diverged" and s.get("diverged_at") is not None:
        parts[0] += f" at update {s['diverged_at']}"
    parts.append(f"{s.get('updates', 0)} updates")
    parts.append(f"wall {fmt_duration(s.get('wall_time_s'))}")
    state, kinds = s.get("optimizer_state_bytes"), s.get("optimizer_state_breakdown") or {}
    held = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in kinds.items() if k != "total" and v)
    parts.append(f"optimizer state {fmt_bytes(state)}" + (f" ({held})" if held else ""))
    bleu = s.get("bleu") or {}
    parts.append(", ".join(f"BLEU {k} {v:.2f}" for k, v in bleu.items() if isinstance(v, (int, float)))
                 or "BLEU -")
    if isinstance(s.get("valid_loss"), (int, float)):
        parts.append(f"valid loss {s['valid_loss']:.4g}")
    return f"{where}: " * bool(where) + "run " + "; ".join(parts)


def truncate_metrics(path: str | Path, max_update: int) -> None:
    """Keep only the records with update <= max_update (and drop a torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("update", 0)) <= max_update:
            keep.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def wandb_record(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as wandb keys `<split>/<key>`; a dict of numbers (the optimizer-state breakdown
    by kind) becomes one key per entry, `<split>/<key>/<kind>`, so wandb has what metrics.jsonl has."""
    split = record.get("split", "train")
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in ("update", "time"):
            continue
        if isinstance(v, (int, float)):
            out[f"{split}/{k}"] = v
        elif isinstance(v, dict):
            out.update({f"{split}/{k}/{kk}": vv for kk, vv in v.items()
                        if isinstance(vv, (int, float)) and not isinstance(vv, bool)})
    return out


class MetricsLogger:
    """Rank 0's sink for training/validation records; a no-op object on the other ranks."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        wandb_cfg: dict | None = None,
        run_name: str = "run",
        config: dict | None = None,
        total_updates: int | None = None,
        start_update: int = 0,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS
        self.wandb = None
        self.bar = None
        self.total_updates, self.start_update = total_updates, start_update
        self._t0 = time.monotonic()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, start_update)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._init_wandb(wandb_cfg or {}, run_name, config)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_updates, initial=start_update, unit="upd", dynamic_ncols=True)

    def _init_wandb(self, cfg: dict, run_name: str, config: dict | None) -> None:
        # The environment wins over the config (tests and `make test` export WANDB_MODE=disabled).
        mode = os.environ.get("WANDB_MODE") or cfg.get("mode", "offline")
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode={mode!r}: use offline, online or disabled")
        if mode == "disabled":
            return
        try:
            import wandb

            # A stable id stored in the run directory: a resumed run continues the same wandb run.
            id_file = self.path.parent / "wandb_id"
            if not id_file.exists():
                atomic_write_text(id_file, uuid.uuid4().hex[:12])
            self.wandb = wandb.init(
                project=cfg.get("project"), entity=cfg.get("entity"), tags=list(cfg.get("tags") or []),
                mode=mode, dir=str(self.path.parent), name=run_name, id=id_file.read_text().strip(),
                resume="allow", config=config,
            )
        except Exception as e:  # wandb is a mirror: metrics.jsonl keeps the run's record either way
            warnings.warn(f"wandb could not start ({type(e).__name__}: {e}); logging to {self.path} only",
                          stacklevel=2)
            self.wandb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        record.setdefault("time", round(time.time(), 3))
        os.write(self._fd, (json.dumps(record) + "\n").encode())
        if self.wandb is not None:
            self.wandb.log(wandb_record(record), step=int(record.get("update", 0)))
        if self.bar is not None:
            if record.get("split") == "train":  # short: a long postfix squeezes the bar to nothing
                self.bar.set_postfix_str(" ".join(f"{k}={record[k]:.3g}" for k in ("loss", "lr")
                                                  if isinstance(record.get(k), (int, float))), refresh=False)
            else:
                self.bar.write(self._format(record, self.total_updates))
        else:
            print(self._format(record, self.total_updates, self.eta(record)), flush=True)

    def eta(self, record: dict[str, Any]) -> float | None:
        """Seconds left to total_updates at this process's pace so far (train records only)."""
        upd = record.get("update")
        if record.get("split") != "train" or not self.total_updates or not isinstance(upd, int):
            return None
        done = upd - self.start_update
        if done <= 0:
            return None
        return (time.monotonic() - self._t0) / done * max(self.total_updates - upd, 0)

    @staticmethod
    def _format(r: dict[str, Any], total_updates: int | None = None, eta: float | None = None) -> str:
        keys = ("epoch", "update", "loss", "nll", "ppl", "lr", "gnorm", "tokens_per_s", "mfu", "nonfinite")
        parts = [f"[{r.get('split', 'train')}]"]
        keys += tuple(k for k in r if k.startswith("bleu") and k not in keys)
        for k in keys:
            v = r.get(k)
            if v is None:
                continue
            if isinstance(v, float):
                v = f"{v:.4g}" if k != "tokens_per_s" else f"{v:.0f}"
            elif k == "update" and total_updates:
                v = f"{v}/{total_updates}"
            parts.append(f"{k}={v}")
        if eta is not None:
            parts.append(f"eta={fmt_duration(eta)}")
        return " ".join(parts)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
