/* F32 rows to Q8_0 with AVX2: the twin of gearbx_block_q8_0 (csrc/generic/requant_block.h,
 * itself bit-identical to ggml's quantize_row_q8_0_ref), for building tiers. Four vectors per
 * block: |x| max, d = amax / 127 and id = 1 / d in scalar code (the reference's operations),
 * x * id, then roundf (half away from zero, not the vector unit's half-to-even), packed to
 * int8. A block the vector path could round differently — a NaN or inf in it, or a subnormal
 * scale (id overflows) — goes through the scalar twin, so every block is bit-identical. */
#if defined(__x86_64__) || defined(_M_X64)
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "../generic/gearbx_kernels.h"
#include "../generic/requant_block.h"

#define GBX_AVX2 __attribute__((target("avx2,fma")))

/* roundf of each lane: truncate, then one step away from zero where the dropped part is at
 * least one half (v - trunc(v) is exact). */
GBX_AVX2 static inline __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign)); /* +-1 */
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

GBX_AVX2 void gearbx_quantize_q8_0_avx2(const float *x, uint8_t *out, int64_t nblocks) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 inf = _mm256_set1_ps(INFINITY);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * GEARBX_QK;
        uint8_t *ob = out + b * GEARBX_Q8_0_BYTES;
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        __m256 bad = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            __m256 a = _mm256_andnot_ps(sign, v[k]);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ)); /* NaN or inf */
            amax = _mm256_max_ps(amax, a);
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float am = _mm_cvtss_f32(m4);
        const float d = am / 127.0f;
        if (_mm256_movemask_ps(bad) != 0 || (d != 0.0f && d < FLT_MIN)) {
            gearbx_block_q8_0(xb, ob);
            continue;
        }
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        gearbx_store_f16(ob, gearbx_f32_to_f16(d));
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            q[k] = _mm256_cvtps_epi32(round_half_away(_mm256_mul_ps(v[k], vid)));
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, perm);
        _mm256_storeu_si256((__m256i *)(ob + 2), p);
    }
}
#endif
