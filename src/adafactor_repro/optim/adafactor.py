"""Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018).

One step for a parameter X with gradient G at 1-based step t (Algorithms 4 and 5 of the paper):

    beta2t = 1 - t^(-decay_exponent)                      (Section 7.2; beta2=None)
           | beta2 (1 - beta2^(t-1)) / (1 - beta2^t)       (Section 7.1, Adam's bias correction folded in)
    factored (rank >= 2, last two dims >= min_dim_size_to_factor), Algorithm 4:
        R <- beta2t R + (1 - beta2t) rowmean(G^2 + eps1)   C <- beta2t C + (1 - beta2t) colmean(G^2 + eps1)
        V-hat = R C / mean(R)
    factored="row" / "col" (Section 3, end; Table 2 rows D and E): only R (V-hat_ij = R_i) or only C
        (V-hat_ij = C_j) is kept, for the same tensors
    otherwise, Algorithm 5:  V <- beta2t V + (1 - beta2t)(G^2 + eps1),  V-hat = V
    U = G / sqrt(V-hat);   U-hat = U / max(1, RMS(U) / d)   (Section 6, RMS per tensor; d = clip_threshold)
    alpha = lr * max(eps2, RMS(X_{t-1}))  if scale_parameter else lr   (Section 8)
    beta1 > 0:  M <- beta1 M + (1 - beta1) alpha U-hat;  X <- X - M   (tensor2tensor's placement)
    beta1 = 0:  X <- X - alpha U-hat                                   (no momentum buffer at all)
    weight_decay (not in the paper, default off): X <- X - lr weight_decay X, decoupled, before the update.

Two implementations compute this: a fused C kernel for fp32 contiguous CPU tensors (_kernel.c, two memory
passes per tensor) and an eager torch path for everything else (CUDA, bf16, no compiler). Both
work on fp32 statistics whatever the parameter dtype, keep every quantity on the parameter's device, and
never synchronise with the host inside ``step()``.
"""

from __future__ import annotations

import array
import ctypes
import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from . import _kernel

# Tensors below this many elements are updated one per thread by the kernel instead of split across threads.
_SMALL_NUMEL = 1 << 15


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def stochastic_round_to_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round fp32 ``x`` to bfloat16 stochastically: up with probability equal to the distance to the lower
    neighbour over the bf16 spacing, so E[round(x)] = x and updates smaller than half an ulp are not lost.

    bf16 is the upper 16 bits of fp32: adding uniform noise to the lower 16 bits and truncating does it.
    """
    _check(x.dtype == torch.float32, f"stochastic_round_to_bf16 expects float32, got {x.dtype}")
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = (bits + noise).bitwise_and_(-65536).view(torch.float32)
    # Inf and NaN must not be perturbed into a different class.
    rounded = torch.where(torch.isfinite(x), rounded, x)
    return rounded.to(torch.bfloat16)


class Adafactor(Optimizer):
    """Adafactor with every switch of the paper independent (see the module docstring for the update).

    Args:
        params: parameters or parameter groups.
        lr: the step size constant, a float set by any torch LR scheduler; with ``scale_parameter`` the step
            is ``lr * max(eps2, RMS(X))`` (the paper's relative step size is ``lr = min(1e-2, 1/sqrt(t))``,
            :func:`adafactor_repro.optim.schedules.relative_step`).
        beta1: momentum; 0 keeps no first-moment buffer.
        beta2: ``None`` for the increasing decay ``1 - t^-decay_exponent``; a float for a fixed, bias-corrected
            decay.
        decay_exponent: c in ``1 - t^-c`` (the paper uses 0.8).
        eps1: added to G^2 before averaging.  eps2: floor of RMS(X) in the relative step size.
        clip_threshold: d of update clipping; ``None`` turns clipping off.
        factored: ``True`` factors the second moment of matrices (Algorithm 4, V-hat = R C / mean(R));
            ``False`` keeps it in full (Algorithm 5); ``"row"`` / ``"col"`` keep only the row means R
            (V-hat_ij = R_i) or only the column means C (V-hat_ij = C_j), the simplified estimators of the
            end of Section 3. Leading dims of a tensor of rank > 2 are batch dims.
        min_dim_size_to_factor: both of the last two dims must be at least this for a tensor to be factored
            (tensor2tensor uses 128); other tensors keep a full second moment whatever ``factored`` says.
        scale_parameter: multiply the step by ``max(eps2, RMS(X_{t-1}))``.
        weight_decay: decoupled weight decay ``X <- X - lr * weight_decay * X`` (not in the paper).
        stochastic_rounding: write bf16 parameters back with stochastic rounding (fp32 math either way).
        fused: ``None`` uses the C kernel for fp32 contiguous CPU tensors when it builds, ``True`` requires
            it (an error otherwise), ``False`` always uses the eager torch path.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        *,
        beta1: float = 0.0,
        beta2: float | None = None,
        decay_exponent: float = 0.8,
        eps1: float = 1e-30,
        eps2: float = 1e-3,
        clip_threshold: float | None = 1.0,
        factored: bool | str = True,
        min_dim_size_to_factor: int = 128,
        scale_parameter: bool = True,
        weight_decay: float = 0.0,
        stochastic_rounding: bool = False,
        fused: bool | None = None,
    ):
        _check(isinstance(lr, (int, float)) and lr >= 0, f"Adafactor: lr must be a float >= 0, got {lr!r}")
        _check(0.0 <= beta1 < 1.0, f"Adafactor: beta1 must be in [0, 1), got {beta1!r}")
        _check(beta2 is None or 0.0 < beta2 < 1.0,
               f"Adafactor: beta2 must be None (increasing decay) or a float in (0, 1), got {beta2!r}")
        _check(decay_exponent > 0, f"Adafactor: decay_exponent must be > 0 (paper: 0.8), got {decay_exponent!r}")
        _check(eps1 >= 0 and eps2 >= 0, f"Adafactor: eps1 and eps2 must be >= 0, got {eps1!r}, {eps2!r}")
        _check(clip_threshold is None or clip_threshold > 0,
               f"Adafactor: clip_threshold must be > 0, or None to turn clipping off; got {clip_threshold!r}")
        _check(int(min_dim_size_to_factor) >= 1,
               f"Adafactor: min_dim_size_to_factor must be >= 1, got {min_dim_size_to_factor!r}")
        _check(isinstance(factored, bool) or factored in ("row", "col"),
               f'Adafactor: factored must be True, False, "row" or "col", got {factored!r}')
        _check(weight_decay >= 0, f"Adafactor: weight_decay must be >= 0, got {weight_decay!r}")
        if fused and _kernel.load() is None:
            raise RuntimeError(
                f"Adafactor(fused=True): the CPU kernel is unavailable ({_kernel.error()}); "
                "pass fused=None to fall back to the eager path"
            )
        defaults = dict(
            lr=float(lr), beta1=float(beta1), beta2=beta2, decay_exponent=float(decay_exponent),
            eps1=float(eps1), eps2=float(eps2), clip_threshold=clip_threshold, factored=factored,
            min_dim_size_to_factor=int(min_dim_size_to_factor), scale_parameter=bool(scale_parameter),
            weight_decay=float(weight_decay), stochastic_rounding=bool(stochastic_rounding), fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults)
        self._scratch: dict[torch.device, torch.Tensor] = {}
        self._stats: dict[str, torch.Tensor] = {}
        self._rms_u: torch.Tensor | None = None
        self._rms_index: dict[torch.Tensor, int] = {}

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _factored(shape: torch.Size, group: dict) -> bool:
        """Whether a tensor of this shape is eligible for factored (or row-/column-only) statistics."""
        k = group["min_dim_size_to_factor"]
        return group["factored"] is not False and len(shape) >= 2 and shape[-1] >= k and shape[-2] >= k

    @staticmethod
    def _beta2t(group: dict, t: int) -> float:
        if group["beta2"] is None:
            return 1.0 - t ** (-group["decay_exponent"])  # Section 7.2; 0 at t = 1
        b = group["beta2"]
        return b * (1.0 - b ** (t - 1)) / (1.0 - b**t)  # Section 7.1; 0 at t = 1

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            f32 = dict(dtype=torch.float32, device=p.device)
            state["step"] = 0
            if self._factored(p.shape, group):
                if group["factored"] != "col":
                    state["exp_avg_sq_row"] = torch.zeros(p.shape[:-1], **f32)
                if group["factored"] != "row":
                    state["exp_avg_sq_col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], **f32)
            else:
                state["exp_avg_sq"] = torch.zeros(p.shape, **f32)
            if group["beta1"] > 0:
                state["exp_avg"] = torch.zeros(p.shape, **f32)
        elif group["beta1"] > 0 and "exp_avg" not in state:
            raise RuntimeError("Adafactor: beta1 > 0 but the loaded state has no momentum (exp_avg); "
                               "resume with the beta1 the state was saved with")  # fmt: skip
        return state

    def _buffer(self, device: torch.device, numel: int) -> torch.Tensor:
        # One fp32 scratch buffer per device, as large as the largest parameter: the eager path's only
        # transient (a fresh matrix-sized tensor per step costs ~10x the arithmetic on CPU).
        buf = self._scratch.get(device)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=torch.float32, device=device)
            self._scratch[device] = buf
        return buf

    # ----------------------------------------------------------------------------------------------
    def _eager(self, p: torch.Tensor, state: dict, group: dict, beta2t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The update of one tensor with torch ops; returns 0-d (RMS(U) before clipping, alpha)."""
        g = p.grad.float()
        x = p if p.dtype == torch.float32 else p.float()
        numel = p.numel()
        u = self._buffer(p.device, numel)[:numel].view(p.shape)
        if "exp_avg_sq_row" in state and "exp_avg_sq_col" in state:
            r, c = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            g2 = torch.mul(g, g, out=u).add_(group["eps1"])
            r.mul_(beta2t).add_(g2.mean(-1), alpha=1.0 - beta2t)
            c.mul_(beta2t).add_(g2.mean(-2), alpha=1.0 - beta2t)
            # V-hat = R C / mean(R) is never formed: U = G * rsqrt(R / mean(R)) * rsqrt(C).
            a = (r / r.mean(-1, keepdim=True)).rsqrt_().unsqueeze(-1)
            torch.mul(g, a, out=u).mul_(c.rsqrt().unsqueeze(-2))
        elif "exp_avg_sq_row" in state or "exp_avg_sq_col" in state:
            # Row-only (V-hat_ij = R_i) or column-only (V-hat_ij = C_j): U = G * rsqrt of the broadcast mean.
            dim = -1 if "exp_avg_sq_row" in state else -2
            rc = state["exp_avg_sq_row" if dim == -1 else "exp_avg_sq_col"]
            g2 = torch.mul(g, g, out=u).add_(group["eps1"])
            rc.mul_(beta2t).add_(g2.mean(dim), alpha=1.0 - beta2t)
            torch.mul(g, rc.rsqrt().unsqueeze(dim), out=u)
        else:
            v = state["exp_avg_sq"]
            g2 = torch.mul(g, g, out=u).add_(group["eps1"])
            v.mul_(beta2t).add_(g2, alpha=1.0 - beta2t)
            torch.sqrt(v, out=u)
            torch.div(g, u, out=u)
        inv_sqrt_n = 1.0 / math.sqrt(numel)
        rms_u = torch.linalg.vector_norm(u) * inv_sqrt_n
        if group["scale_parameter"]:
            alpha = (torch.linalg.vector_norm(x) * inv_sqrt_n).clamp_(min=group["eps2"]).mul_(group["lr"])
        else:
            alpha = torch.full((), group["lr"], dtype=torch.float32, device=p.device)
        d = group["clip_threshold"]
        scale = alpha / (rms_u / d).clamp(min=1.0) if d is not None else alpha
        u.mul_(scale)
        if group["beta1"] > 0:
            m = state["exp_avg"]
            m.mul_(group["beta1"]).add_(u, alpha=1.0 - group["beta1"])
            u = m
        if group["weight_decay"] > 0:
            x.mul_(1.0 - group["lr"] * group["weight_decay"])
        x.sub_(u)
        if x is not p:
            with torch.no_grad():
                if p.dtype == torch.bfloat16 and group["stochastic_rounding"]:
                    p.copy_(stochastic_round_to_bf16(x))
                else:
                    p.copy_(x)
        return rms_u, alpha

    def _fused(self, params: list, states: list, beta2ts: list, group: dict, lib: ctypes.CDLL):
        # One flat int64 row of 9 per tensor (kind, B, n, m, x, g, r|v, c, momentum); kind is 1 factored,
        # 2 row-only, 3 column-only, 0 full. array.array keeps this Python-side bookkeeping at about a
        # microsecond per tensor.
        meta = array.array("q")
        for p, st in zip(params, states):
            mom = st["exp_avg"].data_ptr() if "exp_avg" in st else 0
            r, c = st.get("exp_avg_sq_row"), st.get("exp_avg_sq_col")
            if r is not None or c is not None:
                shape = p.shape
                kind = 1 if r is not None and c is not None else 2 if r is not None else 3
                meta.extend((kind, p.numel() // (shape[-1] * shape[-2]), shape[-2], shape[-1], p.data_ptr(),
                             p.grad.data_ptr(), 0 if r is None else r.data_ptr(), 0 if c is None else c.data_ptr(), mom))  # fmt: skip
            else:
                meta.extend((0, 1, 1, p.numel(), p.data_ptr(), p.grad.data_ptr(), st["exp_avg_sq"].data_ptr(), 0, mom))
        b2 = array.array("d", beta2ts)
        out = torch.empty(2, len(params), dtype=torch.float32)
        d = group["clip_threshold"]
        rc = lib.afx_step(
            len(params), meta.buffer_info()[0], b2.buffer_info()[0], group["eps1"], group["lr"], group["eps2"],
            -1.0 if d is None else float(d), int(group["scale_parameter"]), group["beta1"],
            1.0 - group["lr"] * group["weight_decay"], torch.get_num_threads(), _SMALL_NUMEL,
            out[0].data_ptr(), out[1].data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("Adafactor: the fused kernel could not allocate its per-step scratch (parameters unchanged)")
        return out[0], out[1]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rms_parts, alpha_parts, clip_parts, beta2_all = [], [], [], []
        rms_owner: list[torch.Tensor] = []  # the parameter of each entry of cat(rms_parts), for rms_u()
        for group in self.param_groups:
            beta2_at: dict[int, float] = {}  # all tensors of a group usually share t: compute beta2t once
            fused_p, fused_s, fused_b = [], [], []
            lib = _kernel.load() if group["fused"] is not False else None
            n_before = len(rms_parts)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients (use a dense embedding)")
                if p.is_complex():
                    raise RuntimeError("Adafactor does not support complex parameters")
                state = self._init_state(p, group)
                state["step"] += 1
                beta2t = beta2_at.get(state["step"])
                if beta2t is None:
                    beta2t = beta2_at[state["step"]] = self._beta2t(group, state["step"])
                beta2_all.append(beta2t)
                if p.numel() == 0:
                    continue
                if (lib is not None and p.device.type == "cpu" and p.dtype == torch.float32
                        and p.grad.dtype == torch.float32 and p.is_contiguous() and p.grad.is_contiguous()):  # fmt: skip
                    fused_p.append(p)
                    fused_s.append(state)
                    fused_b.append(beta2t)
                else:
                    rms, alpha = self._eager(p, state, group, beta2t)
                    rms_owner.append(p)
                    rms_parts.append(rms.reshape(1))
                    alpha_parts.append(alpha.reshape(1))
            if fused_p:
                rms, alpha = self._fused(fused_p, fused_s, fused_b, group, lib)
                rms_owner.extend(fused_p)
                rms_parts.append(rms)
                alpha_parts.append(alpha)
            d = group["clip_threshold"]
            for rms in rms_parts[n_before:]:
                clip_parts.append(rms > d if d is not None else torch.zeros_like(rms, dtype=torch.bool))
        if rms_parts:
            device = rms_parts[0].device
            cat = lambda parts: torch.cat([t.to(device, non_blocking=True) for t in parts])
            rms, alpha = cat(rms_parts), cat(alpha_parts)
            self._stats = {
                "rms_u_mean": rms.mean(),
                "rms_u_max": rms.max(),
                "clip_fraction": cat(clip_parts).float().mean(),
                "beta2t": torch.full((), sum(beta2_all) / len(beta2_all), dtype=torch.float32, device=device),
                "step_size_mean": alpha.mean(),
            }
            self._rms_u = rms
            self._rms_index = {p: j for j, p in enumerate(rms_owner)}
        return loss

    def rms_u(self, p: torch.Tensor) -> torch.Tensor | None:
        """RMS(U) of parameter ``p``'s update before clipping at the last ``step()``, a 0-d tensor on its device
        (the paper's Figure 1 plots it for one weight matrix); ``None`` when ``p`` did not step. No sync."""
        j = self._rms_index.get(p)
        return None if j is None else self._rms_u[j]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch.optim.Optimizer casts floating-point state to the parameter's dtype; the statistics here are
        # fp32 whatever the parameter dtype (bf16 parameters), so put back the saved tensors at their dtype.
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                if torch.is_tensor(value) and value.dtype != self.state[p][key].dtype:
                    self.state[p][key] = value.to(device=p.device, dtype=value.dtype, copy=True)

    def stats(self) -> dict[str, torch.Tensor]:
        """The paper's Figure 1 quantities of the last ``step()`` as 0-d tensors on the parameters' device:
        ``rms_u_mean`` / ``rms_u_max`` (RMS of the unclipped update over tensors), ``clip_fraction`` (share of
        tensors whose update was clipped), ``beta2t`` and ``step_size_mean`` (mean alpha over tensors).
        Reading them (``.item()``) is the caller's host sync; ``step()`` never makes one. Empty before the
        first step."""
        return dict(self._stats)
