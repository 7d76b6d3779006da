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
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
_umask = os.umask(0)
os.umask(_umask)
FILE_MODE = 0o666 & ~_umask


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def atomic_write(path: str | Path, write, binary: bool = False) -> None:
    """Write `path` through `write(file)` into a temporary file beside it, fsync, then rename: a reader (or
    a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp creates 0600; give the file the mode open() would
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
