/* Scalar requantization (the CPU twin of csrc/cuda/requant.cu and the reference of the SIMD
 * twins): F32/F16/BF16 rows to Q8_0, Q4_0 or Q4_K, block by block with the quantizers of
 * requant_block.h. */
#include "gearbx_kernels.h"
#include "requant_block.h"

int gearbx_requant_supported(int src_type, int dst_type) {
    int src_ok = src_type == GEARBX_T_F32 || src_type == GEARBX_T_F16 || src_type == GEARBX_T_BF16;
    return src_ok && gearbx_block_bytes(dst_type) != 0;
}

int gearbx_requant_ref(int src_type, const void *src, int dst_type, void *dst, int64_t n) {
    if (!gearbx_requant_supported(src_type, dst_type) || n < 0 ||
        n % gearbx_block_values(dst_type) != 0) {
        return -1;
    }
    for (int64_t b = 0; b < n / gearbx_block_values(dst_type); b++) {
        gearbx_requant_block(src_type, src, dst_type, (uint8_t *)dst, b);
    }
    return 0;
}

uint16_t gearbx_fp32_to_fp16(float f) { return gearbx_f32_to_f16(f); }

float gearbx_fp16_to_fp32(uint16_t h) { return gearbx_f16_to_f32(h); }
