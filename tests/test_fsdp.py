"""Adafactor on DTensor parameters (FSDP2's fully_shard and tensor-parallel shards), 2 gloo ranks, against the
unsharded optimizer: equal to float rounding over several steps for the paper's proposal, Adam-like, row-only
and column-only settings, on shapes whose sharded dim does not divide by 2; one all-reduce per step under
FSDP2's Shard(0); a DCP checkpoint written by 2 ranks resumed by 1 process. No crash path into the C kernel.

Both ranks are spawned once per module (a few seconds of imports on these machines) and run every case; the
tests compare what they wrote with the unsharded optimizer run here.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from adafactor_repro.optim import Adafactor, _kernel
from adafactor_repro.train.distributed import cleanup

STEPS = 3
# dim 0 (and dim 1, dim -1) odd; a rank-3 tensor (batch dim); a [1, 8] tensor whose second shard is empty.
SHAPES = [(7, 6), (6, 7), (7,), (3, 5, 7), (1, 8)]
CONFIGS = {
    "proposal": dict(lr=1e-2, min_dim_size_to_factor=2),  # Section 9's defaults, small tensors factored
    "adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, factored=False, clip_threshold=None, scale_parameter=False),
    "row": dict(lr=1e-2, factored="row", min_dim_size_to_factor=2),
    "col": dict(lr=1e-2, factored="col", min_dim_size_to_factor=2),
    "momentum_wd": dict(lr=1e-2, beta1=0.9, weight_decay=0.1, min_dim_size_to_factor=2),
}
# Which dim each placement shards: FSDP2's Shard(0), tensor parallel's Shard(1) of a 2-D weight, and the last dim.
PLACEMENTS = {"shard0": lambda nd: 0, "shard1": lambda nd: min(1, nd - 1), "shard_last": lambda nd: nd - 1}
MLP = [(9, 5), (5, 7), (7, 3)]  # fully_shard-ed Linear layers, [out, in] weights with odd dims


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g) * (1 + i) for i, s in enumerate(SHAPES)]


def _params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(i, o), torch.nn.Tanh()) for i, o in MLP])


def _mlp_batch(step: int) -> torch.Tensor:
    return torch.randn(4, MLP[0][0], generator=torch.Generator().manual_seed(7 + step))


def _mlp_step(model, opt, step: int) -> None:
    opt.zero_grad()
    model(_mlp_batch(step)).square().sum().backward()
    opt.step()


def _worker(rank: int, port: int, out: str, ckpt: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ok = False
    calls = [0]
    all_reduce = dist.all_reduce

    def counting(*args, **kwargs):
        calls[0] += 1
        return all_reduce(*args, **kwargs)

    try:
        mesh = init_device_mesh("cpu", (2,))
        results = {}
        for pname, dim_of in PLACEMENTS.items():
            for cname, kw in CONFIGS.items():
                params = [torch.nn.Parameter(distribute_tensor(x, mesh, [Shard(dim_of(x.ndim))])) for x in _params()]
                opt = Adafactor(params, **kw)
                per_step = []
                for step in range(STEPS):
                    for p, g in zip(params, _grads(step)):
                        p.grad = distribute_tensor(g, mesh, [Shard(dim_of(g.ndim))])
                    calls[0] = 0
                    dist.all_reduce = counting  # the optimizer's collectives only (the grads above scatter)
                    try:
                        opt.step()
                    finally:
                        dist.all_reduce = all_reduce
                    per_step.append(calls[0])
                state = [{k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in opt.state[p].items()}
                         for p in params]  # fmt: skip
                rms = [opt.rms_u(p) for p in params]
                results[pname, cname] = dict(params=[p.full_tensor() for p in params], state=state, rms=rms,
                                             all_reduces=per_step, stats=opt.stats())  # fmt: skip
        # fully_shard per layer then the root (FSDP2), this optimizer at its defaults but with small tensors
        # factored; the C kernel never sees a DTensor. Both ranks train on the same batch.
        model = _mlp()
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = Adafactor(model.parameters(), lr=1e-2, beta1=0.5, min_dim_size_to_factor=3)
        for step in range(STEPS):
            _mlp_step(model, opt, step)
        placements = {k: {s: str(v.placements) for s, v in st.items() if hasattr(v, "placements")}
                      for k, st in get_optimizer_state_dict(model, opt)["state"].items()}  # fmt: skip
        dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt)
        results["fsdp"] = dict(params=[p.full_tensor() for p in model.parameters()], placements=placements)
        if rank == 0:
            torch.save(results, out)
        ok = True
    finally:
        cleanup(ok)  # a barrier first: see its docstring (a teardown deadlock)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    out, ckpt = d / "results.pt", d / "dcp"
    mp.start_processes(_worker, args=(_free_port(), str(out), str(ckpt)), nprocs=2, join=True, start_method="spawn")
    return torch.load(out, weights_only=False), ckpt


def _unsharded(kw: dict):
    params = [torch.nn.Parameter(x) for x in _params()]
    opt = Adafactor(params, **kw)
    for step in range(STEPS):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        opt.step()
    return params, opt


@pytest.mark.slow
@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_sharded_equals_unsharded(sharded, placement, config):
    got = sharded[0][placement, config]
    params, opt = _unsharded(CONFIGS[config])
    for i, p in enumerate(params):
        torch.testing.assert_close(got["params"][i], p.detach(), rtol=1e-5, atol=1e-6, msg=f"{SHAPES[i]}")
        assert set(got["state"][i]) == set(opt.state[p])
        for k, v in opt.state[p].items():
            torch.testing.assert_close(got["state"][i][k], v, rtol=1e-5, atol=1e-8, msg=f"{SHAPES[i]} {k}")
        torch.testing.assert_close(got["rms"][i], opt.rms_u(p), rtol=1e-5, atol=0)
    for k, v in opt.stats().items():
        torch.testing.assert_close(got["stats"][k], v, rtol=1e-5, atol=0)


@pytest.mark.slow
def test_collectives_per_step(sharded):
    """Every tensor's sums of a phase go in one all-reduce: FSDP2's Shard(0) needs 1 per step, whatever the
    tensor count; a shard of the last dim (tensor parallel) 2 when factored (R before U's denominators)."""
    res = sharded[0]
    for config in CONFIGS:
        assert res["shard0", config]["all_reduces"] == [1] * STEPS, config
        factored = CONFIGS[config].get("factored", True) is not False
        assert res["shard_last", config]["all_reduces"] == [2 if factored else 1] * STEPS, config


@pytest.mark.slow
def test_fully_shard_trains_like_unsharded_and_state_is_sharded(sharded):
    res = sharded[0]["fsdp"]
    model = _mlp()
    opt = Adafactor(model.parameters(), lr=1e-2, beta1=0.5, min_dim_size_to_factor=3)
    for step in range(STEPS):
        _mlp_step(model, opt, step)
    for got, p in zip(res["params"], model.parameters()):
        torch.testing.assert_close(got, p.detach(), rtol=1e-5, atol=1e-6)
    # R of a Shard(0) weight stays sharded, C is replicated (it averages over the sharded dim)
    w = res["placements"]["0.0.weight"]
    assert w["exp_avg_sq_row"] == "(Shard(dim=0),)" and w["exp_avg_sq_col"] == "(Replicate(),)"
    assert w["exp_avg"] == "(Shard(dim=0),)" and res["placements"]["0.0.bias"]["exp_avg_sq"] == "(Shard(dim=0),)"


@pytest.mark.slow
def test_dcp_checkpoint_from_two_ranks_resumes_in_one_process(sharded):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    ref = _mlp()
    ref_opt = Adafactor(ref.parameters(), lr=1e-2, beta1=0.5, min_dim_size_to_factor=3)
    for step in range(STEPS):
        _mlp_step(ref, ref_opt, step)
    model = _mlp()
    model.load_state_dict({k: v for k, v in zip(ref.state_dict(), sharded[0]["fsdp"]["params"])})
    opt = Adafactor(model.parameters(), lr=1e-2, beta1=0.5, min_dim_size_to_factor=3)
    sd = {"optim": get_optimizer_state_dict(model, opt)}
    dcp.load(sd, checkpoint_id=sharded[1])  # no process group: one process reads both ranks' shards
    set_optimizer_state_dict(model, opt, sd["optim"])
    for p, q in zip(model.parameters(), ref.parameters()):
        assert set(opt.state[p]) == set(ref_opt.state[q])
        for k, v in ref_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][k], v, rtol=1e-5, atol=1e-30)
    _mlp_step(model, opt, STEPS)  # and it trains on from there as the unsharded run does
    _mlp_step(ref, ref_opt, STEPS)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class _Odd(torch.Tensor):
    """A tensor subclass no kernel knows."""


def test_unknown_tensor_subclass_gets_a_one_line_error_naming_it():
    p = torch.zeros(4, 4).as_subclass(_Odd).requires_grad_()
    opt = Adafactor([("encoder.odd", p)], lr=1e-2)
    p.grad = torch.ones(4, 4)
    with pytest.raises(TypeError, match=r"parameter 'encoder.odd' is a _Odd") as e:
        opt.step()
    assert "\n" not in str(e.value)


@pytest.mark.skipif(_kernel.load() is None, reason="no C kernel on this machine")
def test_c_kernel_refuses_what_it_would_misread():
    ok = torch.zeros(4, 3)
    _kernel.check(ok, 12, "x")
    for bad, numel in [(torch.zeros(3, 4).t(), 12), (torch.zeros(4, 3, dtype=torch.float64), 12),
                       (torch.zeros(4, 3, device="meta"), 12), (ok, 11), (ok.as_subclass(_Odd), 12)]:  # fmt: skip
        with pytest.raises((TypeError, ValueError), match="Adafactor C kernel: x"):
            _kernel.check(bad, numel, "x")
    # a state tensor of the wrong size (a bad load) is refused before C reads past its end
    p = torch.nn.Parameter(torch.zeros(200, 150))
    opt = Adafactor([p], lr=1e-2, fused=True)
    opt.state[p]["exp_avg_sq_row"] = torch.zeros(10)
    p.grad = torch.ones(200, 150)
    with pytest.raises(ValueError, match="exp_avg_sq_row must be a contiguous float32 CPU tensor of 200"):
        opt.step()


@pytest.mark.slow
def test_memory_bench_counts_the_sharded_state_and_one_all_reduce():
    """scripts/bench_fsdp_memory.py's measurement (meta device, fake process group) on Transformer base, 2 ranks."""
    from adafactor_repro.bench.fsdp_memory import _measure

    r = _measure("transformer_base", 2)
    assert r["all_reduces"] == 1 and r["local_params"] * 2 >= r["params"]
    assert r["adafactor"] * 100 < r["adam"] == 8 * r["local_params"] + 4 * r["tensors"]
