/* The entropy of softmax(logits) with AVX2 + FMA: the twin of csrc/generic/entropy.c (the
 * reference). Two passes over the logits: the maximum and the count of NaN / +inf, then
 * e = exp(l - max) with a Cephes-style polynomial (relative error ~2e-7) and the sums
 * s = sum e, t = sum e (l - max) accumulated in double lanes. The result agrees with the
 * reference to a few 1e-6 bits (tested in src/kernels.rs); -inf logits (masked tokens) count
 * as probability 0, as in the reference. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <math.h>
#include <stddef.h>

#include "../generic/entropy_parts.h"
#include "../generic/gearbx_kernels.h"

#define GBX_AVX2 __attribute__((target("avx2,fma")))

/* e^x for x in [-87.3, 0] (clamped below: e^-87.3 ~ 1e-38 counts as 0 against s >= 1). */
GBX_AVX2 static inline __m256 exp_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    x = _mm256_max_ps(x, lo);
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f);
    const __m256 ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, ln2_hi, x);
    x = _mm256_fnmadd_ps(fx, ln2_lo, x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    __m256 x2 = _mm256_mul_ps(x, x);
    y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    /* 2^fx: fx in [-126, 0] here, a normal exponent. */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

GBX_AVX2 float gearbx_entropy_bits_avx2(const float *logits, size_t n, size_t *n_nonfinite) {
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    __m256i vbad = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 l = _mm256_loadu_ps(logits + i);
        __m256 bad = _mm256_or_ps(_mm256_cmp_ps(l, l, _CMP_UNORD_Q), _mm256_cmp_ps(l, inf, _CMP_EQ_OQ));
        vbad = _mm256_sub_epi32(vbad, _mm256_castps_si256(bad)); /* -(-1) per bad lane */
        vmax = _mm256_max_ps(l, vmax); /* NaN in l: max_ps returns its 2nd operand, vmax */
    }
    float lanes[8];
    int bad_lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    _mm256_storeu_si256((__m256i *)bad_lanes, vbad);
    float max = -INFINITY;
    size_t bad = 0;
    for (int k = 0; k < 8; k++) {
        bad += (size_t)bad_lanes[k];
        if (lanes[k] > max && lanes[k] != INFINITY) {
            max = lanes[k];
        }
    }
    gearbx_entropy_scan(logits, i, n, &max, &bad);
    if (gearbx_entropy_undefined(n, bad, max, n_nonfinite)) {
        return NAN;
    }
    const __m256 vm = _mm256_set1_ps(max);
    const __m256 dmin = _mm256_set1_ps(-87.3f);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    __m256d t0 = _mm256_setzero_pd(), t1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        /* Below e^-87.3 (~1e-38, nothing against s >= 1) a token counts as probability 0,
         * exactly, as a -inf logit does: a one-hot row is 0 bits, and 0 * -inf is never
         * formed (d is clamped first). */
        __m256 raw = _mm256_sub_ps(_mm256_loadu_ps(logits + i), vm);
        __m256 d = _mm256_max_ps(raw, dmin);
        __m256 e = _mm256_and_ps(exp_ps(d), _mm256_cmp_ps(raw, dmin, _CMP_GT_OQ));
        __m256 ed = _mm256_mul_ps(e, d);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        t0 = _mm256_add_pd(t0, _mm256_cvtps_pd(_mm256_castps256_ps128(ed)));
        t1 = _mm256_add_pd(t1, _mm256_cvtps_pd(_mm256_extractf128_ps(ed, 1)));
    }
    double sv[4], tv[4];
    _mm256_storeu_pd(sv, _mm256_add_pd(s0, s1));
    _mm256_storeu_pd(tv, _mm256_add_pd(t0, t1));
    double s = sv[0] + sv[1] + sv[2] + sv[3];
    double t = tv[0] + tv[1] + tv[2] + tv[3];
    return gearbx_entropy_finish(logits, i, n, max, s, t);
}

int gearbx_have_avx2(void) {
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        /* F16C comes with AVX2 in every CPU that has it (x86-64-v3); the tier kernels use it. */
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    }
    return have;
}
#endif
