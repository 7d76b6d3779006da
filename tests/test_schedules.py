"""adafactor_repro.optim.schedules: every named schedule equals its formula, through LambdaLR too."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from adafactor_repro.optim import schedules

KS = [0, 1, 9, 99, 3999, 4000, 7998, 7999, 8000, 9999, 10_000, 50_000, 99_999]


@pytest.mark.parametrize("k", KS)
def test_named_schedules_equal_their_formulas(k):
    t = k + 1
    # The paper's relative step size (Section 8): rho_t = min(1e-2, 1/sqrt(t)).
    assert schedules.relative_step()(k) == pytest.approx(min(1e-2, 1 / math.sqrt(t)), rel=1e-12)
    # Vaswani et al. eq. (3).
    assert schedules.vaswani(512, 4000)(k) == pytest.approx(512**-0.5 * min(t**-0.5, t * 4000**-1.5), rel=1e-12)
    # tensor2tensor constant*rsqrt_decay*linear_warmup*rsqrt_hidden_size, and the same without warmup.
    w = 8000
    assert schedules.linear_warmup_rsqrt_decay(w, 512)(k) == pytest.approx(
        512**-0.5 * min(1.0, t / w) / math.sqrt(max(t, w)), rel=1e-12
    )
    assert schedules.rsqrt_no_warmup(w, 512)(k) == pytest.approx(512**-0.5 / math.sqrt(max(t, w)), rel=1e-12)
    assert schedules.rsqrt_no_warmup(w)(k) == pytest.approx(1 / math.sqrt(max(t, w)), rel=1e-12)


def test_inverse_sqrt_time_scale_maps_short_runs_onto_long_ones():
    long, short = schedules.inverse_sqrt(8000, d_model=512), schedules.inverse_sqrt(8000, d_model=512, time_scale=10)
    for k in (0, 99, 799, 5000):
        assert short(k) == pytest.approx(long(10 * (k + 1) - 1), rel=1e-12)


def test_lambdalr_gives_update_t_the_factor_of_t_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = LambdaLR(opt, schedules.inverse_sqrt(4, d_model=16))
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])  # the lr the next optimizer.step() uses
        opt.step()
        sched.step()
    expect = [2.0 / 4 * min(1, t / 4) / math.sqrt(max(t, 4)) for t in range(1, 7)]
    assert seen == pytest.approx(expect, rel=1e-12)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    sched2 = LambdaLR(torch.optim.SGD([p], lr=2.0), schedules.inverse_sqrt(1, d_model=1))
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0] == schedules.inverse_sqrt(4, d_model=16) and sched2.last_epoch == 6


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(warmup_updates=0), "linear_warmup needs warmup_updates > 0"),
        (dict(warmup_updates=-5, linear_warmup=False), "warmup_updates must be"),
        (dict(warmup_updates=10, time_scale=0), "time_scale"),
        (dict(warmup_updates=10, d_model=0), "d_model"),
    ],
)
def test_bad_arguments_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        schedules.inverse_sqrt(**kw)


@pytest.mark.parametrize(
    "name,expect",
    [
        ("warmup", lambda c: schedules.linear_warmup_rsqrt_decay(c.warmup_updates, 512)),
        ("no_warmup", lambda c: schedules.rsqrt_no_warmup(c.warmup_updates, 512)),
        ("relative_step", lambda c: schedules.relative_step()),
        ("vaswani", lambda c: schedules.vaswani(512)),
    ],
)
def test_hydra_schedule_configs_instantiate(repo_root, name, expect):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with initialize_config_dir(str(repo_root / "configs" / "schedule"), version_base=None):
        cfg = compose(name)
    cfg = OmegaConf.merge(OmegaConf.create({"model": {"d_model": 512}}), {"schedule": cfg})
    f = instantiate(cfg.schedule)
    assert f == expect(cfg.schedule)
