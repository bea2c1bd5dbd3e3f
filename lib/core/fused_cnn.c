/* Per-sample cross-entropy losses of a conv-pool CNN for eight weight sets at once (lib/core/fused_cnn.py).
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
