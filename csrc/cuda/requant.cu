/* Requantization on the GPU: F32/F16/BF16 weights already on the device to Q8_0, Q4_0 or Q4_K,
 * one thread per block (32 values; 256 for Q4_K), with the block quantizers the CPU twin uses (requant_block.h).
 * Built with -fmad=false: the only fused multiply-adds are the ones written as fmaf. */
#include <cuda_runtime.h>
#include <stdio.h>

#include "gearbx_cuda.h"
#include "requant_block.h"

template <int S, int D>
__global__ void requant_kernel(const void *__restrict__ src, uint8_t *__restrict__ dst,
                               int64_t n_blocks) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < n_blocks; b += stride) {
        gearbx_requant_block(S, src, D, dst, b);
    }
}

template <int S>
static void launch_for_dst(int dst_type, const void *src, uint8_t *dst, int64_t nb,
                           cudaStream_t stream) {
    const int threads = 256;
    int64_t want = (nb + threads - 1) / threads;
    const int grid = (int)(want < 65535 ? (want > 0 ? want : 1) : 65535);
    if (dst_type == GEARBX_T_Q8_0) {
        requant_kernel<S, GEARBX_T_Q8_0><<<grid, threads, 0, stream>>>(src, dst, nb);
    } else if (dst_type == GEARBX_T_Q4_K) {
        requant_kernel<S, GEARBX_T_Q4_K><<<grid, threads, 0, stream>>>(src, dst, nb);
    } else {
        requant_kernel<S, GEARBX_T_Q4_0><<<grid, threads, 0, stream>>>(src, dst, nb);
    }
}

static int fail(char *err, size_t err_len, const char *what, cudaError_t e) {
    if (err && err_len) {
        snprintf(err, err_len, "%s: %s", what, cudaGetErrorString(e));
    }
    return -1;
}

extern "C" int gearbx_cuda_requant(int device, int src_type, const void *src, int dst_type,
                                   void *dst, int64_t n, char *err, size_t err_len) {
    if (n < 0 || gearbx_block_bytes(dst_type) == 0 || n % gearbx_block_values(dst_type) != 0) {
        if (err && err_len) {
            snprintf(err, err_len, "unsupported requantization (src %d, dst %d, n %lld)",
                     src_type, dst_type, (long long)n);
        }
        return -1;
    }
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        return fail(err, err_len, "cudaSetDevice", e);
    }
    const int64_t nb = n / gearbx_block_values(dst_type);
    uint8_t *out = (uint8_t *)dst;
    switch (src_type) {
    case GEARBX_T_F32:
        launch_for_dst<GEARBX_T_F32>(dst_type, src, out, nb, 0);
        break;
    case GEARBX_T_F16:
        launch_for_dst<GEARBX_T_F16>(dst_type, src, out, nb, 0);
        break;
    case GEARBX_T_BF16:
        launch_for_dst<GEARBX_T_BF16>(dst_type, src, out, nb, 0);
        break;
    default:
        if (err && err_len) {
            snprintf(err, err_len, "unsupported source type %d", src_type);
        }
        return -1;
    }
    e = cudaGetLastError();
    return e == cudaSuccess ? 0 : fail(err, err_len, "requant kernel launch", e);
}

extern "C" int gearbx_cuda_synchronize(int device, char *err, size_t err_len) {
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) {
        e = cudaDeviceSynchronize();
    }
    return e == cudaSuccess ? 0 : fail(err, err_len, "cudaDeviceSynchronize", e);
}

extern "C" int gearbx_cuda_device_count(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

extern "C" int gearbx_cuda_requant_host(int device, int src_type, const void *src,
                                        size_t src_bytes, int dst_type, void *dst,
                                        size_t dst_bytes, int64_t n, float *kernel_ms,
                                        char *err, size_t err_len) {
    void *d_src = NULL, *d_dst = NULL;
    cudaEvent_t t0 = NULL, t1 = NULL;
    int rc = -1;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return fail(err, err_len, "cudaSetDevice", e);
    if ((e = cudaMalloc(&d_src, src_bytes)) != cudaSuccess) { fail(err, err_len, "cudaMalloc", e); goto out; }
    if ((e = cudaMalloc(&d_dst, dst_bytes)) != cudaSuccess) { fail(err, err_len, "cudaMalloc", e); goto out; }
    if ((e = cudaMemcpy(d_src, src, src_bytes, cudaMemcpyHostToDevice)) != cudaSuccess) { fail(err, err_len, "cudaMemcpy", e); goto out; }
    if ((e = cudaMemset(d_dst, 0xA5, dst_bytes)) != cudaSuccess) { fail(err, err_len, "cudaMemset", e); goto out; }
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    cudaEventRecord(t0, 0);
    if (gearbx_cuda_requant(device, src_type, d_src, dst_type, d_dst, n, err, err_len) != 0) goto out;
    cudaEventRecord(t1, 0);
    if ((e = cudaEventSynchronize(t1)) != cudaSuccess) { fail(err, err_len, "requant kernel", e); goto out; }
    if (kernel_ms) cudaEventElapsedTime(kernel_ms, t0, t1);
    if ((e = cudaMemcpy(dst, d_dst, dst_bytes, cudaMemcpyDeviceToHost)) != cudaSuccess) { fail(err, err_len, "cudaMemcpy", e); goto out; }
    rc = 0;
out:
    if (t0) cudaEventDestroy(t0);
    if (t1) cudaEventDestroy(t1);
    if (d_src) cudaFree(d_src);
    if (d_dst) cudaFree(d_dst);
    return rc;
}
