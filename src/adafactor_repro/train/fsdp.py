"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the training loop: ``trainer.parallel=fsdp``.

Every encoder and decoder layer is its own FSDP unit (and each cross-attention, see ``shard``), then the root (embeddings, final norms): a layer's
parameters are all-gathered just before it runs and freed after, gradients are reduce-scattered, and each rank
keeps 1/world of the parameters, gradients and optimizer state (Adafactor's own DTensor path, optim/_sharded.py).
On CUDA the unit computes in bf16 and reduces gradients in fp32 (MixedPrecisionPolicy); the sharded fp32
parameters are what the optimizer updates.

Checkpoints gather to full (unsharded) state dicts on rank 0, in the same single-file format as the DDP path,
model keys unchanged: resume on any world size, evaluate.py and average_checkpoints.py read them as they are.
The optimizer state is keyed by parameter name (torch.distributed.checkpoint.state_dict's full format). A
model too large for one host's memory would save with torch.distributed.checkpoint instead (sharded, resharded
on load): the optimizer supports it (tests/test_fsdp.py), the loop does not do it yet.

Evaluation (validation loss, beam search) runs on an unsharded copy, refreshed from the full state at each
evaluation: FSDP's forward is a collective, and ranks decode different numbers of steps.
"""

from __future__ import annotations

import torch
from torch import nn


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` each encoder and decoder layer, then the root, over all ranks (a 1-D mesh)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()  # CPU: fp32 (bf16 matmuls on CPU are slower, and the CPU runs are fp32)
    for layer in model.decoder:
        # The decoder projects the encoder output to K, V with cross_attn.project_kv, outside the layer's
        # forward (decoding reuses them): its own unit, with project_kv registered to all-gather like forward.
        fully_shard(layer.cross_attn, mesh=mesh, mp_policy=mp)
        register_fsdp_forward_method(layer.cross_attn, "project_kv")
    for stack in (model.encoder, model.decoder):
        for layer in stack:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) full state dicts on CPU, on rank 0 (empty elsewhere). A collective: every rank calls."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _options(cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict,
                    optim_sd: dict | None) -> None:
    """Load full state dicts (every rank has read the file) into the sharded model and optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_sd, options=_options())
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_state_keyed(model, optim_sd, by_name=True), options=_options())


def optim_state_keyed(model: nn.Module, sd: dict, by_name: bool) -> dict:
    """An optimizer state dict keyed by parameter name (torch's full format, what FSDP runs save) or by index
    (``Optimizer.state_dict()``, what 1-process and DDP runs save), converted if needed. The optimizer holds
    ``model.parameters()`` in order, which is ``named_parameters()``'s (FSDP2 keeps the names)."""
    names = [n for n, _ in model.named_parameters()]
    keys = list(sd.get("state", {})) + [k for g in sd["param_groups"] for k in g["params"]]
    if all(isinstance(k, str) for k in keys) == by_name:
        return sd
    to = (lambda i: names[i]) if by_name else {n: i for i, n in enumerate(names)}.__getitem__  # noqa: E731
    return {"state": {to(k): v for k, v in sd["state"].items()},
            "param_groups": [{**g, "params": [to(k) for k in g["params"]]} for g in sd["param_groups"]]}


def full_model_state(model: nn.Module) -> dict:
    """The full model state dict on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())
