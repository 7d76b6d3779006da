"""Bytes held in an optimizer's state, exactly, for any torch optimizer (Adafactor, Adam, ...)."""

from __future__ import annotations

import torch

# State keys by kind: this package's Adafactor, torch.optim.Adam/AdamW, torch.optim.Adafactor and
# transformers' Adafactor. Anything else (step counters, unknown buffers) is counted under "other".
_KINDS = {
    "exp_avg_sq_row": "factored", "exp_avg_sq_col": "factored", "row_var": "factored", "col_var": "factored",
    "exp_avg_sq": "second_moment", "variance": "second_moment", "max_exp_avg_sq": "second_moment",
    "exp_avg": "momentum", "momentum_buffer": "momentum",
}  # fmt: skip


def _tensors(value):
    if isinstance(value, torch.Tensor):
        # A DTensor (sharded state, FSDP2) holds its local part: bytes are per rank, what this process holds.
        yield value.to_local() if hasattr(value, "to_local") else value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def optimizer_state_breakdown(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of optimizer state by kind: ``factored`` (row/column statistics), ``second_moment`` (full second
    moments), ``momentum`` and ``other`` (step counters and anything unrecognised), plus ``total``.

    A tensor whose storage was already counted (a view sharing memory) is not counted twice. Sharded state
    (DTensors) counts this rank's part only."""
    out = {"factored": 0, "second_moment": 0, "momentum": 0, "other": 0}
    seen: set[tuple[torch.device, int]] = set()
    for per_param in optimizer.state.values():
        for key, value in per_param.items():
            kind = _KINDS.get(key, "other")
            for t in _tensors(value):
                storage = t.untyped_storage()
                ident = (t.device, storage.data_ptr())
                if storage.data_ptr() != 0 and ident in seen:
                    continue
                seen.add(ident)
                out[kind] += storage.nbytes()
    out["total"] = sum(out.values())
    return out


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The bytes held in ``optimizer.state`` (every tensor's storage, each counted once)."""
    return optimizer_state_breakdown(optimizer)["total"]
