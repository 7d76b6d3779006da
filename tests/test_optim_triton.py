"""The fused Triton Adafactor (optim/_triton.py) on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1), or compiled on CUDA tensors where a GPU exists: pinned against the paper reference on the whole switch grid, odd shapes, zero gradients,
bf16, exact state bytes, tile ownership, and launches per step independent of the tensor count.

The interpreter runs programs one after another, so it cannot expose races (the tile-ownership test checks the
design instead), and it is slow: shapes are small and the tile shape is shrunk so that every loop boundary of
the kernels (several row blocks, column blocks, tiles per matrix, matrices per tensor) is crossed anyway."""

from __future__ import annotations

import io
import os
import sys

import pytest
import torch

# Triton fixes interpreted or compiled mode when it is imported (conftest.py sets TRITON_INTERPRET=1 first on a
# machine without a GPU). Without a GPU the kernels run under the interpreter on CPU tensors; with one, compiled
# on CUDA tensors.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    assert "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") == "1", (
        "triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py sets it)"
    )
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from optim_reference import ReferenceAdafactor  # noqa: E402
from test_optim import GRID, STATE_KEYS, grad_sequence  # noqa: E402
from test_optim import make_params as make_cpu_params  # noqa: E402

from adafactor_repro.optim import Adafactor, _triton, optimizer_state_breakdown  # noqa: E402

MIN_DIM = 4
# 1-D, 2-D, 3-D and below min_dim (3 < 4: never factored).
SHAPES = [(7,), (6, 5), (3, 4, 6), (3, 8)]
# Several tiles per matrix, several row and column blocks per tile, n < ROWS for one matrix, m not a multiple
# of COLS, a 1-D tensor over several tiles, a 3-D tensor whose matrices each take several tiles.
ODD = [(37, 45), (2, 19, 21), (300,), (5, 300), (2, 7)]


def make_params(seed=0, shapes=SHAPES, dtype=torch.float32):
    return [torch.nn.Parameter(p.detach().to(DEVICE)) for p in make_cpu_params(seed, shapes, dtype)]

@pytest.fixture(autouse=True)
def tile_shape(monkeypatch):
    # One program per small tensor: the grid's cost is the interpreter's per-operation overhead.
    monkeypatch.setattr(_triton, "ROWS", 8)
    monkeypatch.setattr(_triton, "COLS", 8)
    monkeypatch.setattr(_triton, "BLOCK", 32)
    monkeypatch.setattr(_triton, "TILE_ELEMS", 1 << 12)


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(_triton, "ROWS", 4)
    monkeypatch.setattr(_triton, "COLS", 16)
    monkeypatch.setattr(_triton, "BLOCK", 32)
    monkeypatch.setattr(_triton, "TILE_ELEMS", 128)


def plan_of(opt) -> _triton.Plan:
    (plan,) = opt._plans.values()
    return plan


def check_against_reference(kw, shapes, steps, grads=None, rtol=2e-5, atol=2e-6):
    params = make_params(shapes=shapes)
    ref = ReferenceAdafactor(params, **kw)
    opt = Adafactor(params, **kw, fused="triton")
    for gs in grads or grad_sequence(shapes, steps):
        for p, gr in zip(params, gs):
            p.grad = gr.to(DEVICE)
        opt.step()
        ref.step(gs)
        for p, x in zip(params, ref.x):
            torch.testing.assert_close(p.detach().cpu().double(), x, rtol=rtol, atol=atol)
        st = opt.stats()
        torch.testing.assert_close(st["rms_u_mean"].item(), sum(ref.rms_u) / len(ref.rms_u), rtol=1e-4, atol=0)
        torch.testing.assert_close(st["rms_u_max"].item(), max(ref.rms_u), rtol=1e-4, atol=0)
        torch.testing.assert_close(st["step_size_mean"].item(), sum(ref.alpha) / len(ref.alpha), rtol=1e-5, atol=0)
        for p, want in zip(params, ref.rms_u):
            assert opt.rms_u(p).item() == pytest.approx(want, rel=1e-4, abs=1e-12)
    assert opt._plans, "the Triton path did not run"
    return opt, params, ref


@pytest.mark.parametrize("beta1,beta2,clip,factored,scale", GRID)
def test_triton_matches_paper_reference(beta1, beta2, clip, factored, scale):
    kw = dict(lr=0.05, beta1=beta1, beta2=beta2, clip_threshold=clip, factored=factored,
              min_dim_size_to_factor=MIN_DIM, scale_parameter=scale, weight_decay=0.1 if beta1 else 0.0)  # fmt: skip
    opt, params, ref = check_against_reference(kw, SHAPES, 3)
    for p in params:
        keys = STATE_KEYS[factored] if ref.is_factored(p.shape) else {"exp_avg_sq"}
        assert set(opt.state[p]) - {"step", "exp_avg"} == keys
        assert ("exp_avg" in opt.state[p]) == (beta1 > 0)
        assert opt.state[p]["step"].item() == 3


@pytest.mark.parametrize("factored", [True, False, "row", "col"])
def test_triton_odd_shapes_cross_every_block_boundary(small_tiles, factored):
    kw = dict(lr=0.05, beta1=0.9, factored=factored, min_dim_size_to_factor=MIN_DIM, weight_decay=0.1)
    opt, params, _ = check_against_reference(kw, ODD, 2)
    plan = plan_of(opt)
    tiles_of = [sum(1 for t in plan.tile_list if t[0] == i) for i in range(len(ODD))]
    assert tiles_of[0] > 1 and tiles_of[2] > 1  # a matrix and a vector split over several tiles
    assert _triton.tiles_cover_exactly(plan)


@pytest.mark.parametrize("factored", [True, False, "row", "col"])
def test_triton_zero_gradients(factored):
    # G = 0: V-hat = eps1 everywhere, U = 0, and only weight decay moves X.
    zeros = [[torch.zeros(s) for s in SHAPES] for _ in range(2)]
    kw = dict(lr=0.05, factored=factored, min_dim_size_to_factor=MIN_DIM, weight_decay=0.1)
    opt, params, ref = check_against_reference(kw, SHAPES, 2, grads=zeros)
    assert all(r == 0.0 for r in ref.rms_u) and opt.stats()["rms_u_max"].item() == 0.0


@pytest.mark.parametrize("factored", [True, False, "row", "col"])
def test_triton_matches_eager_in_fp32(small_tiles, factored):
    # The update of each step (the momentum buffer M, with beta1 > 0) agrees with the eager path's to 1e-6
    # relative (over the tensor); both paths then continue from the eager path's parameters and state.
    shapes = [(40, 24), (2, 9, 12), (30,)]
    kw = dict(lr=0.05, beta1=0.9, factored=factored, min_dim_size_to_factor=MIN_DIM)
    pt, pe = make_params(shapes=shapes), make_params(shapes=shapes)
    ot, oe = Adafactor(pt, **kw, fused="triton"), Adafactor(pe, **kw, fused=False)
    for gs in grad_sequence(shapes, 3):
        for a, b, g in zip(pt, pe, gs):
            a.grad, b.grad = g.to(DEVICE, copy=True), g.to(DEVICE, copy=True)
        ot.step()
        oe.step()
        for a, b in zip(pt, pe):
            ut, ue = ot.state[a]["exp_avg"], oe.state[b]["exp_avg"]
            assert ((ut - ue).norm() / ue.norm()).item() < 1e-6
            a.data.copy_(b.detach())
            for k, v in oe.state[b].items():
                ot.state[a][k].copy_(v)  # in place: the Triton tables keep pointing at these tensors


def test_triton_bf16_parameters_and_stochastic_rounding(monkeypatch):
    monkeypatch.setattr(_triton, "BLOCK", 1024)  # 4096 elements in few interpreted blocks
    torch.manual_seed(0)
    shapes = [(12, 10), (10,)]
    kw = dict(lr=0.05, min_dim_size_to_factor=MIN_DIM)
    p16 = make_params(shapes=shapes, dtype=torch.bfloat16)
    p32 = [torch.nn.Parameter(p.detach().float()) for p in p16]
    o16, o32 = Adafactor(p16, **kw, fused="triton"), Adafactor(p32, **kw, fused="triton")
    grads = grad_sequence(shapes, 1)
    for a, b, g in zip(p16, p32, grads[0]):
        a.grad, b.grad = g.bfloat16().to(DEVICE), g.bfloat16().float().to(DEVICE)
    o16.step()
    o32.step()
    for a, b in zip(p16, p32):
        assert a.dtype == torch.bfloat16
        assert all(v.dtype == torch.float32 for v in o16.state[a].values())
        # fp32 math, one round to nearest at the end (a last-bit fp32 difference may flip a tie: 1 bf16 ulp)
        torch.testing.assert_close(a.detach().float(), b.detach().bfloat16().float(), rtol=2**-7, atol=0)
        assert (a.detach() == b.detach().bfloat16()).float().mean() > 0.99
    # A step far below half a bf16 ulp: lost with round-to-nearest, kept on average with stochastic rounding.
    pn = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16, device=DEVICE))
    ps = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16, device=DEVICE))
    for p, sr in ((pn, False), (ps, True)):
        opt = Adafactor([p], lr=1e-3, scale_parameter=False, clip_threshold=None, stochastic_rounding=sr,
                        fused="triton")  # fmt: skip
        p.grad = torch.ones_like(p)
        opt.step()
    assert torch.equal(pn.detach(), torch.ones_like(pn))
    assert set(ps.detach().float().unique().tolist()) == {1.0 - 2**-8, 1.0}
    assert ps.detach().float().mean().item() == pytest.approx(1.0 - 1e-3, abs=5e-4)


def test_triton_state_bytes_are_exact():
    shapes = [(30, 20), (2, 13, 14), (5,), (10, 3)]
    for factored, kept in ((True, 30 + 20 + 2 * (13 + 14)), ("row", 30 + 2 * 13), ("col", 20 + 2 * 14)):
        ps = make_params(shapes=shapes)
        opt = Adafactor(ps, lr=0.01, beta1=0.9, factored=factored, min_dim_size_to_factor=MIN_DIM, fused="triton")
        for p, g in zip(ps, grad_sequence(shapes, 1)[0]):
            p.grad = g.to(DEVICE)
        opt.step()
        n = sum(p.numel() for p in ps)
        full = (5 + 30) * 4
        # The step counts are views into one float32 vector: 4 bytes per tensor, counted once.
        assert optimizer_state_breakdown(opt) == {"factored": 4 * kept, "second_moment": full, "momentum": 4 * n,
                                                  "other": 4 * len(ps), "total": 4 * (kept + n + len(ps)) + full}  # fmt: skip


@pytest.mark.parametrize("other_path", ["triton", False])
def test_triton_state_dict_round_trip(other_path):
    # Resume on the Triton path is bit-exact; a Triton checkpoint also resumes on the eager path.
    kw = dict(lr=0.05, beta1=0.9, factored="col", min_dim_size_to_factor=MIN_DIM)
    grads = grad_sequence(SHAPES, 4)

    def run(opt, ps, gs):
        for step in gs:
            for p, g in zip(ps, step):
                p.grad = g.to(DEVICE, copy=True)
            opt.step()

    ps = make_params(shapes=SHAPES)
    opt = Adafactor(ps, **kw, fused="triton")
    run(opt, ps, grads)
    ps2 = make_params(shapes=SHAPES)
    opt2 = Adafactor(ps2, **kw, fused="triton")
    run(opt2, ps2, grads[:2])
    buf = io.BytesIO()
    torch.save({"model": [p.detach() for p in ps2], "optimizer": opt2.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    ps3 = [torch.nn.Parameter(x.clone()) for x in ckpt["model"]]  # on DEVICE, as saved
    opt3 = Adafactor(ps3, **kw, fused=other_path)
    opt3.load_state_dict(ckpt["optimizer"])
    run(opt3, ps3, grads[2:])
    for a, b in zip(ps, ps3):
        if other_path == "triton":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(opt3.state[p]["step"].item() == 4 for p in ps3)


def test_tiles_cover_exactly_and_the_check_can_fail(small_tiles):
    shapes = [(37, 45), (3, 9, 20), (100,), (1, 9), (4, 4)]
    ps = make_params(shapes=shapes)
    opt = Adafactor(ps, lr=0.01, min_dim_size_to_factor=MIN_DIM, fused="triton")
    for p, g in zip(ps, grad_sequence(shapes, 1)[0]):
        p.grad = g.to(DEVICE)
    opt.step()
    plan = plan_of(opt)
    assert _triton.tiles_cover_exactly(plan)
    # A tile that overlaps its neighbour, one that leaves a gap, one that crosses into another matrix.
    good = list(plan.tile_list)
    for i, (ti, r0, nr, off) in enumerate(good):
        for bad in ((ti, r0, nr + 1, off), (ti, r0, nr - 1, off)):
            plan.tile_list = good[:i] + [bad] + good[i + 1 :]
            assert not _triton.tiles_cover_exactly(plan)
    plan.tile_list = good


@pytest.mark.parametrize("n_tensors", [3, 30])
def test_launches_and_torch_ops_per_step_do_not_grow_with_tensors(monkeypatch, n_tensors):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    launches = []

    class Stub:  # the kernels' launch syntax, counted (the numbers are not the point here)
        def __getitem__(self, grid):
            return lambda *a, **k: launches.append(grid)

    monkeypatch.setattr(_triton, "kernels", lambda: (Stub(), Stub(), Stub(), Stub()))
    shapes = [(6, 5) if i % 2 else (7,) for i in range(n_tensors)]
    ps = make_params(shapes=shapes)
    opt = Adafactor(ps, lr=torch.tensor(0.01), min_dim_size_to_factor=MIN_DIM, fused="triton")
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()  # builds the tables
    launches.clear()
    with Count():
        opt.step()
    assert len(launches) == 4  # phase 1, 2a (columns; the (6, 5) tensors are factored), 2, 3
    assert Count.ops <= 20, Count.ops
    test_launches_and_torch_ops_per_step_do_not_grow_with_tensors.ops[n_tensors] = Count.ops
    if len(test_launches_and_torch_ops_per_step_do_not_grow_with_tensors.ops) == 2:
        assert len(set(test_launches_and_torch_ops_per_step_do_not_grow_with_tensors.ops.values())) == 1


test_launches_and_torch_ops_per_step_do_not_grow_with_tensors.ops = {}


def test_plan_is_rebuilt_only_when_storage_changes():
    kw = dict(lr=0.05, min_dim_size_to_factor=MIN_DIM)
    shapes = SHAPES
    ps = make_params(shapes=shapes)
    ref = ReferenceAdafactor(ps, **kw)
    opt = Adafactor(ps, **kw, fused="triton")
    grads = grad_sequence(shapes, 4)
    plans = []
    for k, gs in enumerate(grads):
        for p, g in zip(ps, gs):
            if k < 2 and p.grad is not None:
                p.grad.copy_(g.to(DEVICE))  # same storage
            else:
                p.grad = g.to(DEVICE, copy=True)  # new storage: the table's pointers are refreshed, the plan kept
        opt.step()
        ref.step(gs)
        plans.append(plan_of(opt))
    assert all(pl is plans[0] for pl in plans)
    for p, x in zip(ps, ref.x):
        torch.testing.assert_close(p.detach().cpu().double(), x, rtol=2e-5, atol=2e-6)
    opt.load_state_dict(opt.state_dict())  # new state tensors: a new plan
    for p, g in zip(ps, grads[0]):
        p.grad = g.to(DEVICE, copy=True)
    opt.step()
    assert plan_of(opt) is not plans[0]


def test_selection(monkeypatch):
    ps = make_params()
    for p in ps:
        p.grad = torch.ones_like(p)
    # fused=None on CPU: the C kernel (or eager), never the interpreter.
    opt = Adafactor(ps, lr=0.01, fused=None)
    opt.step()
    assert not opt._plans
    with pytest.raises(ValueError, match="fused must be"):
        Adafactor(ps, lr=0.01, fused="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        Adafactor(ps, lr=0.01, fused="triton")
    monkeypatch.setattr(_triton, "available", lambda: False)
    with pytest.raises(RuntimeError, match="triton does not import"):
        Adafactor(ps, lr=0.01, fused="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA")
def test_cuda_triton_step_allocates_nothing_and_replays_in_a_cuda_graph():
    shapes = [(300, 200), (2, 130, 140), (50,)]
    grads = [g.cuda() for g in grad_sequence(shapes, 1)[0]]

    def build():
        ps = make_params(shapes=shapes)
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps, Adafactor(ps, lr=torch.tensor(0.01, device="cuda"), beta1=0.9)

    ps, opt = build()
    opt.step()  # builds the tables
    torch.cuda.synchronize()
    allocs = torch.cuda.memory_stats()["allocation.all.allocated"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == allocs
    # One step captured in a CUDA graph and replayed equals the same steps run eagerly.
    pg, og = build()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        og.step()  # warm-up and table build outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        og.step()
    for _ in range(2):
        graph.replay()
    torch.cuda.synchronize()
    pe, oe = build()
    for _ in range(3):  # the warm-up step and two replays (capturing runs nothing)
        oe.step()
    for a, b in zip(pg, pe):
        assert torch.equal(a, b)


def test_alignment_hint_only_when_every_pointer_and_row_allows_it(monkeypatch):
    # ALIGN tells the compiled kernels every pointer is 16-byte aligned and every row length a multiple of 16
    # elements (128-bit loads); a row of 45 or a view 4 bytes into its storage must turn it off, and new
    # storage that breaks it must rebuild the plan rather than refresh the pointers.
    monkeypatch.setattr(_triton, "COLS", 16)  # chunk starts are multiples of COLS
    kw = dict(lr=0.05, min_dim_size_to_factor=MIN_DIM)
    ps = make_params(shapes=[(16, 32), (48,)])
    opt = Adafactor(ps, **kw, fused="triton")
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    plan = plan_of(opt)
    assert plan.aligned
    base = torch.zeros(48 + 1, device=DEVICE)
    ps[1].grad = base[1:]  # 4 bytes past an aligned allocation
    opt.step()
    assert plan_of(opt) is not plan and not plan_of(opt).aligned
    odd = make_params(shapes=[(16, 45)])
    o2 = Adafactor(odd, **kw, fused="triton")
    odd[0].grad = torch.ones_like(odd[0])
    o2.step()
    assert not plan_of(o2).aligned
