/* The scalar twin of csrc/cuda/mmv.cu (gearbx's CUDA decode products for Q4_0, Q8_0 and Q4_K
 * weights), for its parity test (tests/gpu/mmv_test.cu): the activation quantizer, bit for bit
 * (the same float operations in the warp's butterfly order), and two dot products in double:
 * with the quantized activations (what the kernel computes, up to float accumulation) and with
 * the F32 activations (the exact product of the weights as stored). Compile without
 * contraction (-ffp-contract=off). */
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

/* Bytes of one weight block and values per block: Q4_0 18/32, Q8_0 34/32, Q4_K 144/256. */
static inline int gearbx_mmv_block_bytes(int wtype) {
    return wtype == GEARBX_T_Q4_0 ? GEARBX_Q4_0_BYTES
           : wtype == GEARBX_T_Q8_0 ? GEARBX_Q8_0_BYTES : GEARBX_Q4_K_BYTES;
}
static inline int gearbx_mmv_block_values(int wtype) {
    return wtype == GEARBX_T_Q4_K ? GEARBX_QK_K : GEARBX_QK;
}

/* Weight value j (0..31) of a Q4_0 (18 bytes) or Q8_0 (34 bytes) block, without its scale. */
static inline int gearbx_mmv_code(int wtype, const uint8_t *blk, int j) {
    if (wtype == GEARBX_T_Q4_0) {
        const uint8_t b = blk[2 + (j % 16)];
        return (j < 16 ? (b & 15) : (b >> 4)) - 8;
    }
    return (int8_t)blk[2 + j];
}

/* Scale and min (6 bits each) of sub-block j (0..7) of a Q4_K block: ggml's get_scale_min_k4
 * on the block's 12 scale bytes. */
static inline void gearbx_mmv_q4_k_scale_min(const uint8_t *blk, int j, int *sc, int *m) {
    const uint8_t *q = blk + 4;
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* The 4-bit code (0..15) of value v (0..255) of a Q4_K block: values 64c..64c+31 are the low
 * nibbles of qs[32c..32c+31], values 64c+32..64c+63 their high nibbles. */
static inline int gearbx_mmv_q4_k_code(const uint8_t *blk, int v) {
    const uint8_t b = blk[16 + 32 * (v / 64) + v % 32];
    return (v % 64) < 32 ? (b & 15) : (b >> 4);
}

/* Weight value i of a row, dequantized in double (ggml's dequantize_row_*: Q4_K
 * d*sc*q - dmin*m). */
static inline double gearbx_mmv_weight(int wtype, const uint8_t *row, int64_t i) {
    const int qk = gearbx_mmv_block_values(wtype);
    const uint8_t *blk = row + (i / qk) * gearbx_mmv_block_bytes(wtype);
    const int j = (int)(i % qk);
    if (wtype == GEARBX_T_Q4_K) {
        int sc, m;
        gearbx_mmv_q4_k_scale_min(blk, j / 32, &sc, &m);
        return gearbx_mmv_half(blk) * sc * gearbx_mmv_q4_k_code(blk, j) -
               gearbx_mmv_half(blk + 2) * m;
    }
    return gearbx_mmv_half(blk) * gearbx_mmv_code(wtype, blk, j);
}

/* A Q4_K row (nb q8_1 blocks, nb/8 weight blocks) times q8_1 activations, in double, as the
 * kernel's formula (ggml's vec_dot_q4_K_q8_1): per sub-block b of 32 with scale sc, min m and
 * activation block (d8, codes u): d*d8*sc*sum(q*u) - dmin*d8*m*sum(u). */
static inline double gearbx_mmv_dot_q4_k_ref(const uint8_t *row, const uint8_t *xq, int64_t nb,
                                             double *abs_terms) {
    double s = 0, a = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = row + (b / 8) * GEARBX_Q4_K_BYTES, *x = xq + b * GEARBX_Q8_1_BYTES;
        const double d = gearbx_mmv_half(w), dmin = gearbx_mmv_half(w + 2);
        const double d8 = gearbx_mmv_half(x);
        int sc, m;
        gearbx_mmv_q4_k_scale_min(w, (int)(b % 8), &sc, &m);
        long dot = 0, sum = 0;
        for (int j = 0; j < 32; j++) {
            dot += (long)gearbx_mmv_q4_k_code(w, (int)(b % 8) * 32 + j) * (int8_t)x[4 + j];
            sum += (int8_t)x[4 + j];
        }
        const double td = d * d8 * (double)(dot * sc), tm = dmin * d8 * (double)(sum * m);
        s += td - tm;
        a += fabs(td) + fabs(tm);
    }
    if (abs_terms) {
        *abs_terms = a;
    }
    return s;
}

/* Row (nb q8_1 blocks) times q8_1 activations (nb blocks), in double, as the kernel's formula:
 * Q4_0 dw*(d8*sum(q*u) - 8*s8) with q the unsigned nibble, Q8_0 dw*d8*sum(q*u), Q4_K
 * gearbx_mmv_dot_q4_k_ref. */
static inline double gearbx_mmv_dot_q8_ref(int wtype, const uint8_t *row, const uint8_t *xq,
                                           int64_t nb, double *abs_terms) {
    if (wtype == GEARBX_T_Q4_K) {
        return gearbx_mmv_dot_q4_k_ref(row, xq, nb, abs_terms);
    }
    const int bb = gearbx_mmv_block_bytes(wtype);
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

/* Row (k values) times F32 activations, dequantized in double: the exact product; the sum of
 * abs(w*x) in *norm when not NULL. */
static inline double gearbx_mmv_dot_f64(int wtype, const uint8_t *row, const float *x, int64_t k,
                                        double *norm) {
    double s = 0, n = 0;
    for (int64_t i = 0; i < k; i++) {
        const double t = gearbx_mmv_weight(wtype, row, i) * (double)x[i];
        s += t;
        n += fabs(t);
    }
    if (norm) {
        *norm = n;
    }
    return s;
}

#endif
