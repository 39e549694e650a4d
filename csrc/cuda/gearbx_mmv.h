/* gearbx's CUDA decode products (csrc/cuda/mmv.cu): a Q4_0, Q8_0 or Q4_K weight matrix in
 * ggml's layout times 1..8 F32 activation columns, for the widths decode and lossless verification use.
 * The activations are quantized to ggml's q8_1 blocks first (as llama.cpp's mmvq does); each
 * column's result is computed by the same operations in the same order whatever the number of
 * columns (width-invariant, for strict lossless verification). The scalar twin is
 * csrc/generic/mmv_ref.h. Reached from ggml-cuda's mul_mat through our patch 0005's hook. */
#ifndef GEARBX_MMV_H
#define GEARBX_MMV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GEARBX_MMV_MAX_COLS 8

/* The shape the kernels cover: weight type (ggml type id) Q4_0, Q8_0 or Q4_K, a row of k
 * values, k a multiple of 256 (8 blocks of Q4_0/Q8_0, keeping rows 16-byte aligned; a Q4_K
 * block), 1..8 columns. */
int gearbx_mmv_supported(int wtype, int64_t k, int64_t ncols);

/* Scratch bytes the product needs (the q8_1 activations), 0 when unsupported. */
size_t gearbx_mmv_scratch_bytes(int wtype, int64_t k, int64_t ncols);

/* What ggml-cuda fuses into a decode product (patch 0005 offers its fused mmvq products with
 * it): the output becomes (W x + bias) * act(gate x). NULL members are absent. */
typedef struct gearbx_mmv_fusion {
    const void *gate;    /* NULL, or a matrix of W's type, shape and row bytes, 16-byte aligned */
    int glu_op;          /* act (ggml_glu_op ids): GEARBX_MMV_GEGLU (gelu, tanh form) or
                          * GEARBX_MMV_SWIGLU (silu), as ggml-cuda computes them */
    const float *bias;   /* NULL, or added to W x: bias[c*bias_stride + r] */
    int64_t bias_stride; /* in floats */
} gearbx_mmv_fusion;
#define GEARBX_MMV_GEGLU 1
#define GEARBX_MMV_SWIGLU 2

/* dst[c*dst_stride + r] = sum_k W[r][k] * x[c*x_stride + k] for r < nrows, c < ncols, on
 * `stream` (a cudaStream_t), asynchronously. W is 16-byte aligned with rows row_bytes apart;
 * scratch holds gearbx_mmv_scratch_bytes. Returns 0, or -1 when the shape is not covered or
 * the launch failed (the message in err, err_len bytes, may be NULL). */
int gearbx_mmv(int wtype, const void *w, size_t row_bytes, int64_t nrows, int64_t k,
               const float *x, int64_t x_stride, int64_t ncols, float *dst, int64_t dst_stride,
               void *scratch, void *stream, char *err, size_t err_len);

/* gearbx_mmv with a fusion (NULL: none). Each of the two products' sums is the same bits as
 * gearbx_mmv computes it alone; -1 also when the gate's activation is not covered. */
int gearbx_mmv_fused(int wtype, const void *w, size_t row_bytes, int64_t nrows, int64_t k,
                     const float *x, int64_t x_stride, int64_t ncols, float *dst,
                     int64_t dst_stride, const gearbx_mmv_fusion *fusion, void *scratch,
                     void *stream, char *err, size_t err_len);

/* Only the activation step: x to q8_1 blocks in scratch (for the parity test). */
int gearbx_mmv_quantize_x(const float *x, int64_t x_stride, int64_t k, int64_t ncols,
                          void *scratch, void *stream);

/* For measurements: the kernel (5: activations quantized into scratch, then the product; 6: 5
 * with a grid of as many CTAs as fit at once; 7: 6 quantizing the activations inside each
 * CTA, one launch) and the rows a warp takes at once (1, 2, 4); 0 restores the default (5 with
 * rows by type and width; 7 with 4 rows for output-head-sized products at widths 4-8; 7
 * falls back to 5 where its shared memory would not fit). Every choice gives the same bits.
 * Not thread-safe: set it before products run. Returns 0, or -1 for values out of range. */
int gearbx_mmv_tune(int kernel, int rows);

/* For measurements: launch with programmatic dependent launch (on = 1, the default: on devices
 * of compute capability 9.0 and up each kernel may start while the one before it on the stream
 * ends, streaming its weights before it waits for the activations; llama.cpp launches its
 * own kernels so) or without (0). Not thread-safe, as gearbx_mmv_tune. Returns 0. */
int gearbx_mmv_pdl(int on);

/* The products the hook takes: every supported shape, whatever the width (ours measured ahead
 * of llama.cpp's kernels end to end at width 1, docs/gpu/h100-2026-12-07e; the same kernel at
 * every width keeps strict lossless verification bit-identical to single-token decoding). */
int gearbx_mmv_preferred(int wtype, int64_t nrows, int64_t k, int64_t ncols);

/* Registers gearbx_mmv_fused as ggml-cuda's mul_mat hook (our patch 0005) for the products
 * gearbx_mmv_preferred takes, fused ones included, or removes it: on = 0. The hook is offered a product only on
 * threads whose CUDA graph variant has bit 62 (GGML_CUDA_VARIANT_MMV_HOOK) set. Returns 0. */
int gearbx_mmv_install(int on);

#ifdef __cplusplus
}
#endif

#endif
