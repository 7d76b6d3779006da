"""Checkpoint files of a run directory (docs/architecture.md, "train").

One resumable dict per file: `model`, `optimizer`, `scheduler`, `sampler`, `rng`, `update`, `epoch`,
`config`, `model_args`, `data_dir`, `git_commit` (+ loop counters). Everything in it is a tensor or a plain
Python value, so `torch.load(weights_only=True)` (no pickle code execution) reads it back.

Writes are atomic (adafactor_repro.files): the bytes go to a temporary file in the same directory, are
fsynced, then renamed over the target, so a crash mid-write leaves the previous file intact.
`checkpoint_last.pt` is written once per save; `checkpoint_best.pt` and the periodic
`checkpoint_<update>.pt` are copies of it (copy_file_range: a reflink where the filesystem has them), never
hard links, so that an edit of one file in place cannot reach another.

Reads are verified: a checkpoint is a zip archive whose members carry CRC-32s, which `torch.load` never
checks. `load_checkpoint` checks them first, so flipped bytes are a `CheckpointError` and the resume falls
back to the previous file instead of training on from garbage.
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
_PERIODIC = re.compile(r"^checkpoint_(\d+)\.pt$")
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "sampler", "rng", "update", "epoch", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, or not a checkpoint of this project)."""


# ----------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """All RNG states as tensors / plain values (numpy's key array becomes a tensor for the safe loader)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    # the safe loader returns lists where tuples were saved; random.setstate wants tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states of {len(cuda)} devices, this process sees "
                f"{torch.cuda.device_count()}: CUDA RNG not restored (dropout masks will differ)",
                stacklevel=2,
            )


# ----------------------------------------------------------------------------------------- writing
def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def _atomic_copy(src: Path, dst: Path) -> None:
    """dst becomes a separate file with src's bytes, atomically."""

    def copy(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, length=16 << 20)

    atomic_write(dst, copy, binary=True)


def periodic_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """[(update, path)] of the checkpoint_<update>.pt files, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = _PERIODIC.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    state: dict[str, Any],
    run_dir: str | Path,
    *,
    periodic: bool = False,
    best: bool = False,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint_last.pt; copy it to checkpoint_<update>.pt and/or checkpoint_best.pt; prune the
    periodic ones to the newest `keep_last` (keep_last <= 0 keeps all)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / LAST
    atomic_torch_save(state, last)
    if periodic:
        _atomic_copy(last, run_dir / f"checkpoint_{int(state['update'])}.pt")
        if keep_last > 0:
            for _, p in periodic_checkpoints(run_dir)[:-keep_last]:
                p.unlink(missing_ok=True)
    if best:
        _atomic_copy(last, run_dir / BEST)
    return last


# ----------------------------------------------------------------------------------------- reading
def verify_checkpoint(path: str | Path) -> None:
    """Raise if a member of the checkpoint's zip archive fails its CRC-32 (or the archive is unreadable)."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"CRC-32 mismatch in {bad}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, read with the safe (weights-only) unpickler; CheckpointError names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        verify_checkpoint(path)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad magic, unsafe global, ... all mean "this file is unusable"
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint, cannot be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Delete it to resume from an earlier checkpoint."
        ) from e
    if not isinstance(state, dict) or any(k not in state for k in ("model", "update")):
        raise CheckpointError(
            f"{path}: not a checkpoint of this project (expected a dict with 'model' and 'update')"
        )
    return state


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """Files to resume from, newest first: checkpoint_last.pt, periodic ones by update, checkpoint_best.pt."""
    run_dir = Path(run_dir)
    cands = [run_dir / LAST] + [p for _, p in reversed(periodic_checkpoints(run_dir))] + [run_dir / BEST]
    return [p for p in cands if p.is_file()]


def find_resume_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint of `run_dir` (None when it has none).

    An unreadable file is reported by name and skipped in favour of the previous one; if every file is
    unreadable, the run stops rather than silently start over.
    """
    cands = resume_candidates(run_dir)
    errors = []
    for p in cands:
        try:
            state = load_checkpoint(p, map_location)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"{e} Falling back to the previous checkpoint.", stacklevel=2)
            continue
        if missing := [k for k in REQUIRED_KEYS if k not in state]:
            errors.append(f"{p}: lacks {missing}, cannot resume from it")
            warnings.warn(errors[-1], stacklevel=2)
            continue
        return state, p
    if errors:
        raise CheckpointError(
            "no usable checkpoint to resume from:\n  " + "\n  ".join(errors)
            + "\nDelete the run directory to start over."
        )
    return None


# --------------------------------------------------------------------------------------- averaging
def average_checkpoints(paths: Iterable[str | Path]) -> dict[str, Any]:
    """The newest checkpoint's dict with `model` replaced by the element-wise mean of the models.

    Floating-point tensors are accumulated in float64 then cast back; integer buffers are taken from the
    newest file. Optimizer state is dropped (an average is for evaluation, not for resuming).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints: no input files")
    sums: dict[str, torch.Tensor] = {}
    newest = None
    for i, p in enumerate(paths):
        state = load_checkpoint(p)
        model = state["model"]
        if i == 0:
            keys = set(model)
            sums = {k: v.double().clone() if v.is_floating_point() else v for k, v in model.items()}
        else:
            if set(model) != keys:
                raise CheckpointError(f"{p}: parameter names differ from {paths[0]}; not the same model")
            for k, v in model.items():
                if v.shape != sums[k].shape:
                    raise CheckpointError(f"{p}: {k} has shape {tuple(v.shape)}, {paths[0]} {tuple(sums[k].shape)}")
                if v.is_floating_point():
                    sums[k] += v.double()
                else:
                    sums[k] = v
        if newest is None or int(state["update"]) >= int(newest["update"]):
            newest = state
    avg = {k: (v / len(paths)).to(newest["model"][k].dtype) if v.is_floating_point() else v for k, v in sums.items()}
    out = {k: v for k, v in newest.items() if k not in ("optimizer", "scheduler")}
    out["model"] = avg
    out["averaged_from"] = [str(p) for p in paths]
    return out
