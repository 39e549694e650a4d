/* gearbx's own C kernels (reference implementations), called from Rust via src/kernels.rs. */
#ifndef GEARBX_KERNELS_H
#define GEARBX_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Entropy in bits of softmax(logits[0..n)). Writes the count of NaN / +inf logits to
 * *n_nonfinite (may be NULL) and returns NaN when there are any, or when n == 0.
 * -inf logits are allowed (masked tokens, probability 0). */
float gearbx_entropy_bits(const float *logits, size_t n, size_t *n_nonfinite);

#ifdef __cplusplus
}
#endif

#endif
