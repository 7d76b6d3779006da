"""Counting host-device synchronisations of a piece of code, on any device.

A sync is an op whose result the host must wait for: reading a value back (``.item()``, ``bool(t)``,
``.tolist()``), or an op whose output *size* depends on the data (``nonzero``, boolean-mask indexing,
``masked_select``), so the host must learn the size before it can allocate. On a GPU each one drains the
launch queue, and the training step then runs at the speed of its host code. CUDA can report them itself
(``torch.cuda.set_sync_debug_mode``, used by the GPU check); `HostSyncCounter` finds the same ops by name at
the dispatcher, so the count can be pinned by a test on CPU.
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ops that always wait for the device. Under ``torch.inference_mode`` a read reaches the mode as ``item`` or
# ``is_nonzero`` (``bool(t)``), not decomposed to ``_local_scalar_dense``; the mode sees one of them, never both.
_ALWAYS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.nonzero, aten.masked_select,
           aten.unique_consecutive, aten._unique2, aten.equal, aten.repeat_interleave}
# indexing ops that wait only when an index is a boolean mask
_MASKED = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as c: ...``; then ``c.total`` and ``c.ops`` (a Counter by op name).

    On CPU every tensor is a host tensor, so reads of tensors that stay on the host on a GPU too (the
    DataLoader drawing its workers' seed from a CPU generator, torch.optim's CPU step counters) look like
    syncs; ``ignore`` lists source paths (substrings) whose calls are tallied in ``c.ignored`` instead.
    ``Tensor.tolist`` reads memory without dispatching an op on CPU, so it is counted by wrapping it for
    the duration of the block. ``repeat_interleave`` is counted even when given ``output_size`` (rare).
    Not visible on CPU: a copy from pageable host memory to the GPU (``torch.tensor(x, device="cuda")``),
    which waits for the stream; the GPU check's CUDA sync debug mode reports those."""

    def __init__(self, ignore: tuple[str, ...] = ()):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.ignore = tuple(ignore)

    def _count(self, name: str) -> None:
        if self.ignore:  # only on a sync, so the stack walk costs nothing on the common path
            files = [f.filename.replace("\\", "/") for f in traceback.extract_stack()]
            if any(i in f for f in files for i in self.ignore):
                self.ignored[name] += 1
                return
        self.ops[name] += 1

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _ALWAYS:
            self._count(str(packet).split(".")[-1])
        elif packet in _MASKED:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self._count(f"{str(packet).split('.')[-1]}[bool mask]")
        return func(*args, **kwargs)

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        count, tolist = self._count, self._tolist

        def counted_tolist(t, *a, **k):
            count("tolist")
            return tolist(t, *a, **k)

        torch.Tensor.tolist = counted_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)
