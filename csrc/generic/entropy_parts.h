/* The scalar parts every entropy twin shares with the reference (csrc/generic/entropy.c): the
 * first pass (maximum, NaN / +inf count) and the second (the sums in double, then the entropy)
 * over a range of the logits. The SIMD twins run them on the tail their vectors leave; the
 * reference runs them on the whole row. */
#ifndef GEARBX_ENTROPY_PARTS_H
#define GEARBX_ENTROPY_PARTS_H

#include <math.h>
#include <stddef.h>

/* Pass 1 over logits[from..n): raises *max, counts NaN and +inf into *bad. */
static inline void gearbx_entropy_scan(const float *logits, size_t from, size_t n, float *max,
                                       size_t *bad) {
    for (size_t i = from; i < n; i++) {
        float l = logits[i];
        if (isnan(l) || l == INFINITY) {
            (*bad)++;
        } else if (l > *max) {
            *max = l;
        }
    }
}

/* Reports `bad` and says whether the entropy is undefined (NaN): a NaN / +inf logit, an empty
 * row, or every logit -inf. */
static inline int gearbx_entropy_undefined(size_t n, size_t bad, float max, size_t *n_nonfinite) {
    if (n_nonfinite) {
        *n_nonfinite = bad;
    }
    return bad > 0 || n == 0 || max == -INFINITY;
}

/* Pass 2 over logits[from..n) added to s = sum e, t = sum e d (e = e^d, d = l - max), then the
 * entropy in bits: p_i = e_i / s, H = ln s - t / s (nats). -inf logits are probability 0. */
static inline float gearbx_entropy_finish(const float *logits, size_t from, size_t n, float max,
                                          double s, double t) {
    for (size_t i = from; i < n; i++) {
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

#endif
