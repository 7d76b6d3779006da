"""Which cell a run directory is, and whether it is that cell (issue 17, item 1; issue 18, item 2).

A cell is (scale, experiment, schedule, seed), and its run directory is named `<experiment>-<schedule>-s<seed>`.
The name alone proves nothing: `train.py experiments=table2_Q1 trainer.max_update=20 model.d_model=32` writes to
the same directory as the real cell. So publishing, skipping a finished cell and tabulating compare the run's
resolved config (its config.yaml) with the cell's canonical config, composed from configs/ and experiments/ as
`scripts/train.py scale=S experiments=E schedule=W trainer.seed=N` would, on every key that can change a result,
and refuse a mismatch, naming the keys. A table also refuses runs of different data (artifact key and tokenizer
sha256) or code (git commit) than the rest: `provenance`.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .runs import Run

# Keys that cannot change what a run computes: where files are, how often it reports, and the data's location
# (its content is data_artifact.key and .spm_sha256, compared by `provenance`).
NOT_RESULTS = (
    "run_dir", "logger.", "data.root", "data.local_dir", "data.embedded", "data.num_workers", "data_artifact.",
    "trainer.log_interval", "trainer.val_interval", "trainer.save_interval", "trainer.keep_last",
    "trainer.dist_timeout_min", "trainer.num_workers", "trainer.peak_flops",
)


def cell_name(experiment: str, schedule: str, seed: int) -> str:
    """The run directory's name (configs/train.yaml run_dir)."""
    return f"{experiment}-{schedule}-s{seed}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _result_key(key: str) -> bool:
    return not any(key == p or (p.endswith(".") and key.startswith(p)) for p in NOT_RESULTS)


@functools.lru_cache(maxsize=512)
def _canonical(root: str, scale: str, experiment: str, schedule: str, seed: int,
               overrides: tuple[str, ...] = ()) -> tuple[tuple[str, Any], ...]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    os.environ.setdefault("ADAFACTOR_REPRO_ROOT", root)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(root) / "configs"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            f"scale={scale}", f"experiments={experiment}", f"schedule={schedule}", f"trainer.seed={seed}",
            *overrides])
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.*} resolve as in a run
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
             for k in cfg if k != "hydra"}
    GlobalHydra.instance().clear()
    return tuple(sorted(_flatten(plain).items()))


def canonical_config(scale: str, experiment: str, schedule: str, seed: int, root: str | Path,
                     overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flattened resolved config of the cell, as `scripts/train.py` composes it with no other override
    (or with a sweep's own `overrides`, which then define its cells)."""
    return dict(_canonical(str(root), scale, experiment, schedule, int(seed), tuple(overrides)))


def identify(run: Run) -> tuple[str, str, str, int]:
    """(scale, experiment, schedule, seed) that a run says it is (summary.json and config.yaml)."""
    s, c = run.summary, run.config
    scale = s.get("scale") or c.get("scale_name")
    return str(scale), str(c.get("name")), str(s.get("schedule")), int((c.get("trainer") or {}).get("seed", 0))


def mismatch(run: Run, root: str | Path, cell: tuple[str, str, str, int] | None = None,
             overrides: tuple[str, ...] = ()) -> list[str]:
    """Why `run` is not the cell it is named after (or `cell`): 'key: run value != cell value' for every
    result-changing key both configs have that differs, plus a directory name that is not the cell's. Empty when
    it is the cell."""
    scale, exp, sched, seed = cell or identify(run)
    problems = []
    if run.path.name != cell_name(exp, sched, seed):
        problems.append(f"directory {run.path.name} != {cell_name(exp, sched, seed)}")
    try:
        # `optional experiments` composes silently without the file: look for it first
        for f in (Path(root) / "experiments" / f"{exp}.yaml", Path(root) / "configs" / "scale" / f"{scale}.yaml"):
            if not f.is_file():
                raise FileNotFoundError(f"no {f.relative_to(root)}")
        want = canonical_config(scale, exp, sched, seed, root, overrides)
    except Exception as e:  # an experiment, scale or schedule that no longer exists (or never did)
        return [*problems, f"no such cell here (scale={scale} experiments={exp} schedule={sched}): "
                           f"{' '.join(str(e).split())[:200]}"]
    got = _flatten({k: v for k, v in run.config.items()})
    # Keys on one side only are knobs added (or retired) since the run: the code that ran had no such choice
    # (as resume treats them); whether that code computes what today's does is `make verify`'s question.
    for k in sorted(set(want) & set(got)):
        if not _result_key(k):
            continue
        a, b = got[k], want[k]
        if a != b and not (isinstance(a, int | float) and isinstance(b, int | float) and float(a) == float(b)):
            problems.append(f"{k}: {a!r} != {b!r}")
    return problems


def provenance(runs: list[Run], expect: dict | None = None) -> dict[str, Any]:
    """The data artifact and commit a table's runs share, and the runs that differ from the majority (or from
    `expect`, another table's provenance: the twin reported beside a table must share its data and code).

    {"artifact": (key, spm_sha256), "commit": sha, "odd": {run name: reason}} - a table is built from the
    runs that are not odd, and says which it left out."""
    def art(r: Run) -> tuple[str | None, str | None]:
        a = r.config.get("data_artifact") or {}
        return a.get("key"), a.get("spm_sha256")

    arts = Counter(art(r) for r in runs)
    commits = Counter(r.summary.get("git_commit") for r in runs)
    artifact = arts.most_common(1)[0][0] if arts else (None, None)
    commit = commits.most_common(1)[0][0] if commits else None
    if expect is not None:
        artifact, commit = tuple(expect["artifact"]), expect["commit"]
    odd = {}
    for r in runs:
        why = []
        if art(r) != artifact:
            why.append(f"data artifact {art(r)[0]}/{str(art(r)[1])[:12]} != {artifact[0]}/{str(artifact[1])[:12]}")
        if r.summary.get("git_commit") != commit:
            why.append(f"commit {str(r.summary.get('git_commit'))[:12]} != {str(commit)[:12]}")
        if why:
            odd[r.path.name] = "; ".join(why)
    return {"artifact": artifact, "commit": commit, "odd": odd}
