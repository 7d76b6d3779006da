"""Checking a composed config before anything is written: the keys of the typed groups, the experiment name,
and the arguments of the optimizer, the schedule and the model (each built once on a dummy input, which
draws nothing from any random generator). A bad value is a `ConfigError` naming the group and the fix.

`scripts/train.py` runs `preflight(argv)` before Hydra starts: Hydra creates the run directory (with its
.hydra/ folder and train.log) before calling the task function, so an error found inside the task would
leave a stub run directory behind. The preflight composes the same config with Hydra's compose API, checks
it, and exits with one line (status 1) on an error of the command line or of a value.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, EvalConfig, LoggerConfig, TrainerConfig, check_experiment, typed


def _flatten(text: str) -> str:
    """A multi-line message on one line: top-level lines joined by "; ", indented ones (Hydra's lists of
    options) by ", "; OmegaConf's full_key/object_type trailers and Hydra's search-path dump dropped."""
    out: list[str] = []
    for ln in text.splitlines():
        if not ln.strip() or ln.strip().startswith(("full_key:", "object_type=")):
            continue
        if ln.startswith("Config search path"):
            break
        if ln[:1] in (" ", "\t") and out:
            out[-1] += (" " if out[-1].endswith(":") else ", ") + ln.strip()
        else:
            out.append(ln.strip().rstrip("."))
    return "; ".join(out)


def _cause(e: BaseException) -> str:
    """The message of an exception and of its causes, innermost last (Hydra wraps a target's error in
    InstantiationException, an override's in ConfigCompositionException), without repeats."""
    parts: list[str] = []
    while e is not None:
        text = _flatten(str(e))
        if text and not any(text in p for p in parts) and not text.startswith("Error in call to target"):
            parts.append(text.rstrip("."))
        e = e.__cause__
    return "; ".join(parts)


def validate_config(cfg: Any, choices: dict | None = None) -> None:
    """Raise ConfigError for the first value of `cfg` (a composed train config, without its `hydra` node)
    that a run could not use. `choices` are Hydra's group choices (for the experiment name)."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..model import TransformerConfig

    check_experiment((choices or {}).get("experiments"))
    typed(cfg.trainer, TrainerConfig, "trainer")
    typed(cfg.eval, EvalConfig, "eval")
    typed(cfg.logger, LoggerConfig, "logger")
    try:
        model = OmegaConf.to_container(cfg.model, resolve=True)
        TransformerConfig(**{**model, "vocab_size": 64, "pad_id": 1})
    except Exception as e:  # noqa: BLE001 - any failure here is the config's
        raise ConfigError(f"model: {_cause(e)} (configs/model/)") from None
    try:
        factory = instantiate(cfg.optim)
        factory([torch.nn.Parameter(torch.zeros(2, 2))])
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"optim: {_cause(e)} (configs/optim/)") from None
    try:
        instantiate(cfg.schedule)(0)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"schedule: {_cause(e)} (configs/schedule/)") from None


def compose_train_config(overrides: list[str], config_dir: Path):
    """(config without `hydra`, Hydra's group choices) of configs/train.yaml with `overrides`, as a run
    would compose it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="train"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def preflight(argv: list[str], config_dir: Path, prog: str = "train.py") -> None:
    """Compose and check the config of a single run (`argv`: the command line's overrides) before Hydra
    creates its run directory; on an error print `prog: error: <one line>` and exit 1. Hydra's own flags
    (--help, --cfg, -m ...) are left to Hydra: a multirun checks each job inside it."""
    if any(a.startswith("-") for a in argv):
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg, choices = compose_train_config(argv, config_dir)
        validate_config(cfg, choices)
    except ConfigError as e:
        msg = " ".join(str(e).split())
    except (HydraException, OmegaConfBaseException) as e:
        msg = _cause(e)
    else:
        return
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)
