/* The SIMD twins of gearbx's C kernels against their scalar references, as a plain C program:
 * built for AArch64 by scripts/arm-check.sh and run under qemu-aarch64 (the NEON twin), and
 * buildable natively on x86-64 (the AVX2 twin, where the CPU has it). The input classes are
 * those of src/kernels.rs's entropy_twins_agree_on_every_class: random rows at real vocabulary
 * sizes and scales, lengths around the vector widths, flat and one-hot rows, masked (-inf)
 * tokens, huge ranges, NaN and +inf in the body and the tail. Prints one line per class group
 * and exits 1 on any difference beyond 1e-5 bits (plus 1e-6 relative) or in the bad counts. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../csrc/generic/gearbx_kernels.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1u << 24) * 2.0f - 1.0f;
}

static float twin(const float *l, size_t n, size_t *bad) {
#if defined(__aarch64__)
    return gearbx_entropy_bits_neon(l, n, bad);
#elif defined(__x86_64__)
    return gearbx_entropy_bits_avx2(l, n, bad);
#else
    return gearbx_entropy_bits_scalar(l, n, bad);
#endif
}

static int failures = 0, rows = 0;
static double worst = 0.0;

static void check(const float *l, size_t n) {
    size_t bs = 0, bt = 0;
    float hs = gearbx_entropy_bits_scalar(l, n, &bs);
    float ht = twin(l, n, &bt);
    rows++;
    if (bs != bt || (isnan(hs) != isnan(ht))) {
        printf("FAIL n=%zu: bad %zu vs %zu, h %g vs %g\n", n, bs, bt, hs, ht);
        failures++;
        return;
    }
    if (isnan(hs)) {
        return;
    }
    double d = fabs((double)hs - (double)ht);
    if (d > worst) {
        worst = d;
    }
    if (d > 1e-5 + 1e-6 * fabs(hs)) {
        printf("FAIL n=%zu: scalar %.9g twin %.9g\n", n, hs, ht);
        failures++;
    }
}

int main(void) {
#if defined(__x86_64__)
    if (!gearbx_have_avx2()) {
        printf("no AVX2+FMA on this CPU: nothing to compare\n");
        return 0;
    }
#endif
    static float buf[262144];
    const size_t vocab[] = {49152, 128256, 262144};
    const float scales[] = {0.01f, 1.0f, 8.0f, 60.0f};
    for (int v = 0; v < 3; v++) {
        for (int s = 0; s < 4; s++) {
            for (size_t i = 0; i < vocab[v]; i++) buf[i] = rnd() * scales[s];
            check(buf, vocab[v]);
        }
    }
    printf("random rows at real vocabularies: %d rows\n", rows);
    const size_t lens[] = {255, 256, 257, 1023};
    for (size_t n = 1; n <= 40; n++) {
        for (size_t i = 0; i < n; i++) buf[i] = rnd() * 5.0f;
        check(buf, n);
    }
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < lens[k]; i++) buf[i] = rnd() * 5.0f;
        check(buf, lens[k]);
    }
    for (size_t i = 0; i < 4099; i++) buf[i] = 3.5f;
    check(buf, 4099);
    for (size_t i = 0; i < 5000; i++) buf[i] = -1.0e4f;
    buf[4321] = 10.0f;
    check(buf, 5000);
    size_t nb = 0;
    if (twin(buf, 5000, &nb) != 0.0f) {
        printf("FAIL: a one-hot row is not exactly 0 bits\n");
        failures++;
    }
    for (size_t i = 0; i < 3001; i++) buf[i] = i % 3 == 0 ? -INFINITY : rnd() * 3.0f;
    check(buf, 3001);
    for (size_t i = 0; i < 4096; i++) buf[i] = i % 2 == 0 ? 1.0e30f : -1.0e30f;
    check(buf, 4096);
    for (size_t i = 0; i < 100; i++) buf[i] = -INFINITY;
    check(buf, 100);
    const size_t at[] = {0, 77, 1001, 1004};
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < 1005; i++) buf[i] = rnd();
        buf[at[k]] = k % 2 == 0 ? NAN : INFINITY;
        check(buf, 1005);
    }
    printf("all classes: %d rows, worst difference %.3g bits, %d failures\n", rows, worst,
           failures);
    return failures ? 1 : 0;
}
