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
#define GEARBX_T_Q4_K 12
#define GEARBX_T_BF16 30

#define GEARBX_QK 32
#define GEARBX_Q8_0_BYTES 34 /* half d; int8 qs[32] */
#define GEARBX_Q4_0_BYTES 18 /* half d; uint8 qs[16], low nibbles first half */
#define GEARBX_QK_K 256
#define GEARBX_Q4_K_BYTES 144 /* half d, dmin; uint8 scales[12] (6-bit); uint8 qs[128] */

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

/* The machine whose llama.cpp build the quantizers reproduce: AArch64 for host code compiled
 * for it, x86-64 otherwise (the CUDA kernels follow x86-64, the GPU machine's host). The two
 * builds differ where C leaves the result to the hardware or the compiler: float -> int of
 * values out of range (and NaN), and one fused multiply-add GCC finds only on AArch64. */
#if defined(__aarch64__) && !defined(__CUDA_ARCH__)
#define GEARBX_ARM_BUILD 1
#else
#define GEARBX_ARM_BUILD 0
#endif

/* Float -> int32 as the conversion instructions of that build do it: x86's cvttss2si and
 * cvttps2dq truncate and give INT32_MIN for NaN and out-of-range values; AArch64's FCVTZS
 * truncates, saturates, and gives 0 for NaN. (C leaves those cases undefined; CUDA
 * saturates, so the GPU needs this spelled out.) */
GEARBX_HD int32_t gearbx_cvtt_i32(float v) {
    if (v > -2147483904.0f && v < 2147483648.0f) {
        return (int32_t)v;
    }
#if GEARBX_ARM_BUILD
    return v != v ? 0 : v > 0 ? INT32_MAX : INT32_MIN;
#else
    return INT32_MIN;
#endif
}

/* acc + x*x as that build sums squares: fused on AArch64; on x86-64 GCC vectorises the
 * squares, so each is rounded before the (in-order) sum. */
GEARBX_HD float gearbx_add_square(float acc, float x) {
#if GEARBX_ARM_BUILD
    return fmaf(x, x, acc);
#else
    return acc + x * x;
#endif
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

/* ggml's nearest_int(v) (round half to even through the float adder) given v + 12582912.f
 * already computed: GCC fuses that add with the multiply before it wherever there is one, so
 * the callers compute it, as fmaf where ggml's build fuses. */
GEARBX_HD int32_t gearbx_nearest_int_of(float v_plus_magic) {
#ifdef __CUDA_ARCH__
    /* The GPU makes every NaN 0x7fffffff; x86 makes an invalid operation's NaN 0xffc00000
     * (whose value here is 0) and keeps an input NaN's payload, which the GPU cannot: a NaN
     * counts as x86's default NaN (blocks holding NaN inputs can differ on the GPU). */
    if (v_plus_magic != v_plus_magic) return 0;
#endif
    return (int32_t)(gearbx_f32_bits(v_plus_magic) & 0x007fffffu) - 0x00400000;
}

#define GEARBX_MAGIC 12582912.0f

GEARBX_HD int32_t gearbx_clamp_i32(int32_t v, int32_t hi) {
    return v < 0 ? 0 : v > hi ? hi : v;
}

/* make_qkx2_quants(32, 15, x, w, L, &the_min, Laux, -1.f, 0.1f, 20, false) of ggml-quants.c,
 * with the fused multiply-adds where GCC (-O3 -march=x86-64-v3) puts them in llama.cpp's
 * build: Σw·x, every nearest_int(a·b), the candidate scale, L·scale + min, Σw·diff²,
 * Σ(w·l)·l and Σ(w·l)·x (Σw·l adds the rounded product), and the three 2x2 determinants
 * (the second product rounded, the first fused). Returns the scale; *the_min = -min. */
GEARBX_HD float gearbx_qkx2_32(const float *x, const float *w, uint8_t *L, float *the_min) {
    const int nmax = 15;
    float min = x[0];
    float max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < 32; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x = fmaf(w[i], x[i], sum_x);
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < 32; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < 32; ++i) {
        int32_t l = gearbx_clamp_i32(gearbx_nearest_int_of(fmaf(iscale, x[i] - min, GEARBX_MAGIC)), nmax);
        L[i] = (uint8_t)l;
        float diff = fmaf(scale, (float)l, min) - x[i];
        best_error = fmaf(w[i], diff * diff, best_error);
    }
    uint8_t Laux[32];
    for (int is = 0; is <= 20; ++is) {
        iscale = (fmaf(0.1f, (float)is, -1.f) + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < 32; ++i) {
            int32_t l = gearbx_clamp_i32(gearbx_nearest_int_of(fmaf(iscale, x[i] - min, GEARBX_MAGIC)), nmax);
            Laux[i] = (uint8_t)l;
            float wl = w[i] * (float)l;
            sum_l += wl;
            sum_l2 = fmaf(wl, (float)l, sum_l2);
            sum_xl = fmaf(wl, x[i], sum_xl);
        }
        float D = fmaf(sum_w, sum_l2, -(sum_l * sum_l));
        if (D > 0) {
            float this_min = fmaf(sum_l2, sum_x, -(sum_l * sum_xl)) / D;
            float this_scale;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            } else {
                this_scale = fmaf(-sum_l, sum_x, sum_w * sum_xl) / D;
            }
            float cur_error = 0;
            for (int i = 0; i < 32; ++i) {
                float diff = fmaf(this_scale, (float)Laux[i], this_min) - x[i];
                cur_error = fmaf(w[i], diff * diff, cur_error);
            }
            if (cur_error < best_error) {
                for (int i = 0; i < 32; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Packs the 8 sub-block scales and mins of a Q4_K block (6 bits each, ggml's layout) and
 * writes d and dmin: the second half of quantize_row_q4_K_ref's per-block work. */
GEARBX_HD void gearbx_q4_k_scales(const float *scales, const float *mins, uint8_t *out) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t *sc = out + 4;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)gearbx_nearest_int_of(fmaf(inv_scale, scales[j], GEARBX_MAGIC));
        uint8_t lm = (uint8_t)gearbx_nearest_int_of(fmaf(inv_min, mins[j], GEARBX_MAGIC));
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
            sc[j - 0] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    gearbx_store_f16(out, gearbx_f32_to_f16(max_scale / 63.f));
    gearbx_store_f16(out + 2, gearbx_f32_to_f16(max_min / 63.f));
}

/* Final 4-bit values of a Q4_K block from its packed scales (L keeps make_qkx2_quants' values
 * for a sub-block whose scale is 0, as ggml does), packed two per byte. */
GEARBX_HD void gearbx_q4_k_values(const float *x, uint8_t *L, uint8_t *out) {
    const uint8_t *sc = out + 4;
    const float d = gearbx_f16_to_f32((uint16_t)(out[0] | (out[1] << 8)));
    const float dmin = gearbx_f16_to_f32((uint16_t)(out[2] | (out[3] << 8)));
    for (int j = 0; j < 8; ++j) {
        uint8_t s, m;
        if (j < 4) {
            s = sc[j] & 63;
            m = sc[j + 4] & 63;
        } else {
            s = (uint8_t)((sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4));
            m = (uint8_t)((sc[j + 4] >> 4) | ((sc[j - 0] >> 6) << 4));
        }
        const float dj = d * s;
        if (!dj) continue;
        const float dm = dmin * m;
        for (int i = 0; i < 32; ++i) {
            /* A NaN's payload becomes the value's low bits here, so which NaN the sum keeps
             * matters: x86's build adds dm + x (dm's NaN first), AArch64's x + dm. */
            const float xv = x[32 * j + i];
#if GEARBX_ARM_BUILD
            const float s = xv != xv ? xv + xv : xv + dm;
#else
            const float s = dm != dm ? dm : xv + dm;
#endif
            L[32 * j + i] = (uint8_t)gearbx_clamp_i32(gearbx_nearest_int_of(s / dj + GEARBX_MAGIC), 15);
        }
    }
    uint8_t *q = out + 16;
    for (int j = 0; j < GEARBX_QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        q += 32;
    }
}

/* quantize_row_q4_K_ref for one block of 256 values, as llama.cpp's build computes it. */
GEARBX_HD void gearbx_block_q4_k(const float *x, uint8_t *out) {
    uint8_t L[GEARBX_QK_K];
    float w[32], scales[8], mins[8];
    for (int j = 0; j < 8; ++j) {
        const float *xj = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 = gearbx_add_square(sum_x2, xj[l]);
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) w[l] = av_x + fabsf(xj[l]);
        scales[j] = gearbx_qkx2_32(xj, w, L + 32 * j, &mins[j]);
    }
    memset(out + 4, 0, 12);
    gearbx_q4_k_scales(scales, mins, out);
    gearbx_q4_k_values(x, L, out);
}

/* Values per block of dst_type: 256 for Q4_K, 32 for Q8_0 and Q4_0. */
GEARBX_HD int gearbx_block_values(int dst_type) {
    return dst_type == GEARBX_T_Q4_K ? GEARBX_QK_K : GEARBX_QK;
}

/* Bytes one block of dst_type takes (0: not a type these kernels write). */
GEARBX_HD int gearbx_block_bytes(int dst_type) {
    return dst_type == GEARBX_T_Q8_0 ? GEARBX_Q8_0_BYTES
         : dst_type == GEARBX_T_Q4_0 ? GEARBX_Q4_0_BYTES
         : dst_type == GEARBX_T_Q4_K ? GEARBX_Q4_K_BYTES
                                     : 0;
}

/* Loads block b of the source (gearbx_block_values(dst_type) values) and quantizes it into
 * block b of dst. */
GEARBX_HD void gearbx_requant_block(int src_type, const void *src, int dst_type, uint8_t *dst,
                                    int64_t b) {
    float x[GEARBX_QK_K];
    const int n = gearbx_block_values(dst_type);
    for (int j = 0; j < n; j++) {
        x[j] = gearbx_load(src_type, src, b * n + j);
    }
    if (dst_type == GEARBX_T_Q8_0) {
        gearbx_block_q8_0(x, dst + b * GEARBX_Q8_0_BYTES);
    } else if (dst_type == GEARBX_T_Q4_0) {
        gearbx_block_q4_0(x, dst + b * GEARBX_Q4_0_BYTES);
    } else {
        gearbx_block_q4_k(x, dst + b * GEARBX_Q4_K_BYTES);
    }
}

#endif
