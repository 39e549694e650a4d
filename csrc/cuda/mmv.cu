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
constexpr int WARPS = 4;          /* warps (rows) per thread block */
constexpr int CHUNK_BLOCKS = 256; /* weight blocks a warp stages per step */

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

/* 4 bytes at a 2-byte-aligned offset of a shared buffer (one word of padding after its end). */
__device__ __forceinline__ int load_int_b2(const uint8_t *base, int o) {
    const uint32_t *w = (const uint32_t *)(base + (o & ~3));
    return (int)__funnelshift_r(w[0], w[1], (o & 3) * 8);
}

/* x (ncols columns of k floats, x_stride apart) to q8_1 blocks, column c at xq + c*nb: one
 * warp per block, amax and sum by a butterfly (ggml's quantize_q8_1 does the same). */
__global__ void quantize_x_kernel(const float *__restrict__ x, int64_t x_stride, int64_t k,
                                  q8_1 *__restrict__ xq) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t c = blockIdx.y;
    if (i >= k) {
        return;
    }
    const float xi = x[c * x_stride + i];
    float amax = fabsf(xi);
    float sum = xi;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, off));
        sum += __shfl_xor_sync(0xffffffff, sum, off);
    }
    const float d = amax / 127.0f;
    const int8_t q = amax == 0.0f ? 0 : (int8_t)roundf(xi / d);
    q8_1 *b = xq + c * (k / QK) + i / QK;
    b->qs[i % QK] = q;
    if (i % QK == 0) {
        b->ds = make_half2(__float2half(d), __float2half(sum));
    }
}

template <int T, int NC>
__global__ void __launch_bounds__(WARPS * 32)
    mmv_kernel(const uint8_t *__restrict__ w, size_t row_bytes, int nb, int64_t nrows,
               const q8_1 *__restrict__ xq, float *__restrict__ dst, int64_t dst_stride) {
    constexpr int BB = traits<T>::bytes;
    constexpr int CHUNK_U4 = CHUNK_BLOCKS * BB / 16;
    constexpr int PER_LANE = (CHUNK_U4 + 31) / 32;
    extern __shared__ uint4 smem[];
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * WARPS + warp;
    if (row >= nrows) {
        return; /* whole warps: rows are per warp */
    }
    uint4 *buf = smem + warp * (CHUNK_U4 + 1);
    const uint8_t *sb = (const uint8_t *)buf;
    const uint4 *wrow = (const uint4 *)(w + row * row_bytes);
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) {
        acc[c] = 0.0f;
    }
    for (int b0 = 0; b0 < nb; b0 += CHUNK_BLOCKS) {
        const int cb = min(CHUNK_BLOCKS, nb - b0);
        const int n16 = cb * BB / 16;
        const uint4 *src = wrow + (int64_t)b0 * BB / 16;
        uint4 r[PER_LANE];
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            const int j = lane + 32 * i;
            if (j < n16) {
                r[i] = __ldcs(src + j); /* read once: stream past the caches */
            }
        }
        __syncwarp(); /* the previous chunk's readers are done */
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            const int j = lane + 32 * i;
            if (j < n16) {
                buf[j] = r[i];
            }
        }
        __syncwarp();
        for (int b = lane; b < cb; b += 32) {
            const int o = b * BB;
            const float dw = __half2float(*(const half *)(sb + o));
            int v[BB / 4];
#pragma unroll
            for (int j = 0; j < BB / 4; j++) {
                v[j] = load_int_b2(sb, o + 2 + 4 * j);
            }
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const q8_1 *xb = xq + (int64_t)c * nb + b0 + b;
                const int *u = (const int *)xb->qs;
                const float2 ds = __half22float2(xb->ds);
                int sumi = 0;
                if (T == T_Q4_0) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        sumi = __dp4a(v[j] & 0x0F0F0F0F, u[j], sumi);
                        sumi = __dp4a((v[j] >> 4) & 0x0F0F0F0F, u[j + 4], sumi);
                    }
                    acc[c] += dw * ((float)sumi * ds.x - 8.0f * ds.y);
                } else {
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        sumi = __dp4a(v[j], u[j], sumi);
                    }
                    acc[c] += dw * ds.x * (float)sumi;
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < NC; c++) {
        float s = acc[c];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            s += __shfl_xor_sync(0xffffffff, s, off);
        }
        if (lane == 0) {
            dst[c * dst_stride + row] = s;
        }
    }
}

template <int T, int NC>
cudaError_t launch(const void *w, size_t row_bytes, int nb, int64_t nrows, const q8_1 *xq,
                   float *dst, int64_t dst_stride, cudaStream_t s) {
    constexpr int CHUNK_U4 = CHUNK_BLOCKS * traits<T>::bytes / 16;
    const size_t shmem = (size_t)WARPS * (CHUNK_U4 + 1) * 16;
    const int64_t grid = (nrows + WARPS - 1) / WARPS;
    mmv_kernel<T, NC><<<(unsigned)grid, WARPS * 32, shmem, s>>>(
        (const uint8_t *)w, row_bytes, nb, nrows, xq, dst, dst_stride);
    return cudaGetLastError();
}

template <int T>
cudaError_t launch_cols(int64_t ncols, const void *w, size_t row_bytes, int nb, int64_t nrows,
                        const q8_1 *xq, float *dst, int64_t dst_stride, cudaStream_t s) {
    switch (ncols) {
    case 1: return launch<T, 1>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
    case 2: return launch<T, 2>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
    case 3: return launch<T, 3>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
    case 4: return launch<T, 4>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
    case 5: return launch<T, 5>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
    case 6: return launch<T, 6>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
    case 7: return launch<T, 7>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
    default: return launch<T, 8>(w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
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
    return block_bytes(wtype) != 0 && k > 0 && k % (QK * 8) == 0 && k / QK <= (1 << 24) &&
           ncols >= 1 && ncols <= GEARBX_MMV_MAX_COLS;
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
    if (row_bytes != (size_t)nb * block_bytes(wtype) || ((uintptr_t)w & 15) != 0 || nrows < 1 ||
        nrows > (int64_t)WARPS * 0x7fffffff) {
        return fail(err, err_len, "gearbx_mmv: rows not contiguous and 16-byte aligned");
    }
    cudaStream_t s = (cudaStream_t)stream;
    if (gearbx_mmv_quantize_x(x, x_stride, k, ncols, scratch, stream) != 0) {
        return fail(err, err_len, "gearbx_mmv: activation quantization failed to launch");
    }
    const q8_1 *xq = (const q8_1 *)scratch;
    const cudaError_t e =
        wtype == T_Q4_0
            ? launch_cols<T_Q4_0>(ncols, w, row_bytes, nb, nrows, xq, dst, dst_stride, s)
            : launch_cols<T_Q8_0>(ncols, w, row_bytes, nb, nrows, xq, dst, dst_stride, s);
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
