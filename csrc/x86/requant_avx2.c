/* F32 rows to Q8_0, Q4_0 and Q4_K with AVX2+FMA: the twins of the block quantizers of
 * csrc/generic/requant_block.h (themselves bit-identical to ggml's quantize_row_*_ref as
 * llama.cpp builds them), for building tiers. Each performs the reference's operations in the
 * reference's order, only several at once:
 * - Q8_0 and Q4_0 vectorise within a block of 32 (the scale from the block's |x| maximum in
 *   scalar code, then 32 products, rounded as the reference rounds them);
 * - Q4_K runs make_qkx2_quants for the 8 sub-blocks of a 256-value block in the 8 lanes, one
 *   sub-block per lane, so every lane's sums accumulate in the reference's order.
 * A Q8_0/Q4_0 block the vector path could round differently (a NaN or inf in it, or a
 * subnormal scale whose inverse overflows) goes through the scalar twin, so every block is
 * bit-identical; Q4_K needs no such exit (its lanes take the reference's branches by masks). */
#if defined(__x86_64__) || defined(_M_X64)
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../generic/gearbx_kernels.h"
#include "../generic/requant_block.h"

#define GBX_AVX2 __attribute__((target("avx2,fma,f16c")))

/* IEEE half to float with F16C: exact, and a signalling NaN comes out quiet (as the
 * conversion ggml's x86 build uses). */
GBX_AVX2 void gearbx_f16_to_f32_row_avx2(const uint16_t *x, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    }
    if (i < n) { /* the tail through the same instruction (it quiets signalling NaNs) */
        uint16_t h[8] = {0};
        float f[8];
        memcpy(h, x + i, (size_t)(n - i) * 2);
        _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
        memcpy(out + i, f, (size_t)(n - i) * 4);
    }
}

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

/* Loads a block of 32; returns |x|'s maximum and whether every value is finite. */
GBX_AVX2 static inline float load32(const float *xb, __m256 *v, int *finite) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 inf = _mm256_set1_ps(INFINITY);
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
    *finite = _mm256_movemask_ps(bad) == 0;
    return _mm_cvtss_f32(m4);
}

GBX_AVX2 void gearbx_quantize_q8_0_avx2(const float *x, uint8_t *out, int64_t nblocks) {
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * GEARBX_QK;
        uint8_t *ob = out + b * GEARBX_Q8_0_BYTES;
        __m256 v[4];
        int finite;
        const float am = load32(xb, v, &finite);
        const float d = am / 127.0f;
        if (!finite || (d != 0.0f && d < FLT_MIN)) {
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

/* The low byte of each int32 lane of a..d, in order (32 bytes). */
GBX_AVX2 static inline __m256i low_bytes(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ff = _mm256_set1_epi32(0xff);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i ab = _mm256_packus_epi32(_mm256_and_si256(a, ff), _mm256_and_si256(b, ff));
    __m256i cd = _mm256_packus_epi32(_mm256_and_si256(c, ff), _mm256_and_si256(d, ff));
    return _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), perm);
}

GBX_AVX2 void gearbx_quantize_q4_0_avx2(const float *x, uint8_t *out, int64_t nblocks) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * GEARBX_QK;
        uint8_t *ob = out + b * GEARBX_Q4_0_BYTES;
        __m256 v[4];
        int finite;
        const float am = load32(xb, v, &finite);
        /* The reference keeps the first value whose |x| is the maximum (and +0 when all are
         * zeros); its sign decides d's. */
        float max = 0.0f;
        if (am > 0.0f) {
            const __m256 vam = _mm256_set1_ps(am);
            for (int k = 0; k < 4; k++) {
                int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v[k]), vam, _CMP_EQ_OQ));
                if (m != 0) {
                    max = xb[8 * k + __builtin_ctz((unsigned)m)];
                    break;
                }
            }
        }
        const float d = max / -8.0f;
        if (!finite || (d != 0.0f && fabsf(d) < FLT_MIN)) {
            gearbx_block_q4_0(xb, ob);
            continue;
        }
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        gearbx_store_f16(ob, gearbx_f32_to_f16(d));
        const __m256 vid = _mm256_set1_ps(id);
        const __m256 half8 = _mm256_set1_ps(8.5f);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            q[k] = _mm256_cvttps_epi32(_mm256_fmadd_ps(v[k], vid, half8));
        }
        /* (int8_t) of each value, then MIN(15, .) as signed bytes, as the reference does */
        __m256i p = _mm256_min_epi8(low_bytes(q[0], q[1], q[2], q[3]), _mm256_set1_epi8(15));
        __m128i lo = _mm256_castsi256_si128(p);
        __m128i hi = _mm256_extracti128_si256(p, 1);
        hi = _mm_and_si128(_mm_slli_epi16(hi, 4), _mm_set1_epi8((char)0xF0));
        _mm_storeu_si128((__m128i *)(ob + 2), _mm_or_si128(lo, hi));
    }
}

/* nearest_int of each lane given v + 12582912 (gearbx_nearest_int_of), clamped to [0, 15]. */
GBX_AVX2 static inline __m256i nearest_0_15(__m256 v_plus_magic) {
    __m256i i = _mm256_and_si256(_mm256_castps_si256(v_plus_magic), _mm256_set1_epi32(0x007fffff));
    i = _mm256_sub_epi32(i, _mm256_set1_epi32(0x00400000));
    return _mm256_min_epi32(_mm256_max_epi32(i, _mm256_setzero_si256()), _mm256_set1_epi32(15));
}

/* gearbx_qkx2_32 for 8 sub-blocks at once: xt[i] and w[i] hold element i of each lane's
 * sub-block; L[i] receives its 4-bit values. Returns the scales, *the_min the negated mins. */
GBX_AVX2 static __m256 qkx2_x8(const __m256 *xt, const __m256 *w, __m256i *L, __m256 *the_min) {
    const __m256 magic = _mm256_set1_ps(GEARBX_MAGIC);
    const __m256 zero = _mm256_setzero_ps();
    __m256 min = xt[0], max = xt[0];
    __m256 sum_w = w[0];
    __m256 sum_x = _mm256_mul_ps(sum_w, xt[0]);
    for (int i = 1; i < 32; ++i) {
        min = _mm256_min_ps(xt[i], min); /* x < min ? x : min */
        max = _mm256_max_ps(xt[i], max); /* x > max ? x : max */
        sum_w = _mm256_add_ps(sum_w, w[i]);
        sum_x = _mm256_fmadd_ps(w[i], xt[i], sum_x);
    }
    min = _mm256_andnot_ps(_mm256_cmp_ps(min, zero, _CMP_GT_OQ), min);
    const __m256 flat = _mm256_cmp_ps(max, min, _CMP_EQ_OQ);
    __m256 iscale = _mm256_div_ps(_mm256_set1_ps(15.0f), _mm256_sub_ps(max, min));
    __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale);
    __m256 best = zero;
    for (int i = 0; i < 32; ++i) {
        L[i] = nearest_0_15(_mm256_fmadd_ps(iscale, _mm256_sub_ps(xt[i], min), magic));
        __m256 diff = _mm256_sub_ps(_mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(L[i]), min), xt[i]);
        best = _mm256_fmadd_ps(w[i], _mm256_mul_ps(diff, diff), best);
    }
    __m256i Laux[32];
    for (int is = 0; is <= 20; ++is) {
        const float num = fmaf(0.1f, (float)is, -1.f) + 15.0f;
        iscale = _mm256_div_ps(_mm256_set1_ps(num), _mm256_sub_ps(max, min));
        __m256 sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < 32; ++i) {
            Laux[i] = nearest_0_15(_mm256_fmadd_ps(iscale, _mm256_sub_ps(xt[i], min), magic));
            __m256 l = _mm256_cvtepi32_ps(Laux[i]);
            __m256 wl = _mm256_mul_ps(w[i], l);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_fmadd_ps(wl, l, sum_l2);
            sum_xl = _mm256_fmadd_ps(wl, xt[i], sum_xl);
        }
        __m256 D = _mm256_fmsub_ps(sum_w, sum_l2, _mm256_mul_ps(sum_l, sum_l));
        __m256 live = _mm256_andnot_ps(flat, _mm256_cmp_ps(D, zero, _CMP_GT_OQ));
        if (_mm256_movemask_ps(live) == 0) {
            continue;
        }
        __m256 this_min = _mm256_div_ps(_mm256_fmsub_ps(sum_l2, sum_x, _mm256_mul_ps(sum_l, sum_xl)), D);
        __m256 pos = _mm256_cmp_ps(this_min, zero, _CMP_GT_OQ);
        __m256 this_scale = _mm256_blendv_ps(
            _mm256_div_ps(_mm256_fnmadd_ps(sum_l, sum_x, _mm256_mul_ps(sum_w, sum_xl)), D),
            _mm256_div_ps(sum_xl, sum_l2), pos);
        this_min = _mm256_andnot_ps(pos, this_min);
        __m256 cur = zero;
        for (int i = 0; i < 32; ++i) {
            __m256 diff = _mm256_sub_ps(
                _mm256_fmadd_ps(this_scale, _mm256_cvtepi32_ps(Laux[i]), this_min), xt[i]);
            cur = _mm256_fmadd_ps(w[i], _mm256_mul_ps(diff, diff), cur);
        }
        __m256 upd = _mm256_and_ps(live, _mm256_cmp_ps(cur, best, _CMP_LT_OQ));
        if (_mm256_movemask_ps(upd) == 0) {
            continue;
        }
        __m256i updi = _mm256_castps_si256(upd);
        for (int i = 0; i < 32; ++i) {
            L[i] = _mm256_blendv_epi8(L[i], Laux[i], updi);
        }
        best = _mm256_blendv_ps(best, cur, upd);
        scale = _mm256_blendv_ps(scale, this_scale, upd);
        min = _mm256_blendv_ps(min, this_min, upd);
    }
    for (int i = 0; i < 32; ++i) {
        L[i] = _mm256_andnot_si256(_mm256_castps_si256(flat), L[i]);
    }
    *the_min = _mm256_xor_ps(min, _mm256_set1_ps(-0.0f));
    return _mm256_andnot_ps(flat, scale);
}

GBX_AVX2 void gearbx_quantize_q4_k_avx2(const float *x, uint8_t *out, int64_t nblocks) {
    const __m256i stride = _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * GEARBX_QK_K;
        uint8_t *ob = out + b * GEARBX_Q4_K_BYTES;
        __m256 xt[32], w[32];
        __m256 sum_x2 = _mm256_setzero_ps();
        for (int i = 0; i < 32; ++i) {
            xt[i] = _mm256_i32gather_ps(xb + i, stride, 4);
            sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xt[i], xt[i]));
        }
        const __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0f)));
        for (int i = 0; i < 32; ++i) {
            w[i] = _mm256_add_ps(av_x, _mm256_andnot_ps(sign, xt[i]));
        }
        __m256i Lt[32];
        __m256 mins_v;
        __m256 scales_v = qkx2_x8(xt, w, Lt, &mins_v);
        float scales[8], mins[8];
        _mm256_storeu_ps(scales, scales_v);
        _mm256_storeu_ps(mins, mins_v);
        uint8_t L[GEARBX_QK_K];
        for (int i = 0; i < 32; ++i) {
            int32_t t[8];
            _mm256_storeu_si256((__m256i *)t, Lt[i]);
            for (int j = 0; j < 8; ++j) {
                L[32 * j + i] = (uint8_t)t[j];
            }
        }
        memset(ob + 4, 0, 12);
        gearbx_q4_k_scales(scales, mins, ob);
        gearbx_q4_k_values(xb, L, ob);
    }
}
#endif
