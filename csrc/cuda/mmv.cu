/* Decode products for Q4_0 and Q8_0 weights (gearbx_mmv.h). Two launches, as llama.cpp's mmvq:
 * the activations to q8_1 codes and scales in scratch, then the product. In the product, lanes
 * of a warp share a weight row (LPR of them, by the row's length) and each reads groups of 8 of
 * its row's blocks with 16-byte loads straight into registers (ggml's 18- and 34-byte blocks are
 * only 2-byte aligned, but 8 blocks are a multiple of 16 bytes); a lane may take R rows at once
 * to share its reads of the activations. It multiplies them with the codes by dp4a exactly as
 * ggml's vec_dot_q4_0_q8_1 / q8_0_q8_1 do. Per row and column: one float accumulator per lane in
 * group order, then a fixed butterfly over the row's lanes, so a column's result does not depend
 * on how many columns share the launch.
 * Built with -fmad=false like requant.cu, the twin being csrc/generic/mmv_ref.h. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "gearbx_mmv.h"

namespace {

constexpr int T_Q4_0 = 2; /* ggml_type ids */
constexpr int T_Q8_0 = 8;
constexpr int QK = 32;

/* ggml's block_q8_1: d and the sum of the block's source values, then 32 int8 codes. */
struct q8_1 {
    half2 ds;
    int8_t qs[QK];
};
static_assert(sizeof(q8_1) == 36, "ggml's block_q8_1 layout");

template <int T> struct traits;
template <> struct traits<T_Q4_0> { static constexpr int bytes = 18; };
template <> struct traits<T_Q8_0> { static constexpr int bytes = 34; };

int block_bytes(int t) {
    return t == T_Q4_0 ? 18 : t == T_Q8_0 ? 34 : 0;
}

/* One q8_1 block from the warp's 32 values (lane l holds value l): amax and sum by a
 * butterfly (ggml's quantize_q8_1 does the same); returns lane's code, d and sum in *ds. */
__device__ __forceinline__ int8_t quantize_lane(float xi, half2 *ds) {
    float amax = fabsf(xi);
    float sum = xi;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, off));
        sum += __shfl_xor_sync(0xffffffff, sum, off);
    }
    const float d = amax / 127.0f;
    *ds = make_half2(__float2half(d), __float2half(sum));
    return amax == 0.0f ? 0 : (int8_t)roundf(xi / d);
}

/* x (ncols columns of k floats, x_stride apart) to q8_1 blocks, column c at xq + c*nb (the
 * test's view of the quantizer the product kernel runs in shared memory). */
__global__ void quantize_x_kernel(const float *__restrict__ x, int64_t x_stride, int64_t k,
                                  q8_1 *__restrict__ xq) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t c = blockIdx.y;
    if (i >= k) {
        return;
    }
    half2 ds;
    const int8_t q = quantize_lane(x[c * x_stride + i], &ds);
    q8_1 *b = xq + c * (k / QK) + i / QK;
    b->qs[i % QK] = q;
    if (i % QK == 0) {
        b->ds = ds;
    }
}

constexpr int CTA_WARPS = 4;
constexpr int GROUP = 8; /* blocks a lane reads at once: a multiple of 16 bytes */

/* The activations in scratch, as the product reads them: per column k int8 codes (16-byte
 * aligned blocks of 32), then per column nb half2 (d, sum). */
__global__ void quantize_codes_kernel(const float *__restrict__ x, int64_t x_stride, int64_t k,
                                      int8_t *__restrict__ codes, half2 *__restrict__ ds) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t c = blockIdx.y;
    if (i >= k) {
        return;
    }
    half2 d;
    codes[c * k + i] = quantize_lane(x[c * x_stride + i], &d);
    if (i % QK == 0) {
        ds[c * (k / QK) + i / QK] = d;
    }
}

/* Byte `o` .. o+3 of a register array, o a compile-time constant after unrolling. */
template <int N>
__device__ __forceinline__ int int_at(const uint32_t (&r)[N], int o) {
    const int w = o >> 2, sh = (o & 3) * 8;
    return sh == 0 ? (int)r[w] : (int)__funnelshift_r(r[w], r[w + 1], sh);
}

/* Lanes per row: the largest power of two up to 32 not above the row's groups of 8 blocks. */
__host__ __device__ inline int lanes_per_row(int nb) {
    int l = 32;
    while (l > 1 && l > nb / GROUP) {
        l >>= 1;
    }
    return l;
}

/* Rows a lane takes at once (they share its loads of the activations), by width. The result of
 * a row does not depend on it: the row's lanes and their order stay the same. Builds of the
 * test may force it (-DGEARBX_MMV_R=n) to measure each choice. */
__host__ __device__ inline int rows_per_lane(int64_t ncols) {
#ifdef GEARBX_MMV_R
    (void)ncols;
    return GEARBX_MMV_R;
#else
    return ncols == 1 ? 1 : 2;
#endif
}

/* The product: warps take units of R rows, LPR lanes per unit; a lane reads groups of 8 weight
 * blocks of each of its R rows with 16-byte streaming loads straight into registers and
 * multiplies them by dp4a with the activations' codes (read through L1 once per group for all R
 * rows). Per row and column one float accumulator per lane in group order, then a butterfly
 * over the row's lanes: independent of the number of columns and of R. */
template <int T, int NC, int R>
__global__ void __launch_bounds__(CTA_WARPS * 32)
    mmv_kernel(const uint8_t *__restrict__ w, size_t row_bytes, int nb, int64_t nrows,
               const int8_t *__restrict__ codes, const half2 *__restrict__ xds,
               float *__restrict__ dst, int64_t dst_stride) {
    constexpr int BB = traits<T>::bytes;
    constexpr int U4 = GROUP * BB / 16;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int lpr = lanes_per_row(nb);
    const int units_per_warp = 32 / lpr;
    const int groups = nb / GROUP;
    const int64_t k = (int64_t)nb * QK;
    const int64_t stride = (int64_t)gridDim.x * CTA_WARPS * units_per_warp * R;
    for (int64_t r0 = ((int64_t)blockIdx.x * CTA_WARPS + warp) * units_per_warp * R; r0 < nrows;
         r0 += stride) {
        const int64_t row0 = r0 + (int64_t)(lane / lpr) * R;
        const bool live = row0 < nrows;
        const uint4 *wrow[R];
#pragma unroll
        for (int i = 0; i < R; i++) {
            const int64_t row = row0 + i < nrows ? row0 + i : nrows - 1;
            wrow[i] = (const uint4 *)(w + row * row_bytes);
        }
        float acc[R][NC];
#pragma unroll
        for (int i = 0; i < R; i++) {
#pragma unroll
            for (int c = 0; c < NC; c++) {
                acc[i][c] = 0.0f;
            }
        }
        for (int g = lane % lpr; live && g < groups; g += lpr) {
            uint32_t r[R][U4 * 4 + 1];
#pragma unroll
            for (int i = 0; i < R; i++) {
                const uint4 *src = wrow[i] + (int64_t)g * U4;
#pragma unroll
                for (int j = 0; j < U4; j++) {
                    const uint4 v = __ldcs(src + j); /* read once: stream past the caches */
                    r[i][4 * j] = v.x;
                    r[i][4 * j + 1] = v.y;
                    r[i][4 * j + 2] = v.z;
                    r[i][4 * j + 3] = v.w;
                }
                r[i][U4 * 4] = 0;
            }
#pragma unroll
            for (int j = 0; j < GROUP; j++) {
                const int o = j * BB;
                const int blk = g * GROUP + j;
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    const int4 *u4 = (const int4 *)(codes + c * k + (int64_t)blk * QK);
                    const int4 ua = __ldg(u4), ub = __ldg(u4 + 1);
                    const int u[8] = {ua.x, ua.y, ua.z, ua.w, ub.x, ub.y, ub.z, ub.w};
                    const float2 ds = __half22float2(xds[(int64_t)c * nb + blk]);
#pragma unroll
                    for (int i = 0; i < R; i++) {
                        const int h = int_at(r[i], o) & 0xffff;
                        const float dw = __half2float(__ushort_as_half((unsigned short)h));
                        int sumi = 0;
                        if (T == T_Q4_0) {
#pragma unroll
                            for (int q = 0; q < 4; q++) {
                                const int v = int_at(r[i], o + 2 + 4 * q);
                                sumi = __dp4a(v & 0x0F0F0F0F, u[q], sumi);
                                sumi = __dp4a((v >> 4) & 0x0F0F0F0F, u[q + 4], sumi);
                            }
                            acc[i][c] += dw * ((float)sumi * ds.x - 8.0f * ds.y);
                        } else {
#pragma unroll
                            for (int q = 0; q < 8; q++) {
                                sumi = __dp4a(int_at(r[i], o + 2 + 4 * q), u[q], sumi);
                            }
                            acc[i][c] += dw * ds.x * (float)sumi;
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int i = 0; i < R; i++) {
#pragma unroll
            for (int c = 0; c < NC; c++) {
                float s = acc[i][c];
                for (int off = lpr / 2; off > 0; off >>= 1) {
                    s += __shfl_xor_sync(0xffffffff, s, off);
                }
                if (row0 + i < nrows && lane % lpr == 0) {
                    dst[c * dst_stride + row0 + i] = s;
                }
            }
        }
    }
}

template <int T, int NC, int R>
cudaError_t launch(const void *w, size_t row_bytes, int nb, int64_t nrows, const int8_t *codes,
                   const half2 *xds, float *dst, int64_t dst_stride, cudaStream_t s) {
    const int64_t rows_per_cta = (int64_t)CTA_WARPS * (32 / lanes_per_row(nb)) * R;
    int64_t grid = (nrows + rows_per_cta - 1) / rows_per_cta;
    grid = grid < 0x7fffffff ? grid : 0x7fffffff;
    mmv_kernel<T, NC, R><<<(unsigned)grid, CTA_WARPS * 32, 0, s>>>(
        (const uint8_t *)w, row_bytes, nb, nrows, codes, xds, dst, dst_stride);
    return cudaGetLastError();
}

template <int T, int NC>
cudaError_t launch_r(const void *w, size_t row_bytes, int nb, int64_t nrows, const int8_t *codes,
                     const half2 *xds, float *dst, int64_t dst_stride, cudaStream_t s) {
#ifdef GEARBX_MMV_R
    return launch<T, NC, GEARBX_MMV_R>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
#endif
    switch (rows_per_lane(NC)) {
    case 1: return launch<T, NC, 1>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    case 2: return launch<T, NC, 2>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    default: return launch<T, NC, 4>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    }
}

template <int T>
cudaError_t launch_cols(int64_t ncols, const void *w, size_t row_bytes, int nb, int64_t nrows,
                        const int8_t *codes, const half2 *xds, float *dst, int64_t dst_stride,
                        cudaStream_t s) {
    switch (ncols) {
    case 1: return launch_r<T, 1>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    case 2: return launch_r<T, 2>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    case 3: return launch_r<T, 3>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    case 4: return launch_r<T, 4>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    case 5: return launch_r<T, 5>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    case 6: return launch_r<T, 6>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    case 7: return launch_r<T, 7>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    default: return launch_r<T, 8>(w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    }
}

int fail(char *err, size_t err_len, const char *what) {
    if (err && err_len) {
        snprintf(err, err_len, "%s", what);
    }
    return -1;
}

} // namespace

extern "C" int gearbx_mmv_supported(int wtype, int64_t k, int64_t ncols) {
    return block_bytes(wtype) != 0 && k > 0 && k % (QK * GROUP) == 0 && k <= ((int64_t)1 << 30) &&
           ncols >= 1 && ncols <= GEARBX_MMV_MAX_COLS;
}

extern "C" size_t gearbx_mmv_scratch_bytes(int wtype, int64_t k, int64_t ncols) {
    if (!gearbx_mmv_supported(wtype, k, ncols)) {
        return 0;
    }
    /* codes, then d/sum; both at least as large as the q8_1 blocks of gearbx_mmv_quantize_x */
    return (size_t)ncols * (size_t)(k / QK) * sizeof(q8_1);
}

extern "C" int gearbx_mmv_quantize_x(const float *x, int64_t x_stride, int64_t k, int64_t ncols,
                                     void *scratch, void *stream) {
    if (k % QK != 0 || ncols < 1 || ncols > GEARBX_MMV_MAX_COLS) {
        return -1;
    }
    const dim3 grid((unsigned)((k + 255) / 256), (unsigned)ncols);
    quantize_x_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(x, x_stride, k, (q8_1 *)scratch);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}

extern "C" int gearbx_mmv(int wtype, const void *w, size_t row_bytes, int64_t nrows, int64_t k,
                          const float *x, int64_t x_stride, int64_t ncols, float *dst,
                          int64_t dst_stride, void *scratch, void *stream, char *err,
                          size_t err_len) {
    if (!gearbx_mmv_supported(wtype, k, ncols)) {
        return fail(err, err_len, "gearbx_mmv: shape not covered");
    }
    const int nb = (int)(k / QK);
    if (row_bytes != (size_t)nb * block_bytes(wtype) || ((uintptr_t)w & 15) != 0 || nrows < 1) {
        return fail(err, err_len, "gearbx_mmv: rows not contiguous and 16-byte aligned");
    }
    cudaStream_t s = (cudaStream_t)stream;
    int8_t *codes = (int8_t *)scratch;
    half2 *xds = (half2 *)(codes + ncols * k);
    const dim3 qgrid((unsigned)((k + 255) / 256), (unsigned)ncols);
    quantize_codes_kernel<<<qgrid, 256, 0, s>>>(x, x_stride, k, codes, xds);
    const cudaError_t e =
        wtype == T_Q4_0
            ? launch_cols<T_Q4_0>(ncols, w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s)
            : launch_cols<T_Q8_0>(ncols, w, row_bytes, nb, nrows, codes, xds, dst, dst_stride, s);
    if (e != cudaSuccess) {
        return fail(err, err_len, cudaGetErrorString(e));
    }
    return 0;
}

#ifndef GEARBX_MMV_NO_HOOK
extern "C" {
typedef size_t (*ggml_cuda_mmv_hook_scratch_t)(int, int64_t, int64_t);
typedef int (*ggml_cuda_mmv_hook_t)(int, const void *, size_t, int64_t, int64_t, const float *,
                                    int64_t, int64_t, float *, int64_t, void *, void *, char *,
                                    size_t);
/* Our patch 0005 to ggml-cuda. */
void ggml_backend_cuda_set_mmv_hook(ggml_cuda_mmv_hook_scratch_t scratch, ggml_cuda_mmv_hook_t run);
}

extern "C" int gearbx_mmv_install(int on) {
    if (on) {
        ggml_backend_cuda_set_mmv_hook(gearbx_mmv_scratch_bytes, gearbx_mmv);
    } else {
        ggml_backend_cuda_set_mmv_hook(nullptr, nullptr);
    }
    return 0;
}
#endif
