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

Three implementations compute this: a fused Triton kernel family for CUDA tensors (_triton.py, four launches
per step for all tensors), a fused C kernel for fp32 contiguous CPU tensors (_kernel.c, two memory passes per
tensor) and an eager torch path for everything else (bf16 on CPU, no compiler, ``torch.compile``). All work
on fp32 statistics whatever the parameter dtype, keep every quantity on the parameter's device, and never
synchronise with the host inside ``step()``. The step count is a 0-d float32 tensor on the parameter's device.
"""

from __future__ import annotations

import array
import ctypes
import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from . import _kernel, _sharded, _triton

# Exactly these types reach the fused kernels; DTensors take _sharded's path, other subclasses are refused.
_PLAIN = (torch.Tensor, torch.nn.Parameter)

# Tensors below this many elements are updated one per thread by the kernel instead of split across threads.
_SMALL_NUMEL = 1 << 15


def _param_name(group: dict, gi: int, i: int, p: torch.Tensor) -> str:
    names = group.get("param_names")  # set when the optimizer was given named_parameters()
    return repr(names[i]) if names else f"param_groups[{gi}]['params'][{i}] (shape {tuple(p.shape)})"


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
        lr: the step size constant, set by any torch LR scheduler; with ``scale_parameter`` the step is
            ``lr * max(eps2, RMS(X))`` (the paper's relative step size is ``lr = min(1e-2, 1/sqrt(t))``,
            :func:`adafactor_repro.optim.schedules.relative_step`). A float, or a 0-d tensor that the
            scheduler updates in place: then ``torch.compile`` does not recompile when it changes, and a
            captured CUDA graph reads the current value.
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
            (tensor2tensor factors every 2-D tensor whatever its size; 128 is mesh-tensorflow's and T5's default);
            other tensors keep a full second moment whatever ``factored`` says.
        scale_parameter: multiply the step by ``max(eps2, RMS(X_{t-1}))``.
        weight_decay: decoupled weight decay ``X <- X - lr * weight_decay * X`` (not in the paper).
        stochastic_rounding: write bf16 parameters back with stochastic rounding (fp32 math either way).
        fused: ``None`` picks, per tensor, the Triton kernels for CUDA tensors when ``triton`` imports, the C
            kernel for fp32 contiguous CPU tensors when it builds, and the eager torch path otherwise (and
            always inside ``torch.compile``). ``True`` requires the fused kernel of each device (an error
            otherwise, never a silent fallback); ``"triton"`` forces the Triton kernels, also on CPU tensors
            under ``TRITON_INTERPRET=1``; ``False`` always uses the eager path. Tensors a fused kernel does
            not handle (non-contiguous; dtypes other than fp32/bf16 for Triton, fp32 for C) run eagerly.
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
        fused: bool | str | None = None,
    ):
        lr_ok = (torch.is_tensor(lr) and lr.numel() == 1) or (isinstance(lr, (int, float)) and not isinstance(lr, bool))
        _check(lr_ok and float(lr) >= 0, f"Adafactor: lr must be a float >= 0 or a 0-d tensor, got {lr!r}")
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
        _check(fused in (None, True, False, "triton"), f'Adafactor: fused must be None, True, False or "triton", got {fused!r}')
        defaults = dict(
            lr=lr if torch.is_tensor(lr) else float(lr), beta1=float(beta1), beta2=beta2, decay_exponent=float(decay_exponent),
            eps1=float(eps1), eps2=float(eps2), clip_threshold=clip_threshold, factored=factored,
            min_dim_size_to_factor=int(min_dim_size_to_factor), scale_parameter=bool(scale_parameter),
            weight_decay=float(weight_decay), stochastic_rounding=bool(stochastic_rounding), fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults)
        self._scratch: dict[torch.device, torch.Tensor] = {}
        self._last: list = []  # per-tensor statistics of the last step, reduced by stats()
        self._rms_index: dict | None = None  # parameter -> (chunk of _last, index), built by rms_u()
        self._plans: dict[tuple, _triton.Plan] = {}
        self._c_checked: dict = {}  # parameter -> the state tensors _kernel.check last passed for the C kernel
        # Stochastic-rounding seed of the Triton path: from torch's seed, without drawing from its generator.
        self._seed = torch.initial_seed() % (1 << 24)
        self._check_fused_available()
        for gi, group in enumerate(self.param_groups):
            self._init_group_state(group, gi)

    def _check_fused_available(self) -> None:
        for group in self.param_groups:
            fused = group["fused"]
            types = {p.device.type for p in group["params"]}
            if fused == "triton" or (fused is True and "cuda" in types):
                if not _triton.available():
                    raise RuntimeError(f"Adafactor(fused={fused!r}): triton does not import; install it "
                                       "(pip install triton) or pass fused=None to use the eager path on CUDA")  # fmt: skip
            if fused == "triton" and types - {"cuda"} and not _triton.interpreting():
                raise RuntimeError(f"Adafactor(fused='triton'): {sorted(types - {'cuda'})} tensors run the Triton "
                                   "kernels only under TRITON_INTERPRET=1; pass fused=None for the C kernel")  # fmt: skip
            if fused is True and "cpu" in types and _kernel.load() is None:
                raise RuntimeError(f"Adafactor(fused=True): the CPU kernel is unavailable ({_kernel.error()}); "
                                   "pass fused=None to fall back to the eager path")  # fmt: skip

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_plans"):  # not while torch's __init__ adds the first groups
            self._check_fused_available()
            self._init_group_state(self.param_groups[-1], len(self.param_groups) - 1)

    def _init_group_state(self, group: dict, gi: int) -> None:
        # State is allocated when the optimizer is built, not at the first step (torch's convention, which
        # asks that parameters are on their device by then): a compiled step() then sees the same state
        # every time and traces one graph.
        for i, p in enumerate(group["params"]):
            if p.requires_grad and not p.is_sparse and not p.is_complex():
                self._init_state(p, group, _param_name(group, gi, i, p) if _sharded.is_dtensor(p) else "")

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _factored(shape: torch.Size, group: dict) -> bool:
        """Whether a tensor of this shape is eligible for factored (or row-/column-only) statistics."""
        k = group["min_dim_size_to_factor"]
        return group["factored"] is not False and len(shape) >= 2 and shape[-1] >= k and shape[-2] >= k

    @staticmethod
    def _beta2t(group: dict, t):
        """beta2t at the 1-based step t: a float for an int t, a tensor for a (float64) tensor t."""
        if group["beta2"] is None:
            return 1.0 - t ** (-group["decay_exponent"])  # Section 7.2; 0 at t = 1
        b = group["beta2"]
        return b * (1.0 - b ** (t - 1)) / (1.0 - b**t)  # Section 7.1; 0 at t = 1

    def _init_state(self, p: torch.Tensor, group: dict, name: str = "") -> dict:
        state = self.state[p]
        if not state:
            # A DTensor parameter gets DTensor state holding only this rank's part, laid out so that DCP can
            # reshard it (_sharded.state_placements); the step count stays a plain 0-d tensor, as torch's.
            sharded = _sharded.is_dtensor(p)
            device = p.to_local().device if sharded else p.device
            f32 = dict(dtype=torch.float32, device=device)
            zeros = (lambda kind, shape: _sharded.zeros_state(p, kind, name)) if sharded else (  # noqa: E731
                lambda kind, shape: torch.zeros(shape, **f32))
            state["step"] = torch.zeros((), **f32)
            if self._factored(p.shape, group):  # the global shape: a shard factors as the whole tensor does
                if group["factored"] != "col":
                    state["exp_avg_sq_row"] = zeros("row", p.shape[:-1])
                if group["factored"] != "row":
                    state["exp_avg_sq_col"] = zeros("col", p.shape[:-2] + p.shape[-1:])
            else:
                state["exp_avg_sq"] = zeros("full", p.shape)
            if group["beta1"] > 0:
                state["exp_avg"] = zeros("full", p.shape)
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
    def _eager(self, p: torch.Tensor, state: dict, group: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The update of one tensor with torch ops; returns 0-d (RMS(U) before clipping, alpha, beta2t).

        Every scalar that changes from step to step (t, beta2t, lr) is a 0-d tensor, so that
        ``torch.compile`` traces one graph for all steps."""
        step = state["step"].add_(1.0)
        t = step.to(torch.float32 if p.device.type == "mps" else torch.float64)
        beta2t = self._beta2t(group, t)
        b2, omb2 = beta2t.float(), (1.0 - beta2t).float()
        g = p.grad.float()
        x = p if p.dtype == torch.float32 else p.float()
        numel = p.numel()
        if torch.compiler.is_compiling():  # the compiler plans its own temporaries
            u = torch.empty(p.shape, dtype=torch.float32, device=p.device)
        else:
            u = self._buffer(p.device, numel)[:numel].view(p.shape)
        if "exp_avg_sq_row" in state and "exp_avg_sq_col" in state:
            r, c = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            g2 = torch.mul(g, g, out=u).add_(group["eps1"])
            r.mul_(b2).add_(g2.mean(-1).mul_(omb2))
            c.mul_(b2).add_(g2.mean(-2).mul_(omb2))
            # V-hat = R C / mean(R) is never formed: U = G * rsqrt(R / mean(R)) * rsqrt(C).
            a = (r / r.mean(-1, keepdim=True)).rsqrt_().unsqueeze(-1)
            torch.mul(g, a, out=u).mul_(c.rsqrt().unsqueeze(-2))
        elif "exp_avg_sq_row" in state or "exp_avg_sq_col" in state:
            # Row-only (V-hat_ij = R_i) or column-only (V-hat_ij = C_j): U = G * rsqrt of the broadcast mean.
            dim = -1 if "exp_avg_sq_row" in state else -2
            rc = state["exp_avg_sq_row" if dim == -1 else "exp_avg_sq_col"]
            g2 = torch.mul(g, g, out=u).add_(group["eps1"])
            rc.mul_(b2).add_(g2.mean(dim).mul_(omb2))
            torch.mul(g, rc.rsqrt().unsqueeze(dim), out=u)
        else:
            v = state["exp_avg_sq"]
            g2 = torch.mul(g, g, out=u).add_(group["eps1"])
            v.mul_(b2).add_(g2.mul_(omb2))
            torch.sqrt(v, out=u)
            torch.div(g, u, out=u)
        inv_sqrt_n = 1.0 / math.sqrt(numel)
        rms_u = torch.linalg.vector_norm(u) * inv_sqrt_n
        lr = group["lr"]
        if group["scale_parameter"]:
            alpha = (torch.linalg.vector_norm(x) * inv_sqrt_n).clamp_(min=group["eps2"]).mul_(lr)
        elif torch.is_tensor(lr):
            alpha = lr.to(dtype=torch.float32, device=p.device)
        else:
            alpha = torch.full((), lr, dtype=torch.float32, device=p.device)
        d = group["clip_threshold"]
        scale = alpha / (rms_u / d).clamp(min=1.0) if d is not None else alpha
        u.mul_(scale)
        if group["beta1"] > 0:
            m = state["exp_avg"]
            m.mul_(group["beta1"]).add_(u, alpha=1.0 - group["beta1"])
            u = m
        if group["weight_decay"] > 0:
            x.mul_(1.0 - lr * group["weight_decay"])
        x.sub_(u)
        if x is not p:
            with torch.no_grad():
                if p.dtype == torch.bfloat16 and group["stochastic_rounding"]:
                    p.copy_(stochastic_round_to_bf16(x))
                else:
                    p.copy_(x)
        return rms_u, alpha, beta2t

    def _fused(self, params: list, states: list, group: dict, lib: ctypes.CDLL):
        # One flat int64 row of 10 per tensor (kind, B, n, m, x, g, r|v, c, momentum, step); kind is 1
        # factored, 2 row-only, 3 column-only, 0 full. The kernel advances the float32 step counts and computes
        # beta2t from them in double, as _beta2t does. array.array keeps this Python-side bookkeeping at about
        # a microsecond per tensor.
        meta = array.array("q")
        check, checked = _kernel.check, self._c_checked
        for p, st in zip(params, states):
            # Every pointer handed to C is checked first (type, device, dtype, layout, size): never a segfault.
            # The parameter and gradient every step; the state tensors when they are new objects (a load).
            numel = p.numel()
            check(p, numel, "a parameter")
            check(p.grad, numel, "a gradient")
            r, c = st.get("exp_avg_sq_row"), st.get("exp_avg_sq_col")
            seen = (numel, st["step"], st.get("exp_avg"), r, c, st.get("exp_avg_sq"))
            old = checked.get(p)
            if old is None or old[0] != numel or any(a is not b for a, b in zip(old[1:], seen[1:])):
                for key, t in st.items():
                    if torch.is_tensor(t):
                        check(t, 1 if key == "step" else numel // p.shape[-1] if key == "exp_avg_sq_row"
                              else numel // p.shape[-2] if key == "exp_avg_sq_col" else numel, f"the state {key}")
                checked[p] = seen
            mom = st["exp_avg"].data_ptr() if "exp_avg" in st else 0
            if r is not None or c is not None:
                shape = p.shape
                kind = 1 if r is not None and c is not None else 2 if r is not None else 3
                meta.extend((kind, p.numel() // (shape[-1] * shape[-2]), shape[-2], shape[-1], p.data_ptr(),
                             p.grad.data_ptr(), 0 if r is None else r.data_ptr(), 0 if c is None else c.data_ptr(), mom,
                             st["step"].data_ptr()))  # fmt: skip
            else:
                meta.extend((0, 1, 1, p.numel(), p.data_ptr(), p.grad.data_ptr(), st["exp_avg_sq"].data_ptr(), 0, mom,
                             st["step"].data_ptr()))  # fmt: skip
        out = torch.empty(2, len(params), dtype=torch.float32)
        beta2t = torch.empty(len(params), dtype=torch.float64)
        d = group["clip_threshold"]
        lr = float(group["lr"])
        rc = lib.afx_step(
            len(params), meta.buffer_info()[0], -1.0 if group["beta2"] is None else group["beta2"],
            group["decay_exponent"], group["eps1"], lr, group["eps2"],
            -1.0 if d is None else float(d), int(group["scale_parameter"]), group["beta1"],
            1.0 - lr * group["weight_decay"], torch.get_num_threads(), _SMALL_NUMEL,
            out[0].data_ptr(), out[1].data_ptr(), beta2t.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("Adafactor: the fused kernel could not allocate its per-step scratch (parameters unchanged)")
        return out[0], out[1], beta2t

    def _path(self, p: torch.Tensor, group: dict, lib: ctypes.CDLL | None, compiling: bool) -> str:
        """Which implementation updates ``p``: "triton", "c" or "eager" (see ``fused`` in the class doc)."""
        fused = group["fused"]
        if fused is False or compiling:
            return "eager"
        contiguous = p.is_contiguous() and p.grad.is_contiguous()
        if fused == "triton" or p.device.type == "cuda":
            if _triton.available() and contiguous and {p.dtype, p.grad.dtype} <= {torch.float32, torch.bfloat16}:
                if p.device.type == "cuda" or _triton.interpreting():
                    return "triton"
            if fused is True and p.device.type == "cuda" and not _triton.available():
                raise RuntimeError("Adafactor(fused=True): a CUDA tensor needs triton, which does not import")
            return "eager"
        if lib is not None and p.device.type == "cpu" and p.dtype == p.grad.dtype == torch.float32 and contiguous:
            return "c"
        return "eager"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compiling = torch.compiler.is_compiling()
        # Per chunk of tensors: (RMS(U) before clipping, alpha, clipped or None, beta2t, clip_threshold,
        # the chunk's parameters).
        last = []
        triton_work: dict[tuple, tuple[list, list, list]] = {}
        sharded_work: list[tuple] = []  # DTensor parameters of every group: one batched reduction per phase
        for gi, group in enumerate(self.param_groups):
            c_params, c_states = [], []
            lib = _kernel.load() if group["fused"] in (None, True) and not compiling else None
            d = group["clip_threshold"]
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if type(p) not in _PLAIN or type(p.grad) not in _PLAIN:
                    # No tensor subclass reaches a fused kernel: a DTensor's data pointer is not its storage.
                    name = _param_name(group, gi, i, p)
                    if not (_sharded.is_dtensor(p) and _sharded.is_dtensor(p.grad)):
                        raise TypeError(f"Adafactor: parameter {name} is a {type(p).__name__} with a "
                                        f"{type(p.grad).__name__} gradient; only plain tensors and DTensor "
                                        "parameters with DTensor gradients are supported")  # fmt: skip
                    sharded_work.append((p, self._init_state(p, group, name), group, name))
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients (use a dense embedding)")
                if p.is_complex():
                    raise RuntimeError("Adafactor does not support complex parameters")
                state = self._init_state(p, group)
                if p.numel() == 0:
                    state["step"].add_(1.0)
                    continue
                path = self._path(p, group, lib, compiling)
                if path == "c":
                    c_params.append(p)
                    c_states.append(state)
                elif path == "triton":
                    work = triton_work.setdefault((p.device, p.dtype, p.grad.dtype), ([], [], []))
                    work[0].append(p)
                    work[1].append(state)
                    work[2].append(gi)
                else:
                    rms, alpha, beta2t = self._eager(p, state, group)
                    last.append((rms.reshape(1), alpha.reshape(1), None, beta2t.reshape(1), d, [p]))
            if c_params:
                rms, alpha, beta2t = self._fused(c_params, c_states, group, lib)
                last.append((rms, alpha, None, beta2t, d, c_params))
        if sharded_work:
            results = _sharded.step(sharded_work, self._beta2t, stochastic_round_to_bf16)
            for (p, _, group, _), (rms, alpha, beta2t) in zip(sharded_work, results):
                last.append((rms.reshape(1), alpha.reshape(1), None, beta2t.reshape(1), group["clip_threshold"], [p]))
        for key, (params, states, group_ids) in triton_work.items():
            plan = self._plans.get(key)
            if plan is None or not plan.matches(params, self.param_groups):
                plan = self._plans[key] = _triton.Plan(params, states, group_ids, self.param_groups, key, self._seed)
            plan.step(self.param_groups)
            last.append((plan.out[0], plan.out[1], plan.out[2], plan.b2[:, 0], None, params))
        self._last = last
        self._rms_index = None
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._plans.clear()  # the state tensors are new: the Triton tables point at the old ones
        self._c_checked.clear()  # and the C kernel checks them again
        # torch.optim.Optimizer casts floating-point state to the parameter's dtype; the statistics here are
        # fp32 whatever the parameter dtype (bf16 parameters), so put back the saved tensors at their dtype.
        # The step count is a float32 0-d tensor on the parameter's device (older checkpoints hold an int).
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                if key == "step":
                    step = torch.as_tensor(value, dtype=torch.float32).to(p.device, copy=True).reshape(())
                    self.state[p]["step"] = step
                elif torch.is_tensor(value) and value.dtype != self.state[p][key].dtype:
                    self.state[p][key] = value.to(device=p.device, dtype=value.dtype, copy=True)

    def rms_u(self, p: torch.Tensor) -> torch.Tensor | None:
        """RMS(U) of parameter ``p``'s update before clipping at the last ``step()``, a 0-d tensor on its device
        (the paper's Figure 1 plots it for one weight matrix); ``None`` when ``p`` did not step. No sync."""
        if self._rms_index is None:
            self._rms_index = {q: (c, j) for c, chunk in enumerate(self._last) for j, q in enumerate(chunk[5])}
        where = self._rms_index.get(p)
        return None if where is None else self._last[where[0]][0][where[1]]

    def stats(self) -> dict[str, torch.Tensor]:
        """The paper's Figure 1 quantities of the last ``step()`` as 0-d tensors on the parameters' device:
        ``rms_u_mean`` / ``rms_u_max`` (RMS of the unclipped update over tensors), ``clip_fraction`` (share of
        tensors whose update was clipped), ``beta2t`` and ``step_size_mean`` (mean alpha over tensors).
        Reading them (``.item()``) is the caller's host sync; neither ``step()`` nor this method makes one
        (they are reduced here, on the device, only when asked for). Empty before the first step."""
        if not self._last:
            return {}
        device = self._last[0][0].device
        cat = lambda parts: torch.cat([t.to(device, non_blocking=True) for t in parts])
        rms, alpha = cat([c[0] for c in self._last]), cat([c[1] for c in self._last])
        clipped = cat([(c[0] > c[4] if c[4] is not None else torch.zeros_like(c[0], dtype=torch.bool)) if c[2] is None
                       else c[2] > 0 for c in self._last])  # fmt: skip
        return {
            "rms_u_mean": rms.mean(),
            "rms_u_max": rms.max(),
            "clip_fraction": clipped.float().mean(),
            "beta2t": cat([c[3].to(torch.float64) for c in self._last]).mean().float(),
            "step_size_mean": alpha.mean(),
        }
