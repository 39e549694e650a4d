/* Shannon entropy (bits) of softmax(logits), computed stably in one pass over the max-shifted
 * logits. The plain C reference (gearbx_entropy_bits_scalar); accelerated twins (csrc/x86
 * AVX2, CUDA) must match it, and gearbx_entropy_bits picks the fastest one this CPU runs. */
#include <math.h>
#include <stddef.h>

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
    for (size_t i = 0; i < n; i++) {
        float l = logits[i];
        if (isnan(l) || l == INFINITY) {
            bad++;
        } else if (l > max) {
            max = l;
        }
    }
    if (n_nonfinite) {
        *n_nonfinite = bad;
    }
    if (bad > 0 || n == 0 || max == -INFINITY) {
        return NAN;
    }
    /* p_i = e^(l_i - max) / s;  H = ln s - sum(e^(l_i - max) (l_i - max)) / s  (nats) */
    double s = 0.0, t = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (logits[i] == -INFINITY) {
            continue; /* probability 0 contributes 0, and 0 * -inf would be NaN */
        }
        double d = (double)logits[i] - (double)max;
        double e = exp(d);
        s += e;
        t += e * d;
    }
    double h = log(s) - t / s;
    if (h < 0.0) {
        h = 0.0; /* rounding at a one-hot distribution */
    }
    return (float)(h / 0.69314718055994530942);
}
