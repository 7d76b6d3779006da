"""adafactor_repro.optim.Adafactor against the paper's equations (tests/optim_reference.py), and its
state, statistics, dtypes, configs and errors."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from optim_reference import ReferenceAdafactor

from adafactor_repro.optim import Adafactor, _kernel, optimizer_state_breakdown, optimizer_state_bytes

KERNEL = _kernel.load() is not None
# Both implementations are pinned: the fused CPU kernel and the eager torch path (CUDA, bf16, no compiler).
PATHS = [pytest.param(True, id="fused"), pytest.param(False, id="eager")]
if not KERNEL:
    PATHS[0] = pytest.param(True, id="fused", marks=pytest.mark.skip(reason=f"no kernel: {_kernel.error()}"))

# 1-D, 2-D, 3-D, below min_dim (3 < 4: never factored) and a larger matrix. All stay below the kernel's
# threading threshold (2^15 elements) so the grid is cheap on a busy machine; THREADED covers the other path.
SHAPES = [(7,), (6, 5), (3, 4, 6), (3, 8), (120, 150)]
THREADED = [(260, 150), (2, 130, 140), (40_000,), (5,)]
MIN_DIM = 4


def make_params(seed=0, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def grad_sequence(shapes, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    # Gradients of different scales per step, so RMS(U) moves away from 1 and clipping engages.
    return [[torch.randn(s, generator=g) * (0.1 + 3 * (k % 2)) for s in shapes] for k in range(steps)]


def run(opt, params, grads):
    for gs in grads:
        for p, gr in zip(params, gs):
            p.grad = gr.to(p.dtype).clone()
        opt.step()


# factored: Algorithm 4, Algorithm 5, and the row-only / column-only estimators (paper Section 3, Table 2 D, E).
FACTORED = [True, False, "row", "col"]
GRID = list(itertools.product([0.0, 0.9], [None, 0.999], [1.0, None], FACTORED, [True, False]))
# State keys of an eligible tensor (rank >= 2, both last dims >= min_dim) per switch; others keep exp_avg_sq.
STATE_KEYS = {True: {"exp_avg_sq_row", "exp_avg_sq_col"}, False: {"exp_avg_sq"}, "row": {"exp_avg_sq_row"},
              "col": {"exp_avg_sq_col"}}  # fmt: skip


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("beta1,beta2,clip,factored,scale", GRID)
def test_matches_paper_reference(fused, beta1, beta2, clip, factored, scale):
    torch.manual_seed(0)
    kw = dict(lr=0.05, beta1=beta1, beta2=beta2, clip_threshold=clip, factored=factored,
              min_dim_size_to_factor=MIN_DIM, scale_parameter=scale)  # fmt: skip
    params = make_params()
    ref = ReferenceAdafactor(params, **kw)
    opt = Adafactor(params, **kw, fused=fused)
    for gs in grad_sequence(SHAPES, 5):
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
        ref.step(gs)
        for p, x in zip(params, ref.x):
            torch.testing.assert_close(p.detach().double(), x, rtol=2e-5, atol=2e-6)
        st = opt.stats()
        torch.testing.assert_close(st["rms_u_mean"].item(), sum(ref.rms_u) / len(ref.rms_u), rtol=1e-4, atol=0)
        torch.testing.assert_close(st["rms_u_max"].item(), max(ref.rms_u), rtol=1e-4, atol=0)
        torch.testing.assert_close(st["step_size_mean"].item(), sum(ref.alpha) / len(ref.alpha), rtol=1e-5, atol=0)
        # RMS(U) sits exactly at 1 for full-V tensors at t = 1, so fp32 may land on either side of d = 1.
        n = len(ref.rms_u)
        lo = 0 if clip is None else sum(r > clip * (1 + 1e-5) for r in ref.rms_u)
        hi = 0 if clip is None else sum(r > clip * (1 - 1e-5) for r in ref.rms_u)
        assert lo / n - 1e-6 <= st["clip_fraction"].item() <= hi / n + 1e-6
    for p in params:
        keys = STATE_KEYS[factored] if ref.is_factored(p.shape) else {"exp_avg_sq"}
        assert set(opt.state[p]) - {"step", "exp_avg"} == keys
        assert ("exp_avg" in opt.state[p]) == (beta1 > 0)


@pytest.mark.skipif(not KERNEL, reason="no kernel")
@pytest.mark.parametrize("beta1,factored", [(0.0, True), (0.9, True), (0.0, False), (0.9, False), (0.0, "row"),
                                            (0.9, "col")])  # fmt: skip
def test_threaded_kernel_path_matches_paper_reference(beta1, factored):
    # Tensors of >= 2^15 elements are split across threads (one team region per step); a small one rides along.
    kw = dict(lr=0.05, beta1=beta1, factored=factored, min_dim_size_to_factor=MIN_DIM, weight_decay=0.1)
    params = make_params(shapes=THREADED)
    ref = ReferenceAdafactor(params, **kw)
    opt = Adafactor(params, **kw, fused=True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the kernel uses torch's thread count
    try:
        for gs in grad_sequence(THREADED, 4):
            for p, gr in zip(params, gs):
                p.grad = gr.clone()
            opt.step()
            ref.step(gs)
    finally:
        torch.set_num_threads(before)
    for p, x in zip(params, ref.x):
        torch.testing.assert_close(p.detach().double(), x, rtol=2e-5, atol=2e-6)


def test_grid_exercises_clipping_and_factoring():
    # The grid above would be weak if clipping never fired or nothing were factored: check it does both.
    params = make_params()
    ref = ReferenceAdafactor(params, lr=0.05, min_dim_size_to_factor=MIN_DIM)
    clipped = False
    for gs in grad_sequence(SHAPES, 5):
        ref.step(gs)
        clipped |= any(r > 1.0 for r in ref.rms_u)
    assert clipped
    assert [ref.is_factored(s) for s in SHAPES] == [False, True, True, False, True]
    # The row-only and column-only estimates are not the factored one (else the grid could not tell them apart).
    outs = {}
    for factored in ("row", "col", True):
        ref = ReferenceAdafactor(make_params(), lr=0.05, min_dim_size_to_factor=MIN_DIM, factored=factored)
        for gs in grad_sequence(SHAPES, 3):
            ref.step(gs)
        outs[factored] = ref.x
    for a, b in itertools.combinations(outs.values(), 2):
        assert all(torch.equal(x, y) for x, y in zip(a, b)) is False
        assert torch.equal(a[0], b[0])  # the 1-D tensor keeps a full V under every switch


@pytest.mark.parametrize("fused", PATHS)
def test_first_step_is_exact(fused):
    # At t = 1 both decay schedules give beta2t = 0, so V-hat = G^2 + eps1 (Algorithm 5) and, without scaling
    # or clipping, X1 = X0 - lr G / sqrt(G^2 + eps1), bit for bit. For a factored tensor V-hat = R C / mean(R)
    # equals G^2 + eps1 when G^2 is rank one (here G_ij = u_i v_j, eps1 = 0).
    torch.manual_seed(0)
    for beta2 in (None, 0.999):
        x0, g = torch.randn(50, 40), torch.randn(50, 40)
        p = torch.nn.Parameter(x0.clone())
        p.grad = g.clone()
        Adafactor([p], lr=0.1, beta2=beta2, factored=False, clip_threshold=None, scale_parameter=False,
                  eps1=1e-30, fused=fused).step()  # fmt: skip
        assert torch.equal(p.detach(), x0 - 0.1 * (g / (g * g + 1e-30).sqrt()))
        u, v = torch.rand(50) + 0.5, torch.rand(40) + 0.5
        q = torch.nn.Parameter(x0.clone())
        q.grad = torch.outer(u, v)
        opt = Adafactor([q], lr=0.1, beta2=beta2, min_dim_size_to_factor=8, eps1=0.0, clip_threshold=None,
                        scale_parameter=False, fused=fused)  # fmt: skip
        opt.step()
        st = opt.state[q]
        v_hat = st["exp_avg_sq_row"][:, None] * st["exp_avg_sq_col"][None, :] / st["exp_avg_sq_row"].mean()
        torch.testing.assert_close(v_hat, q.grad**2, rtol=1e-6, atol=0)
        torch.testing.assert_close(q.detach(), x0 - 0.1 * torch.ones(50, 40), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fused", PATHS)
def test_clipping_never_scales_up(fused):
    # Small updates (RMS(U) < d) are untouched: d = 1e6 equals no clipping bit for bit; a d below RMS(U)
    # shrinks the step and nothing ever grows it.
    params = {}
    for d in (None, 1e6, 1.0, 0.1):
        ps = make_params()
        opt = Adafactor(ps, lr=0.05, clip_threshold=d, min_dim_size_to_factor=MIN_DIM, fused=fused)
        x0 = [p.detach().clone() for p in ps]
        run(opt, ps, grad_sequence(SHAPES, 1))
        params[d] = [(p.detach() - x).norm() for p, x in zip(ps, x0)]
        assert opt.stats()["rms_u_max"].item() < 1e6
    assert all(torch.equal(a, b) for a, b in zip(params[None], params[1e6]))
    for a, b, c in zip(params[None], params[1.0], params[0.1]):
        assert b <= a * (1 + 1e-6) and c <= b * (1 + 1e-6)
    assert any(c < a * 0.5 for a, c in zip(params[None], params[0.1]))


@pytest.mark.parametrize("fused", PATHS)
def test_no_momentum_state_and_exact_state_bytes(fused):
    shapes = [(300, 200), (2, 130, 140), (50,), (100, 60)]
    ps = make_params(shapes=shapes)
    opt = Adafactor(ps, lr=0.01, fused=fused)  # beta1 = 0, min_dim 128: (100, 60) keeps a full V
    run(opt, ps, grad_sequence(shapes, 2))
    assert all("exp_avg" not in opt.state[p] for p in ps)
    # (n + m) * 4 bytes per factored n x m matrix, 4 bytes per element otherwise, nothing for momentum;
    # the step counter is a float32 0-d tensor per parameter ("other").
    factored = (300 + 200) * 4 + 2 * (130 + 140) * 4
    full = (50 + 100 * 60) * 4
    steps = 4 * len(ps)
    assert optimizer_state_breakdown(opt) == {"factored": factored, "second_moment": full, "momentum": 0,
                                              "other": steps, "total": factored + full + steps}  # fmt: skip
    ps2 = make_params(shapes=shapes)
    opt2 = Adafactor(ps2, lr=0.01, beta1=0.9, fused=fused)
    run(opt2, ps2, grad_sequence(shapes, 1))
    n = sum(p.numel() for p in ps2)
    assert optimizer_state_bytes(opt2) == factored + full + 4 * n + steps
    # Row-only keeps n numbers per n x m matrix, column-only m; the same tensors as above keep a full V.
    for which, kept in (("row", 300 + 2 * 130), ("col", 200 + 2 * 140)):
        ps3 = make_params(shapes=shapes)
        opt3 = Adafactor(ps3, lr=0.01, factored=which, fused=fused)
        run(opt3, ps3, grad_sequence(shapes, 2))
        assert optimizer_state_breakdown(opt3) == {"factored": 4 * kept, "second_moment": full, "momentum": 0,
                                                   "other": steps, "total": 4 * kept + full + steps}  # fmt: skip


def test_state_bytes_of_torch_adam():
    ps = make_params(shapes=[(30, 20), (7,)])
    adam = torch.optim.Adam(ps, lr=1e-3)
    run(adam, ps, grad_sequence([(30, 20), (7,)], 1))
    br = optimizer_state_breakdown(adam)
    assert br["momentum"] == br["second_moment"] == 607 * 4
    assert br["other"] == sum(s["step"].untyped_storage().nbytes() for s in adam.state.values())
    assert optimizer_state_bytes(adam) == br["total"] == 2 * 607 * 4 + br["other"]


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("beta1,factored", [(0.0, True), (0.9, True), (0.0, "row"), (0.9, "col")])
def test_state_dict_round_trip_is_bit_exact(fused, beta1, factored):
    kw = dict(lr=0.05, beta1=beta1, factored=factored, min_dim_size_to_factor=MIN_DIM, fused=fused)
    grads = grad_sequence(SHAPES, 6)
    ps = make_params()
    opt = Adafactor(ps, **kw)
    run(opt, ps, grads)  # six steps without a break
    ps2 = make_params()
    opt2 = Adafactor(ps2, **kw)
    run(opt2, ps2, grads[:3])
    buf = io.BytesIO()
    torch.save({"model": [p.detach() for p in ps2], "optimizer": opt2.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    ps3 = [torch.nn.Parameter(x.clone()) for x in ckpt["model"]]
    opt3 = Adafactor(ps3, **kw)
    opt3.load_state_dict(ckpt["optimizer"])
    run(opt3, ps3, grads[3:])  # resumed: three more
    for a, b in zip(ps, ps3):
        assert torch.equal(a, b)
    for a, b in zip(ps, ps3):
        sa, sb = opt.state[a], opt3.state[b]
        assert sa.keys() == sb.keys() and sa["step"] == sb["step"] == 6
        assert all(torch.equal(sa[k], sb[k]) for k in sa if k != "step")


@pytest.mark.parametrize("fused", PATHS)
def test_checkpoint_with_an_int_step_resumes(fused):
    # Checkpoints written before the step count became a tensor hold a Python int: they load as a float32 0-d
    # tensor on the parameter's device and continue exactly as the tensor form does.
    kw = dict(lr=0.05, beta1=0.9, min_dim_size_to_factor=MIN_DIM, fused=fused)
    grads = grad_sequence(SHAPES, 4)
    ps = make_params()
    opt = Adafactor(ps, **kw)
    run(opt, ps, grads[:2])
    sd = opt.state_dict()
    old = {**sd, "state": {i: {**st, "step": int(st["step"].item())} for i, st in sd["state"].items()}}
    resumed = []
    for state_dict in (sd, old):
        ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        opt2 = Adafactor(ps2, **kw)
        opt2.load_state_dict(copy.deepcopy(state_dict))  # as from a file: no tensor shared with `opt`
        assert all(opt2.state[p]["step"].dtype == torch.float32 and opt2.state[p]["step"].item() == 2 for p in ps2)
        run(opt2, ps2, grads[2:])
        resumed.append(ps2)
    assert all(torch.equal(a, b) for a, b in zip(*resumed))


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("factored", FACTORED)
def test_fused_and_eager_agree_on_transformer_shapes(fused, factored):
    shapes = [(700, 256), (256, 256), (512, 128), (128, 512), (256,), (512,)]
    ps = make_params(shapes=shapes)
    ps2 = make_params(shapes=shapes)
    kw = dict(lr=1e-2, beta1=0.9, weight_decay=0.01, factored=factored)
    a, b = Adafactor(ps, **kw, fused=fused), Adafactor(ps2, **kw, fused=False)
    grads = grad_sequence(shapes, 3)
    run(a, ps, grads)
    run(b, ps2, grads)
    for x, y in zip(ps, ps2):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factored", FACTORED)
def test_bf16_parameters_use_fp32_math(factored):
    torch.manual_seed(0)
    shapes = [(40, 30), (30,)]
    kw = dict(lr=0.05, min_dim_size_to_factor=MIN_DIM, factored=factored)
    ps16 = make_params(shapes=shapes, dtype=torch.bfloat16)
    ps32 = [torch.nn.Parameter(p.detach().float()) for p in ps16]
    opt16, opt32 = Adafactor(ps16, **kw), Adafactor(ps32, **kw)
    grads = grad_sequence(shapes, 1)
    run(opt16, ps16, grads)
    run(opt32, ps32, [[g.bfloat16().float() for g in gs] for gs in grads])
    for p16, p32 in zip(ps16, ps32):
        assert p16.dtype == torch.bfloat16
        assert all(v.dtype == torch.float32 for k, v in opt16.state[p16].items() if k != "step")
        # fp32 update of the bf16 values, rounded to nearest once at the end.
        assert torch.equal(p16.detach(), p32.detach().bfloat16())


def test_bf16_state_stays_fp32_through_a_round_trip():
    # torch.optim.Optimizer.load_state_dict casts state to the parameter dtype; ours must stay fp32.
    shapes = [(40, 30), (30,)]
    kw = dict(lr=0.05, beta1=0.9, min_dim_size_to_factor=MIN_DIM)
    grads = grad_sequence(shapes, 4)
    ps = make_params(shapes=shapes, dtype=torch.bfloat16)
    opt = Adafactor(ps, **kw)
    run(opt, ps, grads)
    ps2 = make_params(shapes=shapes, dtype=torch.bfloat16)
    opt2 = Adafactor(ps2, **kw)
    run(opt2, ps2, grads[:2])
    ps3 = [torch.nn.Parameter(p.detach().clone()) for p in ps2]
    opt3 = Adafactor(ps3, **kw)
    opt3.load_state_dict(opt2.state_dict())
    assert all(v.dtype == torch.float32 for p in ps3 for k, v in opt3.state[p].items() if k != "step")
    run(opt3, ps3, grads[2:])
    assert all(torch.equal(a, b) for a, b in zip(ps, ps3))


def test_stochastic_rounding_is_unbiased_and_keeps_tiny_updates():
    torch.manual_seed(0)
    from adafactor_repro.optim import stochastic_round_to_bf16

    x = torch.full((200_000,), 1.0 + 2**-10)  # an eighth of the way from 1 to the next bf16 (1 + 2^-7 ... )
    r = stochastic_round_to_bf16(x).float()
    lo, hi = 1.0, 1.0 + 2**-7
    assert set(r.unique().tolist()) == {lo, hi}
    assert r.mean().item() == pytest.approx(1.0 + 2**-10, abs=2e-5)
    assert torch.equal(stochastic_round_to_bf16(torch.tensor([float("inf"), -2.0])).float(), torch.tensor([float("inf"), -2.0]))
    # A step far below half an ulp vanishes with round-to-nearest and survives on average with stochastic rounding.
    p_n = torch.nn.Parameter(torch.ones(100_000, dtype=torch.bfloat16))
    p_s = torch.nn.Parameter(torch.ones(100_000, dtype=torch.bfloat16))
    for p, sr in ((p_n, False), (p_s, True)):
        opt = Adafactor([p], lr=1e-3, scale_parameter=False, clip_threshold=None, stochastic_rounding=sr)
        p.grad = torch.ones_like(p)
        opt.step()
    assert torch.equal(p_n.detach(), torch.ones_like(p_n))
    assert p_s.detach().float().mean().item() == pytest.approx(1.0 - 1e-3, abs=2e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_has_no_host_sync():
    ps = [torch.nn.Parameter(p.detach().cuda()) for p in make_params()]
    opt = Adafactor(ps, lr=0.05, beta1=0.9, min_dim_size_to_factor=MIN_DIM)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
        st = opt.stats()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.device.type == "cuda" and v.dim() == 0 for v in st.values())


def test_stats_before_first_step_and_beta2t():
    ps = make_params()
    opt = Adafactor(ps, lr=0.05, min_dim_size_to_factor=MIN_DIM)
    assert opt.stats() == {}
    run(opt, ps, grad_sequence(SHAPES, 3))
    st = opt.stats()
    assert set(st) == {"rms_u_mean", "rms_u_max", "clip_fraction", "beta2t", "step_size_mean"}
    assert all(v.dim() == 0 for v in st.values())
    assert st["beta2t"].item() == pytest.approx(1 - 3**-0.8)
    opt2 = Adafactor(make_params(), lr=0.05, beta2=0.999)
    assert opt2._beta2t(opt2.param_groups[0], 1) == 0.0
    assert opt2._beta2t(opt2.param_groups[0], 3) == pytest.approx(0.999 * (1 - 0.999**2) / (1 - 0.999**3))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(lr=-1.0), "lr must be"),
        (dict(lr=0.1, beta1=1.0), "beta1 must be"),
        (dict(lr=0.1, beta2=1.5), "beta2 must be None"),
        (dict(lr=0.1, clip_threshold=0.0), "clip_threshold must be"),
        (dict(lr=0.1, min_dim_size_to_factor=0), "min_dim_size_to_factor"),
        (dict(lr=0.1, decay_exponent=0.0), "decay_exponent"),
        (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
        (dict(lr=0.1, factored="rows"), "factored must be"),
        (dict(lr=0.1, factored=1), "factored must be"),
    ],
)
def test_bad_arguments_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        Adafactor(make_params(), **kw)


def test_sparse_gradient_is_refused():
    p = torch.nn.Parameter(torch.randn(10, 4))
    p.grad = torch.randn(10, 4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Adafactor([p], lr=0.1).step()


def test_weight_decay_is_decoupled():
    # With lr * wd = 0.1 and a zero-gradient step size (lr enters only through the decay when eps2 ...),
    # the decay is X <- (1 - lr wd) X before the update, independent of the adaptive scaling.
    p = torch.nn.Parameter(torch.full((6, 5), 2.0))
    p.grad = torch.zeros(6, 5)
    Adafactor([p], lr=0.5, weight_decay=0.2, min_dim_size_to_factor=MIN_DIM, eps1=1e-30).step()
    torch.testing.assert_close(p.detach(), torch.full((6, 5), 2.0 * (1 - 0.5 * 0.2)))


@pytest.mark.parametrize("name", ["adafactor", "adam"])
def test_hydra_optim_configs_instantiate(repo_root, name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(repo_root / "configs" / "optim" / f"{name}.yaml")
    opt = instantiate(cfg)(make_params())
    assert type(opt).__name__ == {"adafactor": "Adafactor", "adam": "Adam"}[name]
    if name == "adafactor":
        g = opt.param_groups[0]
        assert g["beta1"] == 0.0 and g["beta2"] is None and g["clip_threshold"] == 1.0 and g["factored"]
    assert not math.isnan(opt.param_groups[0]["lr"])


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_compiled_step_traces_one_graph_with_a_changing_lr():
    # The eager path keeps the step count, beta2t and a tensor lr as 0-d tensors, so torch.compile(fullgraph=True)
    # traces one graph for every step while a scheduler changes the lr. backend="eager" keeps it cheap: whether
    # dynamo recompiles is decided by its guards, whatever backend runs the graph.
    from torch.optim.lr_scheduler import LambdaLR

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for compiled in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 5))
        opt = Adafactor(model.parameters(), lr=torch.tensor(0.01), beta1=0.9, weight_decay=0.1,
                        min_dim_size_to_factor=4, fused=False)  # fmt: skip
        sched = LambdaLR(opt, lambda k: 1.0 / (k + 1))
        # Adafactor.step itself: the scheduler wraps opt.step in a function dynamo does not trace.
        step = torch.compile(Adafactor.step, backend=backend, fullgraph=True) if compiled else Adafactor.step
        for _ in range(12):
            model(x).square().mean().backward()
            step(opt)
            sched.step()
            opt.zero_grad()
        runs.append([p.detach().clone() for p in model.parameters()])
        assert opt.state[model[0].weight]["step"].item() == 12
    assert len(graphs) == 1
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False), ("row", "row"), ("col", "col")])
def test_hydra_passes_factored_through(repo_root, value, expected):
    # The command line's optim.factored=row must reach Adafactor as the string "row", true as a bool.
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(repo_root / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["optim=adafactor", f"optim.factored={value}"])
    opt = instantiate(cfg.optim)(make_params())
    factored = opt.param_groups[0]["factored"]
    assert type(factored) is type(expected) and factored == expected


@pytest.mark.skipif(not KERNEL, reason="no kernel")
def test_fused_result_does_not_depend_on_thread_count():
    # Sums are formed over fixed blocks and added in block order, so 1 and 2 threads agree bit for bit
    # (the basis of the exact resume on a machine with another core count).
    shapes = [(300, 200), (2, 130, 140), (50_000,)]
    out = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ps = make_params(shapes=shapes)
            opt = Adafactor(ps, lr=0.05, beta1=0.9, fused=True)
            run(opt, ps, grad_sequence(shapes, 2))
            out.append([p.detach().clone() for p in ps])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*out))
