"""Adafactor on DTensor parameters: FSDP2 (``fully_shard``, every parameter ``Shard(0)``) and tensor
parallelism (``Shard(1)`` of a Linear weight, or any ``Shard(d)``), equal to the unsharded update to float
rounding.

Each rank updates its local shard with torch ops. What crosses shards is sums, and only sums:
    RMS(X_{t-1}) and RMS(U) (Sections 6 and 8): sum X^2 and sum U^2 over the whole tensor;
    R = rowmean(G^2 + eps1) and C = colmean(G^2 + eps1) (Algorithm 4, lines 6-7): R averages over the last dim,
        C over the second-to-last (docs/optimizer.md, "Rows and columns"), so a shard of dim -2 (FSDP2's Shard(0)
        of a [out, in] weight) holds complete rows (R stays local, sharded like the parameter) but partial
        column sums (C is all-reduced and kept replicated), and a shard of dim -1 the other way round;
    mean(R) in V-hat = R C / mean(R) (Algorithm 4, line 8): sum R over a dim -2 shard.
Every tensor's partial sums of one phase go into one flat buffer, all-reduced once per process group
(``_reduce``), then scattered back: the collectives per step do not grow with the number of tensors.

Phases. When dim -1 is not sharded (FSDP2; every 1-D tensor), R is final locally before any
communication, so RMS(U) can be folded into the first all-reduce as the fused C kernel does:
U_ij^2 = G_ij^2 mean(R) / (R_i C_j), hence sum U^2 = mean(R) sum_j D_j / C_j with D_j = sum_i G_ij^2 / R_i, a column
sum reduced like C's. One all-reduce per step. A shard of dim -1 (tensor parallel) needs R reduced before U's
denominators exist: two all-reduces (statistics, then sum R and sum G^2/(R C)); a third only when a batch dim
(of a rank >= 3 tensor) and dim -1 are both sharded. Each parameter's update is a generator that yields its
partial sums at each phase, so all tensors' sums of a phase meet in one buffer.

The optimizer state is DTensors laid out like the parameter (``state_placements``), so torch.distributed.
checkpoint saves and reshards it: V and the momentum as the parameter; R sharded where the parameter's rows
are, C where its columns are, each replicated over a mesh dim that shards the dim it averages away.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # torch built without distributed: no DTensor can reach the optimizer
    DTensor = None


def is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def _unsupported(name: str, why: str) -> TypeError:
    return TypeError(f"Adafactor: parameter {name}: {why}")


def _shard_dims(p, name: str) -> dict[int, list[int]]:
    """tensor dim -> the mesh dims (of size > 1) that shard it."""
    out: dict[int, list[int]] = {}
    for md, pl in enumerate(p.placements):
        if pl.is_shard():
            d = pl.dim % p.ndim
            if p.device_mesh.size(md) > 1:
                out.setdefault(d, []).append(md)
        elif not pl.is_replicate():
            raise _unsupported(name, f"placement {pl} on mesh dim {md} (only Shard and Replicate parameters)")
    return out


def state_placements(p, kind: str, name: str) -> tuple:
    """Placements of the state tensor ``kind`` ("row": R, shape [..., n]; "col": C, shape [..., m]; else the
    parameter's shape) of DTensor parameter ``p`` of shape [..., n, m]."""
    if kind not in ("row", "col"):
        return tuple(p.placements)
    last, out = p.ndim - 1, []
    for pl in p.placements:
        d = pl.dim % p.ndim if pl.is_shard() else None
        if d is None or d < last - 1:
            out.append(pl)  # batch dims keep their index in R and C
        elif (d == last) == (kind == "row"):
            out.append(Replicate())  # the dim this statistic averages away: full after the all-reduce
        elif d == last - 1 and kind == "row":
            out.append(pl)
        elif type(pl) is Shard:
            out.append(Shard(last - 1))  # dim -1 of the parameter is dim -1 of C
        else:
            raise _unsupported(name, f"placement {pl} of dim -1 (only plain Shard there)")
    return tuple(out)


def zeros_state(p, kind: str, name: str) -> torch.Tensor:
    """A zero fp32 DTensor for state ``kind`` of ``p`` (see ``state_placements``), holding only this rank's part."""
    local = p.to_local()
    if kind == "row":
        shape, lshape = p.shape[:-1], local.shape[:-1]
    elif kind == "col":
        shape, lshape = p.shape[:-2] + p.shape[-1:], local.shape[:-2] + local.shape[-1:]
    else:
        shape, lshape = p.shape, local.shape
    t = torch.zeros(lshape, dtype=torch.float32, device=local.device)
    stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))  # contiguous, as the global tensor
    return DTensor.from_local(t, p.device_mesh, state_placements(p, kind, name), run_check=False, shape=shape,
                              stride=stride)  # fmt: skip


def _local(t, name: str, key: str) -> torch.Tensor:
    if not is_dtensor(t):
        raise _unsupported(name, f"state {key!r} is a plain tensor for a DTensor parameter; load sharded state with "
                                 "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict")  # fmt: skip
    return t.to_local()


def _reduce(items: list) -> None:
    """Sum each tensor of ``items`` ((tensor, process groups)) over its groups, in place: one all_reduce per
    distinct group, over a flat fp32 buffer of every tensor that group reduces. A tensor reduced over several
    groups (several sharded mesh dims) goes through them in turn, which composes to the sum over all."""
    by_group: dict = {}
    for t, groups in items:
        for g in groups:
            by_group.setdefault(g, []).append(t)
    for g, ts in by_group.items():  # insertion order: the same on every rank (same parameters, same order)
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=g)
        for t, part in zip(ts, flat.split([t.numel() for t in ts])):
            t.copy_(part.view_as(t))


def _sum_g2_over_rc(g2, r, c):
    """Per matrix: sum_ij G_ij^2 / (R_i C_j) (a missing factor is 1), and sum_i R_i when both are kept; then
    sum U^2 = mean(R) * the first (Algorithm 4, line 8: U^2 = G^2 mean(R) / (R_i C_j))."""
    s = g2
    if r is not None:
        s = s / r.unsqueeze(-1)
    if c is not None:
        s = s / c.unsqueeze(-2)
    return s.sum((-2, -1)), (r.sum(-1) if r is not None and c is not None else None)


def _update(p, state: dict, group: dict, name: str, beta2t_fn, round_bf16):
    """Generator: the update of DTensor ``p`` on its local shard; yields the partial sums to all-reduce at each
    phase, returns (RMS(U) before clipping, alpha, beta2t) as 0-d tensors."""
    mesh, nd = p.device_mesh, p.ndim
    shard = _shard_dims(p, name)
    groups = lambda dims: tuple(dict.fromkeys(mesh.get_group(md) for d in dims for md in shard.get(d % nd, ())))  # noqa: E731
    every = groups(range(nd))
    batch = groups(range(nd - 2))
    xl, gl = p.to_local(), p.grad.to_local()
    step = state["step"].add_(1.0)
    beta2t = beta2t_fn(group, step.to(torch.float64))
    b2, omb2 = beta2t.float(), (1.0 - beta2t).float()
    g = gl.float()
    x = xl if xl.dtype == torch.float32 else xl.float()
    numel, eps1 = p.numel(), group["eps1"]
    r = _local(state["exp_avg_sq_row"], name, "exp_avg_sq_row") if "exp_avg_sq_row" in state else None
    c = _local(state["exp_avg_sq_col"], name, "exp_avg_sq_col") if "exp_avg_sq_col" in state else None
    phase = []  # (tensor, groups) to all-reduce at the next yield
    sx = x.square().sum() if group["scale_parameter"] else None
    if sx is not None:
        phase.append((sx, every))
    if r is None and c is None:  # Algorithm 5: V is elementwise, so local; only the sums cross shards
        v = _local(state["exp_avg_sq"], name, "exp_avg_sq")
        v.mul_(b2).add_(torch.mul(g, g).add_(eps1).mul_(omb2))
        u = g / v.sqrt()
        su = u.square().sum()
        phase.append((su, every))
        yield phase
    else:
        n, m = p.shape[-2], p.shape[-1]
        g2 = torch.mul(g, g)
        q = g2 + eps1
        rows_local, cols_local = not shard.get(nd - 1), not shard.get(nd - 2)
        if r is not None:
            rs = q.sum(-1)
            if rows_local:  # complete rows: R is final before any communication (see the module docstring)
                r.mul_(b2).add_(rs.mul_(omb2 / m))
            else:
                phase.append((rs, groups([-1])))
        if c is not None:
            cs = q.sum(-2)
            if cols_local:
                c.mul_(b2).add_(cs.mul_(omb2 / n))
            else:
                phase.append((cs, groups([-2])))
        su = sr = dsum = None
        if rows_local and cols_local:  # whole matrices here (a batch dim sharded, or a 1-rank mesh)
            s, sr = _sum_g2_over_rc(g2, r, c)
            su = (s * (sr / n)).sum() if sr is not None else s.sum()
            phase.append((su, every))
        elif rows_local and r is not None and c is not None:
            dsum = (g2 / r.unsqueeze(-1)).sum(-2)  # D_j = sum_i G_ij^2 / R_i, a column sum like C's
            sr = r.sum(-1)
            phase += [(dsum, groups([-2])), (sr, groups([-2]))]
        elif rows_local and r is not None:  # row-only: sum U^2 = sum_i (sum_j G_ij^2) / R_i
            su = (g2.sum(-1) / r).sum()
            phase.append((su, every))
        elif rows_local:  # column-only: D_j = sum_i G_ij^2, as a column sum
            dsum = g2.sum(-2)
            phase.append((dsum, groups([-2])))
        yield phase
        if r is not None and not rows_local:
            r.mul_(b2).add_(rs.mul_(omb2 / m))
        if c is not None and not cols_local:
            c.mul_(b2).add_(cs.mul_(omb2 / n))
        if dsum is not None:  # sum U^2 from the reduced column sums; local but for batch shards
            su = ((dsum / c).sum(-1) * (sr / n if sr is not None else 1.0)).sum()
            if batch:
                yield [(su, batch)]
        elif su is None:  # dim -1 sharded: R is final only now; sum G^2/(R C) crosses every shard
            s, sr = _sum_g2_over_rc(g2, r, c)
            late = [(s, groups([-2, -1]))]
            if sr is not None:
                late.append((sr, groups([-2])))
            yield late
            su = (s * (sr / n)).sum() if sr is not None else s.sum()
            if batch:
                yield [(su, batch)]
        # U = G * rsqrt(R / mean(R)) * rsqrt(C) (row-only: rsqrt(R); column-only: rsqrt(C)); V-hat never formed.
        u = g.clone()
        if r is not None:
            u.mul_((r / (sr / n).unsqueeze(-1) if c is not None else r).rsqrt().unsqueeze(-1))
        if c is not None:
            u.mul_(c.rsqrt().unsqueeze(-2))
    inv_sqrt_n = 1.0 / math.sqrt(numel)
    rms_u = su.sqrt() * inv_sqrt_n
    lr = group["lr"]
    if group["scale_parameter"]:
        alpha = (sx.sqrt() * inv_sqrt_n).clamp_(min=group["eps2"]).mul_(lr)  # Section 8
    elif torch.is_tensor(lr):
        alpha = lr.to(dtype=torch.float32, device=x.device)
    else:
        alpha = torch.full((), lr, dtype=torch.float32, device=x.device)
    d = group["clip_threshold"]
    u.mul_(alpha / (rms_u / d).clamp(min=1.0) if d is not None else alpha)  # Section 6
    if group["beta1"] > 0:
        mom = _local(state["exp_avg"], name, "exp_avg")
        mom.mul_(group["beta1"]).add_(u, alpha=1.0 - group["beta1"])
        u = mom
    if group["weight_decay"] > 0:
        x.mul_(1.0 - lr * group["weight_decay"])
    x.sub_(u)
    if x is not xl:
        xl.copy_(x if not (xl.dtype == torch.bfloat16 and group["stochastic_rounding"]) else round_bf16(x))
    return rms_u, alpha, beta2t


def step(work: list, beta2t_fn, round_bf16) -> list:
    """Update every (parameter, state, group, name) of ``work``; returns (RMS(U), alpha, beta2t) per entry.
    The parameters advance together, phase by phase, so each phase is one batched reduction. ``beta2t_fn``
    and ``round_bf16`` (stochastic rounding) are Adafactor's, passed in so this module needs nothing of it."""
    gens = [_update(p, st, gr, name, beta2t_fn, round_bf16) for p, st, gr, name in work]
    results: list = [None] * len(gens)
    live = list(range(len(gens)))
    while live:
        items, still = [], []
        for i in live:
            try:
                items += [(t, grp) for t, grp in next(gens[i]) if grp]
                still.append(i)
            except StopIteration as done:
                results[i] = done.value
        if items:
            _reduce(items)
        live = still
    return results
