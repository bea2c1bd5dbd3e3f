/* The insertion-order sums of lib.core.landscape.delta.OrderSums (AVX2, float64), built by lib.core.native.
 *
 * For R random insertion orders pi_r of N samples and B per-sample loss rows l(t) (thetas t), every order's
 *     order_sum[r][k-1] += sum_t d_k(t)^2,   d_k = (l_{pi_r(k+1)} - S_k / k) / (k + 1),   S_k = sum_{i <= k} l_{pi_r(i)}
 * for k = 1..N-1. The losses come theta-minor, lt[i * bp + t] (bp = B rounded up to 4, the padding rows zero:
 * they add nothing), so one sample's B losses are contiguous and the thetas fill the four lanes of a register;
 * up to 16 thetas run at once, each lane with its own running sum S (the same sequential order as a cumulative
 * sum). Divisions by k and k + 1 are multiplications by the float64 inverses 1/k and 1/(k+1): the sums equal the
 * torch path's to a few units in the last place, not bitwise. Orders r0..r1-1 only (the caller splits the orders
 * over threads; each thread writes its own rows).
 */
#include <immintrin.h>
#include <stdint.h>

static inline double hsum(__m256d v) {
    __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
    lo = _mm_add_pd(lo, hi);
    return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

/* inv[k] = 1 / k for k = 1..N (inv[0] unused); returns 0, or 1 on bad sizes */
int order_sums_add(const double *lt, int64_t n, int bp, const int64_t *perms, int r0, int r1, const double *inv,
                   double *order_sum) {
    if (n < 2 || bp < 4 || bp % 4) return 1;
    for (int r = r0; r < r1; ++r) {
        const int64_t *perm = perms + (int64_t)r * n;
        double *out = order_sum + (int64_t)r * (n - 1);
        for (int t0 = 0; t0 < bp; t0 += 16) {
            int nv = (bp - t0) / 4 < 4 ? (bp - t0) / 4 : 4;
            __m256d s0, s1 = _mm256_setzero_pd(), s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
            const double *first = lt + perm[0] * bp + t0;
            s0 = _mm256_loadu_pd(first);
            if (nv > 1) s1 = _mm256_loadu_pd(first + 4);
            if (nv > 2) s2 = _mm256_loadu_pd(first + 8);
            if (nv > 3) s3 = _mm256_loadu_pd(first + 12);
            if (nv == 4) {
                for (int64_t k = 1; k < n; ++k) {
                    const double *row = lt + perm[k] * bp + t0;
                    __m256d ik = _mm256_set1_pd(inv[k]), ik1 = _mm256_set1_pd(inv[k + 1]);
                    __m256d l0 = _mm256_loadu_pd(row), l1 = _mm256_loadu_pd(row + 4);
                    __m256d l2 = _mm256_loadu_pd(row + 8), l3 = _mm256_loadu_pd(row + 12);
                    __m256d d0 = _mm256_mul_pd(_mm256_sub_pd(l0, _mm256_mul_pd(s0, ik)), ik1);
                    __m256d d1 = _mm256_mul_pd(_mm256_sub_pd(l1, _mm256_mul_pd(s1, ik)), ik1);
                    __m256d d2 = _mm256_mul_pd(_mm256_sub_pd(l2, _mm256_mul_pd(s2, ik)), ik1);
                    __m256d d3 = _mm256_mul_pd(_mm256_sub_pd(l3, _mm256_mul_pd(s3, ik)), ik1);
                    __m256d q = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(d0, d0), _mm256_mul_pd(d1, d1)),
                                              _mm256_add_pd(_mm256_mul_pd(d2, d2), _mm256_mul_pd(d3, d3)));
                    out[k - 1] += hsum(q);
                    s0 = _mm256_add_pd(s0, l0);
                    s1 = _mm256_add_pd(s1, l1);
                    s2 = _mm256_add_pd(s2, l2);
                    s3 = _mm256_add_pd(s3, l3);
                }
            } else {
                __m256d s[4] = {s0, s1, s2, s3};
                for (int64_t k = 1; k < n; ++k) {
                    const double *row = lt + perm[k] * bp + t0;
                    __m256d ik = _mm256_set1_pd(inv[k]), ik1 = _mm256_set1_pd(inv[k + 1]);
                    __m256d q = _mm256_setzero_pd();
                    for (int v = 0; v < nv; ++v) {
                        __m256d l = _mm256_loadu_pd(row + 4 * v);
                        __m256d d = _mm256_mul_pd(_mm256_sub_pd(l, _mm256_mul_pd(s[v], ik)), ik1);
                        q = _mm256_add_pd(q, _mm256_mul_pd(d, d));
                        s[v] = _mm256_add_pd(s[v], l);
                    }
                    out[k - 1] += hsum(q);
                }
            }
        }
    }
    return 0;
}
