/* gearbx's own C kernels (reference implementations), called from Rust via src/kernels.rs. */
#ifndef GEARBX_KERNELS_H
#define GEARBX_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Entropy in bits of softmax(logits[0..n)). Writes the count of NaN / +inf logits to
 * *n_nonfinite (may be NULL) and returns NaN when there are any, or when n == 0.
 * -inf logits are allowed (masked tokens, probability 0). */
float gearbx_entropy_bits(const float *logits, size_t n, size_t *n_nonfinite);
/* The scalar reference, and its twins: on x86-64 AVX2+FMA (csrc/x86/entropy_avx2.c; call it
 * only when gearbx_have_avx2() says the CPU has both), on AArch64 NEON. gearbx_entropy_bits
 * picks. */
float gearbx_entropy_bits_scalar(const float *logits, size_t n, size_t *n_nonfinite);
#if defined(__x86_64__) || defined(_M_X64)
float gearbx_entropy_bits_avx2(const float *logits, size_t n, size_t *n_nonfinite);
int gearbx_have_avx2(void);
/* F32 to Q8_0, nblocks blocks of 32 (csrc/x86/requant_avx2.c): bit-identical to
 * gearbx_requant_ref (and ggml's reference); only when gearbx_have_avx2(). */
void gearbx_quantize_q8_0_avx2(const float *x, uint8_t *out, int64_t nblocks);
/* F32 to Q4_0 (blocks of 32) and Q4_K (blocks of 256), likewise bit-identical. */
void gearbx_quantize_q4_0_avx2(const float *x, uint8_t *out, int64_t nblocks);
void gearbx_quantize_q4_k_avx2(const float *x, uint8_t *out, int64_t nblocks);
/* IEEE half to float, n values (F16C): exact, as gearbx_fp16_to_fp32. */
void gearbx_f16_to_f32_row_avx2(const uint16_t *x, float *out, int64_t n);
#elif defined(__aarch64__)
/* The NEON twin (csrc/neon/entropy_neon.c); NEON is in every AArch64 CPU. */
float gearbx_entropy_bits_neon(const float *logits, size_t n, size_t *n_nonfinite);
/* The NEON quantizers (csrc/neon/requant_neon.c), bit-identical to gearbx_requant_ref. */
void gearbx_quantize_q8_0_neon(const float *x, uint8_t *out, int64_t nblocks);
void gearbx_quantize_q4_0_neon(const float *x, uint8_t *out, int64_t nblocks);
void gearbx_quantize_q4_k_neon(const float *x, uint8_t *out, int64_t nblocks);
void gearbx_f16_to_f32_row_neon(const uint16_t *x, float *out, int64_t n);
#endif

/* Requantization (csrc/generic/requant.c): n values (a multiple of the block: 32, 256 for
 * Q4_K) of src_type (ggml ids: F32 0, F16 1, BF16 30) into dst_type (Q4_0 2, Q8_0 8, Q4_K 12),
 * bit-identical to ggml's reference quantizers as llama.cpp builds them. Returns 0, or -1 for
 * an unsupported pair or bad n. */
int gearbx_requant_supported(int src_type, int dst_type);
int gearbx_requant_ref(int src_type, const void *src, int dst_type, void *dst, int64_t n);

/* Exact IEEE half conversions (round to nearest even), as the kernels use them. */
uint16_t gearbx_fp32_to_fp16(float f);
float gearbx_fp16_to_fp32(uint16_t h);

#ifdef __cplusplus
}
#endif

#endif
