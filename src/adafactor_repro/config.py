"""Typed views of the `trainer`, `eval` and `logger` config groups, and reading one group file.

The YAML files under configs/ hold every value and its comment (Hydra composes them and takes command-line
overrides); the dataclasses here hold the types. `typed(cfg.trainer, TrainerConfig)` merges the composed
node into the schema (OmegaConf structured configs): a value of the wrong type or an unknown key is a
`ConfigError` naming the key, and the loop reads plain typed attributes instead of `int(t.x)` casts.
Fields have no defaults (`MISSING`) on purpose, so the YAML stays the one home of every default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key and the fix."""


@dataclass
class TrainerConfig:
    """configs/trainer/default.yaml (fairseq's knob names)."""

    max_tokens: int = MISSING
    update_freq: int = MISSING
    tokens_per_update: int | None = MISSING
    batch_budget: str = MISSING
    num_workers: int = MISSING
    dist_timeout_min: float = MISSING
    max_update: int = MISSING
    max_epoch: int | None = MISSING
    label_smoothing: float = MISSING
    clip_norm: float = MISSING
    seed: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    compile: bool = MISSING
    parallel: str = "ddp"
    num_threads: int | None = MISSING
    peak_flops: float | None = MISSING
    log_interval: int = MISSING
    val_interval: int = MISSING
    save_interval: int = MISSING
    keep_last: int = MISSING
    max_consecutive_nonfinite: int = MISSING
    diverge_loss_factor: float = MISSING
    bleu_interval: int = MISSING
    bleu_at_end: bool = MISSING

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"trainer.precision={self.precision!r}: use auto, bf16 or fp32")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"trainer.parallel={self.parallel!r}: use ddp or fsdp")
        if self.batch_budget not in ("padded", "real"):
            raise ConfigError(f"trainer.batch_budget={self.batch_budget!r}: use padded or real")
        if self.num_workers < 0 or (self.tokens_per_update is not None and self.tokens_per_update < 1):
            raise ConfigError(f"trainer.num_workers={self.num_workers}, trainer.tokens_per_update="
                              f"{self.tokens_per_update}: need num_workers >= 0 and tokens_per_update >= 1 or null")
        for k in ("max_tokens", "update_freq", "log_interval", "val_interval", "save_interval",
                  "max_consecutive_nonfinite"):
            if getattr(self, k) < 1:
                raise ConfigError(f"trainer.{k}={getattr(self, k)}: must be >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"trainer.label_smoothing={self.label_smoothing}: must be in [0, 1)")


@dataclass
class EvalConfig:
    """configs/eval/default.yaml: beam search and the BLEU splits."""

    beam: int = MISSING
    lenpen: float = MISSING
    max_len_a: float = MISSING
    max_len_b: int = MISSING
    batch_tokens: int = MISSING
    splits: list[str] = field(default_factory=lambda: MISSING)
    max_sentences: int | None = MISSING


@dataclass
class LoggerConfig:
    """configs/logger/default.yaml: metrics.jsonl always, wandb as a mirror."""

    mode: str = MISSING
    project: str = MISSING
    entity: str | None = MISSING
    tags: list[str] = field(default_factory=lambda: MISSING)
    # parameter names whose RMS(U) is logged as optim_rms_u/<name> (the paper's Figure 1)
    track_rms_u: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.mode={self.mode!r}: use offline, online or disabled")


def typed(node: Any, schema: type[T], group: str) -> T:
    """`node` (a DictConfig or dict of config group `group`) as an instance of the dataclass `schema`."""
    try:
        if OmegaConf.is_config(node):  # resolved in place: a merge copies the node away from the keys it names
            node = OmegaConf.to_container(node, resolve=True)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{group}.{key}: {msg} (see configs/{group}/default.yaml for the keys and types)"
                          if key else f"{group}: {msg} (see configs/{group}/default.yaml)") from None


def config_root() -> Path:
    """configs/ of this checkout (ADAFACTOR_REPRO_ROOT when the scripts set it)."""
    root = os.environ.get("ADAFACTOR_REPRO_ROOT")
    return (Path(root) if root else Path(__file__).resolve().parents[2]) / "configs"


def load_group(path: str | Path) -> dict[str, Any]:
    """A group's YAML file as a plain dict, with the group-relative `defaults:` list applied as Hydra
    would (e.g. configs/data/wmt14_local_dev.yaml extends wmt14.yaml; model sizes extend a base).

    For reading one option of a group outside a Hydra run (benchmarks, the data CLI); a run composes
    configs/train.yaml with Hydra itself.
    """
    path = Path(path)
    node = OmegaConf.load(path)
    defaults = list(node.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create({})
    for entry in defaults:
        merged = OmegaConf.merge(merged, node if entry == "_self_" else load_group(path.parent / f"{entry}.yaml"))
    return OmegaConf.to_container(merged, resolve=True)


def check_experiment(name: str | None) -> None:
    """`experiments=<name>` must name a file of experiments/: configs/train.yaml lists the group as
    optional (a run without one is the default Adam config), and Hydra skips a missing optional option
    silently - a typo would train the wrong configuration under the default name."""
    if name is None:
        return
    folder = config_root().parent / "experiments"
    if not (folder / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise ConfigError(f"experiments={name}: no {folder / (name + '.yaml')}; the experiments are: {known}")
