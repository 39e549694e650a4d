/* The quantizers' twins against their references, as a plain C program: built for AArch64 by
 * scripts/arm-check.sh with ggml's own ggml-quants.c from the pinned llama.cpp (compiled for
 * AArch64 as llama.cpp's CMake build compiles it there: -O3, GCC's default contraction) and
 * run under qemu-aarch64; buildable natively on x86-64 too (then the AVX2 twins).
 * Input: the adversarial classes of src/kernels/parity.rs, exported by
 * `cargo run --release --example kernel_vectors -- FILE` (F32, F16 and BF16 rows).
 * For every class and every target type (Q8_0, Q4_0, Q4_K) it compares, block by block:
 * the SIMD twin with the scalar twin (gearbx_requant_ref: must be identical), and the scalar
 * twin with ggml's reference on this architecture (reported; exit 1 on any difference).
 * Built with -DGEARBX_CUDA_PARITY (on the GPU machine: the README, "CPU kernels") the twin is the
 * CUDA kernel of csrc/cuda/requant.cu, fed the source bytes as they are (F32, F16, BF16), and
 * ggml is not linked (the scalar twin is ggml's reference on x86-64, checked by the tests);
 * then it also times the kernels on an 8B model's largest matrix shape. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/generic/gearbx_kernels.h"

#ifdef GEARBX_CUDA_PARITY
#include "../../csrc/cuda/gearbx_cuda.h"
#define quantize_row_q8_0_ref NULL
#define quantize_row_q4_0_ref NULL
#define quantize_row_q4_K_ref NULL
#else
/* ggml-quants.c (declared here with untyped blocks: this driver reads only their bytes). */
void quantize_row_q8_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_0_ref(const float *x, void *y, int64_t k);
void quantize_row_q4_K_ref(const float *x, void *y, int64_t k);
void ggml_fp16_to_fp32_row(const uint16_t *x, float *y, int64_t n);
#endif

typedef void (*quantizer)(const float *, uint8_t *, int64_t);

static const struct {
    const char *name;
    int type, values, bytes;
    void (*ggml)(const float *, void *, int64_t);
    quantizer twin;
} targets[] = {
#if defined(GEARBX_CUDA_PARITY)
    {"Q8_0", 8, 32, 34, NULL, NULL},
    {"Q4_0", 2, 32, 18, NULL, NULL},
    {"Q4_K", 12, 256, 144, NULL, NULL},
#elif defined(__aarch64__)
    {"Q8_0", 8, 32, 34, quantize_row_q8_0_ref, gearbx_quantize_q8_0_neon},
    {"Q4_0", 2, 32, 18, quantize_row_q4_0_ref, gearbx_quantize_q4_0_neon},
    {"Q4_K", 12, 256, 144, quantize_row_q4_K_ref, gearbx_quantize_q4_k_neon},
#elif defined(__x86_64__)
    {"Q8_0", 8, 32, 34, quantize_row_q8_0_ref, gearbx_quantize_q8_0_avx2},
    {"Q4_0", 2, 32, 18, quantize_row_q4_0_ref, gearbx_quantize_q4_0_avx2},
    {"Q4_K", 12, 256, 144, quantize_row_q4_K_ref, gearbx_quantize_q4_k_avx2},
#endif
};

static int read_all(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

static size_t differing(const uint8_t *a, const uint8_t *b, size_t blocks, int bytes) {
    size_t d = 0;
    for (size_t i = 0; i < blocks; i++) d += memcmp(a + i * bytes, b + i * bytes, bytes) != 0;
    return d;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s VECTORS\n", argv[0]);
        return 2;
    }
#if defined(__x86_64__) && !defined(GEARBX_CUDA_PARITY)
    if (!gearbx_have_avx2()) {
        printf("no AVX2+FMA on this CPU: nothing to compare\n");
        return 0;
    }
#endif
    FILE *f = fopen(argv[1], "rb");
    char magic[6];
    if (!f || !read_all(f, magic, 6) || memcmp(magic, "GBXV1\n", 6) != 0) {
        fprintf(stderr, "%s: not a vectors file of examples/kernel_vectors\n", argv[1]);
        return 2;
    }
    int twin_fail = 0, ref_fail = 0, cases = 0;
    uint32_t src, name_len;
    while (read_all(f, &src, 4)) {
        char name[64] = {0};
        uint64_t nbytes;
        if (!read_all(f, &name_len, 4) || name_len >= sizeof name || !read_all(f, name, name_len) ||
            !read_all(f, &nbytes, 8) || nbytes > (1u << 26)) {
            fprintf(stderr, "truncated or bad vectors file\n");
            return 2;
        }
        uint8_t *bytes = malloc(nbytes);
        if (!bytes || !read_all(f, bytes, nbytes)) {
            fprintf(stderr, "truncated vectors file\n");
            return 2;
        }
        const size_t elem = src == 0 ? 4 : 2;
        const size_t n = nbytes / elem;
        float *x = malloc(n * sizeof(float));
        if (!x) {
            fprintf(stderr, "out of memory\n");
            return 2;
        }
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            if (src == 0) {
                memcpy(&x[i], bytes + 4 * i, 4);
                continue;
            }
            memcpy(&h, bytes + 2 * i, 2);
            if (src == 1) {
                x[i] = gearbx_fp16_to_fp32(h);
            } else {
                uint32_t u = (uint32_t)h << 16;
                memcpy(&x[i], &u, 4);
            }
        }
        for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
            const size_t blocks = n / targets[t].values;
            const size_t out_bytes = blocks * targets[t].bytes;
            uint8_t *scalar = malloc(out_bytes), *twin = malloc(out_bytes), *ggml = malloc(out_bytes);
            if (!scalar || !twin || !ggml) {
                fprintf(stderr, "out of memory\n");
                return 2;
            }
            if (gearbx_requant_ref((int)src, bytes, targets[t].type, scalar, (int64_t)n) != 0) {
                fprintf(stderr, "gearbx_requant_ref refused %s\n", name);
                return 2;
            }
#ifdef GEARBX_CUDA_PARITY
            char err[256];
            float ms = 0;
            if (gearbx_cuda_requant_host(0, (int)src, bytes, nbytes, targets[t].type, twin,
                                         out_bytes, (int64_t)n, &ms, err, sizeof err) != 0) {
                fprintf(stderr, "CUDA: %s\n", err);
                return 2;
            }
            memcpy(ggml, scalar, out_bytes);
#else
            targets[t].twin(x, twin, (int64_t)blocks);
            targets[t].ggml(x, ggml, (int64_t)n);
#endif
            size_t dt = differing(twin, scalar, blocks, targets[t].bytes);
            size_t dr = differing(scalar, ggml, blocks, targets[t].bytes);
            if (dt || dr) {
                printf("FAIL %s %-14s -> %s: twin/scalar %zu, scalar/ggml %zu of %zu blocks\n",
                       src == 0 ? "F32" : src == 1 ? "F16" : "BF16", name, targets[t].name, dt,
                       dr, blocks);
            }
            twin_fail += dt != 0;
            ref_fail += dr != 0;
            free(scalar);
            free(twin);
            free(ggml);
        }
        cases++;
        free(x);
        free(bytes);
    }
    printf("quantizers: %d classes x %zu types: %d twin differences, %d reference differences\n",
           cases, sizeof targets / sizeof targets[0], twin_fail, ref_fail);
#ifndef GEARBX_CUDA_PARITY
    /* The half converter on every half, 7 at a time (each call ends in a tail), against
     * ggml's row conversion on this architecture, bit for bit (NaN payloads included). */
    static uint16_t halves[65536];
    static float ours[65536], ref[65536];
    for (int h = 0; h < 65536; h++) halves[h] = (uint16_t)h;
    for (int i = 0; i < 65536; i += 7) {
        int k = 65536 - i < 7 ? 65536 - i : 7;
#if defined(__aarch64__)
        gearbx_f16_to_f32_row_neon(halves + i, ours + i, k);
#else
        gearbx_f16_to_f32_row_avx2(halves + i, ours + i, k);
#endif
    }
    ggml_fp16_to_fp32_row(halves, ref, 65536);
    int conv_fail = memcmp(ours, ref, sizeof ours) != 0;
    printf("half converter: %s\n", conv_fail ? "FAIL: differs from ggml" : "all 65536 halves as ggml");
    twin_fail += conv_fail;
#endif
#ifdef GEARBX_CUDA_PARITY
    /* Kernel time on the 8B shape's largest matrix (14336 x 4096, F16 source). */
    const int64_t big = 14336LL * 4096;
    uint16_t *h = malloc(big * 2);
    uint8_t *q = malloc(big / 32 * 34);
    for (int64_t i = 0; i < big; i++) h[i] = gearbx_fp32_to_fp16(((float)(i % 977) - 488.0f) * 1e-4f);
    for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
        char err[256];
        float best = 1e30f;
        for (int r = 0; r < 3; r++) {
            float ms = 0;
            if (gearbx_cuda_requant_host(0, 1, h, big * 2, targets[t].type, q,
                                         big / targets[t].values * targets[t].bytes, big, &ms,
                                         err, sizeof err) != 0) {
                fprintf(stderr, "CUDA: %s\n", err);
                return 2;
            }
            best = ms < best ? ms : best;
        }
        printf("F16 14336x4096 -> %s on the GPU: %.3f ms (%.0f GB/s read+written)\n",
               targets[t].name, best,
               (big * 2.0 + big / targets[t].values * targets[t].bytes) / (best * 1e6));
    }
#endif
    return twin_fail || ref_fail ? 1 : 0;
}
