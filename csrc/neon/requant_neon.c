/* F32 rows to Q8_0, Q4_0 and Q4_K with NEON (AArch64): the twins of the block quantizers of
 * csrc/generic/requant_block.h, as csrc/x86/requant_avx2.c is on x86-64, built the same way:
 * - Q8_0 and Q4_0 vectorise within a block of 32 (the scale in scalar code, then the products
 *   rounded as the reference rounds them: vrndaq is roundf, FCVTZS truncates);
 * - Q4_K runs make_qkx2_quants for 4 sub-blocks at once, one per lane (two passes per block of
 *   256), every fused multiply-add where the scalar twin has its fmaf; the reference's
 *   `x < min ? x : min` is written as compare-and-select (NEON's min propagates NaN).
 * Q8_0/Q4_0 blocks holding a NaN or inf, or whose scale is subnormal (its inverse can
 * overflow, and FCVTZS saturates where x86 returns INT32_MIN), go through the scalar twin.
 * Verified against the scalar twin under qemu-aarch64 (scripts/arm-check.sh). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../generic/gearbx_kernels.h"
#include "../generic/requant_block.h"

/* IEEE half to float (FCVTL): exact, and a signalling NaN comes out quiet. */
void gearbx_f16_to_f32_row_neon(const uint16_t *x, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
    }
    if (i < n) { /* the tail through the same instruction (it quiets signalling NaNs) */
        uint16_t h[4] = {0};
        float f[4];
        memcpy(h, x + i, (size_t)(n - i) * 2);
        vst1q_f32(f, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h))));
        memcpy(out + i, f, (size_t)(n - i) * 4);
    }
}

/* Loads a block of 32; returns |x|'s maximum and whether every value is finite. */
static inline float load32(const float *xb, float32x4_t *v, int *finite) {
    float32x4_t amax = vdupq_n_f32(0.0f);
    uint32x4_t ok = vdupq_n_u32(~0u);
    for (int k = 0; k < 8; k++) {
        v[k] = vld1q_f32(xb + 4 * k);
        float32x4_t a = vabsq_f32(v[k]);
        ok = vandq_u32(ok, vcltq_f32(a, vdupq_n_f32(INFINITY))); /* false for NaN and inf */
        amax = vmaxq_f32(amax, a);
    }
    *finite = vminvq_u32(ok) != 0;
    return vmaxvq_f32(amax);
}

void gearbx_quantize_q8_0_neon(const float *x, uint8_t *out, int64_t nblocks) {
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * GEARBX_QK;
        uint8_t *ob = out + b * GEARBX_Q8_0_BYTES;
        float32x4_t v[8];
        int finite;
        const float am = load32(xb, v, &finite);
        const float d = am / 127.0f;
        if (!finite || (d != 0.0f && d < FLT_MIN)) {
            gearbx_block_q8_0(xb, ob);
            continue;
        }
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        gearbx_store_f16(ob, gearbx_f32_to_f16(d));
        for (int k = 0; k < 8; k += 2) {
            int32x4_t q0 = vcvtq_s32_f32(vrndaq_f32(vmulq_n_f32(v[k], id)));
            int32x4_t q1 = vcvtq_s32_f32(vrndaq_f32(vmulq_n_f32(v[k + 1], id)));
            int16x8_t h = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
            vst1_s8((int8_t *)(ob + 2 + 4 * k), vmovn_s16(h));
        }
    }
}

void gearbx_quantize_q4_0_neon(const float *x, uint8_t *out, int64_t nblocks) {
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * GEARBX_QK;
        uint8_t *ob = out + b * GEARBX_Q4_0_BYTES;
        float32x4_t v[8];
        int finite;
        const float am = load32(xb, v, &finite);
        /* The reference keeps the first value whose |x| is the maximum (+0 when all are 0). */
        float max = 0.0f;
        if (am > 0.0f) {
            for (int j = 0; j < GEARBX_QK; j++) {
                if (fabsf(xb[j]) == am) {
                    max = xb[j];
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
        const float32x4_t vid = vdupq_n_f32(id);
        uint8_t q[GEARBX_QK];
        for (int k = 0; k < 8; k += 2) {
            /* x*id + 8.5 lies in [0, 16.5] here: truncation, then MIN(15, .) */
            int32x4_t q0 = vcvtq_s32_f32(vfmaq_f32(vdupq_n_f32(8.5f), v[k], vid));
            int32x4_t q1 = vcvtq_s32_f32(vfmaq_f32(vdupq_n_f32(8.5f), v[k + 1], vid));
            int16x8_t h = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
            vst1_u8(q + 4 * k, vmin_u8(vreinterpret_u8_s8(vmovn_s16(h)), vdup_n_u8(15)));
        }
        uint8x16_t lo = vld1q_u8(q), hi = vld1q_u8(q + 16);
        vst1q_u8(ob + 2, vorrq_u8(lo, vshlq_n_u8(hi, 4)));
    }
}

/* nearest_int of each lane given v + 12582912 (gearbx_nearest_int_of), clamped to [0, 15]. */
static inline int32x4_t nearest_0_15(float32x4_t v_plus_magic) {
    int32x4_t i = vandq_s32(vreinterpretq_s32_f32(v_plus_magic), vdupq_n_s32(0x007fffff));
    i = vsubq_s32(i, vdupq_n_s32(0x00400000));
    return vminq_s32(vmaxq_s32(i, vdupq_n_s32(0)), vdupq_n_s32(15));
}

/* a*b - c and c - a*b, each with one rounding (x86's fmsub and fnmadd). */
static inline float32x4_t fmsub(float32x4_t a, float32x4_t b, float32x4_t c) {
    return vfmaq_f32(vnegq_f32(c), a, b);
}

/* gearbx_qkx2_32 for 4 sub-blocks at once (qkx2_x8 of the AVX2 twin, 4 lanes wide). */
static float32x4_t qkx2_x4(const float32x4_t *xt, const float32x4_t *w, int32x4_t *L,
                           float32x4_t *the_min) {
    const float32x4_t magic = vdupq_n_f32(GEARBX_MAGIC);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    float32x4_t min = xt[0], max = xt[0];
    float32x4_t sum_w = w[0];
    float32x4_t sum_x = vmulq_f32(sum_w, xt[0]);
    for (int i = 1; i < 32; ++i) {
        min = vbslq_f32(vcltq_f32(xt[i], min), xt[i], min);
        max = vbslq_f32(vcgtq_f32(xt[i], max), xt[i], max);
        sum_w = vaddq_f32(sum_w, w[i]);
        sum_x = vfmaq_f32(sum_x, w[i], xt[i]);
    }
    min = vbslq_f32(vcgtq_f32(min, zero), zero, min);
    const uint32x4_t flat = vceqq_f32(max, min);
    float32x4_t iscale = vdivq_f32(vdupq_n_f32(15.0f), vsubq_f32(max, min));
    float32x4_t scale = vdivq_f32(vdupq_n_f32(1.0f), iscale);
    float32x4_t best = zero;
    for (int i = 0; i < 32; ++i) {
        L[i] = nearest_0_15(vfmaq_f32(magic, iscale, vsubq_f32(xt[i], min)));
        float32x4_t diff = vsubq_f32(vfmaq_f32(min, scale, vcvtq_f32_s32(L[i])), xt[i]);
        best = vfmaq_f32(best, w[i], vmulq_f32(diff, diff));
    }
    int32x4_t Laux[32];
    for (int is = 0; is <= 20; ++is) {
        const float num = fmaf(0.1f, (float)is, -1.f) + 15.0f;
        iscale = vdivq_f32(vdupq_n_f32(num), vsubq_f32(max, min));
        float32x4_t sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < 32; ++i) {
            Laux[i] = nearest_0_15(vfmaq_f32(magic, iscale, vsubq_f32(xt[i], min)));
            float32x4_t l = vcvtq_f32_s32(Laux[i]);
            float32x4_t wl = vmulq_f32(w[i], l);
            sum_l = vaddq_f32(sum_l, wl);
            sum_l2 = vfmaq_f32(sum_l2, wl, l);
            sum_xl = vfmaq_f32(sum_xl, wl, xt[i]);
        }
        float32x4_t D = fmsub(sum_w, sum_l2, vmulq_f32(sum_l, sum_l));
        uint32x4_t live = vbicq_u32(vcgtq_f32(D, zero), flat);
        if (vmaxvq_u32(live) == 0) {
            continue;
        }
        float32x4_t this_min = vdivq_f32(fmsub(sum_l2, sum_x, vmulq_f32(sum_l, sum_xl)), D);
        uint32x4_t pos = vcgtq_f32(this_min, zero);
        float32x4_t this_scale = vbslq_f32(
            pos, vdivq_f32(sum_xl, sum_l2),
            vdivq_f32(vfmsq_f32(vmulq_f32(sum_w, sum_xl), sum_l, sum_x), D));
        this_min = vbslq_f32(pos, zero, this_min);
        float32x4_t cur = zero;
        for (int i = 0; i < 32; ++i) {
            float32x4_t diff =
                vsubq_f32(vfmaq_f32(this_min, this_scale, vcvtq_f32_s32(Laux[i])), xt[i]);
            cur = vfmaq_f32(cur, w[i], vmulq_f32(diff, diff));
        }
        uint32x4_t upd = vandq_u32(live, vcltq_f32(cur, best));
        if (vmaxvq_u32(upd) == 0) {
            continue;
        }
        for (int i = 0; i < 32; ++i) {
            L[i] = vbslq_s32(upd, Laux[i], L[i]);
        }
        best = vbslq_f32(upd, cur, best);
        scale = vbslq_f32(upd, this_scale, scale);
        min = vbslq_f32(upd, this_min, min);
    }
    for (int i = 0; i < 32; ++i) {
        L[i] = vbslq_s32(flat, vdupq_n_s32(0), L[i]);
    }
    *the_min = vnegq_f32(min);
    return vbslq_f32(flat, zero, scale);
}

void gearbx_quantize_q4_k_neon(const float *x, uint8_t *out, int64_t nblocks) {
    for (int64_t b = 0; b < nblocks; b++) {
        const float *xb = x + b * GEARBX_QK_K;
        uint8_t *ob = out + b * GEARBX_Q4_K_BYTES;
        float scales[8], mins[8];
        uint8_t L[GEARBX_QK_K];
        for (int half = 0; half < 2; ++half) {
            const float *xh = xb + 128 * half;
            float32x4_t xt[32], w[32];
            float32x4_t sum_x2 = vdupq_n_f32(0.0f);
            for (int i = 0; i < 32; ++i) {
                const float lane[4] = {xh[i], xh[32 + i], xh[64 + i], xh[96 + i]};
                xt[i] = vld1q_f32(lane);
                sum_x2 = vfmaq_f32(sum_x2, xt[i], xt[i]); /* gearbx_add_square on AArch64 */
            }
            const float32x4_t av_x = vsqrtq_f32(vdivq_f32(sum_x2, vdupq_n_f32(32.0f)));
            for (int i = 0; i < 32; ++i) {
                w[i] = vaddq_f32(av_x, vabsq_f32(xt[i]));
            }
            int32x4_t Lt[32];
            float32x4_t mins_v;
            vst1q_f32(scales + 4 * half, qkx2_x4(xt, w, Lt, &mins_v));
            vst1q_f32(mins + 4 * half, mins_v);
            for (int i = 0; i < 32; ++i) {
                int32_t t[4];
                vst1q_s32(t, Lt[i]);
                for (int j = 0; j < 4; ++j) {
                    L[32 * (4 * half + j) + i] = (uint8_t)t[j];
                }
            }
        }
        memset(ob + 4, 0, 12);
        gearbx_q4_k_scales(scales, mins, ob);
        gearbx_q4_k_values(xb, L, ob);
    }
}
#endif
