"""train_step in isolation: gradient clipping to clip_norm, a non-finite update leaves the model untouched."""

import pytest
import torch
from test_ddp import _batch, _model

from adafactor_repro.train.step import train_step


def _micro(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [_batch(g, 4, 6, 7), _batch(g, 3, 5, 6)]


def test_clip_norm_bounds_the_sgd_step():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    r = train_step(model, opt, _micro(), label_smoothing=0.1, clip_norm=0.05)
    assert r.finite and r.gnorm.item() > 0.05  # the logged norm is the one before clipping
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert step.item() == pytest.approx(0.05, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_nonfinite_update_is_skipped():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    nan_loss = lambda logits, target, eps, pad: ((logits.float().sum() * float("nan")), logits.sum().detach())
    r = train_step(model, opt, _micro(), label_smoothing=0.1, scheduler=sched, loss_fn=nan_loss)
    assert not r.finite
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not opt.state and sched.last_epoch == 0  # neither the optimizer nor the schedule moved
    assert all(p.grad is None for p in model.parameters())
    r = train_step(model, opt, _micro(), label_smoothing=0.1, scheduler=sched)  # the next good batch trains
    assert r.finite and sched.last_epoch == 1
    assert r.ntokens == sum(b["ntokens"] for b in _micro())
