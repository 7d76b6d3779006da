/* Fused CPU kernel of one Adafactor step (Shazeer & Stern 2018, Algorithms 4 and 5) for fp32 contiguous
 * tensors. Loaded with ctypes by _kernel.py; the math is the same as the eager torch path in adafactor.py.
 *
 * Why a kernel: a factored step needs only two passes over memory, 5 words per element against fused
 * Adam's 7 (issue 2, "Speed and memory", describes three; the middle one is folded into the first here):
 *   pass 1 reads G and X: row/column sums of G^2 + eps1 (Alg. 4 lines 6-7), sum X^2 for RMS(X_{t-1}) and
 *          sum U^2 (see factored()); U_ij = G_ij a_i b_j, a_i = rsqrt(R_i / mean(R)), b_j = rsqrt(C_j),
 *          so V-hat = R C / mean(R) (Alg. 4 line 8) is never materialised;
 *   pass 2 reads G and X (and the momentum) and writes X.
 * Eager torch needs ~11 passes and a matrix-sized temporary for the same work.
 *
 * meta rows (int64, 9 per tensor): kind (1 factored, 0 full), B, n, m, x, g, r_or_v, c, mom.
 * A factored tensor is B matrices of n x m (its leading dims flattened); a full one has n*m elements. */
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

static void factored(const int64_t *md, double beta2t, const hyper *h, int nt, float *rms_out, float *alpha_out) {
    const int64_t B = md[1], n = md[2], m = md[3];
    float *x = (float *)(intptr_t)md[4];
    const float *g = (const float *)(intptr_t)md[5];
    float *R = (float *)(intptr_t)md[6], *C = (float *)(intptr_t)md[7], *mom = (float *)(intptr_t)md[8];
    const float b2 = (float)beta2t, omb2 = (float)(1.0 - beta2t), eps1 = (float)h->eps1;
    const int K = n < ROW_GROUPS ? (int)n : ROW_GROUPS;
    /* per row group: column sums of G^2 + eps1, and D_j = sum_i G_ij^2 / R_i (for RMS(U), see below) */
    float *colacc = (float *)malloc(sizeof(float) * 2 * (size_t)K * (size_t)m);
    double part[2 * ROW_GROUPS];
    float *a = (float *)malloc(sizeof(float) * (size_t)(B * n));
    float *bc = (float *)malloc(sizeof(float) * (size_t)(B * m));
    double xs = 0.0, su = 0.0;
    for (int64_t b = 0; b < B; b++) {
        const float *gb = g + b * n * m;
        const float *xb = x + b * n * m;
        float *Rb = R + b * n, *Cb = C + b * m;
        /* pass 1 (reads G and X): R <- b2 R + (1-b2) rowmean(G^2 + eps1), C likewise with column means, sum X^2.
         * RMS(U) comes out of the same pass: U_ij^2 = G_ij^2 mean(R) / (R_i C_j), so
         * sum U^2 = mean(R) sum_j D_j / C_j with D_j = sum_i G_ij^2 / R_i, and R_i is final once row i is
         * summed; the second sweep over the row hits L1. */
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
        for (int k = 0; k < K; k++) {
            float *ca = colacc + (size_t)k * 2 * (size_t)m, *da = ca + m;
            memset(ca, 0, sizeof(float) * 2 * (size_t)m);
            double rsum = 0.0, xsum = 0.0;
            for (int64_t i = n * k / K; i < n * (k + 1) / K; i++) {
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
            part[2 * k] = rsum;
            part[2 * k + 1] = xsum;
        }
        double rsum = 0.0, dsum = 0.0;
        for (int k = 0; k < K; k++) {
            rsum += part[2 * k];
            xs += part[2 * k + 1];
        }
        for (int64_t j = 0; j < m; j++) {
            float s = 0.f, d = 0.f;
            for (int k = 0; k < K; k++) {
                s += colacc[(size_t)k * 2 * (size_t)m + j];
                d += colacc[(size_t)k * 2 * (size_t)m + m + j];
            }
            const float cj = b2 * Cb[j] + omb2 * (s / (float)n);
            Cb[j] = cj;
            dsum += (double)d / (double)cj;
        }
        const float rmean = (float)(rsum / (double)n);
        su += (double)rmean * dsum;
        float *ab = a + b * n, *bb = bc + b * m;
        for (int64_t i = 0; i < n; i++) ab[i] = 1.0f / sqrtf(Rb[i] / rmean);
        for (int64_t j = 0; j < m; j++) bb[j] = 1.0f / sqrtf(Cb[j]);
    }
    const double numel = (double)(B * n * m);
    const double rms_u = sqrt(su / numel);
    *rms_out = (float)rms_u;
    const float s = (float)step_scale(h, rms_u, sqrt(xs / numel), alpha_out);
    const float wdf = (float)h->wdf, b1 = (float)h->beta1, omb1 = (float)(1.0 - h->beta1);
    /* pass 2 (reads G and X, writes X): X <- X (1 - lr wd) - update, update = s a_i b_j G_ij with
     * s = alpha / max(1, RMS(U)/d), or the momentum average of it (beta1 > 0) */
    for (int64_t b = 0; b < B; b++) {
        const float *gb = g + b * n * m, *ab = a + b * n, *bb = bc + b * m;
        float *xb = x + b * n * m;
        float *mb = mom ? mom + b * n * m : NULL;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
        for (int64_t i = 0; i < n; i++) {
            const float sa = s * ab[i];
            const float *gr = gb + i * m;
            float *xr = xb + i * m;
            if (mb) {
                float *mr = mb + i * m;
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
        }
    }
    free(colacc);
    free(a);
    free(bc);
}

static void full(const int64_t *md, double beta2t, const hyper *h, int nt, float *rms_out, float *alpha_out) {
    const int64_t N = md[2] * md[3];
    float *x = (float *)(intptr_t)md[4];
    const float *g = (const float *)(intptr_t)md[5];
    float *v = (float *)(intptr_t)md[6], *mom = (float *)(intptr_t)md[8];
    const float b2 = (float)beta2t, omb2 = (float)(1.0 - beta2t), eps1 = (float)h->eps1;
    const int64_t nchunks = (N + CHUNK - 1) / CHUNK;
    double *part = (double *)malloc(sizeof(double) * 2 * (size_t)nchunks);
    /* pass 1: V <- b2 V + (1-b2)(G^2+eps1) (Alg. 5 line 6); sum U^2 = sum G^2/V; sum X^2 */
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t lo = c * CHUNK, hi = lo + CHUNK < N ? lo + CHUNK : N;
        float s = 0.f, x2 = 0.f;
#pragma omp simd reduction(+ : s, x2)
        for (int64_t k = lo; k < hi; k++) {
            const float vv = b2 * v[k] + omb2 * (g[k] * g[k] + eps1);
            v[k] = vv;
            const float u = g[k] / sqrtf(vv);
            s += u * u;
            x2 += x[k] * x[k];
        }
        part[2 * c] = s;
        part[2 * c + 1] = x2;
    }
    double su = 0.0, xs = 0.0;
    for (int64_t c = 0; c < nchunks; c++) {
        su += part[2 * c];
        xs += part[2 * c + 1];
    }
    free(part);
    const double rms_u = sqrt(su / (double)N);
    *rms_out = (float)rms_u;
    const float s = (float)step_scale(h, rms_u, sqrt(xs / (double)N), alpha_out);
    const float wdf = (float)h->wdf, b1 = (float)h->beta1, omb1 = (float)(1.0 - h->beta1);
    /* pass 2: X <- X (1 - lr wd) - s G / sqrt(V) (or its momentum average) */
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t lo = c * CHUNK, hi = lo + CHUNK < N ? lo + CHUNK : N;
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

/* One Adafactor step over k tensors of one parameter group. Large tensors are split across threads; small
 * ones (biases, layer norms) run on the calling thread: waking a thread team costs more than their work,
 * and much more on a loaded machine, where a team waits for its slowest member to be scheduled. */
void afx_step(int64_t k, const int64_t *meta, const double *beta2t, double eps1, double lr, double eps2,
              double clip, int scale_parameter, double beta1, double wdf, int nthreads, int64_t small_numel,
              float *rms_out, float *alpha_out) {
    const hyper h = {eps1, lr, eps2, clip, beta1, wdf, scale_parameter};
    for (int64_t i = 0; i < k; i++) {
        const int64_t *md = meta + 9 * i;
        const int nt = md[1] * md[2] * md[3] < small_numel ? 1 : nthreads;
        if (md[0]) factored(md, beta2t[i], &h, nt, rms_out + i, alpha_out + i);
        else full(md, beta2t[i], &h, nt, rms_out + i, alpha_out + i);
    }
}
