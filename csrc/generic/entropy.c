/* Shannon entropy (bits) of softmax(logits), computed stably in one pass over the max-shifted
 * logits. The plain C reference (gearbx_entropy_bits_scalar); accelerated twins (csrc/x86
 * AVX2, CUDA) must match it, and gearbx_entropy_bits picks the fastest one this CPU runs. */
#include <math.h>
#include <stddef.h>

#include "entropy_parts.h"
#include "gearbx_kernels.h"

float gearbx_entropy_bits(const float *logits, size_t n, size_t *n_nonfinite) {
#if defined(__x86_64__) || defined(_M_X64)
    if (gearbx_have_avx2()) {
        return gearbx_entropy_bits_avx2(logits, n, n_nonfinite);
    }
#elif defined(__aarch64__)
    return gearbx_entropy_bits_neon(logits, n, n_nonfinite);
#endif
    return gearbx_entropy_bits_scalar(logits, n, n_nonfinite);
}

float gearbx_entropy_bits_scalar(const float *logits, size_t n, size_t *n_nonfinite) {
    size_t bad = 0;
    float max = -INFINITY;
    gearbx_entropy_scan(logits, 0, n, &max, &bad);
    if (gearbx_entropy_undefined(n, bad, max, n_nonfinite)) {
        return NAN;
    }
    return gearbx_entropy_finish(logits, 0, n, max, 0.0, 0.0);
}
