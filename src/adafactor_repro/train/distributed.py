"""torchrun / SLURM process-group setup. Rank 0 alone logs and writes files; every rank trains.

The environment contract is torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Under a
multi-task SLURM job started by hydra-submitit-launcher the same variables are exported from SLURM's by
submitit's TorchDistributedEnvironment, so one code path serves both launchers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# Collectives wait this long for a slow rank before the job fails. NCCL's default (10 min) is shorter than a
# rank may legitimately lag: the final BLEU decode or a checkpoint on a slow file system. A hung job still
# fails, just later; set trainer.dist_timeout_min lower to catch hangs sooner.
DEFAULT_TIMEOUT_MIN = 60.0


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when present, else CPU; `cpu`/`cuda`/`cuda:N` as given. Plain `cuda` is the
    ``local_rank % device_count()``-th visible card: torchrun on a node (8 visible cards, LOCAL_RANK 0-7)
    and SLURM binding one card per task (1 visible card, LOCAL_RANK 0-7) both land on a card that exists."""
    if pref in (None, "auto"):
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.device={pref} but CUDA is not available; use trainer.device=auto or cpu")
        n = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank % n)
        elif device.index >= n:
            raise RuntimeError(f"trainer.device={pref} but only {n} CUDA device(s) are visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                               "use trainer.device=cuda to pick one per rank")
    return device


def _export_slurm_env() -> None:
    """Multi-task SLURM job without torchrun: let submitit translate SLURM_* into torchrun's variables."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception as e:  # not a submitit job (e.g. plain srun): say what to do instead
        raise RuntimeError(
            "SLURM_NTASKS>1 but the torch.distributed variables are not set; launch with torchrun or "
            f"hydra/launcher=slurm (hydra-submitit-launcher) ({e})"
        ) from e


def init_distributed(device_pref: str = "auto", timeout_min: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE>1): gloo on CPU, nccl on CUDA, with an
    explicit collective timeout (`timeout_min`, default DEFAULT_TIMEOUT_MIN)."""
    _export_slurm_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(minutes=float(timeout_min or DEFAULT_TIMEOUT_MIN))
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank (used for decisions only rank 0 can make, e.g. which
    checkpoint file is readable)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(ok: bool = True) -> None:
    """Leave the process group. After a run that ended normally every rank first meets at a barrier, then
    sleeps a moment with the GIL released. Why: the objects that the last gather_object and
    broadcast_object_list send are freed by a gloo worker thread once their collective has finished, and
    that thread needs the GIL to free them. A rank that reaches teardown first (rank 1, right after its
    last send) used to free the DDP reducer, and with it the process group, while holding the GIL. The
    group's destructor then joins the worker threads, and a worker still waiting for the GIL never
    finishes: a deadlock at exit, seen about once in 40 two-rank runs (stacks: ~ProcessGroupGloo ->
    thread::join, AsyncGatherWork::~AsyncGatherWork -> gil_scoped_acquire). After an error there is no
    barrier, because a peer may never reach it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if ok and dist.get_world_size() > 1:
        dist.barrier()
        time.sleep(0.2)  # the workers take the GIL and free what the last collectives held
    dist.destroy_process_group()


def gather_object(obj, dst: int = 0) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on rank `dst` (None elsewhere); [obj] in a single process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out
