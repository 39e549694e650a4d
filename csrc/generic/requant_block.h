/* Block quantizers shared by the scalar C kernels (requant.c) and the CUDA kernels
 * (csrc/cuda/requant.cu): one source, so the GPU and the CPU twin cannot drift apart.
 *
 * Each function reproduces ggml's reference quantizer (ggml-quants.c, quantize_row_*_ref)
 * bit for bit *as llama.cpp compiles it* (-O3 -march=x86-64-v3 -std=gnu11): GCC contracts
 * Q4_0's `x*id + 8.5f` into one fused multiply-add, so it is written as fmaf here, and every
 * file including this header must be compiled without contraction (-ffp-contract=off for C,
 * -fmad=false for nvcc). The float -> half conversion is exact round-to-nearest-even in
 * integer arithmetic (ggml's own rounds the same way for every value a scale can take). */
#ifndef GEARBX_REQUANT_BLOCK_H
#define GEARBX_REQUANT_BLOCK_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define GEARBX_HD __host__ __device__ __forceinline__
#else
#define GEARBX_HD static inline
#endif

/* ggml type ids (ggml.h, enum ggml_type). */
#define GEARBX_T_F32 0
#define GEARBX_T_F16 1
#define GEARBX_T_Q4_0 2
#define GEARBX_T_Q8_0 8
#define GEARBX_T_BF16 30

#define GEARBX_QK 32
#define GEARBX_Q8_0_BYTES 34 /* half d; int8 qs[32] */
#define GEARBX_Q4_0_BYTES 18 /* half d; uint8 qs[16], low nibbles first half */

GEARBX_HD uint32_t gearbx_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

GEARBX_HD float gearbx_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE half -> float, exact. */
GEARBX_HD float gearbx_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) {
        return gearbx_f32_from_bits(sign | 0x7f800000u | (man << 13));
    }
    if (exp == 0) {
        if (man == 0) {
            return gearbx_f32_from_bits(sign);
        }
        /* subnormal half: man * 2^-24, exact in float */
        exp = 127 - 15 + 1;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            exp--;
        }
        man &= 0x3ffu;
        return gearbx_f32_from_bits(sign | (exp << 23) | (man << 13));
    }
    return gearbx_f32_from_bits(sign | ((exp + 127 - 15) << 23) | (man << 13));
}

/* float -> IEEE half, round to nearest even; overflow to inf, NaN stays NaN. */
GEARBX_HD uint16_t gearbx_f32_to_f16(float f) {
    uint32_t x = gearbx_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    }
    if (ax >= 0x477ff000u) { /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (ax < 0x38800000u) { /* below the smallest normal half (2^-14): subnormal or zero */
        uint32_t e = ax >> 23;
        if (e < 102) { /* below 2^-25: rounds to zero */
            return sign;
        }
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) {
            q++;
        }
        return (uint16_t)(sign | q);
    }
    uint32_t m = ax + 0xfff + ((ax >> 13) & 1u); /* round the 13 dropped bits to even */
    return (uint16_t)(sign | ((m - 0x38000000u) >> 13));
}

GEARBX_HD float gearbx_bf16_to_f32(uint16_t b) {
    return gearbx_f32_from_bits((uint32_t)b << 16);
}

/* Element i of a row of type src_type (F32, F16 or BF16). */
GEARBX_HD float gearbx_load(int src_type, const void *src, int64_t i) {
    if (src_type == GEARBX_T_F32) {
        return ((const float *)src)[i];
    }
    uint16_t v = ((const uint16_t *)src)[i];
    return src_type == GEARBX_T_F16 ? gearbx_f16_to_f32(v) : gearbx_bf16_to_f32(v);
}

/* Float -> int32 as x86's cvttss2si/cvttps2dq do it (what llama.cpp's CPU build runs):
 * truncation, and INT32_MIN for NaN and out-of-range values (C leaves those undefined; CUDA
 * saturates, so the GPU needs this spelled out). */
GEARBX_HD int32_t gearbx_cvtt_i32(float v) {
    if (v > -2147483904.0f && v < 2147483648.0f) {
        return (int32_t)v;
    }
    return INT32_MIN;
}

GEARBX_HD void gearbx_store_f16(uint8_t *out, uint16_t h) {
    out[0] = (uint8_t)(h & 0xffu);
    out[1] = (uint8_t)(h >> 8);
}

/* quantize_row_q8_0_ref for one block of 32 values. */
GEARBX_HD void gearbx_block_q8_0(const float *x, uint8_t *out) {
    float amax = 0.0f;
    for (int j = 0; j < GEARBX_QK; j++) {
        float a = fabsf(x[j]);
        amax = amax > a ? amax : a;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    gearbx_store_f16(out, gearbx_f32_to_f16(d));
    for (int j = 0; j < GEARBX_QK; j++) {
        out[2 + j] = (uint8_t)(gearbx_cvtt_i32(roundf(x[j] * id)) & 0xff);
    }
}

/* quantize_row_q4_0_ref for one block of 32 values (x*id + 8.5 fused, as GCC builds it). */
GEARBX_HD void gearbx_block_q4_0(const float *x, uint8_t *out) {
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < GEARBX_QK; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    gearbx_store_f16(out, gearbx_f32_to_f16(d));
    for (int j = 0; j < GEARBX_QK / 2; j++) {
        /* (int8_t)(x0 + 8.5f), then MIN(15, ...) on the signed byte, as ggml does */
        int8_t q0 = (int8_t)(gearbx_cvtt_i32(fmaf(x[j], id, 8.5f)) & 0xff);
        int8_t q1 = (int8_t)(gearbx_cvtt_i32(fmaf(x[GEARBX_QK / 2 + j], id, 8.5f)) & 0xff);
        q0 = q0 < 15 ? q0 : 15;
        q1 = q1 < 15 ? q1 : 15;
        out[2 + j] = (uint8_t)(((uint8_t)q0) | (uint8_t)((uint8_t)q1 << 4));
    }
}

/* Bytes one block of dst_type takes (0: not a type these kernels write). */
GEARBX_HD int gearbx_block_bytes(int dst_type) {
    return dst_type == GEARBX_T_Q8_0 ? GEARBX_Q8_0_BYTES
         : dst_type == GEARBX_T_Q4_0 ? GEARBX_Q4_0_BYTES
                                     : 0;
}

/* Loads block b of the source and quantizes it into dst (block b of the output). */
GEARBX_HD void gearbx_requant_block(int src_type, const void *src, int dst_type, uint8_t *dst,
                                    int64_t b) {
    float x[GEARBX_QK];
    for (int j = 0; j < GEARBX_QK; j++) {
        x[j] = gearbx_load(src_type, src, b * GEARBX_QK + j);
    }
    if (dst_type == GEARBX_T_Q8_0) {
        gearbx_block_q8_0(x, dst + b * GEARBX_Q8_0_BYTES);
    } else {
        gearbx_block_q4_0(x, dst + b * GEARBX_Q4_0_BYTES);
    }
}

#endif
