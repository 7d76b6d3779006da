"""What only a GPU would exercise in the Triton optimizer, checked as far as a CPU allows (issue 16, item 6):

- CUDA-graph capture preconditions of ``Plan.step``: after the first step, no host read and no allocation
  (every op in place or into an ``out=``), the kernels stubbed so that only the host code is measured (the
  interpreter reads tensors on the host by construction). tests/test_optim_triton.py replays it in a real CUDA
  graph where a GPU exists.
- bf16 autocast dtype flow: the parameters stay fp32 and so do their gradients, so the step launches the
  X_BF16=False, G_BF16=False specialisation, which the compile tier compiles (results/gpu/kernels.md).
- torch.compile(fullgraph=True) of a step with fused="triton": inside a compiled region the optimizer takes its
  eager path (a Triton launch through a pointer table is opaque to dynamo), and traces one graph."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from adafactor_repro.bench.syncs import HostSyncCounter  # noqa: E402
from adafactor_repro.optim import Adafactor, _triton  # noqa: E402


class _Ops(TorchDispatchMode):
    """Every op dispatched, and those that allocate (neither in place, nor into an out= tensor)."""

    def __init__(self):
        super().__init__()
        self.ops, self.allocating = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        self.ops.append(str(func))
        if func.namespace == "profiler" or func.is_view:  # record_function markers; views own no storage
            return func(*args, **(kwargs or {}))
        if not (name.endswith("_") or func._overloadname.startswith("out") or "out" in (kwargs or {})):
            self.allocating.append(str(func))
        return func(*args, **(kwargs or {}))


def _stub_kernels(monkeypatch) -> list:
    launches = []

    class Stub:
        def __init__(self, i):
            self.i = i

        def __getitem__(self, grid):
            return lambda *a, **k: launches.append((self.i, grid, k))

    monkeypatch.setattr(_triton, "kernels", lambda: tuple(Stub(i) for i in range(4)))
    return launches


@pytest.mark.parametrize("lr", [0.01, "tensor"])
def test_step_after_the_first_reads_nothing_back_and_allocates_nothing(monkeypatch, lr):
    launches = _stub_kernels(monkeypatch)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in [(32, 16), (16,), (3, 8, 8)]]
    opt = Adafactor(ps, lr=torch.tensor(0.01) if lr == "tensor" else lr, min_dim_size_to_factor=4, fused="triton")
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()  # builds the plan: tables and scratch are allocated here, once
    launches.clear()
    with HostSyncCounter() as syncs, _Ops() as ops:
        opt.step()
    assert syncs.total == 0, syncs.ops
    assert ops.ops and not ops.allocating, ops.allocating
    assert [i for i, _, _ in launches] == [0, 1, 2, 3]


def test_bf16_autocast_keeps_fp32_parameters_and_gradients(monkeypatch):
    launches = _stub_kernels(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    opt = Adafactor(model.parameters(), lr=0.01, min_dim_size_to_factor=4, fused="triton")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(4, 16))
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
    opt.step()
    phase1 = [k for i, _, k in launches if i == 0]
    assert phase1 and all(k["X_BF16"] is False and k["G_BF16"] is False for k in phase1)


def test_compiled_fullgraph_step_with_fused_triton_takes_the_eager_path():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(6))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt = Adafactor(ps, lr=0.01, min_dim_size_to_factor=4, fused="triton")
    eager = Adafactor(ref, lr=0.01, min_dim_size_to_factor=4, fused=False)
    step = torch.compile(Adafactor.step, backend=backend, fullgraph=True)
    for _ in range(3):
        g = [torch.randn_like(p) for p in ps]
        for p, r, gi in zip(ps, ref, g):
            p.grad, r.grad = gi.clone(), gi.clone()
        step(opt)
        eager.step()
    assert len(graphs) >= 1 and not opt._plans  # traced; no Triton plan was built inside the compiled region
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-5, atol=1e-6)
