/* gearbx's CUDA kernels (csrc/cuda/requant.cu), called from Rust via src/kernels.rs when the
 * crate is built with --features cuda. Every function returns 0 on success, or -1 with a
 * message in err (err_len bytes, may be NULL). */
#ifndef GEARBX_CUDA_H
#define GEARBX_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Requantizes n values (multiple of 32) of src_type at device pointer src into dst_type at
 * device pointer dst, on `device`'s legacy default stream, asynchronously. */
int gearbx_cuda_requant(int device, int src_type, const void *src, int dst_type, void *dst,
                        int64_t n, char *err, size_t err_len);

/* Waits for all work on `device`. */
int gearbx_cuda_synchronize(int device, char *err, size_t err_len);

/* Number of CUDA devices (0 when there is no driver). */
int gearbx_cuda_device_count(void);

/* Host-buffer round trip for tests and benchmarks: uploads src, requantizes, downloads dst;
 * *kernel_ms gets the kernel's time (CUDA events). */
int gearbx_cuda_requant_host(int device, int src_type, const void *src, size_t src_bytes,
                             int dst_type, void *dst, size_t dst_bytes, int64_t n,
                             float *kernel_ms, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
