/* The scalar twin of gearbx's CUDA decode products (csrc/generic/mmv_ref.h) against ggml on
 * the CPU (run by tests/capi.rs; the kernels themselves are checked against this twin on the
 * GPU machine by tests/gpu/mmv_test.cu): for Q4_0, Q8_0 and Q4_K rows of random blocks,
 *   - every weight the twin dequantizes equals ggml's own dequantization (to_float) of it;
 *   - the twin's product with q8_1 activations (the kernels' formula) is the exact product up to
 *     the activations' 8-bit rounding.
 * Prints one line per type and exits 1 on any mismatch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml.h"
#include "mmv_ref.h"

enum { K = 4096 };

static unsigned seed = 12345;
static unsigned rnd(void) {
    seed = seed * 1103515245u + 12345u;
    return seed >> 8;
}

int main(void) {
    static const int types[] = {GEARBX_T_Q4_0, GEARBX_T_Q8_0, GEARBX_T_Q4_K};
    static float y[K], x[K];
    static uint8_t xq[K / 32 * GEARBX_Q8_1_BYTES];
    int failed = 0;
    for (int i = 0; i < K; i++) {
        x[i] = (float)((int)(rnd() % 2001) - 1000) * 1e-3f;
    }
    for (int b = 0; b < K / 32; b++) {
        gearbx_mmv_quantize_block_ref(&x[b * 32], &xq[b * GEARBX_Q8_1_BYTES]);
    }
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int t = types[ti];
        const int bb = gearbx_mmv_block_bytes(t), nblk = K / gearbx_mmv_block_values(t);
        uint8_t *row = malloc((size_t)nblk * bb);
        if (!row) {
            return 2;
        }
        for (int b = 0; b < nblk; b++) {
            uint8_t *p = row + (size_t)b * bb;
            const int halves = t == GEARBX_T_Q4_K ? 2 : 1;
            for (int j = 0; j < bb; j++) {
                p[j] = (uint8_t)rnd();
            }
            for (int h = 0; h < halves; h++) {
                const uint16_t v = gearbx_f32_to_f16((float)((int)(rnd() % 2001) - 1000) * 1e-4f);
                memcpy(p + 2 * h, &v, 2);
            }
        }
        ggml_get_type_traits((enum ggml_type)t)->to_float(row, y, K);
        int off = 0;
        for (int i = 0; i < K; i++) {
            const double w = gearbx_mmv_weight(t, row, i);
            if (fabs(w - (double)y[i]) > 1e-6 * fabs(w) + 1e-9) {
                if (off++ < 3) {
                    fprintf(stderr, "type %d value %d: twin %.9g ggml %.9g\n", t, i, w, y[i]);
                }
            }
        }
        double norm = 0, terms = 0;
        const double exact = gearbx_mmv_dot_f64(t, row, x, K, &norm);
        const double q8 = gearbx_mmv_dot_q8_ref(t, row, xq, K / 32, &terms);
        /* 8-bit activations: each off by at most half a step (amax/254 of its block); the sum of
         * those errors stays far below 1e-3 of sum abs(w x) for random values */
        const int near = fabs(q8 - exact) <= 1e-3 * norm && norm > 0 && terms > 0;
        printf("%d: %d of %d dequantized off ggml; q8_1 product %.6g vs exact %.6g (sum |w x| %.6g)\n",
               t, off, K, q8, exact, norm);
        failed += off != 0 || !near;
        free(row);
    }
    printf("%s\n", failed ? "FAIL" : "PASS");
    return failed ? 1 : 0;
}
