/* The scalar twin of csrc/cuda/mmv.cu (gearbx's CUDA decode products), for its parity test
 * (tests/gpu/mmv_test.cu): the activation quantizer, bit for bit (the same float operations in
 * the warp's butterfly order), and two dot products in double: with the quantized activations
 * (what the kernel computes, up to float accumulation) and with the F32 activations (the
 * exact product of the weights as stored). Compile without contraction (-ffp-contract=off). */
#ifndef GEARBX_MMV_REF_H
#define GEARBX_MMV_REF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "requant_block.h"

#define GEARBX_Q8_1_BYTES 36

/* One block of 32 floats to ggml's block_q8_1 (half d, half sum, 32 int8), as the kernel's
 * warp computes it: amax and sum by the butterfly over xor offsets 16, 8, 4, 2, 1. */
static inline void gearbx_mmv_quantize_block_ref(const float *x, uint8_t *out) {
    float amax[32], sum[32];
    for (int l = 0; l < 32; l++) {
        amax[l] = fabsf(x[l]);
        sum[l] = x[l];
    }
    for (int off = 16; off > 0; off >>= 1) {
        float na[32], ns[32];
        for (int l = 0; l < 32; l++) {
            na[l] = fmaxf(amax[l], amax[l ^ off]);
            ns[l] = sum[l] + sum[l ^ off];
        }
        memcpy(amax, na, sizeof na);
        memcpy(sum, ns, sizeof ns);
    }
    const float d = amax[0] / 127.0f;
    uint16_t hd = gearbx_f32_to_f16(d), hs = gearbx_f32_to_f16(sum[0]);
    memcpy(out, &hd, 2);
    memcpy(out + 2, &hs, 2);
    for (int l = 0; l < 32; l++) {
        out[4 + l] = (uint8_t)(int8_t)(amax[0] == 0.0f ? 0 : (int)roundf(x[l] / d));
    }
}

static inline double gearbx_mmv_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return (double)gearbx_f16_to_f32(h);
}

/* Weight value j (0..31) of a Q4_0 (18 bytes) or Q8_0 (34 bytes) block, without its scale. */
static inline int gearbx_mmv_code(int wtype, const uint8_t *blk, int j) {
    if (wtype == GEARBX_T_Q4_0) {
        const uint8_t b = blk[2 + (j % 16)];
        return (j < 16 ? (b & 15) : (b >> 4)) - 8;
    }
    return (int8_t)blk[2 + j];
}

/* Row (nb blocks) times q8_1 activations (nb blocks), in double, as the kernel's formula:
 * Q4_0 dw*(d8*sum(q*u) - 8*s8) with q the unsigned nibble, Q8_0 dw*d8*sum(q*u). */
static inline double gearbx_mmv_dot_q8_ref(int wtype, const uint8_t *row, const uint8_t *xq,
                                           int64_t nb, double *abs_terms) {
    const int bb = wtype == GEARBX_T_Q4_0 ? 18 : 34;
    double s = 0, a = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = row + b * bb, *x = xq + b * GEARBX_Q8_1_BYTES;
        const double dw = gearbx_mmv_half(w), d8 = gearbx_mmv_half(x), s8 = gearbx_mmv_half(x + 2);
        long sumi = 0;
        for (int j = 0; j < 32; j++) {
            const int q = gearbx_mmv_code(wtype, w, j) + (wtype == GEARBX_T_Q4_0 ? 8 : 0);
            sumi += (long)q * (int8_t)x[4 + j];
        }
        const double t = wtype == GEARBX_T_Q4_0 ? dw * (d8 * (double)sumi - 8.0 * s8)
                                                : dw * d8 * (double)sumi;
        s += t;
        a += fabs(dw * d8 * (double)sumi) + (wtype == GEARBX_T_Q4_0 ? fabs(8.0 * dw * s8) : 0.0);
    }
    if (abs_terms) {
        *abs_terms = a;
    }
    return s;
}

/* Row times F32 activations, dequantized in double: the exact product. */
static inline double gearbx_mmv_dot_f64(int wtype, const uint8_t *row, const float *x,
                                        int64_t nb) {
    const int bb = wtype == GEARBX_T_Q4_0 ? 18 : 34;
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = row + b * bb;
        const double dw = gearbx_mmv_half(w);
        for (int j = 0; j < 32; j++) {
            s += dw * gearbx_mmv_code(wtype, w, j) * (double)x[b * 32 + j];
        }
    }
    return s;
}

#endif
