"""Build and load the fused CPU kernel (_kernel.c) with the system C compiler, through ctypes.

The kernel is optional: when no compiler is found, the build fails, or ``ADAFACTOR_REPRO_NO_KERNEL=1`` is
set, :func:`load` returns ``None`` and :class:`~adafactor_repro.optim.Adafactor` uses its eager torch path,
which computes the same update. The shared object is cached under ``$XDG_CACHE_HOME/adafactor_repro``
(default ``~/.cache``) keyed by a hash of the source, the flags, the compiler and the CPU, so a build runs
once per machine (about a second) and a shared home directory never serves a binary built for another CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

_SRC = Path(__file__).with_name("_kernel.c")
# -march=native: the kernel is built on the machine that runs it (the cache key includes the CPU).
# -fno-math-errno: sqrtf must not set errno, or the loops calling it are not vectorised.
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep)


def _build() -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        "\n".join([_SRC.read_text(), " ".join(_FLAGS), version, _cpu_id(), platform.machine()]).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adafactor_repro"
    target = cache / f"afx_kernel_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Build into a temporary file and rename: concurrent processes never load a half-written object.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *_FLAGS, str(_SRC), "-o", tmp, "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed to build {_SRC.name}:\n{proc.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The loaded kernel library, or ``None`` when it is unavailable (see :func:`error`)."""
    global _lib, _tried, _error
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("ADAFACTOR_REPRO_NO_KERNEL", "0") not in ("", "0"):
            _error = "disabled by ADAFACTOR_REPRO_NO_KERNEL"
            return None
        try:
            lib = ctypes.CDLL(str(_build()))
        except (OSError, RuntimeError) as e:
            _error = str(e)
            return None
        c_i64, c_dbl, c_ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
        lib.afx_step.restype = ctypes.c_int
        lib.afx_step.argtypes = [
            c_i64, c_ptr, c_dbl, c_dbl,  # k, meta, beta2 (< 0: 1 - t^-c), decay_exponent c
            c_dbl, c_dbl, c_dbl, c_dbl, ctypes.c_int, c_dbl, c_dbl,  # eps1 lr eps2 clip scale beta1 wdf
            ctypes.c_int, c_i64, c_ptr, c_ptr, c_ptr,  # nthreads, small_numel, rms_out, alpha_out, beta2t_out
        ]  # fmt: skip
        _lib = lib
        return _lib


def error() -> str | None:
    """Why :func:`load` returned ``None`` (``None`` when the kernel loaded or was never requested)."""
    return _error


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def check(t, numel: int, what: str) -> None:
    """Refuse, in one line naming ``what``, a tensor that ``afx_step`` would misread. The kernel takes raw data
    pointers and walks ``numel`` contiguous fp32 words of host memory from each: a tensor subclass (a DTensor's
    pointer is its local shard's, not the tensor's), a GPU or meta tensor, another dtype, a strided view or a
    state tensor of the wrong size would be read out of bounds (a segfault) or silently wrong. About 0.5 us a
    tensor (is_cpu, not device.type, which builds a device object), on the step's hot path."""
    if type(t) not in _PLAIN or not t.is_cpu or t.dtype is not torch.float32 or not t.is_contiguous() \
            or t.numel() != numel:
        _refuse(t, numel, what)


def _refuse(t, numel: int, what: str) -> None:
    if type(t) not in _PLAIN:
        raise TypeError(f"Adafactor C kernel: {what} is a {type(t).__name__}, not a plain tensor")
    raise ValueError(f"Adafactor C kernel: {what} must be a contiguous float32 CPU tensor of {numel} elements, "
                     f"got {t.dtype} on {t.device}, shape {tuple(t.shape)}, contiguous={t.is_contiguous()}")
