/* Per-sample cross-entropy losses of a conv-pool CNN for eight weight sets at once (lib/core/native/fused_cnn.py).
 *
 * Network: S stages "conv 3x3 (stride 1, zero padding 1) -> ReLU -> max-pool 2x2", then flatten (C, H, W order)
 * and one Linear with K outputs; loss = logsumexp(logits) - logits[target]. The eight SIMD lanes of an AVX2
 * register hold eight weight sets ("thetas"): every activation is a vector of eight, every weight a vector of
 * eight, the image is shared. One sample goes through all stages in small buffers that stay in the L1/L2 cache;
 * the ReLU commutes with the max and the bias is added after it (the same at the four window positions).
 *
 * Layouts (float32, contiguous):
 *   x       (n, C0, H0, W0)              the images (shared by all weight sets)
 *   conv_w  per group g, per stage s: (O_s, C_s, 3, 3, 8), stages one after another, groups one after another
 *   conv_b  per group, per stage: (O_s, 8)
 *   lin_w   per group: (F, K, 8), F = C_S H_S W_S in flatten order
 *   lin_b   per group: (K, 8)
 *   y       (n,) int64 targets
 *   out     (8 G, ld) losses; row 8 g + lane, column = sample index (samples s0..s1-1 are written)
 * Returns 0, or -1 if a size is out of range.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8
#define MAX_STAGES 8
#define MAX_K 64

static void conv_pool_block(const float *in, int C, int H, int W, const float *w, const float *b, int o, int ob,
                            float *out, int pad)
{
    /* output channels o .. o + ob - 1 (ob = 1 or 2) of one stage; in: (C, H + 2, W + 2, 8) zero-padded;
       out: (O, H/2 + 2 pad, W/2 + 2 pad, 8) with the pooled values at offset pad */
    const int Wp = W + 2, Ho = H / 2, Wo = W / 2, Hq = Ho + 2 * pad, Wq = Wo + 2 * pad;
    const int wstride = C * 9 * LANES;
    const __m256 zero = _mm256_setzero_ps();
    for (int i = 0; i < Ho; i++) {
        for (int j = 0; j < Wo; j++) {
            __m256 a0[4], a1[4];
            for (int q = 0; q < 4; q++) {
                a0[q] = zero;
                a1[q] = zero;
            }
            for (int c = 0; c < C; c++) {
                const float *p = in + ((size_t)(c * (H + 2) + 2 * i) * Wp + 2 * j) * LANES;
                const float *w0 = w + (size_t)(o * C + c) * 9 * LANES;
                const float *w1 = w0 + wstride;
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
#pragma GCC unroll 4
                    for (int s = 0; s < 4; s++) {
                        const __m256 px = _mm256_loadu_ps(p + (size_t)(r * Wp + s) * LANES);
#pragma GCC unroll 2
                        for (int a = 0; a < 2; a++) {
#pragma GCC unroll 2
                            for (int bb = 0; bb < 2; bb++) {
                                const int di = r - a, dj = s - bb;
                                if (di < 0 || di > 2 || dj < 0 || dj > 2)
                                    continue;
                                const int t = (di * 3 + dj) * LANES;
                                a0[a * 2 + bb] = _mm256_fmadd_ps(px, _mm256_loadu_ps(w0 + t), a0[a * 2 + bb]);
                                if (ob == 2)
                                    a1[a * 2 + bb] = _mm256_fmadd_ps(px, _mm256_loadu_ps(w1 + t), a1[a * 2 + bb]);
                            }
                        }
                    }
                }
            }
            const size_t at = ((size_t)(o * Hq + i + pad) * Wq + j + pad) * LANES;
            __m256 m = _mm256_max_ps(_mm256_max_ps(a0[0], a0[1]), _mm256_max_ps(a0[2], a0[3]));
            m = _mm256_add_ps(m, _mm256_loadu_ps(b + (size_t)o * LANES));
            _mm256_storeu_ps(out + at, _mm256_max_ps(m, zero));
            if (ob == 2) {
                m = _mm256_max_ps(_mm256_max_ps(a1[0], a1[1]), _mm256_max_ps(a1[2], a1[3]));
                m = _mm256_add_ps(m, _mm256_loadu_ps(b + (size_t)(o + 1) * LANES));
                _mm256_storeu_ps(out + at + (size_t)Hq * Wq * LANES, _mm256_max_ps(m, zero));
            }
        }
    }
}

static void conv_pool(const float *in, int C, int H, int W, const float *w, const float *b, int O, float *out,
                      int pad)
{
    int o = 0;
    for (; o + 2 <= O; o += 2)
        conv_pool_block(in, C, H, W, w, b, o, 2, out, pad);
    if (o < O)
        conv_pool_block(in, C, H, W, w, b, o, 1, out, pad);
}

int conv_pool_ce_losses(const float *x, int64_t n_total, int s0, int s1, int n_stages, const int *channels,
                        int H0, int W0, const float *conv_w, const float *conv_b, const float *lin_w,
                        const float *lin_b, int K, const int64_t *y, int G, float *out, int64_t ld)
{
    if (n_stages < 1 || n_stages > MAX_STAGES || K < 1 || K > MAX_K || s0 < 0 || s1 > n_total || s0 > s1)
        return -1;
    int Hs[MAX_STAGES + 1], Ws[MAX_STAGES + 1];
    size_t wsize = 0, bsize = 0, biggest = 0;
    Hs[0] = H0;
    Ws[0] = W0;
    for (int s = 0; s < n_stages; s++) {
        if (Hs[s] % 2 || Ws[s] % 2 || Hs[s] < 2 || Ws[s] < 2 || channels[s] < 1 || channels[s + 1] < 1)
            return -1;
        Hs[s + 1] = Hs[s] / 2;
        Ws[s + 1] = Ws[s] / 2;
        wsize += (size_t)channels[s + 1] * channels[s] * 9 * LANES;
        bsize += (size_t)channels[s + 1] * LANES;
        size_t sz = (size_t)channels[s] * (Hs[s] + 2) * (Ws[s] + 2) * LANES;
        if (sz > biggest)
            biggest = sz;
    }
    const int CS = channels[n_stages];
    const size_t F = (size_t)CS * Hs[n_stages] * Ws[n_stages];
    if (F * LANES > biggest)
        biggest = F * LANES;
    float *buf_a = aligned_alloc(64, ((biggest * sizeof(float) + 63) / 64) * 64);
    float *buf_b = aligned_alloc(64, ((biggest * sizeof(float) + 63) / 64) * 64);
    if (!buf_a || !buf_b) {
        free(buf_a);
        free(buf_b);
        return -1;
    }
    const int C0 = channels[0];
    const size_t image = (size_t)C0 * H0 * W0;
    float logits[MAX_K * LANES];
    for (int g = 0; g < G; g++) {
        const float *gw = conv_w + g * wsize, *gb = conv_b + g * bsize;
        const float *lw = lin_w + g * F * K * LANES, *lb = lin_b + (size_t)g * K * LANES;
        for (int smp = s0; smp < s1; smp++) {
            /* the image, broadcast to the lanes, zero-padded */
            const size_t in0 = (size_t)C0 * (H0 + 2) * (W0 + 2) * LANES;
            memset(buf_a, 0, in0 * sizeof(float));
            const float *img = x + (size_t)smp * image;
            for (int c = 0; c < C0; c++)
                for (int i = 0; i < H0; i++)
                    for (int j = 0; j < W0; j++)
                        _mm256_storeu_ps(buf_a + ((size_t)(c * (H0 + 2) + i + 1) * (W0 + 2) + j + 1) * LANES,
                                         _mm256_set1_ps(img[(c * H0 + i) * W0 + j]));
            float *cur = buf_a, *nxt = buf_b;
            const float *sw = gw, *sb = gb;
            for (int s = 0; s < n_stages; s++) {
                const int last = s == n_stages - 1, pad = last ? 0 : 1;
                if (pad)
                    memset(nxt, 0, (size_t)channels[s + 1] * (Hs[s + 1] + 2) * (Ws[s + 1] + 2) * LANES *
                                       sizeof(float));
                conv_pool(cur, channels[s], Hs[s], Ws[s], sw, sb, channels[s + 1], nxt, pad);
                sw += (size_t)channels[s + 1] * channels[s] * 9 * LANES;
                sb += (size_t)channels[s + 1] * LANES;
                float *t = cur;
                cur = nxt;
                nxt = t;
            }
            /* linear head: logits[k] = b[k] + sum_f W[f, k] h[f], four output rows at a time */
            for (int k0 = 0; k0 < K; k0 += 4) {
                const int kb = K - k0 < 4 ? K - k0 : 4;
                __m256 acc[4];
                for (int q = 0; q < 4; q++)
                    acc[q] = q < kb ? _mm256_loadu_ps(lb + (size_t)(k0 + q) * LANES) : _mm256_setzero_ps();
                for (size_t f = 0; f < F; f++) {
                    const __m256 h = _mm256_loadu_ps(cur + f * LANES);
                    const float *wf = lw + (f * K + k0) * LANES;
                    for (int q = 0; q < kb; q++)
                        acc[q] = _mm256_fmadd_ps(h, _mm256_loadu_ps(wf + (size_t)q * LANES), acc[q]);
                }
                for (int q = 0; q < kb; q++)
                    _mm256_storeu_ps(logits + (size_t)(k0 + q) * LANES, acc[q]);
            }
            /* cross-entropy per lane: (z_max - z_target) + log1p(sum over k != argmax of exp(z_k - z_max)); the
               log1p keeps the small losses of well-classified samples to float precision */
            const int64_t t = y[smp];
            for (int l = 0; l < LANES; l++) {
                int top = 0;
                for (int k = 1; k < K; k++)
                    if (logits[k * LANES + l] > logits[top * LANES + l])
                        top = k;
                const float m = logits[top * LANES + l];
                float rest = 0.0f;
                for (int k = 0; k < K; k++)
                    if (k != top)
                        rest += expf(logits[k * LANES + l] - m);
                out[(size_t)(g * LANES + l) * ld + smp] = (m - logits[t * LANES + l]) + log1pf(rest);
            }
        }
    }
    free(buf_a);
    free(buf_b);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * One weight set, eight samples per register: the logits, and the exact Hessian-vector product of the summed
 * cross-entropy (Pearlmutter's R-op: ReLU and max-pooling are piecewise linear, so their selections stay fixed
 * and the second-order terms are the softmax's and the products of weights of different layers).
 *
 * Weights (plain float32, the model's layouts): per stage W (O, C, 3, 3), b (O) (b may be a zero vector), head
 * Wl (K, F), bl (K); the tangent v in the same layout (V, c, Vl, cl). hv (threads' own buffer, zeroed by the
 * caller): per stage (O, C, 3, 3, 8) then (O, 8), then (K, F, 8) and (K, 8): H v summed over the samples, one
 * partial sum per lane. logits (n, K) or NULL.
 * ------------------------------------------------------------------------------------------------------------ */

typedef struct {
    int S, K, C[MAX_STAGES + 1], H[MAX_STAGES + 1], W[MAX_STAGES + 1];
    size_t F;
} shape_t;

static inline __m256 bc(const float *p) { return _mm256_broadcast_ss(p); }

static size_t padded_size(const shape_t *sh, int s) { return (size_t)sh->C[s] * (sh->H[s] + 2) * (sh->W[s] + 2); }
static size_t pooled_size(const shape_t *sh, int s) { return (size_t)sh->C[s + 1] * sh->H[s + 1] * sh->W[s + 1]; }

/* forward (and tangent) of output channels o .. o + OB - 1 of stage s: a and Ra padded inputs (HAS_RA = 0: no
   tangent input, the images), outputs h and Rh (padded by pad), arg (window position 0..3 as float) and on
   (all-ones bits where the unit is active). The flags are compile-time constants (always_inline): no branch is
   left in the inner loops. */
static inline __attribute__((always_inline)) void stage_forward_block(
    const shape_t *sh, int s, const float *a, const float *Ra, const float *Wt, const float *b, const float *V,
    const float *c, float *h, float *Rh, float *arg, float *on, int pad, int o, const int OB, const int TANGENT,
    const int HAS_RA, const int STORE)
{
    const int C = sh->C[s], H = sh->H[s], Wd = sh->W[s], Ho = H / 2, Wo = Wd / 2;
    const int Wp = Wd + 2, Hq = Ho + 2 * pad, Wq = Wo + 2 * pad;
    const __m256 zero = _mm256_setzero_ps();
    for (int i = 0; i < Ho; i++) {
        for (int j = 0; j < Wo; j++) {
            __m256 u[2][4], Ru[2][4];
            for (int k = 0; k < OB; k++)
                for (int p = 0; p < 4; p++)
                    u[k][p] = Ru[k][p] = zero;
            for (int ci = 0; ci < C; ci++) {
                const size_t base = ((size_t)(ci * (H + 2) + 2 * i) * Wp + 2 * j) * LANES;
                const float *w = Wt + (size_t)(o * C + ci) * 9, *vv = TANGENT ? V + (size_t)(o * C + ci) * 9 : 0;
                const size_t next = (size_t)C * 9;
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
#pragma GCC unroll 4
                    for (int q = 0; q < 4; q++) {
                        const size_t at = base + (size_t)(r * Wp + q) * LANES;
                        const __m256 x = _mm256_loadu_ps(a + at);
                        const __m256 rx = HAS_RA ? _mm256_loadu_ps(Ra + at) : zero;
#pragma GCC unroll 2
                        for (int wa = 0; wa < 2; wa++) {
#pragma GCC unroll 2
                            for (int wb = 0; wb < 2; wb++) {
                                const int di = r - wa, dj = q - wb;
                                if (di < 0 || di > 2 || dj < 0 || dj > 2)
                                    continue;
                                const int t = di * 3 + dj, p = wa * 2 + wb;
#pragma GCC unroll 2
                                for (int k = 0; k < OB; k++) {
                                    u[k][p] = _mm256_fmadd_ps(x, bc(w + k * next + t), u[k][p]);
                                    if (TANGENT) {
                                        Ru[k][p] = _mm256_fmadd_ps(x, bc(vv + k * next + t), Ru[k][p]);
                                        if (HAS_RA)
                                            Ru[k][p] = _mm256_fmadd_ps(rx, bc(w + k * next + t), Ru[k][p]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (int k = 0; k < OB; k++) {
                /* argmax over the window (the first maximum), then bias and ReLU */
                __m256 best = u[k][0], idx = zero, Rbest = Ru[k][0];
                for (int p = 1; p < 4; p++) {
                    const __m256 gt = _mm256_cmp_ps(u[k][p], best, _CMP_GT_OQ);
                    best = _mm256_blendv_ps(best, u[k][p], gt);
                    idx = _mm256_blendv_ps(idx, _mm256_set1_ps((float)p), gt);
                    if (TANGENT)
                        Rbest = _mm256_blendv_ps(Rbest, Ru[k][p], gt);
                }
                const __m256 pre = _mm256_add_ps(best, bc(b + o + k));
                const __m256 act = _mm256_cmp_ps(pre, zero, _CMP_GT_OQ);
                const size_t cell = ((size_t)((o + k) * Hq + i + pad) * Wq + j + pad) * LANES;
                const size_t unit = ((size_t)((o + k) * Ho + i) * Wo + j) * LANES;
                _mm256_storeu_ps(h + cell, _mm256_and_ps(act, pre));
                if (STORE) {
                    _mm256_storeu_ps(arg + unit, idx);
                    _mm256_storeu_ps(on + unit, act);
                }
                if (TANGENT)
                    _mm256_storeu_ps(Rh + cell, _mm256_and_ps(act, _mm256_add_ps(Rbest, bc(c + o + k))));
            }
        }
    }
}

#define STAGE_FORWARD(T, R, M)                                                                                     \
    static void stage_forward_##T##R##M(const shape_t *sh, int s, const float *a, const float *Ra,               \
                                        const float *Wt, const float *b, const float *V, const float *c,         \
                                        float *h, float *Rh, float *arg, float *on, int pad)                      \
    {                                                                                                              \
        int o = 0;                                                                                                 \
        for (; o + 2 <= sh->C[s + 1]; o += 2)                                                                      \
            stage_forward_block(sh, s, a, Ra, Wt, b, V, c, h, Rh, arg, on, pad, o, 2, T, R, M);                    \
        if (o < sh->C[s + 1])                                                                                      \
            stage_forward_block(sh, s, a, Ra, Wt, b, V, c, h, Rh, arg, on, pad, o, 1, T, R, M);                    \
    }
STAGE_FORWARD(0, 0, 0)
STAGE_FORWARD(0, 0, 1)
STAGE_FORWARD(1, 0, 1)
STAGE_FORWARD(1, 1, 1)

/* mode: 0 logits only, 1 Hessian-vector product (tangent), 2 gradient (the selections kept, no tangent) */
static void stage_forward(const shape_t *sh, int s, const float *a, const float *Ra, const float *Wt,
                          const float *b, const float *V, const float *c, float *h, float *Rh, float *arg,
                          float *on, int pad, int mode)
{
    if (mode == 0)
        stage_forward_000(sh, s, a, 0, Wt, b, 0, 0, h, 0, 0, 0, pad);
    else if (mode == 2)
        stage_forward_001(sh, s, a, 0, Wt, b, 0, 0, h, 0, arg, on, pad);
    else if (!Ra)
        stage_forward_101(sh, s, a, 0, Wt, b, V, c, h, Rh, arg, on, pad);
    else
        stage_forward_111(sh, s, a, Ra, Wt, b, V, c, h, Rh, arg, on, pad);
}

/* backward of stage s: g and Rg (O, Ho, Wo, 8) gradients at the stage's outputs (after ReLU); accumulates
   H v of W and b into HW (O, C, 3, 3, 8), Hb (O, 8); with ga non-NULL also the input gradients ga, Rga
   (padded like a, added to) */
/* GRAD = 1: the gradient instead (Rg, Ra, V, Rga unused): HW += sum g_u a, Hb += sum g_m, ga += conv^T(g_u; W) */
static inline __attribute__((always_inline)) void stage_backward_impl(
    const shape_t *sh, int s, const float *a, const float *Ra, const float *Wt, const float *V, const float *arg,
    const float *on, const float *g, const float *Rg, float *HW, float *Hb, float *ga, float *Rga, const int GRAD)
{
    const int C = sh->C[s], H = sh->H[s], Wd = sh->W[s], O = sh->C[s + 1], Ho = H / 2, Wo = Wd / 2;
    const int Wp = Wd + 2;
    const __m256 zero = _mm256_setzero_ps();
    for (int o = 0; o < O; o++) {
        __m256 hb = _mm256_loadu_ps(Hb + (size_t)o * LANES);
        for (int i = 0; i < Ho; i++)
            for (int j = 0; j < Wo; j++) {
                const size_t unit = ((size_t)(o * Ho + i) * Wo + j) * LANES;
                hb = _mm256_add_ps(hb, _mm256_and_ps(_mm256_loadu_ps(on + unit),
                                                     _mm256_loadu_ps((GRAD ? g : Rg) + unit)));
            }
        _mm256_storeu_ps(Hb + (size_t)o * LANES, hb);
        for (int ci = 0; ci < C; ci++) {
            const float *w = Wt + (size_t)(o * C + ci) * 9, *vv = GRAD ? 0 : V + (size_t)(o * C + ci) * 9;
            __m256 hw[9];
            for (int t = 0; t < 9; t++)
                hw[t] = _mm256_loadu_ps(HW + ((size_t)(o * C + ci) * 9 + t) * LANES);
            for (int i = 0; i < Ho; i++) {
                for (int j = 0; j < Wo; j++) {
                    const size_t unit = ((size_t)(o * Ho + i) * Wo + j) * LANES;
                    const __m256 act = _mm256_loadu_ps(on + unit), ix = _mm256_loadu_ps(arg + unit);
                    if (!_mm256_movemask_ps(act))
                        continue;                /* inactive in all eight samples: no gradient passes */
                    const __m256 gm = _mm256_and_ps(act, _mm256_loadu_ps(g + unit));
                    const __m256 Rgm = GRAD ? zero : _mm256_and_ps(act, _mm256_loadu_ps(Rg + unit));
                    __m256 gu[4], Rgu[4];
                    for (int p = 0; p < 4; p++) {
                        const __m256 sel = _mm256_cmp_ps(ix, _mm256_set1_ps((float)p), _CMP_EQ_OQ);
                        gu[p] = _mm256_and_ps(sel, gm);
                        Rgu[p] = GRAD ? zero : _mm256_and_ps(sel, Rgm);
                    }
                    const size_t base = ((size_t)(ci * (H + 2) + 2 * i) * Wp + 2 * j) * LANES;
#pragma GCC unroll 4
                    for (int r = 0; r < 4; r++) {
#pragma GCC unroll 4
                        for (int q = 0; q < 4; q++) {
                            const size_t at = base + (size_t)(r * Wp + q) * LANES;
                            const __m256 x = _mm256_loadu_ps(a + at);
                            const __m256 rx = (!GRAD && Ra) ? _mm256_loadu_ps(Ra + at) : zero;
                            __m256 dg = zero, dRg = zero;
#pragma GCC unroll 2
                            for (int wa = 0; wa < 2; wa++) {
#pragma GCC unroll 2
                                for (int wb = 0; wb < 2; wb++) {
                                    const int di = r - wa, dj = q - wb;
                                    if (di < 0 || di > 2 || dj < 0 || dj > 2)
                                        continue;
                                    const int t = di * 3 + dj, p = wa * 2 + wb;
                                    if (GRAD) {
                                        hw[t] = _mm256_fmadd_ps(gu[p], x, hw[t]);
                                        if (ga)
                                            dg = _mm256_fmadd_ps(gu[p], bc(w + t), dg);
                                        continue;
                                    }
                                    hw[t] = _mm256_fmadd_ps(Rgu[p], x, hw[t]);
                                    if (Ra)
                                        hw[t] = _mm256_fmadd_ps(gu[p], rx, hw[t]);
                                    if (ga) {
                                        dg = _mm256_fmadd_ps(gu[p], bc(w + t), dg);
                                        dRg = _mm256_fmadd_ps(Rgu[p], bc(w + t), dRg);
                                        dRg = _mm256_fmadd_ps(gu[p], bc(vv + t), dRg);
                                    }
                                }
                            }
                            if (ga) {
                                _mm256_storeu_ps(ga + at, _mm256_add_ps(_mm256_loadu_ps(ga + at), dg));
                                if (!GRAD)
                                    _mm256_storeu_ps(Rga + at, _mm256_add_ps(_mm256_loadu_ps(Rga + at), dRg));
                            }
                        }
                    }
                }
            }
            for (int t = 0; t < 9; t++)
                _mm256_storeu_ps(HW + ((size_t)(o * C + ci) * 9 + t) * LANES, hw[t]);
        }
    }
}

static void stage_backward_hvp(const shape_t *sh, int s, const float *a, const float *Ra, const float *Wt,
                               const float *V, const float *arg, const float *on, const float *g, const float *Rg,
                               float *HW, float *Hb, float *ga, float *Rga)
{
    stage_backward_impl(sh, s, a, Ra, Wt, V, arg, on, g, Rg, HW, Hb, ga, Rga, 0);
}

static void stage_backward_grad(const shape_t *sh, int s, const float *a, const float *Wt, const float *arg,
                                const float *on, const float *g, float *HW, float *Hb, float *ga)
{
    stage_backward_impl(sh, s, a, 0, Wt, 0, arg, on, g, 0, HW, Hb, ga, 0, 1);
}

/* the images of samples g0 .. g0 + 7 (rows of `image` floats; lanes past n_lanes read `zeros`) into the
   interior of the padded lane buffer dst (C, H + 2, W + 2, 8), eight pixels at a time by an 8 x 8 transpose */
static void fill_lanes(const float *x, size_t image, const float *zeros, int n_lanes, int C, int H, int W,
                       float *dst)
{
    const float *src[LANES];
    for (int l = 0; l < LANES; l++)
        src[l] = l < n_lanes ? x + (size_t)l * image : zeros;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H; i++) {
            const size_t row = (size_t)(c * H + i) * W;
            float *out = dst + ((size_t)(c * (H + 2) + i + 1) * (W + 2) + 1) * LANES;
            int j = 0;
            for (; j + 8 <= W; j += 8) {
                __m256 r0 = _mm256_loadu_ps(src[0] + row + j), r1 = _mm256_loadu_ps(src[1] + row + j);
                __m256 r2 = _mm256_loadu_ps(src[2] + row + j), r3 = _mm256_loadu_ps(src[3] + row + j);
                __m256 r4 = _mm256_loadu_ps(src[4] + row + j), r5 = _mm256_loadu_ps(src[5] + row + j);
                __m256 r6 = _mm256_loadu_ps(src[6] + row + j), r7 = _mm256_loadu_ps(src[7] + row + j);
                __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
                __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                _mm256_storeu_ps(out + (size_t)(j + 0) * LANES, _mm256_permute2f128_ps(u0, u4, 0x20));
                _mm256_storeu_ps(out + (size_t)(j + 1) * LANES, _mm256_permute2f128_ps(u1, u5, 0x20));
                _mm256_storeu_ps(out + (size_t)(j + 2) * LANES, _mm256_permute2f128_ps(u2, u6, 0x20));
                _mm256_storeu_ps(out + (size_t)(j + 3) * LANES, _mm256_permute2f128_ps(u3, u7, 0x20));
                _mm256_storeu_ps(out + (size_t)(j + 4) * LANES, _mm256_permute2f128_ps(u0, u4, 0x31));
                _mm256_storeu_ps(out + (size_t)(j + 5) * LANES, _mm256_permute2f128_ps(u1, u5, 0x31));
                _mm256_storeu_ps(out + (size_t)(j + 6) * LANES, _mm256_permute2f128_ps(u2, u6, 0x31));
                _mm256_storeu_ps(out + (size_t)(j + 7) * LANES, _mm256_permute2f128_ps(u3, u7, 0x31));
            }
            for (; j < W; j++)
                for (int l = 0; l < LANES; l++)
                    out[(size_t)j * LANES + l] = src[l][row + j];
        }
}

/* mode 0: logits; 1: H v (tangent given); 2: the gradient and the loss (hv receives the gradient's lane sums in
   the same layout, loss the eight lanes' loss sums) */
static int run_single(int mode, const float *x, int64_t n_total, int s0, int s1, int n_stages, const int *channels,
                      int H0, int W0, const float *const *conv_w, const float *const *conv_b, const float *lin_w,
                      const float *lin_b, int K, const float *const *tan_w, const float *const *tan_b,
                      const float *tan_lw, const float *tan_lb, const int64_t *y, float *hv, float *logits,
                      float *loss)
{
    /* x: (n, C0, H0, W0) images; s0 a multiple of 8 (lane groups of eight images). conv_w[s], conv_b[s],
       tan_w[s], tan_b[s]: per-stage pointers */
    if (n_stages < 1 || n_stages > MAX_STAGES || K < 1 || K > MAX_K || s0 < 0 || s1 > n_total || s0 > s1 ||
        s0 % LANES)
        return -1;
    shape_t sh;
    sh.S = n_stages;
    sh.K = K;
    sh.H[0] = H0;
    sh.W[0] = W0;
    for (int s = 0; s <= n_stages; s++)
        sh.C[s] = channels[s];
    for (int s = 0; s < n_stages; s++) {
        if (sh.H[s] % 2 || sh.W[s] % 2 || sh.H[s] < 2 || sh.W[s] < 2 || sh.C[s] < 1 || sh.C[s + 1] < 1)
            return -1;
        sh.H[s + 1] = sh.H[s] / 2;
        sh.W[s + 1] = sh.W[s] / 2;
    }
    const int S = n_stages, tangent = mode == 1, backward = mode >= 1;
    if (tangent && !tan_w)
        return -1;
    sh.F = (size_t)sh.C[S] * sh.H[S] * sh.W[S];
    const size_t F = sh.F;
    /* buffers: per stage s the padded input a[s] and its tangent Ra[s] (s = 0: the images), arg and on of each
       stage, the last stage's output h (unpadded, F x 8) and Rh; gradients g / Rg of each stage's output */
    size_t total = 0, off_a[MAX_STAGES + 1], off_Ra[MAX_STAGES + 1], off_arg[MAX_STAGES], off_on[MAX_STAGES];
    size_t off_g[MAX_STAGES], off_Rg[MAX_STAGES], off_ga[MAX_STAGES], off_Rga[MAX_STAGES];
    for (int s = 0; s < S; s++) {
        off_a[s] = total; total += padded_size(&sh, s) * LANES;
        off_Ra[s] = total; total += padded_size(&sh, s) * LANES;
        off_arg[s] = total; total += pooled_size(&sh, s) * LANES;
        off_on[s] = total; total += pooled_size(&sh, s) * LANES;
        off_g[s] = total; total += pooled_size(&sh, s) * LANES;
        off_Rg[s] = total; total += pooled_size(&sh, s) * LANES;
        off_ga[s] = total; total += padded_size(&sh, s) * LANES;
        off_Rga[s] = total; total += padded_size(&sh, s) * LANES;
    }
    off_a[S] = total; total += F * LANES;
    off_Ra[S] = total; total += F * LANES;
    float *buf = aligned_alloc(64, (((total + (size_t)channels[0] * H0 * W0) * sizeof(float) + 63) / 64) * 64);
    if (!buf)
        return -1;
    /* offsets of H v in hv */
    size_t hv_w[MAX_STAGES], hv_b[MAX_STAGES], hv_lw, hv_lb, at = 0;
    for (int s = 0; s < S; s++) {
        hv_w[s] = at; at += (size_t)sh.C[s + 1] * sh.C[s] * 9 * LANES;
        hv_b[s] = at; at += (size_t)sh.C[s + 1] * LANES;
    }
    hv_lw = at; at += (size_t)K * F * LANES;
    hv_lb = at;
    const __m256 zero = _mm256_setzero_ps();
    const size_t image = (size_t)sh.C[0] * H0 * W0;
    float *a0 = buf + off_a[0], *zeros = buf + total;
    memset(a0, 0, padded_size(&sh, 0) * LANES * sizeof(float));     /* its border stays zero */
    memset(zeros, 0, image * sizeof(float));
    for (int s = 0; s < S; s++)
        memset(buf + off_Ra[s], 0, padded_size(&sh, s) * LANES * sizeof(float));
    for (int g0 = s0; g0 < s1; g0 += LANES) {
        const int nl = s1 - g0 < LANES ? s1 - g0 : LANES;
        /* eight images in the lanes, zero-padded (missing lanes: zero images, their results discarded) */
        fill_lanes(x + (size_t)g0 * image, image, zeros, nl, sh.C[0], H0, W0, a0);
        for (int s = 0; s < S; s++) {
            const int last = s == S - 1, pad = last ? 0 : 1;
            float *h = buf + off_a[s + 1], *Rh = buf + off_Ra[s + 1];
            if (pad) {
                memset(h, 0, padded_size(&sh, s + 1) * LANES * sizeof(float));
                if (tangent)
                    memset(Rh, 0, padded_size(&sh, s + 1) * LANES * sizeof(float));
            }
            stage_forward(&sh, s, s > 0 ? buf + off_a[s] : a0, s > 0 ? buf + off_Ra[s] : 0, conv_w[s], conv_b[s],
                          tangent ? tan_w[s] : 0, tangent ? tan_b[s] : 0, h, Rh, buf + off_arg[s],
                          buf + off_on[s], pad, mode);
        }
        const float *hS = buf + off_a[S], *RhS = buf + off_Ra[S];
        __m256 z[MAX_K], Rz[MAX_K];
        for (int k = 0; k < K; k++) {
            __m256 acc = bc(lin_b + k), racc = tangent ? bc(tan_lb + k) : zero;
            const float *wk = lin_w + (size_t)k * F, *vk = tangent ? tan_lw + (size_t)k * F : 0;
            for (size_t f = 0; f < F; f++) {
                const __m256 hf = _mm256_loadu_ps(hS + f * LANES);
                acc = _mm256_fmadd_ps(hf, bc(wk + f), acc);
                if (tangent) {
                    racc = _mm256_fmadd_ps(hf, bc(vk + f), racc);
                    racc = _mm256_fmadd_ps(_mm256_loadu_ps(RhS + f * LANES), bc(wk + f), racc);
                }
            }
            z[k] = acc;
            Rz[k] = racc;
        }
        if (logits) {
            float tmp[LANES];
            for (int k = 0; k < K; k++) {
                _mm256_storeu_ps(tmp, z[k]);
                for (int l = 0; l < nl; l++)
                    logits[(size_t)(g0 + l) * K + k] = tmp[l];
            }
        }
        if (!backward)
            continue;
        /* softmax p, g_z = p - onehot(y), Rg_z = p (Rz - p . Rz) per lane; lanes without a sample get zero; the
           loss (z_max - z_y) + log1p(sum over k != argmax of exp(z_k - z_max)) */
        float zf[MAX_K][LANES], pf[MAX_K][LANES];
        for (int k = 0; k < K; k++)
            _mm256_storeu_ps(zf[k], z[k]);
        for (int l = 0; l < LANES; l++) {
            int top = 0;
            for (int k = 1; k < K; k++)
                if (zf[k][l] > zf[top][l])
                    top = k;
            const float m = zf[top][l];
            float rest = 0.0f;
            for (int k = 0; k < K; k++) {
                pf[k][l] = k == top ? 1.0f : expf(zf[k][l] - m);
                if (k != top)
                    rest += pf[k][l];
            }
            const float sum = 1.0f + rest;
            for (int k = 0; k < K; k++)
                pf[k][l] = l < nl ? pf[k][l] / sum : 0.0f;
            if (loss && l < nl)
                loss[l] += (m - zf[y[g0 + l]][l]) + log1pf(rest);
        }
        __m256 gz[MAX_K], Rgz[MAX_K], pRz = zero;
        for (int k = 0; k < K; k++) {
            const __m256 p = _mm256_loadu_ps(pf[k]);
            if (tangent)
                pRz = _mm256_fmadd_ps(p, Rz[k], pRz);
            gz[k] = p;
        }
        {
            float onehot[MAX_K][LANES];
            memset(onehot, 0, sizeof(float) * K * LANES);
            for (int l = 0; l < nl; l++)
                onehot[y[g0 + l]][l] = 1.0f;
            for (int k = 0; k < K; k++) {
                Rgz[k] = tangent ? _mm256_mul_ps(gz[k], _mm256_sub_ps(Rz[k], pRz)) : zero;
                gz[k] = _mm256_sub_ps(gz[k], _mm256_loadu_ps(onehot[k]));
            }
        }
        /* head: H v (or the gradient) of Wl and bl, and the gradients at the last stage's output */
        float *gS = buf + off_g[S - 1], *RgS = buf + off_Rg[S - 1];
        for (int k = 0; k < K; k++)
            _mm256_storeu_ps(hv + hv_lb + (size_t)k * LANES,
                             _mm256_add_ps(_mm256_loadu_ps(hv + hv_lb + (size_t)k * LANES), tangent ? Rgz[k] : gz[k]));
        for (size_t f = 0; f < F && !tangent; f++) {
            const __m256 hf = _mm256_loadu_ps(hS + f * LANES);
            __m256 gf = zero;
            for (int k = 0; k < K; k++) {
                float *dst = hv + hv_lw + ((size_t)k * F + f) * LANES;
                _mm256_storeu_ps(dst, _mm256_fmadd_ps(gz[k], hf, _mm256_loadu_ps(dst)));
                gf = _mm256_fmadd_ps(gz[k], bc(lin_w + (size_t)k * F + f), gf);
            }
            _mm256_storeu_ps(gS + f * LANES, gf);
        }
        for (size_t f = 0; f < F && tangent; f++) {
            const __m256 hf = _mm256_loadu_ps(hS + f * LANES), rf = _mm256_loadu_ps(RhS + f * LANES);
            __m256 gf = zero, Rgf = zero;
            for (int k = 0; k < K; k++) {
                float *dst = hv + hv_lw + ((size_t)k * F + f) * LANES;
                __m256 acc = _mm256_loadu_ps(dst);
                acc = _mm256_fmadd_ps(Rgz[k], hf, acc);
                acc = _mm256_fmadd_ps(gz[k], rf, acc);
                _mm256_storeu_ps(dst, acc);
                gf = _mm256_fmadd_ps(gz[k], bc(lin_w + (size_t)k * F + f), gf);
                Rgf = _mm256_fmadd_ps(Rgz[k], bc(lin_w + (size_t)k * F + f), Rgf);
                Rgf = _mm256_fmadd_ps(gz[k], bc(tan_lw + (size_t)k * F + f), Rgf);
            }
            _mm256_storeu_ps(gS + f * LANES, gf);
            _mm256_storeu_ps(RgS + f * LANES, Rgf);
        }
        for (int s = S - 1; s >= 0; s--) {
            float *ga = 0, *Rga = 0;
            if (s > 0) {
                ga = buf + off_ga[s];
                Rga = buf + off_Rga[s];
                memset(ga, 0, padded_size(&sh, s) * LANES * sizeof(float));
                if (tangent)
                    memset(Rga, 0, padded_size(&sh, s) * LANES * sizeof(float));
            }
            if (tangent)
                stage_backward_hvp(&sh, s, s > 0 ? buf + off_a[s] : a0, s > 0 ? buf + off_Ra[s] : 0, conv_w[s],
                                   tan_w[s], buf + off_arg[s], buf + off_on[s], buf + off_g[s], buf + off_Rg[s],
                                   hv + hv_w[s], hv + hv_b[s], ga, Rga);
            else
                stage_backward_grad(&sh, s, s > 0 ? buf + off_a[s] : a0, conv_w[s], buf + off_arg[s],
                                    buf + off_on[s], buf + off_g[s], hv + hv_w[s], hv + hv_b[s], ga);
            if (s > 0) {           /* the padded input gradients -> the previous stage's output gradients */
                const int C = sh.C[s], H = sh.H[s], Wd = sh.W[s];
                float *gp = buf + off_g[s - 1], *Rgp = buf + off_Rg[s - 1];
                for (int c = 0; c < C; c++)
                    for (int i = 0; i < H; i++)
                        for (int j = 0; j < Wd; j++) {
                            const size_t from = ((size_t)(c * (H + 2) + i + 1) * (Wd + 2) + j + 1) * LANES;
                            const size_t to = ((size_t)(c * H + i) * Wd + j) * LANES;
                            _mm256_storeu_ps(gp + to, _mm256_loadu_ps(ga + from));
                            if (tangent)
                                _mm256_storeu_ps(Rgp + to, _mm256_loadu_ps(Rga + from));
                        }
            }
        }
    }
    free(buf);
    return 0;
}

int conv_pool_ce_hvp(const float *x, int64_t n_total, int s0, int s1, int n_stages, const int *channels, int H0,
                     int W0, const float *const *conv_w, const float *const *conv_b, const float *lin_w,
                     const float *lin_b, int K, const float *const *tan_w, const float *const *tan_b,
                     const float *tan_lw, const float *tan_lb, const int64_t *y, float *hv, float *logits)
{
    /* tan_w NULL: the logits only */
    return run_single(tan_w ? 1 : 0, x, n_total, s0, s1, n_stages, channels, H0, W0, conv_w, conv_b, lin_w, lin_b,
                      K, tan_w, tan_b, tan_lw, tan_lb, y, hv, logits, 0);
}

int conv_pool_ce_grad(const float *x, int64_t n_total, int s0, int s1, int n_stages, const int *channels, int H0,
                      int W0, const float *const *conv_w, const float *const *conv_b, const float *lin_w,
                      const float *lin_b, int K, const int64_t *y, float *grad, float *loss)
{
    return run_single(2, x, n_total, s0, s1, n_stages, channels, H0, W0, conv_w, conv_b, lin_w, lin_b, K, 0, 0, 0,
                      0, y, grad, 0, loss);
}
