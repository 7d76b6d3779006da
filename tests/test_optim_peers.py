"""Where this Adafactor meets its peers: Adam (the emulation), torch.optim.Adafactor and transformers'
Adafactor agree with it wherever their semantics overlap; docs/optimizer.md lists where they do not."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from adafactor_repro.optim import Adafactor, schedules

SHAPES = [(7,), (6, 5), (3, 4, 6), (40, 30)]


def make_params(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def grads(steps, shapes=SHAPES, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) * (0.2 + 2 * (k % 3)) for s in shapes] for k in range(steps)]


def step_both(opts_and_params, gs):
    for opt, params in opts_and_params:
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()


@pytest.mark.parametrize("fused", [None, False])
def test_adam_emulation_second_moment_is_adams_bias_corrected_v(fused):
    # Unfactored, no clipping, no parameter scale, beta1 0.9, fixed beta2 0.999: the folded bias correction
    # beta2 (1 - beta2^(t-1)) / (1 - beta2^t) makes V_t exactly Adam's v_t / (1 - beta2^t) (eps1 = 0).
    torch.manual_seed(0)
    pa, pb = make_params(), make_params()
    afx = Adafactor(pa, lr=1e-2, beta1=0.9, beta2=0.999, eps1=0.0, factored=False, clip_threshold=None,
                    scale_parameter=False, fused=fused)  # fmt: skip
    adam = torch.optim.Adam(pb, lr=1e-2, betas=(0.9, 0.999), eps=1e-12)
    for t, gs in enumerate(grads(20), start=1):
        step_both([(afx, pa), (adam, pb)], gs)
        for a, b in zip(pa, pb):
            v_hat = adam.state[b]["exp_avg_sq"] / (1 - 0.999**t)
            torch.testing.assert_close(afx.state[a]["exp_avg_sq"], v_hat, rtol=1e-5, atol=0)


def test_adam_emulation_tracks_adam_on_a_quadratic():
    # Not identical, by design (tensor2tensor's momentum placement): Adam steps by
    # m_hat / (sqrt(v_hat) + eps) with m the average of gradients, bias-corrected by 1 / (1 - beta1^t);
    # the emulation steps by M, the average of the normalised updates G / sqrt(V-hat), not bias-corrected
    # (its first steps are (1 - beta1^t) times shorter) and eps1 sits inside the square root. Once
    # beta1^t is small and V-hat changes slowly the two averages coincide, so the trajectories stay close.
    torch.manual_seed(0)
    curv = torch.logspace(-1, 1, 64)
    target = torch.randn(64)
    x0 = torch.randn(64) * 3
    runs = {}
    for name in ("adam", "adafactor"):
        x = torch.nn.Parameter(x0.clone())
        if name == "adam":
            opt = torch.optim.Adam([x], lr=0.02, betas=(0.9, 0.999), eps=1e-8)
        else:
            opt = Adafactor([x], lr=0.02, beta1=0.9, beta2=0.999, factored=False, clip_threshold=None,
                            scale_parameter=False)  # fmt: skip
        path = []
        for _ in range(400):
            x.grad = curv * (x.detach() - target)
            opt.step()
            path.append(x.detach().clone())
        runs[name] = torch.stack(path)
    dev = (runs["adam"] - runs["adafactor"]).norm(dim=1)
    travel = (x0 - target).norm()
    assert dev.max() < 0.1 * travel  # close all the way ...
    assert dev[0] > 1e-3  # ... but not the same algorithm (the first step differs by the factor 1 - beta1)
    loss = lambda z: (0.5 * curv * (z - target) ** 2).sum()
    assert loss(runs["adafactor"][-1]) < 0.05 * loss(x0) and loss(runs["adam"][-1]) < 0.05 * loss(x0)


@pytest.mark.parametrize("fused", [None, False])
def test_matches_torch_optim_adafactor_where_semantics_overlap(fused):
    # Overlap: beta1 = 0, increasing decay 1 - t^-0.8, clipping d = 1, parameter scale on, every rank >= 2
    # tensor factored (min_dim_size_to_factor = 1), no weight decay; torch's rho_t = min(lr, 1/sqrt(t)) is
    # our relative_step schedule. torch clamps V-hat at eps1^2 where we add eps1 to G^2: equal for these
    # gradients, away from zero.
    torch.manual_seed(0)
    pa, pb = make_params(), make_params()
    ours = Adafactor(pa, lr=1.0, min_dim_size_to_factor=1, fused=fused)
    sched = LambdaLR(ours, schedules.relative_step())
    theirs = torch.optim.Adafactor(pb, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                                   foreach=False)  # fmt: skip
    for gs in grads(8):
        step_both([(ours, pa), (theirs, pb)], gs)
        sched.step()
        for a, b in zip(pa, pb):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_matches_transformers_adafactor_where_semantics_overlap(beta1):
    # transformers' (fairseq's) Adafactor with relative_step=False: lr * max(eps2, RMS(X)), eps1 added to
    # G^2, clipping, momentum on the scaled update; it factors every rank >= 2 tensor.
    hf = pytest.importorskip("transformers.optimization")
    torch.manual_seed(0)
    pa, pb = make_params(), make_params()
    ours = Adafactor(pa, lr=1e-2, beta1=beta1, min_dim_size_to_factor=1)
    theirs = hf.Adafactor(pb, lr=1e-2, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8,
                          beta1=beta1 or None, weight_decay=0.0, scale_parameter=True, relative_step=False,
                          warmup_init=False)  # fmt: skip
    for gs in grads(8):
        step_both([(ours, pa), (theirs, pb)], gs)
        for a, b in zip(pa, pb):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_transformers_weight_decay_departs():
    # A departure pinned: transformers/fairseq decay by weight_decay * alpha (the *scaled* step size), ours
    # (like torch.optim.AdamW) by weight_decay * lr, decoupled from the parameter scale.
    hf = pytest.importorskip("transformers.optimization")
    pa, pb = make_params(), make_params()
    zero = [[torch.zeros(s) for s in SHAPES]]
    ours = Adafactor(pa, lr=1e-2, weight_decay=0.1, min_dim_size_to_factor=1)
    theirs = hf.Adafactor(pb, lr=1e-2, weight_decay=0.1, scale_parameter=True, relative_step=False)
    x0 = [p.detach().clone() for p in pa]
    step_both([(ours, pa), (theirs, pb)], zero[0])
    for a, b, x in zip(pa, pb, x0):
        torch.testing.assert_close(a.detach(), x * (1 - 1e-2 * 0.1))
        rms = x.pow(2).mean().sqrt().clamp(min=1e-3)
        torch.testing.assert_close(b.detach(), x * (1 - 1e-2 * rms * 0.1))
