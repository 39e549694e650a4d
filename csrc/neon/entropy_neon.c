/* The entropy of softmax(logits) with NEON (AArch64): the twin of csrc/generic/entropy.c (the
 * reference), as csrc/x86/entropy_avx2.c is on x86-64. Two passes: the maximum and the count
 * of NaN / +inf, then e = exp(l - max) by the same Cephes-style polynomial and the sums
 * s = sum e, t = sum e (l - max) in double lanes. NEON is part of every AArch64 CPU, so there
 * is no run-time choice to make. Verified under qemu-aarch64 (scripts/arm-check.sh). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <stddef.h>

#include "../generic/entropy_parts.h"
#include "../generic/gearbx_kernels.h"

/* e^x for x in [-87.3, 0] (clamped below). */
static inline float32x4_t exp_f32(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-87.3f));
    float32x4_t fx = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    x = vfmsq_f32(x, fx, vdupq_n_f32(0.693359375f));
    x = vfmsq_f32(x, fx, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t y = vdupq_n_f32(1.9875691500e-4f);
    y = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), y, x);
    float32x4_t x2 = vmulq_f32(x, x);
    y = vfmaq_f32(vaddq_f32(x, vdupq_n_f32(1.0f)), y, x2);
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
    return vmulq_f32(y, vreinterpretq_f32_s32(e));
}

float gearbx_entropy_bits_neon(const float *logits, size_t n, size_t *n_nonfinite) {
    const float32x4_t inf = vdupq_n_f32(INFINITY);
    float32x4_t vmax = vdupq_n_f32(-INFINITY);
    uint32x4_t vbad = vdupq_n_u32(0);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t l = vld1q_f32(logits + i);
        uint32x4_t ok = vceqq_f32(l, l); /* false for NaN */
        uint32x4_t bad = vorrq_u32(vmvnq_u32(ok), vceqq_f32(l, inf));
        vbad = vsubq_u32(vbad, bad); /* -(0xffffffff) = +1 per bad lane */
        /* vmaxnmq ignores a NaN operand (IEEE maxNum), keeping vmax. */
        vmax = vmaxnmq_f32(vmax, l);
    }
    float lanes[4];
    uint32_t bad_lanes[4];
    vst1q_f32(lanes, vmax);
    vst1q_u32(bad_lanes, vbad);
    float max = -INFINITY;
    size_t bad = 0;
    for (int k = 0; k < 4; k++) {
        bad += bad_lanes[k];
        if (lanes[k] > max && lanes[k] != INFINITY) {
            max = lanes[k];
        }
    }
    gearbx_entropy_scan(logits, i, n, &max, &bad);
    if (gearbx_entropy_undefined(n, bad, max, n_nonfinite)) {
        return NAN;
    }
    const float32x4_t vm = vdupq_n_f32(max);
    const float32x4_t dmin = vdupq_n_f32(-87.3f);
    float64x2_t s0 = vdupq_n_f64(0.0), s1 = vdupq_n_f64(0.0);
    float64x2_t t0 = vdupq_n_f64(0.0), t1 = vdupq_n_f64(0.0);
    for (i = 0; i + 4 <= n; i += 4) {
        /* Below e^-87.3 a token counts as probability 0, exactly (as in the AVX2 twin). */
        float32x4_t raw = vsubq_f32(vld1q_f32(logits + i), vm);
        float32x4_t d = vmaxq_f32(raw, dmin);
        float32x4_t e = vreinterpretq_f32_u32(
            vandq_u32(vreinterpretq_u32_f32(exp_f32(d)), vcgtq_f32(raw, dmin)));
        float32x4_t ed = vmulq_f32(e, d);
        s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(e)));
        s1 = vaddq_f64(s1, vcvt_high_f64_f32(e));
        t0 = vaddq_f64(t0, vcvt_f64_f32(vget_low_f32(ed)));
        t1 = vaddq_f64(t1, vcvt_high_f64_f32(ed));
    }
    double s = vaddvq_f64(vaddq_f64(s0, s1));
    double t = vaddvq_f64(vaddq_f64(t0, t1));
    return gearbx_entropy_finish(logits, i, n, max, s, t);
}
#endif
