"""Metrics of a run: `metrics.jsonl` always (rank 0), wandb as a mirror, a progress bar on a terminal.

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
            split = record.get("split", "train")
            self.wandb.log(
                {f"{split}/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("update", "time")},
                step=int(record.get("update", 0)),
            )
        line = self._format(record)
        if self.bar is not None:
            self.bar.set_postfix_str(line, refresh=False)
            if record.get("split") != "train":
                self.bar.write(line)
        else:
            print(line, flush=True)

    @staticmethod
    def _format(r: dict[str, Any]) -> str:
        keys = ("epoch", "update", "loss", "nll", "ppl", "lr", "gnorm", "tokens_per_s", "mfu", "nonfinite")
        parts = [f"[{r.get('split', 'train')}]"]
        keys += tuple(k for k in r if k.startswith("bleu") and k not in keys)
        for k in keys:
            v = r.get(k)
            if v is None:
                continue
            if isinstance(v, float):
                v = f"{v:.4g}" if k != "tokens_per_s" else f"{v:.0f}"
            parts.append(f"{k}={v}")
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
