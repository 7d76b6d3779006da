"""The three Triton kernels of one Adafactor step (see _triton.py for the design and the tables they read).

Kept apart from _triton.py so that triton is imported only when a Triton step runs: ``triton.jit`` and
triton's own library functions fix the mode (compiled, or interpreted under TRITON_INTERPRET=1) when they are
imported. Tensor-table columns: x, g, R|V, C, momentum, kind (0 full, 1 factored, 2 row-only, 3 column-only),
B, n, m, group, first tile, tiles (per matrix when factored), column-partials base, mean(R) base, first column
chunk, column chunks per matrix. Chunk-table columns: tensor, matrix, first column. Hyper-table
columns (per group): eps1, eps2, clip (<= 0: off), scale_parameter, beta1, weight_decay, rounding seed (< 0:
round to nearest).
"""

import triton
import triton.language as tl

NT: tl.constexpr = tl.constexpr(16)  # tensor-table columns (_triton.NT)


@triton.jit
def _store_param(xp, idx, x, mask, seed, sr_seed, X_BF16: tl.constexpr):
    """Write the fp32 result x back. bf16 is the upper half of fp32: add the rounding increment to the lower
    half and truncate, to nearest even (0x7FFF plus the kept lowest bit) or stochastically (uniform 16-bit
    noise, when seed >= 0). Done on the bits so that the interpreter, whose .to(bfloat16) truncates, rounds as
    the GPU does."""
    if X_BF16:
        bits = x.to(tl.int32, bitcast=True)
        if seed >= 0:
            inc = tl.randint(sr_seed, idx.to(tl.int32)).to(tl.int32, bitcast=True) & 0xFFFF
        else:
            inc = 0x7FFF + ((bits >> 16) & 1)
        xr = (((bits + inc) >> 16) << 16).to(tl.float32, bitcast=True)
        x = tl.where(tl.abs(x) < float("inf"), xr, x)  # Inf and NaN keep their class
        tl.store(xp + idx, x.to(tl.bfloat16), mask=mask)
    else:
        tl.store(xp + idx, x, mask=mask)


@triton.jit
def phase1(T, TILES, B2, HYP, PART, COLP, X_BF16: tl.constexpr, G_BF16: tl.constexpr, ROWS: tl.constexpr,
            COLS: tl.constexpr, BLOCK: tl.constexpr, ALIGN: tl.constexpr):  # fmt: skip
    tile = tl.program_id(0)
    ti = tl.load(TILES + tile * 4)
    r0 = tl.load(TILES + tile * 4 + 1)
    nr = tl.load(TILES + tile * 4 + 2)
    coff = tl.load(TILES + tile * 4 + 3)
    row = T + ti * NT
    # The pointers are typed by the plan's dtypes. Loaded from an int64 table they carry no alignment, so every
    # load would stay scalar; with ALIGN (Plan.aligned checked every pointer on the host) the compiler is told
    # they are 16-byte aligned. The hints sit in the kernel body: on a helper's result they are lost on inlining.
    xp = tl.load(row + 0).to(tl.pointer_type(tl.bfloat16 if X_BF16 else tl.float32))
    gp = tl.load(row + 1).to(tl.pointer_type(tl.bfloat16 if G_BF16 else tl.float32))
    s1 = tl.load(row + 2).to(tl.pointer_type(tl.float32))
    kind = tl.load(row + 5)
    m = tl.load(row + 8)
    if ALIGN:
        xp = tl.multiple_of(xp, 16)
        gp = tl.multiple_of(gp, 16)
        s1 = tl.multiple_of(s1, 16)
        # Row lengths (numel when unfactored) are multiples of 16 elements: every 4 (fp32) or 8 (bf16) lanes
        # share one mask bit and one 16-byte line -> v4 loads.
        m = tl.multiple_of(m, 16)
    grp = tl.load(row + 9)
    b2 = tl.load(B2 + ti * 2)
    omb2 = tl.load(B2 + ti * 2 + 1)
    eps1 = tl.load(HYP + grp * 7)
    if kind == 0:
        # Algorithm 5 on elements [r0, r0 + nr): V, sum U^2 = sum G^2 / V, sum X^2.
        # Names apart from the other branch's: `kind` is a runtime value, so the compiler types both branches
        # and rejects a variable that is [BLOCK] in one and [ROWS, COLS] in the other (the interpreter never
        # checks this; tests/test_kernels_compile.py does).
        su = tl.zeros([BLOCK], dtype=tl.float32)
        xs1 = tl.zeros([BLOCK], dtype=tl.float32)
        if ALIGN:
            # An unfactored tile starts at a multiple of BLOCK and holds a multiple of 16 elements, so these
            # are the same values, in a form the compiler can see is divisible by 16. (tl.multiple_of would
            # mark the load of r0 / nr itself, so the factored branch, where they count rows, too.)
            r0 = r0 // 16 * 16
            nr = nr // 16 * 16
        for off in range(0, nr, BLOCK):
            lane = off + tl.arange(0, BLOCK)
            mask = lane < nr
            idx = r0 + lane
            g = tl.load(gp + idx, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(xp + idx, mask=mask, other=0.0).to(tl.float32)
            v = b2 * tl.load(s1 + idx, mask=mask, other=1.0) + omb2 * (g * g + eps1)
            tl.store(s1 + idx, v, mask=mask)
            u = g / tl.sqrt(v)
            su += tl.where(mask, u * u, 0.0)
            xs1 += x * x
        tl.store(PART + tile * 2, tl.sum(su, axis=0))
        tl.store(PART + tile * 2 + 1, tl.sum(xs1, axis=0))
    else:
        # Rows [r0, r0 + nr) of the flattened B*n rows (a tile never straddles two matrices), ROWS at a time.
        # Column partials live in this tile's own slice of COLP: sum_i (G^2 + eps1) at [coff, coff + m),
        # D_j at [coff + m, coff + 2m) (factored: sum_i G^2 / R_i; column-only: sum_i G^2).
        # Row sums are accumulated elementwise in ROWS x COLS blocks and reduced once per row block.
        agg = tl.zeros([ROWS], dtype=tl.float32)  # sum R_i (factored) or sum U^2 (row-only)
        xs = tl.zeros([ROWS, COLS], dtype=tl.float32)
        for rb in range(0, nr, ROWS):
            rl = rb + tl.arange(0, ROWS)
            rmask = rl < nr
            rows = r0 + rl
            rowq2 = tl.zeros([ROWS, COLS], dtype=tl.float32)
            rowg2 = tl.zeros([ROWS, COLS], dtype=tl.float32)
            for cb in range(0, m, COLS):
                cols = cb + tl.arange(0, COLS)
                cmask = cols < m
                mask = rmask[:, None] & cmask[None, :]
                idx = rows[:, None] * m + cols[None, :]
                g = tl.load(gp + idx, mask=mask, other=0.0).to(tl.float32)
                x = tl.load(xp + idx, mask=mask, other=0.0).to(tl.float32)
                g2 = g * g
                q = tl.where(mask, g2 + eps1, 0.0)
                rowq2 += q
                rowg2 += g2
                xs += x * x
                if kind != 2:
                    cq = tl.sum(q, axis=0)
                    if rb > 0:
                        cq += tl.load(COLP + coff + cols, mask=cmask, other=0.0)
                    tl.store(COLP + coff + cols, cq, mask=cmask)
                if kind == 3:
                    cg = tl.sum(g2, axis=0)
                    if rb > 0:
                        cg += tl.load(COLP + coff + m + cols, mask=cmask, other=0.0)
                    tl.store(COLP + coff + m + cols, cg, mask=cmask)
            if kind != 3:
                rowq = tl.sum(rowq2, axis=1)
                r = b2 * tl.load(s1 + rows, mask=rmask, other=1.0) + omb2 * (rowq / m)
                tl.store(s1 + rows, r, mask=rmask)
                r = tl.where(rmask, r, 1.0)  # rows past the tile's end: keep 1 / r finite
                if kind == 2:
                    agg += tl.where(rmask, tl.sum(rowg2, axis=1) / r, 0.0)
                else:
                    agg += tl.where(rmask, r, 0.0)
                    # R_i is final: a second sweep over the rows (from cache) adds G^2 / R_i into D_j.
                    inv = tl.where(rmask, 1.0 / r, 0.0)  # zero for rows past the end
                    for cb in range(0, m, COLS):
                        cols = cb + tl.arange(0, COLS)
                        cmask = cols < m
                        mask = rmask[:, None] & cmask[None, :]
                        idx = rows[:, None] * m + cols[None, :]
                        g = tl.load(gp + idx, mask=mask, other=0.0).to(tl.float32)
                        d = tl.sum(g * g * inv[:, None], axis=0)
                        if rb > 0:
                            d += tl.load(COLP + coff + m + cols, mask=cmask, other=0.0)
                        tl.store(COLP + coff + m + cols, d, mask=cmask)
        tl.store(PART + tile * 2, tl.sum(agg, axis=0))
        tl.store(PART + tile * 2 + 1, tl.sum(tl.sum(xs, axis=1), axis=0))


@triton.jit
def _sum_partials(PART, t0, k, BLOCK: tl.constexpr):
    """The two partial sums of tiles t0 .. t0 + k - 1, added in a fixed order (deterministic)."""
    acc_a = tl.zeros([BLOCK], dtype=tl.float32)
    acc_x = tl.zeros([BLOCK], dtype=tl.float32)
    for kb in range(0, k, BLOCK):
        lane = kb + tl.arange(0, BLOCK)
        mask = lane < k
        acc_a += tl.load(PART + (t0 + lane) * 2, mask=mask, other=0.0)
        acc_x += tl.load(PART + (t0 + lane) * 2 + 1, mask=mask, other=0.0)
    return tl.sum(acc_a, axis=0), tl.sum(acc_x, axis=0)


@triton.jit
def _sum_vec(P, c0, k, BLOCK: tl.constexpr):
    """P[c0] + ... + P[c0 + k - 1], in a fixed order (deterministic)."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kb in range(0, k, BLOCK):
        lane = kb + tl.arange(0, BLOCK)
        acc += tl.load(P + c0 + lane, mask=lane < k, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def phase2_cols(T, CHUNKS, B2, COLP, DPART, COLS: tl.constexpr, KB: tl.constexpr, ALIGN: tl.constexpr):
    """One program per COLS columns of one matrix (factored and column-only tensors): the column statistic
    C_j <- b2 C_j + (1 - b2) colmean(G^2 + eps1) (Alg. 4), from the column partials of the matrix's k tiles, and
    this chunk's share of sum_j D_j / C_j. Spread over chunks, not one program per tensor: a 32000x512
    embedding has 250 tiles x 512 columns of partials, which one program would read serially."""
    ci = tl.program_id(0)
    ti = tl.load(CHUNKS + ci * 3)
    b = tl.load(CHUNKS + ci * 3 + 1)
    c0 = tl.load(CHUNKS + ci * 3 + 2)
    row = T + ti * NT
    s2 = tl.load(row + 3).to(tl.pointer_type(tl.float32))
    n = tl.load(row + 7)
    m = tl.load(row + 8)
    k = tl.load(row + 11)
    cbase = tl.load(row + 12)
    b2 = tl.load(B2 + ti * 2)
    omb2 = tl.load(B2 + ti * 2 + 1)
    if ALIGN:  # row lengths are multiples of 16, so are the partials' offsets (sums of 2 m k terms)
        s2 = tl.multiple_of(s2, 16)
        m = tl.multiple_of(m, 16)
        cbase = tl.multiple_of(cbase, 16)
        c0 = tl.multiple_of(c0, 16)  # a multiple of COLS (Plan: ALIGN only when COLS % 16 == 0)
    cols = c0 + tl.arange(0, COLS)
    cmask = cols < m
    cq = tl.zeros([COLS], dtype=tl.float32)
    dq = tl.zeros([COLS], dtype=tl.float32)
    # KB tiles' partials at a time, [KB, COLS] blocks: the tile sums add in a fixed order (no atomics).
    for j0 in range(0, k, KB):
        js = j0 + tl.arange(0, KB)
        off = cbase + (b * k + js) * 2 * m
        mask = (js < k)[:, None] & cmask[None, :]
        cq += tl.sum(tl.load(COLP + off[:, None] + cols[None, :], mask=mask, other=0.0), axis=0)
        dq += tl.sum(tl.load(COLP + off[:, None] + m + cols[None, :], mask=mask, other=0.0), axis=0)
    c = b2 * tl.load(s2 + b * m + cols, mask=cmask, other=1.0) + omb2 * (cq / n)
    tl.store(s2 + b * m + cols, c, mask=cmask)
    tl.store(DPART + ci, tl.sum(dq / tl.where(cmask, c, 1.0), axis=0))  # dq is 0 past the last column


@triton.jit
def phase2(T, HYP, LR, PART, DPART, RMEAN, SCALE, OUT, n_tensors, BLOCK: tl.constexpr):
    """One program per tensor: adds its tiles' and column chunks' partials (short vectors), then mean(R),
    RMS(U), alpha and the clipping denominator."""
    ti = tl.program_id(0)
    row = T + ti * NT
    kind = tl.load(row + 5)
    nb = tl.load(row + 6)
    n = tl.load(row + 7)
    m = tl.load(row + 8)
    grp = tl.load(row + 9)
    t0 = tl.load(row + 10)
    k = tl.load(row + 11)
    rbase = tl.load(row + 13)
    c0 = tl.load(row + 14)
    kc = tl.load(row + 15)
    su = 0.0
    xs = 0.0
    if kind == 0:
        su, xs = _sum_partials(PART, t0, k, BLOCK)
    else:
        for b in range(0, nb):
            agg, xb = _sum_partials(PART, t0 + b * k, k, BLOCK)
            xs += xb
            rmean = agg / n
            if kind == 1:
                tl.store(RMEAN + rbase + b, rmean)
            if kind == 2:
                su += agg
            else:
                dsum = _sum_vec(DPART, c0 + b * kc, kc, BLOCK)
                if kind == 1:
                    su += rmean * dsum  # sum U^2 = mean(R) sum_j D_j / C_j
                else:
                    su += dsum
    numel = (nb * n * m).to(tl.float32)
    rms_u = tl.sqrt(su / numel)
    rms_x = tl.sqrt(xs / numel)
    lr = tl.load(LR + grp)
    eps2 = tl.load(HYP + grp * 7 + 1)
    clip = tl.load(HYP + grp * 7 + 2)
    scale_parameter = tl.load(HYP + grp * 7 + 3)
    alpha = tl.where(scale_parameter > 0, lr * tl.maximum(rms_x, eps2), lr)  # Section 8
    clipped = (clip > 0) & (rms_u / clip > 1.0)  # Section 6: Û = U / max(1, RMS(U) / d)
    s = tl.where(clip > 0, alpha / tl.maximum(rms_u / clip, 1.0), alpha)  # no 0-division at RMS(U) = 0
    tl.store(SCALE + ti, s)
    tl.store(OUT + ti, rms_u)
    tl.store(OUT + n_tensors + ti, alpha)
    tl.store(OUT + 2 * n_tensors + ti, clipped.to(tl.float32))


@triton.jit
def phase3(T, TILES, HYP, LR, SCALE, RMEAN, STEPS, X_BF16: tl.constexpr, G_BF16: tl.constexpr,
            ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK: tl.constexpr, ALIGN: tl.constexpr):  # fmt: skip
    tile = tl.program_id(0)
    ti = tl.load(TILES + tile * 4)
    r0 = tl.load(TILES + tile * 4 + 1)
    nr = tl.load(TILES + tile * 4 + 2)
    row = T + ti * NT
    xp = tl.load(row + 0).to(tl.pointer_type(tl.bfloat16 if X_BF16 else tl.float32))
    gp = tl.load(row + 1).to(tl.pointer_type(tl.bfloat16 if G_BF16 else tl.float32))
    s1 = tl.load(row + 2).to(tl.pointer_type(tl.float32))
    s2 = tl.load(row + 3).to(tl.pointer_type(tl.float32))
    mp = tl.load(row + 4).to(tl.pointer_type(tl.float32))
    kind = tl.load(row + 5)
    n = tl.load(row + 7)
    m = tl.load(row + 8)
    if ALIGN:  # as in phase1
        xp = tl.multiple_of(xp, 16)
        gp = tl.multiple_of(gp, 16)
        s1 = tl.multiple_of(s1, 16)
        s2 = tl.multiple_of(s2, 16)
        mp = tl.multiple_of(mp, 16)
        m = tl.multiple_of(m, 16)
    grp = tl.load(row + 9)
    rbase = tl.load(row + 13)
    s = tl.load(SCALE + ti)
    lr = tl.load(LR + grp)
    beta1 = tl.load(HYP + grp * 7 + 4)
    wdf = 1.0 - lr * tl.load(HYP + grp * 7 + 5)
    seed = tl.load(HYP + grp * 7 + 6)
    # Stochastic rounding of bf16 parameters: one Philox stream per (seed, tensor, step), indexed by element.
    sr_seed = (seed.to(tl.int64) * 1000003 + ti * 7919 + tl.load(STEPS + ti).to(tl.int64)) & 0x7FFFFFFF
    if kind == 0:
        if ALIGN:  # as in phase1: the same values, visibly multiples of 16
            r0 = r0 // 16 * 16
            nr = nr // 16 * 16
        for off in range(0, nr, BLOCK):
            lane = off + tl.arange(0, BLOCK)
            mask = lane < nr
            idx = r0 + lane
            g = tl.load(gp + idx, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(xp + idx, mask=mask, other=0.0).to(tl.float32)
            u = s * (g / tl.sqrt(tl.load(s1 + idx, mask=mask, other=1.0)))
            if beta1 > 0:
                u = beta1 * tl.load(mp + idx, mask=mask, other=0.0) + (1.0 - beta1) * u
                tl.store(mp + idx, u, mask=mask)
            x = x * wdf - u
            _store_param(xp, idx, x, mask, seed, sr_seed, X_BF16)
    else:
        rb0 = r0 // n  # the matrix of this tile
        rmean = tl.load(RMEAN + rbase + rb0)
        for rb in range(0, nr, ROWS):
            rl = rb + tl.arange(0, ROWS)
            rmask = rl < nr
            rows = r0 + rl
            if kind == 3:
                a = tl.full([ROWS], 1.0, dtype=tl.float32)
            else:
                r = tl.load(s1 + rows, mask=rmask, other=1.0)
                if kind == 1:
                    r = r / rmean
                a = 1.0 / tl.sqrt(r)
            sa = s * a
            for cb in range(0, m, COLS):
                cols = cb + tl.arange(0, COLS)
                cmask = cols < m
                mask = rmask[:, None] & cmask[None, :]
                idx = rows[:, None] * m + cols[None, :]
                if kind == 2:
                    bc = tl.full([COLS], 1.0, dtype=tl.float32)
                else:
                    bc = 1.0 / tl.sqrt(tl.load(s2 + rb0 * m + cols, mask=cmask, other=1.0))
                g = tl.load(gp + idx, mask=mask, other=0.0).to(tl.float32)
                x = tl.load(xp + idx, mask=mask, other=0.0).to(tl.float32)
                u = sa[:, None] * bc[None, :] * g
                if beta1 > 0:
                    u = beta1 * tl.load(mp + idx, mask=mask, other=0.0) + (1.0 - beta1) * u
                    tl.store(mp + idx, u, mask=mask)
                x = x * wdf - u
                _store_param(xp, idx, x, mask, seed, sr_seed, X_BF16)
