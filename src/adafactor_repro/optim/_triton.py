"""Fused Triton Adafactor: one step of every tensor of the optimizer in four launches (Algorithms 4 and 5 of
Shazeer & Stern 2018, the row-only and column-only estimators of its Section 3, and every switch of
:class:`~adafactor_repro.optim.Adafactor`), like ``multi_tensor_apply``: a launch covers all tensors through
tables of pointers and tiles built once, and rebuilt only when parameter or gradient storage changes.

    phase 1 (statistics, one program per tile): a tile owns whole rows of one matrix of a factored tensor, or
        one chunk of an unfactored one. Factored: R_i (Alg. 4) for its rows, its column partial sums of
        G^2 + eps1 and of D_j = sum_i G_ij^2 / R_i, sum R_i and sum X^2. Unfactored: V (Alg. 5), sum U^2 and
        sum X^2.
    phase 2a (columns, one program per COLS columns of a matrix): adds the column partials of the matrix's
        tiles in tile order (no atomics, so the result is deterministic), updates C and sums D_j / C_j over its
        columns. Spread over column chunks so that no program reads a 32000x512 embedding's 250 tiles of
        partials alone.
    phase 2 (finish, one program per tensor): adds the tile and chunk partials (short vectors) and computes
        mean(R), RMS(U) (sum U^2 = mean(R) sum_j D_j / C_j, as in the C kernel), alpha and the clipping
        denominator.
    phase 3 (update, one program per tile): X <- X (1 - lr wd) - s G rsqrt(R_i / mean R) rsqrt(C_j), through
        the momentum buffer when beta1 > 0. V-hat is never materialised.

The step counts, lr and beta2t live on the device: the step counts are 0-d views into one float32 vector (so
one ``add_`` advances them all), beta2t is computed from it in float64 by a few torch ops per parameter group,
and the lr is written with ``fill_`` (``copy_`` when it is a tensor, which is what CUDA-graph capture needs).
A step makes no host sync and, after the first, no allocation. When every pointer is 16-byte aligned and every
row length a multiple of 16 elements (``Plan.aligned``, true for Transformer base and big), the kernels are
told so (``ALIGN``) and the compiler emits 128-bit loads (results/gpu/kernels.md). With the interpreter (``TRITON_INTERPRET=1``)
the same kernels run on CPU tensors; that is how the tests pin them.
"""

from __future__ import annotations

import os

import torch

# Tile shape: ROWS x COLS blocks for factored tensors, BLOCK elements for the others; a tile covers about
# TILE_ELEMS elements (whole rows for factored tensors), so the largest matrices split into many tiles and
# the phase-2 reduction over tiles stays short. The tests shrink these to exercise every loop boundary.
ROWS, COLS, BLOCK, TILE_ELEMS = 8, 256, 1024, 1 << 16
_FULL, _FACTORED, _ROW, _COL = 0, 1, 2, 3
# Tensor-table columns (int64, NT per tensor; _triton_kernels.NT).
_X, _G, _S1, _S2, _M, _KIND, _B, _N, _COLS_, _GROUP, _T0, _K, _CBASE, _RBASE, _C0, _KC = range(16)
NT = 16
# phase 2a adds KB tiles' column partials at a time.
KB = 16
# Warps of the streaming phases 1 and 3: 8 spreads a ROWS x COLS block over 256 threads, so each thread holds
# fewer values, and fewer registers a thread leave room for more resident warps to hide HBM latency.
WARPS = 8
# Hyper-table columns (float32, per group): eps1, eps2, clip (<= 0: off), scale_parameter, beta1, weight_decay,
# stochastic-rounding seed (an integer below 2^24, exact in float32; < 0: round to nearest).
NH = 7


_available: bool | None = None


def available() -> bool:
    """Whether triton imports (imported on first use: the package works without it)."""
    global _available
    if _available is None:
        try:
            import triton  # noqa: F401
        except ImportError:
            _available = False
        else:
            _available = True
    return _available


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels() -> tuple:
    """The four kernels (phase 1, 2a, 2, 3); imports triton on first use."""
    from . import _triton_kernels as k

    return k.phase1, k.phase2_cols, k.phase2, k.phase3


def kind_of(state: dict) -> int:
    r, c = "exp_avg_sq_row" in state, "exp_avg_sq_col" in state
    return _FACTORED if r and c else _ROW if r else _COL if c else _FULL


class Plan:
    """Tables, scratch and device scalars of one (device, parameter dtype, gradient dtype) set of tensors.

    Built from the tensors that have gradients this step, in parameter-group order; ``matches`` tells whether
    it can be reused (same tensors, same storage, same group hyper-parameters)."""

    def __init__(self, params: list, states: list, group_ids: list, groups: list, key: tuple, seed: int):
        # The module's tile shape at build time (the tests shrink it).
        rows, cols, block, tile_elems = ROWS, COLS, BLOCK, TILE_ELEMS
        self.key, self.rows, self.cols, self.block = key, rows, cols, block
        p0 = params[0]
        dev = p0.device
        self.x_bf16 = p0.dtype == torch.bfloat16
        self.g_bf16 = p0.grad.dtype == torch.bfloat16
        n = len(params)
        self.n = n
        # Step counts: 0-d views into one vector, so that one add_ advances them all.
        self.steps = torch.stack([st["step"].to(device=dev, dtype=torch.float32) for st in states])
        for i, st in enumerate(states):
            st["step"] = self.steps[i]
        table, tiles, chunks = [], [], []
        colp = rmean = 0
        # 16-byte alignment of every pointer and row lengths in multiples of 16 elements: the ALIGN hint.
        aligned = True
        for i, (p, st) in enumerate(zip(params, states)):
            kind = kind_of(st)
            mom = st["exp_avg"].data_ptr() if "exp_avg" in st else 0
            if kind == _FULL:
                nb, rows_, m = 1, 1, p.numel()
                per = max(block, (tile_elems + block - 1) // block * block)
                k = (m + per - 1) // per
                t0 = len(tiles)
                tiles += [(i, j * per, min(per, m - j * per), -1) for j in range(k)]
                s1, s2, cb, rb = st["exp_avg_sq"].data_ptr(), 0, 0, 0
                c0 = kc = 0
            else:
                rows_, m = p.shape[-2], p.shape[-1]
                nb = p.numel() // (rows_ * m)
                per = max(rows, -(-max(1, tile_elems // m) // rows) * rows)
                k = (rows_ + per - 1) // per
                t0 = len(tiles)
                need_cols = kind != _ROW
                for b in range(nb):
                    for j in range(k):
                        off = colp + (b * k + j) * 2 * m if need_cols else -1
                        tiles.append((i, b * rows_ + j * per, min(per, rows_ - j * per), off))
                cb, rb = colp, rmean
                if need_cols:
                    colp += nb * k * 2 * m
                rmean += nb
                s1 = st["exp_avg_sq_row"].data_ptr() if kind in (_FACTORED, _ROW) else 0
                s2 = st["exp_avg_sq_col"].data_ptr() if kind in (_FACTORED, _COL) else 0
                c0, kc = len(chunks), (-(-m // cols) if need_cols else 0)
                chunks += [(i, b, j * cols) for b in range(nb) for j in range(kc)]
            ptrs = (p.data_ptr(), p.grad.data_ptr(), s1, s2, mom)
            aligned = aligned and m % 16 == 0 and all(q % 16 == 0 for q in ptrs)
            table.append([*ptrs, kind, nb, rows_, m, group_ids[i], t0, k, cb, rb, c0, kc])
        f32 = dict(dtype=torch.float32, device=dev)
        self.table = _upload(torch.tensor(table, dtype=torch.int64).reshape(n, NT), dev)
        self.tiles = _upload(torch.tensor(tiles, dtype=torch.int64).reshape(len(tiles), 4), dev)
        self.chunks = _upload(torch.tensor(chunks, dtype=torch.int64).reshape(len(chunks), 3), dev)
        self.n_chunks = len(chunks)
        self.dpart = torch.empty(max(len(chunks), 1), **f32)
        self.aligned = aligned and cols % 16 == 0 and block % 16 == 0  # tile and chunk starts too
        self.tile_list = tiles  # host copies, for the pointer refresh and the ownership check
        self.meta = table
        self.n_tiles = len(tiles)
        self.part = torch.empty(2 * self.n_tiles, **f32)
        self.colp = torch.empty(max(colp, 1), **f32)
        self.rmean = torch.empty(max(rmean, 1), **f32)
        self.scale = torch.empty(n, **f32)
        self.out = torch.zeros(3, n, **f32)  # RMS(U) before clipping, alpha, clipped; per tensor
        self.b2 = torch.empty(n, 2, **f32)  # beta2t, 1 - beta2t
        self._t64 = torch.empty(n, dtype=torch.float64, device=dev)
        self._w64 = torch.empty(n, dtype=torch.float64, device=dev)
        self._b64 = torch.empty(n, dtype=torch.float64, device=dev)
        self.group_ids = group_ids
        self.lr = torch.zeros(len(groups), **f32)
        # Per group (its tensors are contiguous in the tables): the views step() writes, made once so that a
        # step dispatches no view ops.
        self.views = {}
        for g in sorted(set(group_ids)):
            a, b = group_ids.index(g), len(group_ids) - group_ids[::-1].index(g)
            self.views[g] = (self.lr[g], self.steps[a:b], self._t64[a:b], self._w64[a:b], self._b64[a:b],
                             self.b2[a:b, 0], self.b2[a:b, 1])  # fmt: skip
        self.hyp = _upload(torch.tensor([hyper_row(g, seed) for g in groups], dtype=torch.float32), dev)
        self.hyper_sig = tuple(hyper_sig(g) for g in groups)
        self.ids = tuple(map(id, params))
        self.ptrs = pointers(params)

    def matches(self, params: list, groups: list) -> bool:
        """Whether this plan can step ``params``. The same tensors with new parameter or gradient storage
        (``zero_grad(set_to_none=True)`` may hand out new gradient memory) only refresh the pointer columns
        of the tensor table, with an asynchronous copy; anything else needs a new plan."""
        if self.ids != tuple(map(id, params)) or self.hyper_sig != tuple(hyper_sig(g) for g in groups):
            return False
        ptrs = pointers(params)
        if ptrs != self.ptrs:
            if self.aligned and any(q % 16 for pair in ptrs for q in pair):
                return False  # the kernels were told every pointer is 16-byte aligned
            for row, p in zip(self.meta, params):
                row[_X], row[_G] = p.data_ptr(), p.grad.data_ptr()
            _upload(torch.tensor(self.meta, dtype=torch.int64).reshape(self.n, NT), self.table.device, self.table)
            self.ptrs = ptrs
        return True

    def step(self, groups: list) -> None:
        """One step of every tensor of the plan: a handful of torch ops for the device scalars, four launches."""
        self.steps.add_(1.0)
        for g, (lr_out, steps, t, w, b2, b2_out, omb2_out) in self.views.items():
            group = groups[g]
            lr = group["lr"]
            if torch.is_tensor(lr):
                lr_out.copy_(lr)
            else:
                lr_out.fill_(lr)
            # beta2t in float64 from the step counts, with the other paths' expressions (Sections 7.1, 7.2).
            t.copy_(steps)
            if group["beta2"] is None:
                torch.pow(t, -group["decay_exponent"], out=w)
                torch.mul(w, -1.0, out=b2).add_(1.0)  # 1 - t^-c
            else:
                beta = group["beta2"]
                torch.pow(beta, t, out=w).mul_(-1.0).add_(1.0)  # 1 - beta^t
                torch.pow(beta, torch.sub(t, 1.0, out=b2), out=b2)  # beta^(t-1)
                b2.mul_(-1.0).add_(1.0).mul_(beta).div_(w)
            b2_out.copy_(b2)
            omb2_out.copy_(torch.mul(b2, -1.0, out=w).add_(1.0))
        k1, k2a, k2, k3 = kernels()
        consts = dict(X_BF16=self.x_bf16, G_BF16=self.g_bf16, ROWS=self.rows, COLS=self.cols, BLOCK=self.block,
                      ALIGN=self.aligned)  # fmt: skip
        k1[(self.n_tiles,)](self.table, self.tiles, self.b2, self.hyp, self.part, self.colp, **consts, num_warps=WARPS)
        if self.n_chunks:  # no factored or column-only tensor: nothing to launch
            k2a[(self.n_chunks,)](self.table, self.chunks, self.b2, self.colp, self.dpart, COLS=self.cols, KB=KB,
                                  ALIGN=self.aligned)  # fmt: skip
        k2[(self.n,)](self.table, self.hyp, self.lr, self.part, self.dpart, self.rmean, self.scale, self.out, self.n,
                      BLOCK=self.block)  # fmt: skip
        k3[(self.n_tiles,)](self.table, self.tiles, self.hyp, self.lr, self.scale, self.rmean, self.steps, **consts,
                            num_warps=WARPS)  # fmt: skip


def pointers(params: list) -> tuple:
    return tuple((p.data_ptr(), p.grad.data_ptr()) for p in params)


def _upload(host: torch.Tensor, device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy a host table to the device without a host sync (pinned memory, non-blocking copy)."""
    if device.type == "cuda":
        host = host.pin_memory()
    if out is None:
        out = torch.empty(host.shape, dtype=host.dtype, device=device)
    return out.copy_(host, non_blocking=device.type == "cuda")


def hyper_sig(group: dict) -> tuple:
    keys = ("beta1", "beta2", "decay_exponent", "eps1", "eps2", "clip_threshold", "scale_parameter",
            "weight_decay", "stochastic_rounding")  # fmt: skip
    return tuple(group[k] for k in keys)


def hyper_row(group: dict, seed: int) -> list:
    d = group["clip_threshold"]
    return [group["eps1"], group["eps2"], -1.0 if d is None else float(d), float(group["scale_parameter"]),
            group["beta1"], group["weight_decay"], float(seed % (1 << 24)) if group["stochastic_rounding"] else -1.0]  # fmt: skip


def tiles_cover_exactly(plan: Plan) -> bool:
    """Every element of every tensor is owned by exactly one tile: the design property that makes phases 1
    and 3 race-free (the interpreter runs programs one at a time, so only the tables can show it)."""
    owned: dict[int, list] = {}
    for ti, r0, nr, _ in plan.tile_list:
        owned.setdefault(ti, []).append((r0, r0 + nr))
    for ti, row in enumerate(plan.meta):
        kind, nb, n, m = row[_KIND], row[_B], row[_N], row[_COLS_]
        extent = m if kind == _FULL else nb * n  # elements, or rows of the flattened matrices
        spans = sorted(owned.get(ti, []))
        if not spans or spans[0][0] != 0 or spans[-1][1] != extent:
            return False
        if any(a[1] != b[0] for a, b in zip(spans, spans[1:])) or any(e <= s for s, e in spans):
            return False
        if kind != _FULL and any(s // n != (e - 1) // n for s, e in spans):
            return False  # a factored tile must stay within one matrix
    return True


