"""One optimizer update: forward/backward over `update_freq` micro-batches, then clip, check, step.

Normalisation (per target token over the whole update): every micro-batch's summed loss is divided by the
number of non-pad target tokens of the *update* - all micro-batches on all ranks - which is all-reduced
before the first forward. DDP averages gradients over ranks, so the loss is multiplied by the world size
to turn that average back into the sum. The gradient is then exactly that of
sum(loss over all tokens of the update) / ntokens(update), whatever the split into micro-batches and
ranks (tests/test_ddp.py checks 2 ranks against 1 process on the same global batch). FSDP2's reduce-scatter
averages over ranks as DDP's all-reduce does, so the same scale holds (tests/test_fsdp_train.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .distributed import all_reduce_sum
from .loss import label_smoothed_nll_loss

_BATCH_TENSORS = ("src_tokens", "prev_output_tokens", "target", "target_index", "target_tokens")


@dataclass
class StepResult:
    finite: bool            # False: the update was skipped (non-finite loss or gradient)
    loss_sum: torch.Tensor  # 0-d, summed over all ranks and micro-batches (smoothed loss)
    nll_sum: torch.Tensor   # 0-d, same for the plain NLL
    ntokens: int            # target tokens of the update, all ranks
    gnorm: torch.Tensor     # 0-d, global L2 norm of the gradient before clipping
    stop: bool = False      # some rank asked to stop (its `stop` argument), read in the same host sync


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device`; asynchronous from pinned memory (the DataLoader's pin_memory)."""
    out = dict(batch)
    for k in _BATCH_TENSORS:
        if k in batch:
            out[k] = batch[k].to(device, non_blocking=True)
    return out


def forward_loss(
    model: torch.nn.Module,
    batch: dict,
    *,
    label_smoothing: float,
    pad_id: int = 0,
    autocast_dtype: torch.dtype | None = None,
    loss_fn=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed loss sum, NLL sum) of one batch: the forward shared by training and validation.

    Logits of the non-pad target positions only: the output layer (~40% of the small model's FLOPs at
    V=8k) and the loss skip padding. `collate` ships those positions (`target_index`, `target_tokens`), so
    selecting them is a gather of known size; a batch without them falls back to a boolean mask, which
    makes the host wait for the device twice per micro-batch (same numbers, bit for bit).
    """
    loss_fn = loss_fn or label_smoothed_nll_loss  # looked up per call (tests substitute it)
    device_type = batch["target"].device.type
    if "target_index" in batch:
        select, target = {"output_index": batch["target_index"]}, batch["target_tokens"]
    else:
        mask = batch["target"].ne(pad_id)
        select, target = {"output_mask": mask}, batch["target"][mask]
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(batch["src_tokens"], batch["prev_output_tokens"], **select)
    return loss_fn(logits, target, label_smoothing, pad_id)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[dict],
    *,
    label_smoothing: float,
    pad_id: int = 0,
    clip_norm: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
    world_size: int = 1,
    scheduler=None,
    loss_fn=None,
    stop: bool = False,
) -> StepResult:
    """Accumulate gradients over `micro_batches` (already on the model's device), then step if finite.

    One host synchronisation per update: the finite check (all ranks take the same decision because the
    gradient norm and the loss sums are global), which also reads back the update's token count and
    whether any rank asked to `stop` (a signal: all ranks then stop after the same update).
    """
    device = micro_batches[0]["target"].device
    local_tokens = sum(int(b["ntokens"]) for b in micro_batches)
    # torch.full, not torch.tensor: a Python number copied to a GPU waits for the stream (a pageable
    # copy), i.e. for the previous update's optimizer step; filling launches a kernel and returns
    ntok = torch.full((), float(local_tokens), device=device)
    all_reduce_sum(ntok)
    # world_size / ntokens: DDP's gradient average over ranks becomes a sum over ranks, divided by tokens
    scale = world_size / ntok.clamp(min=1.0)
    sums = torch.zeros(3, device=device)  # loss, nll, stop requests
    sums[2] = float(stop)
    inner = getattr(model, "_orig_mod", model)  # DDP or FSDP, possibly inside torch.compile
    ddp, fsdp = isinstance(inner, DDP), hasattr(inner, "set_requires_gradient_sync")
    for i, b in enumerate(micro_batches):
        # gradients are all-reduced (DDP) or reduce-scattered (FSDP) on the last micro-batch only
        last = i == len(micro_batches) - 1
        sync_ctx = model.no_sync() if ddp and not last else contextlib.nullcontext()
        if fsdp:
            inner.set_requires_gradient_sync(last)
        with sync_ctx:
            loss, nll = forward_loss(model, b, label_smoothing=label_smoothing, pad_id=pad_id,
                                     autocast_dtype=autocast_dtype, loss_fn=loss_fn)
            (loss * scale).backward()
        sums[:2] += torch.stack((loss.detach(), nll))
    all_reduce_sum(sums)

    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    gnorm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if hasattr(gnorm, "full_tensor"):  # sharded gradients (FSDP): the norm of the local shards, summed over ranks
        gnorm = gnorm.full_tensor()
    finite_t = torch.isfinite(torch.cat((sums[:2], gnorm.reshape(1)))).all()
    if world_size > 1:  # the one host sync: finite?, the global token count, stop requests
        finite_f, ntokens_f, stop_f = torch.stack((finite_t.float(), ntok, sums[2])).tolist()
        finite, ntokens, stop = bool(finite_f), int(ntokens_f), stop_f > 0
    else:  # one process: the token count is the host's own
        finite, ntokens, stop = bool(finite_t), local_tokens, bool(stop)
    if finite:
        if clip_norm and clip_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, clip_norm, gnorm, foreach=True)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(finite=finite, loss_sum=sums[0], nll_sum=sums[1], ntokens=ntokens, gnorm=gnorm, stop=stop)
