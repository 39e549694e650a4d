/* Decode products for Q4_0 and Q8_0 weights (gearbx_mmv.h). One warp per weight row: the warp
 * streams its row through shared memory in chunks of 256 blocks with 16-byte loads (ggml's
 * 18- and 34-byte blocks are only 2-byte aligned, but a row of a multiple of 8 blocks is a
 * multiple of 16 bytes), then each lane takes blocks lane, lane+32, ... and multiplies them with
 * the q8_1 activations by dp4a, exactly as ggml's vec_dot_q4_0_q8_1 / q8_0_q8_1 do. Per column:
 * one float accumulator per lane in block order, then a fixed butterfly over the warp, so a
 * column's result does not depend on how many columns share the launch.
 * Built with -fmad=false like requant.cu: the twin (csrc/generic/mmv_ref.h) can match bits. */
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

constexpr int CTA_WARPS = 8;
constexpr int GROUP = 8; /* blocks a lane reads at once: a multiple of 16 bytes */

/* Shared-memory layout of the activations: a lane reads the codes of 8 consecutive blocks
 * while its neighbours read the next groups, so groups are padded (codes by 16 bytes, d/sum
 * by one entry) to put neighbouring lanes on different banks. */
__host__ __device__ constexpr int xs_offset(int blk) { return (blk / GROUP) * (GROUP * QK + 16) + (blk % GROUP) * QK; }
__host__ __device__ constexpr int xds_offset(int blk) { return (blk / GROUP) * (GROUP + 1) + blk % GROUP; }
__host__ __device__ constexpr int xs_bytes(int nb) { return xs_offset(nb); }
__host__ __device__ constexpr int xds_count(int nb) { return xds_offset(nb); }

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

/* The product: each CTA quantizes all columns of x into shared memory (int8 codes, then
 * half2 d/sum per block), then its warps take rows, LPR lanes per row; a lane reads groups of
 * 8 weight blocks of its row with 16-byte streaming loads straight into registers and
 * multiplies them with the codes by dp4a. Per column one float accumulator per lane in group
 * order, then a butterfly over the row's lanes: independent of the number of columns. */
template <int T, int NC>
__global__ void __launch_bounds__(CTA_WARPS * 32)
    mmv_kernel(const uint8_t *__restrict__ w, size_t row_bytes, int nb, int64_t nrows,
               const float *__restrict__ x, int64_t x_stride, float *__restrict__ dst,
               int64_t dst_stride) {
    constexpr int BB = traits<T>::bytes;
    constexpr int U4 = GROUP * BB / 16;
    extern __shared__ uint4 smem[];
    const int xs_col = xs_bytes(nb), xds_col = xds_count(nb);
    int8_t *xs = (int8_t *)smem;                  /* NC columns of codes, xs_col bytes each */
    half2 *xds = (half2 *)(xs + (size_t)NC * xs_col); /* NC columns of d/sum */
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    for (int b = warp; b < NC * nb; b += CTA_WARPS) {
        const int c = b / nb, blk = b % nb;
        half2 ds;
        xs[(size_t)c * xs_col + xs_offset(blk) + lane] =
            quantize_lane(x[c * x_stride + (int64_t)blk * QK + lane], &ds);
        if (lane == 0) {
            xds[c * xds_col + xds_offset(blk)] = ds;
        }
    }
    __syncthreads();
    const int lpr = lanes_per_row(nb);
    const int rows_per_warp = 32 / lpr;
    const int groups = nb / GROUP;
    const int64_t stride = (int64_t)gridDim.x * CTA_WARPS * rows_per_warp;
    for (int64_t r0 = ((int64_t)blockIdx.x * CTA_WARPS + warp) * rows_per_warp; r0 < nrows;
         r0 += stride) {
        const int64_t row = r0 + lane / lpr;
        const bool live = row < nrows;
        const uint4 *wrow = (const uint4 *)(w + (live ? row : 0) * row_bytes);
        float acc[NC];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            acc[c] = 0.0f;
        }
        for (int g = lane % lpr; live && g < groups; g += lpr) {
            uint32_t r[U4 * 4 + 1];
            const uint4 *src = wrow + (int64_t)g * U4;
#pragma unroll
            for (int i = 0; i < U4; i++) {
                const uint4 v = __ldcs(src + i); /* read once: stream past the caches */
                r[4 * i] = v.x;
                r[4 * i + 1] = v.y;
                r[4 * i + 2] = v.z;
                r[4 * i + 3] = v.w;
            }
            r[U4 * 4] = 0;
#pragma unroll
            for (int j = 0; j < GROUP; j++) {
                const int o = j * BB;
                const int h = int_at(r, o) & 0xffff;
                const float dw = __half2float(__ushort_as_half((unsigned short)h));
                const int blk = g * GROUP + j;
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    const int4 *u4 = (const int4 *)(xs + (size_t)c * xs_col + xs_offset(blk));
                    const int4 ua = u4[0], ub = u4[1];
                    const int u[8] = {ua.x, ua.y, ua.z, ua.w, ub.x, ub.y, ub.z, ub.w};
                    const float2 ds = __half22float2(xds[c * xds_col + xds_offset(blk)]);
                    int sumi = 0;
                    if (T == T_Q4_0) {
#pragma unroll
                        for (int q = 0; q < 4; q++) {
                            const int v = int_at(r, o + 2 + 4 * q);
                            sumi = __dp4a(v & 0x0F0F0F0F, u[q], sumi);
                            sumi = __dp4a((v >> 4) & 0x0F0F0F0F, u[q + 4], sumi);
                        }
                        acc[c] += dw * ((float)sumi * ds.x - 8.0f * ds.y);
                    } else {
#pragma unroll
                        for (int q = 0; q < 8; q++) {
                            sumi = __dp4a(int_at(r, o + 2 + 4 * q), u[q], sumi);
                        }
                        acc[c] += dw * ds.x * (float)sumi;
                    }
                }
            }
        }
#pragma unroll
        for (int c = 0; c < NC; c++) {
            float s = acc[c];
            for (int off = lpr / 2; off > 0; off >>= 1) {
                s += __shfl_xor_sync(0xffffffff, s, off);
            }
            if (live && lane % lpr == 0) {
                dst[c * dst_stride + row] = s;
            }
        }
    }
}

template <int T, int NC>
cudaError_t launch(const void *w, size_t row_bytes, int nb, int64_t nrows, const float *x,
                   int64_t x_stride, float *dst, int64_t dst_stride, cudaStream_t s) {
    const size_t shmem = (size_t)NC * (xs_bytes(nb) + xds_count(nb) * sizeof(half2));
    static bool attr_set = false; /* per instantiation */
    if (!attr_set) {
        int dev = 0, optin = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        cudaFuncSetAttribute(mmv_kernel<T, NC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             optin);
        attr_set = true;
    }
    static int sms = 0;
    if (sms == 0) {
        int dev = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    }
    const int64_t rows_per_cta = (int64_t)CTA_WARPS * (32 / lanes_per_row(nb));
    int64_t grid = (nrows + rows_per_cta - 1) / rows_per_cta;
    const int64_t cap = (int64_t)sms * 2;
    grid = grid < cap ? grid : cap;
    mmv_kernel<T, NC><<<(unsigned)grid, CTA_WARPS * 32, shmem, s>>>(
        (const uint8_t *)w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride);
    return cudaGetLastError();
}

template <int T>
cudaError_t launch_cols(int64_t ncols, const void *w, size_t row_bytes, int nb, int64_t nrows,
                        const float *x, int64_t x_stride, float *dst, int64_t dst_stride,
                        cudaStream_t s) {
    switch (ncols) {
    case 1: return launch<T, 1>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
    case 2: return launch<T, 2>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
    case 3: return launch<T, 3>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
    case 4: return launch<T, 4>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
    case 5: return launch<T, 5>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
    case 6: return launch<T, 6>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
    case 7: return launch<T, 7>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
    default: return launch<T, 8>(w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
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
    static int optin = -1; /* shared memory a block may use: the activations must fit */
    if (optin < 0) {
        int dev = 0;
        cudaGetDevice(&dev);
        if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
            cudaSuccess) {
            optin = 0;
        }
    }
    return block_bytes(wtype) != 0 && k > 0 && k % (QK * GROUP) == 0 && ncols >= 1 &&
           ncols <= GEARBX_MMV_MAX_COLS &&
           (int64_t)ncols * (xs_bytes((int)(k / QK)) + 4 * xds_count((int)(k / QK))) <=
               (int64_t)optin;
}

extern "C" size_t gearbx_mmv_scratch_bytes(int wtype, int64_t k, int64_t ncols) {
    if (!gearbx_mmv_supported(wtype, k, ncols)) {
        return 0;
    }
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
    (void)scratch; /* the activations live in shared memory */
    cudaStream_t s = (cudaStream_t)stream;
    const cudaError_t e =
        wtype == T_Q4_0
            ? launch_cols<T_Q4_0>(ncols, w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s)
            : launch_cols<T_Q8_0>(ncols, w, row_bytes, nb, nrows, x, x_stride, dst, dst_stride, s);
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
