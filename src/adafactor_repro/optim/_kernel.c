/* Fused CPU kernel of one Adafactor step (Shazeer & Stern 2018, Algorithms 4 and 5, and the row-only and
 * column-only estimators of the end of Section 3) for fp32 contiguous tensors. Loaded with ctypes by
 * _kernel.py; the math is the same as the eager torch path in adafactor.py.
 *
 * Why a kernel: a factored step needs only two passes over memory, 5 words per element against fused
 * Adam's 7 (the statistics, the per-tensor scalars and the update would be three; the middle one is folded
 * into the first here):
 *   pass 1 reads G and X: row/column sums of G^2 + eps1 (Alg. 4 lines 6-7), sum X^2 for RMS(X_{t-1}) and
 *          sum U^2 (see factored()); U_ij = G_ij a_i b_j, a_i = rsqrt(R_i / mean(R)), b_j = rsqrt(C_j),
 *          so V-hat = R C / mean(R) (Alg. 4 line 8) is never materialised;
 *   pass 2 reads G and X (and the momentum) and writes X.
 * Eager torch needs ~11 passes and a matrix-sized temporary for the same work.
 *
 * Row-only (V-hat_ij = R_i) and column-only (V-hat_ij = C_j) tensors take the same two passes with the other
 * factor set to 1 (an exact multiplication), so pass 2 is shared.
 *
 * meta rows (int64, 10 per tensor): kind (1 factored, 2 row-only, 3 column-only, 0 full), B, n, m, x, g,
 * r_or_v, c, mom, step (a float32 count). A factored tensor is B matrices of n x m (its leading dims
 * flattened); a full one has n*m elements. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define CHUNK 4096

typedef struct {
    double eps1, lr, eps2, clip, beta1, wdf;
    int scale_parameter;
} hyper;

/* alpha / max(1, RMS(U)/d): the step size (Section 8 "relative step size" when scale_parameter) divided by
 * the update-clipping denominator (Section 6). */
static double step_scale(const hyper *h, double rms_u, double rms_x, float *alpha_out) {
    double alpha = h->scale_parameter ? h->lr * (rms_x > h->eps2 ? rms_x : h->eps2) : h->lr;
    *alpha_out = (float)alpha;
    if (h->clip > 0.0 && rms_u / h->clip > 1.0) return alpha / (rms_u / h->clip);
    return alpha;
}

/* Sums are formed over fixed blocks (row groups, element chunks) and then added in block order, never in
 * thread order: the result does not depend on the thread count or timing, so a resumed run continues bit for
 * bit (an OpenMP reduction clause combines partials in an unspecified order). */
#define ROW_GROUPS 16

enum { KIND_FULL = 0, KIND_FACTORED = 1, KIND_ROW = 2, KIND_COL = 3 };

/* One tensor of the step: its pointers, its per-block partial sums and its outputs. */
typedef struct {
    int kind;
    int factored; /* any kind but KIND_FULL: rows of B matrices n x m */
    int64_t B, n, m, K, nblocks; /* factored: B matrices n x m, K row groups each; full: n*m elements */
    float *x, *mom, *R, *C, *v;
    const float *g;
    float b2, omb2;
    float *colacc; /* factored: per (matrix, row group) column sums of G^2+eps1 and D_j = sum_i G_ij^2/R_i
                    * (column-only: D_j = sum_i G_ij^2) */
    float *a, *bc; /* factored: a_i = rsqrt(R_i / mean R), b_j = rsqrt(C_j); row-only: a_i = rsqrt(R_i),
                    * b_j = 1; column-only: a_i = 1, b_j = rsqrt(C_j) */
    double *part;  /* per block: (sum R_i or sum U^2, sum X^2) */
    float s;       /* alpha / clipping denominator */
} tensor;

static int setup(tensor *t, const int64_t *md) {
    memset(t, 0, sizeof *t);
    t->kind = (int)md[0];
    t->factored = t->kind != KIND_FULL;
    t->B = md[1], t->n = md[2], t->m = md[3];
    t->x = (float *)(intptr_t)md[4];
    t->g = (const float *)(intptr_t)md[5];
    t->mom = (float *)(intptr_t)md[8];
    if (t->factored) {
        t->R = (float *)(intptr_t)md[6], t->C = (float *)(intptr_t)md[7];
        t->K = t->n < ROW_GROUPS ? t->n : ROW_GROUPS;
        t->nblocks = t->B * t->K;
        if (t->kind != KIND_ROW) t->colacc = (float *)malloc(sizeof(float) * 2 * (size_t)(t->nblocks * t->m));
        t->a = (float *)malloc(sizeof(float) * (size_t)(t->B * t->n));
        t->bc = (float *)malloc(sizeof(float) * (size_t)(t->B * t->m));
        if (t->kind == KIND_ROW && t->bc)
            for (int64_t j = 0; j < t->B * t->m; j++) t->bc[j] = 1.0f;
        if (t->kind == KIND_COL && t->a)
            for (int64_t i = 0; i < t->B * t->n; i++) t->a[i] = 1.0f;
    } else {
        t->v = (float *)(intptr_t)md[6];
        t->nblocks = (t->n * t->m + CHUNK - 1) / CHUNK;
    }
    t->part = (double *)malloc(sizeof(double) * 2 * (size_t)t->nblocks);
    return t->part != NULL && (!t->factored || ((t->colacc || t->kind == KIND_ROW) && t->a && t->bc));
}

static void release(tensor *t) {
    free(t->colacc);
    free(t->a);
    free(t->bc);
    free(t->part);
}

/* Pass 1 over block `blk` (reads G and X).
 * factored: rows of one row group. R_i <- b2 R_i + (1-b2) rowmean(G^2 + eps1) (Alg. 4), column sums for C,
 *   sum X^2, and D_j = sum_i G_ij^2 / R_i: as U_ij^2 = G_ij^2 mean(R) / (R_i C_j), sum U^2 = mean(R) sum_j D_j/C_j,
 *   and R_i is final once row i is summed (the second sweep over the row hits L1), so RMS(U) needs no pass
 *   of its own.
 * full: V <- b2 V + (1-b2)(G^2 + eps1) (Alg. 5), sum G^2/V and sum X^2 over one chunk. */
static void pass1_row(tensor *t, int64_t blk, float eps1);
static void pass1_col(tensor *t, int64_t blk, float eps1);

static void pass1(tensor *t, int64_t blk, float eps1) {
    const float b2 = t->b2, omb2 = t->omb2;
    if (t->kind == KIND_ROW) {
        pass1_row(t, blk, eps1);
    } else if (t->kind == KIND_COL) {
        pass1_col(t, blk, eps1);
    } else if (t->factored) {
        const int64_t b = blk / t->K, k = blk % t->K, n = t->n, m = t->m;
        const float *gb = t->g + b * n * m, *xb = t->x + b * n * m;
        float *Rb = t->R + b * n, *ca = t->colacc + (size_t)blk * 2 * (size_t)m, *da = ca + m;
        memset(ca, 0, sizeof(float) * 2 * (size_t)m);
        double rsum = 0.0, xsum = 0.0;
        for (int64_t i = n * k / t->K; i < n * (k + 1) / t->K; i++) {
            const float *gr = gb + i * m, *xr = xb + i * m;
            float rs = 0.f, xr2 = 0.f;
#pragma omp simd reduction(+ : rs, xr2)
            for (int64_t j = 0; j < m; j++) {
                const float q = gr[j] * gr[j] + eps1;
                rs += q;
                ca[j] += q;
                xr2 += xr[j] * xr[j];
            }
            const float ri = b2 * Rb[i] + omb2 * (rs / (float)m);
            Rb[i] = ri;
            rsum += ri;
            xsum += xr2;
            const float inv = 1.0f / ri;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) da[j] += gr[j] * gr[j] * inv;
        }
        t->part[2 * blk] = rsum;
        t->part[2 * blk + 1] = xsum;
    } else {
        const int64_t N = t->n * t->m, lo = blk * CHUNK, hi = lo + CHUNK < N ? lo + CHUNK : N;
        const float *g = t->g, *x = t->x;
        float *v = t->v;
        float su = 0.f, x2 = 0.f;
#pragma omp simd reduction(+ : su, x2)
        for (int64_t k = lo; k < hi; k++) {
            const float vv = b2 * v[k] + omb2 * (g[k] * g[k] + eps1);
            v[k] = vv;
            const float u = g[k] / sqrtf(vv);
            su += u * u;
            x2 += x[k] * x[k];
        }
        t->part[2 * blk] = su;
        t->part[2 * blk + 1] = x2;
    }
}

/* Pass 1 of a row-only tensor: R_i as for a factored one; sum U^2 = sum_i (sum_j G_ij^2) / R_i. */
static void pass1_row(tensor *t, int64_t blk, float eps1) {
    const float b2 = t->b2, omb2 = t->omb2;
    const int64_t b = blk / t->K, k = blk % t->K, n = t->n, m = t->m;
    const float *gb = t->g + b * n * m, *xb = t->x + b * n * m;
    float *Rb = t->R + b * n;
    double usum = 0.0, xsum = 0.0;
    for (int64_t i = n * k / t->K; i < n * (k + 1) / t->K; i++) {
        const float *gr = gb + i * m, *xr = xb + i * m;
        float rs = 0.f, gs = 0.f, xr2 = 0.f;
#pragma omp simd reduction(+ : rs, gs, xr2)
        for (int64_t j = 0; j < m; j++) {
            const float g2 = gr[j] * gr[j];
            rs += g2 + eps1;
            gs += g2;
            xr2 += xr[j] * xr[j];
        }
        const float ri = b2 * Rb[i] + omb2 * (rs / (float)m);
        Rb[i] = ri;
        usum += (double)gs / (double)ri;
        xsum += xr2;
    }
    t->part[2 * blk] = usum;
    t->part[2 * blk + 1] = xsum;
}

/* Pass 1 of a column-only tensor: column sums of G^2 + eps1 (for C) and of G^2 (sum U^2 = sum_j D_j / C_j
 * once C is known, in finish()), and sum X^2. */
static void pass1_col(tensor *t, int64_t blk, float eps1) {
    const int64_t b = blk / t->K, k = blk % t->K, n = t->n, m = t->m;
    const float *gb = t->g + b * n * m, *xb = t->x + b * n * m;
    float *ca = t->colacc + (size_t)blk * 2 * (size_t)m, *da = ca + m;
    memset(ca, 0, sizeof(float) * 2 * (size_t)m);
    double xsum = 0.0;
    for (int64_t i = n * k / t->K; i < n * (k + 1) / t->K; i++) {
        const float *gr = gb + i * m, *xr = xb + i * m;
        float xr2 = 0.f;
#pragma omp simd reduction(+ : xr2)
        for (int64_t j = 0; j < m; j++) {
            const float g2 = gr[j] * gr[j];
            ca[j] += g2 + eps1;
            da[j] += g2;
            xr2 += xr[j] * xr[j];
        }
        xsum += xr2;
    }
    t->part[2 * blk] = 0.0;
    t->part[2 * blk + 1] = xsum;
}

/* C_j <- b2 C_j + (1 - b2) colmean(G^2 + eps1) for matrix b (Alg. 4), with the row groups' column partials
 * added into the first group's in group order (vectorised over j); returns sum_j D_j / C_j. */
static double update_columns(tensor *t, int64_t b) {
    const int64_t n = t->n, m = t->m, K = t->K;
    float *Cb = t->C + b * m;
    float *acc = t->colacc + (size_t)(b * K) * 2 * (size_t)m;
    for (int64_t k = 1; k < K; k++) {
        const float *src = acc + (size_t)k * 2 * (size_t)m;
#pragma omp simd
        for (int64_t j = 0; j < 2 * m; j++) acc[j] += src[j];
    }
    double dsum = 0.0;
    for (int64_t j = 0; j < m; j++) {
        const float cj = t->b2 * Cb[j] + t->omb2 * (acc[j] / (float)n);
        Cb[j] = cj;
        dsum += (double)acc[m + j] / (double)cj;
    }
    return dsum;
}

/* finish() of a row-only or column-only tensor: C (column-only), the factors a and b, and sum U^2. */
static double finish_one_factor(tensor *t, double *xs) {
    const int64_t n = t->n, m = t->m, K = t->K;
    double su = 0.0;
    for (int64_t b = 0; b < t->B; b++) {
        for (int64_t k = 0; k < K; k++) {
            su += t->part[2 * (b * K + k)];
            *xs += t->part[2 * (b * K + k) + 1];
        }
        if (t->kind == KIND_ROW) {
            const float *Rb = t->R + b * n;
            float *ab = t->a + b * n;
            for (int64_t i = 0; i < n; i++) ab[i] = 1.0f / sqrtf(Rb[i]);
        } else {
            su += update_columns(t, b);
            const float *Cb = t->C + b * m;
            float *bb = t->bc + b * m;
            for (int64_t j = 0; j < m; j++) bb[j] = 1.0f / sqrtf(Cb[j]);
        }
    }
    return su;
}

/* Between the passes (serial, O(n + m)): C, a, b, RMS(U), RMS(X) and the step scale s. */
static void finish(tensor *t, const hyper *h, float *rms_out, float *alpha_out) {
    double su = 0.0, xs = 0.0;
    if (t->kind == KIND_ROW || t->kind == KIND_COL) {
        su = finish_one_factor(t, &xs);
    } else if (t->factored) {
        const int64_t n = t->n, m = t->m, K = t->K;
        for (int64_t b = 0; b < t->B; b++) {
            double rsum = 0.0;
            for (int64_t k = 0; k < K; k++) {
                rsum += t->part[2 * (b * K + k)];
                xs += t->part[2 * (b * K + k) + 1];
            }
            const double dsum = update_columns(t, b);
            float *Cb = t->C + b * m, *Rb = t->R + b * n;
            const float rmean = (float)(rsum / (double)n);
            su += (double)rmean * dsum;
            float *ab = t->a + b * n, *bb = t->bc + b * m;
            for (int64_t i = 0; i < n; i++) ab[i] = 1.0f / sqrtf(Rb[i] / rmean);
            for (int64_t j = 0; j < m; j++) bb[j] = 1.0f / sqrtf(Cb[j]);
        }
    } else {
        for (int64_t c = 0; c < t->nblocks; c++) {
            su += t->part[2 * c];
            xs += t->part[2 * c + 1];
        }
    }
    const double numel = (double)(t->B * t->n * t->m);
    const double rms_u = sqrt(su / numel);
    *rms_out = (float)rms_u;
    t->s = (float)step_scale(h, rms_u, sqrt(xs / numel), alpha_out);
}

/* Pass 2 over rows [i0, i1) of the B*n rows (factored) or one chunk (full); reads G and X, writes X:
 * X <- X (1 - lr wd) - update, update = s a_i b_j G_ij (factored) or s G / sqrt(V) (full), or the momentum
 * average of it when beta1 > 0. */
static void pass2(const tensor *t, int64_t blk, const hyper *h) {
    const float s = t->s, wdf = (float)h->wdf, b1 = (float)h->beta1, omb1 = (float)(1.0 - h->beta1);
    const float *g = t->g;
    float *x = t->x, *mom = t->mom;
    if (t->factored) {
        const int64_t n = t->n, m = t->m, b = blk / n, i = blk % n;
        const float sa = s * t->a[b * n + i], *bb = t->bc + b * m;
        const float *gr = g + blk * m;
        float *xr = x + blk * m;
        if (mom) {
            float *mr = mom + blk * m;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                const float v = b1 * mr[j] + omb1 * (sa * bb[j] * gr[j]);
                mr[j] = v;
                xr[j] = xr[j] * wdf - v;
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) xr[j] = xr[j] * wdf - sa * bb[j] * gr[j];
        }
    } else {
        const int64_t N = t->n * t->m, lo = blk * CHUNK, hi = lo + CHUNK < N ? lo + CHUNK : N;
        const float *v = t->v;
        if (mom) {
#pragma omp simd
            for (int64_t k = lo; k < hi; k++) {
                const float mm = b1 * mom[k] + omb1 * (s * (g[k] / sqrtf(v[k])));
                mom[k] = mm;
                x[k] = x[k] * wdf - mm;
            }
        } else {
#pragma omp simd
            for (int64_t k = lo; k < hi; k++) x[k] = x[k] * wdf - s * (g[k] / sqrtf(v[k]));
        }
    }
}

static int64_t pass2_blocks(const tensor *t) { return t->factored ? t->B * t->n : t->nblocks; }

/* One Adafactor step over k tensors of one parameter group; returns 0, or -1 when out of memory (nothing
 * written then). Large tensors share one thread-team region for the whole step (pass 1 of all, the
 * per-tensor finish, pass 2 of all, with two barriers; `nowait` lets a thread run on to the next tensor): on a
 * loaded machine every region and barrier waits for its slowest thread to be scheduled, so two per step beat
 * several per tensor. Small tensors (biases, layer norms)
 * run on the calling thread. The blocks, and so the results, are the same either way. */
int afx_step(int64_t k, const int64_t *meta, double beta2, double decay_exponent, double eps1, double lr,
             double eps2, double clip, int scale_parameter, double beta1, double wdf, int nthreads,
             int64_t small_numel, float *rms_out, float *alpha_out, double *beta2t_out) {
    const hyper h = {eps1, lr, eps2, clip, beta1, wdf, scale_parameter};
    tensor *ts = (tensor *)calloc((size_t)(k > 0 ? k : 1), sizeof(tensor));
    int ok = ts != NULL;
    for (int64_t i = 0; ok && i < k; i++) ok = setup(&ts[i], meta + 10 * i);
    if (!ok) {
        for (int64_t i = 0; ts && i < k; i++) release(&ts[i]);
        free(ts);
        return -1;
    }
    /* Nothing can fail from here on: advance the step counts and compute beta2t in double, the expressions
     * of Adafactor._beta2t (Section 7.2: 1 - t^-c; Section 7.1: beta2 (1 - beta2^(t-1)) / (1 - beta2^t)). */
    for (int64_t i = 0; i < k; i++) {
        float *step = (float *)(intptr_t)meta[10 * i + 9];
        const double t = (double)(*step + 1.0f);
        *step = (float)t;
        const double b2t = beta2 < 0.0 ? 1.0 - pow(t, -decay_exponent)
                                       : beta2 * (1.0 - pow(beta2, t - 1.0)) / (1.0 - pow(beta2, t));
        beta2t_out[i] = b2t;
        ts[i].b2 = (float)b2t, ts[i].omb2 = (float)(1.0 - b2t);
    }
    const float e1 = (float)eps1;
    int64_t nlarge = 0;
    for (int64_t i = 0; i < k; i++) {
        tensor *t = &ts[i];
        if (t->B * t->n * t->m >= small_numel && nthreads > 1) {
            nlarge++;
            continue;
        }
        for (int64_t blk = 0; blk < t->nblocks; blk++) pass1(t, blk, e1);
        finish(t, &h, rms_out + i, alpha_out + i);
        for (int64_t blk = 0; blk < pass2_blocks(t); blk++) pass2(t, blk, &h);
    }
    if (nlarge > 0) {
#pragma omp parallel num_threads(nthreads)
        {
            for (int64_t i = 0; i < k; i++) {
                tensor *t = &ts[i];
                if (t->B * t->n * t->m < small_numel) continue;
#pragma omp for schedule(static) nowait
                for (int64_t blk = 0; blk < t->nblocks; blk++) pass1(t, blk, e1);
            }
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
            for (int64_t i = 0; i < k; i++)
                if (ts[i].B * ts[i].n * ts[i].m >= small_numel) finish(&ts[i], &h, rms_out + i, alpha_out + i);
            /* implicit barrier: every s is known */
            for (int64_t i = 0; i < k; i++) {
                tensor *t = &ts[i];
                if (t->B * t->n * t->m < small_numel) continue;
#pragma omp for schedule(static) nowait
                for (int64_t blk = 0; blk < pass2_blocks(t); blk++) pass2(t, blk, &h);
            }
        }
    }
    for (int64_t i = 0; i < k; i++) release(&ts[i]);
    free(ts);
    return 0;
}
