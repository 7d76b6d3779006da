"""Learning-rate schedules of the paper and of Vaswani et al. as LambdaLR factors.

Every function returns a picklable callable ``f(k)`` for ``torch.optim.lr_scheduler.LambdaLR``, where ``k``
is LambdaLR's 0-based count, so the update ``t = k + 1`` runs with ``lr = optim.lr * f(k)``. All of them are
one formula (tensor2tensor's ``constant*rsqrt_decay*linear_warmup*rsqrt_hidden_size``)::

    f = d_model^-0.5 (when d_model) * rsqrt(max(t', w)) * min(1, t'/w) (when linear_warmup)

where t' is the paper's time of update t. ``time_scale`` maps a short run onto the paper's 100k updates
(t' = t * time_scale). ``warmup_time_scale``, when set, maps the first phase (t' <= w: the linear warmup, or
the flat start without it) at its own rate, so that the warmup lasts ``w / warmup_time_scale`` raw updates
whatever the run length, and only the annealing after it is compressed by ``time_scale``::

    t' = t * warmup_time_scale                         while t * warmup_time_scale <= w
    t' = w + (t - w / warmup_time_scale) * time_scale  after

The raw length of the first phase is what matters against the optimizer's own clocks (beta2 = 0.999 averages
over ~1,000 raw updates, 1 - t^-c counts raw updates), which no schedule rescales (docs/cpu_scale.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class InverseSqrt:
    """The LambdaLR factor of :func:`inverse_sqrt` (a dataclass so LambdaLR can save it in its state)."""

    warmup_updates: float
    linear_warmup: bool = True
    d_model: int | None = None
    time_scale: float = 1.0
    warmup_time_scale: float | None = None

    def paper_time(self, t: int) -> float:
        """t' of the 1-based update t (see the module docstring)."""
        ws = self.warmup_time_scale
        if ws is None or t * ws <= self.warmup_updates:
            return t * (self.time_scale if ws is None else ws)
        return self.warmup_updates + (t - self.warmup_updates / ws) * self.time_scale

    def __call__(self, k: int) -> float:
        t = self.paper_time(k + 1)
        w = self.warmup_updates
        f = 1.0 / math.sqrt(max(t, w))
        if self.linear_warmup:
            f *= min(1.0, t / w)
        if self.d_model:
            f /= math.sqrt(self.d_model)
        return f


def inverse_sqrt(warmup_updates: float, linear_warmup: bool = True, d_model: int | None = None,
                 time_scale: float = 1.0, warmup_time_scale: float | None = None) -> InverseSqrt:  # fmt: skip
    """``d_model^-0.5 * rsqrt(max(t', w)) * min(1, t'/w)`` with ``t' = (k + 1) * time_scale``.

    ``linear_warmup=False`` keeps the flat start ``rsqrt(w)`` for ``t' < w`` (the paper's no-warmup runs);
    ``d_model=None`` drops the ``rsqrt(d_model)`` factor; ``time_scale`` maps a short run onto a longer
    schedule (the learning rate at the same fraction of training is the long run's); ``warmup_time_scale``
    gives the first phase its own rate (see the module docstring)."""
    if not (isinstance(warmup_updates, (int, float)) and warmup_updates >= 0):
        raise ValueError(f"inverse_sqrt: warmup_updates must be a number >= 0, got {warmup_updates!r}")
    if linear_warmup and warmup_updates <= 0:
        raise ValueError("inverse_sqrt: linear_warmup needs warmup_updates > 0 (or set linear_warmup=False)")
    if time_scale <= 0:
        raise ValueError(f"inverse_sqrt: time_scale must be > 0, got {time_scale!r}")
    if warmup_time_scale is not None and warmup_time_scale <= 0:
        raise ValueError(f"inverse_sqrt: warmup_time_scale must be > 0 or None, got {warmup_time_scale!r}")
    if d_model is not None and d_model <= 0:
        raise ValueError(f"inverse_sqrt: d_model must be a positive int or None, got {d_model!r}")
    return InverseSqrt(float(warmup_updates), bool(linear_warmup), d_model, float(time_scale),
                       None if warmup_time_scale is None else float(warmup_time_scale))


def relative_step(warmup_updates: int = 10_000) -> InverseSqrt:
    """The paper's relative step size rho_t = min(1e-2, 1/sqrt(t)) (Section 8; tensor2tensor
    ``rsqrt_decay`` with warmup 10k); use with ``Adafactor(lr=1.0, scale_parameter=True)``."""
    return inverse_sqrt(warmup_updates, linear_warmup=False)


def linear_warmup_rsqrt_decay(warmup_updates: int, d_model: int | None = None, time_scale: float = 1.0) -> InverseSqrt:
    """Linear warmup then inverse square root (tensor2tensor
    ``constant*rsqrt_decay*linear_warmup*rsqrt_hidden_size``, the paper's Adam and Adafactor baselines)."""
    return inverse_sqrt(warmup_updates, linear_warmup=True, d_model=d_model, time_scale=time_scale)


def rsqrt_no_warmup(warmup_updates: int, d_model: int | None = None, time_scale: float = 1.0) -> InverseSqrt:
    """The same without the linear warmup: ``rsqrt(max(t, w))`` from the first step (the paper's Table 2
    stability test)."""
    return inverse_sqrt(warmup_updates, linear_warmup=False, d_model=d_model, time_scale=time_scale)


def vaswani(d_model: int, warmup_updates: int = 4000) -> InverseSqrt:
    """Vaswani et al. (2017) eq. (3): ``d_model^-0.5 * min(t^-0.5, t * warmup^-1.5)``; use with lr = 1."""
    return inverse_sqrt(warmup_updates, linear_warmup=True, d_model=d_model)
