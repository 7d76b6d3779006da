"""Reading a run directory: config.yaml, summary.json, bleu.json, metrics.jsonl (docs/architecture.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..files import SUMMARY, read_json


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    bleu: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.config.get("name") or self.path.name)

    @property
    def warmup(self) -> bool:
        return bool(self.config.get("schedule", {}).get("linear_warmup", True))

    def distinct_hypotheses(self, split: str) -> float | None:
        """The fraction of distinct lines among the run's hypotheses of `split` (hyp.<split>.txt[.gz]); None
        without them. A descriptive diagnostic, not a verdict: a model that ignores its source writes one
        sentence for every input (measured: 0.03 for rows A, C, D with warmup at the cpu scale, where BLEU is
        0.5 and the validation loss has fallen far below the context-free baseline), a stalled one writes
        nothing (0.001: every line empty), a translating one writes ~1.0."""
        import gzip

        for path in (self.path / f"hyp.{split}.txt.gz", self.path / f"hyp.{split}.txt"):
            if path.is_file():
                raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
                lines = raw.decode("utf-8").split("\n")
                if lines and lines[-1] == "":
                    lines.pop()
                return len(set(lines)) / len(lines) if lines else None
        return None

    def series(self, key: str, split: str = "train") -> tuple[list[int], list[float]]:
        """(updates, values) of one logged quantity; entries without it are skipped."""
        xs, ys = [], []
        for m in self.metrics:
            if m.get("split", "train") == split and m.get(key) is not None:
                xs.append(int(m.get("update", m.get("step", 0))))
                ys.append(float(m[key]))
        return xs, ys


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            # A run killed mid-write can leave a torn last line; the lines before it are still good.
            continue
    return out


def load_run(path: str | Path) -> Run:
    path = Path(path)
    cfg_path = path / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path}: no config.yaml, so this is not a run directory")
    config = yaml.safe_load(cfg_path.read_text()) or {}
    return Run(
        path=path,
        config=config,
        summary=read_json(path / SUMMARY, {}, strict=True),
        bleu=read_json(path / "bleu.json", {}, strict=True),
        metrics=_read_jsonl(path / "metrics.jsonl"),
    )


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory directly under `root` (runs/<scale>/<name>-<schedule>), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [load_run(p) for p in sorted(root.iterdir()) if (p / "config.yaml").exists()]
