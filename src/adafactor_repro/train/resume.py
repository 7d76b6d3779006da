"""What a run records of its config, and which of it a resume may change (docs/training.md, "Resume")."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# What a resume may change: when and how the loop reports, evaluates and stops, and where files are.
# Anything else (optimizer, schedule, model, data, batch size, seed, precision) would make the run a
# mixture of two configurations under one name, so a resume that changes it is refused.
RESUME_MAY_CHANGE = (
    "trainer.max_update", "trainer.max_epoch", "trainer.log_interval", "trainer.val_interval",
    "trainer.save_interval", "trainer.keep_last", "trainer.bleu_interval", "trainer.bleu_at_end",
    "trainer.num_threads", "trainer.device", "trainer.compile", "trainer.peak_flops",
    "trainer.max_consecutive_nonfinite", "trainer.diverge_loss_factor", "trainer.num_workers",
    "trainer.dist_timeout_min", "eval.", "logger.",
    "data.local_dir", "data.root", "data.num_workers", "run_dir", "data_artifact.dir",
)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values, interpolations resolved, without Hydra's own `hydra` node."""
    out = {}
    for k in cfg:
        if k == "hydra":
            continue
        v = cfg[k]
        out[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def config_changes(stored: dict, new: dict, stored_world_size: int = 1, world_size: int = 1) -> list[str]:
    """'key: stored -> new' for every key in both configs whose value differs and that a resume may not
    change (keys only one side has are new or retired knobs, not changes). trainer.update_freq may change
    with the number of processes when their product, the batch of an update, stays the same."""
    a, b = _flatten(stored), _flatten(new)
    allowed = lambda k: any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUME_MAY_CHANGE)  # noqa: E731
    k = "trainer.update_freq"
    same_batch = k in a and k in b and a[k] * stored_world_size == b[k] * world_size
    out = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b))
           if a[k] != b[k] and not allowed(k) and not (k == "trainer.update_freq" and same_batch)]
    # A padded budget (trainer.max_tokens per rank, no trainer.tokens_per_update, which the loop re-splits
    # itself) on another number of processes with the same update_freq would change the batch of an update.
    if (stored_world_size != world_size and not b.get("trainer.tokens_per_update")
            and a.get(k, 1) == b.get(k, 1)):
        want = a.get(k, 1) * stored_world_size / world_size
        fix = (f"resume with {k}={int(want)}" if want == int(want) else
               f"resume on {stored_world_size} process(es)")
        out.append(f"the batch of an update, max_tokens x update_freq x processes: {a.get(k, 1)} x "
                   f"{stored_world_size} -> {b.get(k, 1)} x {world_size} processes ({fix})")
    return out
