"""What a figure was measured on and with which code, for the headers of benchmark and result files and
for checkpoints. Imports nothing from the package."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else what `platform` knows) and the vector unit torch's kernels use.

    The second part matters more: a VM may name its CPU only "AMD EPYC", and the same model name can run torch's
    AVX2 or AVX-512 kernels, whose float sums differ in their last bits."""
    import torch

    name = platform.processor() or platform.machine() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, torch kernels {torch.backends.cpu.get_cpu_capability()}"


def git_commit(short: bool = False, cwd: str | Path | None = None) -> str | None:
    """HEAD of the repository holding this package (None outside a git checkout)."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(cmd, cwd=cwd or _HERE, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_header(threads: int | None = None) -> str:
    """One line: CPU, cores, OS, torch (and its threads when given), git commit, load average - what a
    reader needs to compare a benchmark or result file with their own run."""
    import torch

    load = load_average()
    return (f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
            f"torch {torch.__version__}" + (f" ({threads} threads)" if threads else "")
            + f"; git {git_commit(short=True) or 'unknown'}"
            + (f"; load average {load:.2f}" if load is not None else ""))
