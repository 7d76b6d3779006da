"""Throughput accounting: model FLOPs utilization (MFU) and peak memory.

MFU = achieved model FLOPs per second / the card's dense bf16 peak (PaLM, Chowdhery et al. 2022, App. B).
The model FLOPs of a batch are `Transformer.training_flops(src_shape, tgt_shape)` (forward + backward
matmuls of the padded shapes, no recomputation or elementwise work), comparable with nanoGPT/torchtitan.
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


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory on GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes
