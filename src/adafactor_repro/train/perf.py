"""Throughput accounting: model FLOPs utilization (MFU) and peak memory.

MFU = achieved model FLOPs per second / the card's dense bf16 peak (PaLM, Chowdhery et al. 2022, App. B):
model FLOPs count the forward and backward matmuls only (3x the forward), not recomputation or
elementwise work, so the figure is comparable with nanoGPT's and torchtitan's.
"""

from __future__ import annotations

import resource
import sys

import torch

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
_PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / NVL
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A6000", 155e12),
    ("4090", 165e12),
    ("V100", 125e12),  # fp16 tensor cores: V100 has no bf16
    ("T4", 65e12),
)


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """The card's bf16 peak (FLOP/s), `override` when given, None on CPU or an unknown card (no MFU)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in _PEAK_BF16:
        if key in name:
            return flops
    return None


def transformer_flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per target token when the model does not provide its own count.

    6 * N (forward 2N + backward 4N multiply-adds over every weight a token passes through; Kaplan et al.
    2020, Section 2.1), the embedding table counted once as the output projection. Attention's
    score/value matmuls (~12 * layers * d * T per token) are omitted here, so this is a lower bound.
    """
    fn = getattr(model, "flops_per_token", None)
    if callable(fn):
        return float(fn())
    n = sum(p.numel() for p in model.parameters())
    return 6.0 * n


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory on GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes
