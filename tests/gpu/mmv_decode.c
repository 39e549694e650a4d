/* End to end on the GPU machine (scripts/mmv-gpu.sh): llama.cpp (the pinned source and our
 * patch series, built with CUDA) decoding a model with its own kernels and with gearbx's decode
 * products (csrc/cuda/mmv.cu through patch 0005's hook), in one process, on the same tokens.
 *
 *   mmv_decode MODEL.gguf N_PROMPT N_DECODE ROUNDS   (all layers on the GPU, flash attention on)
 *   mmv_decode --quantize IN.gguf OUT.gguf q4_0|q8_0|q4_k (llama_model_quantize; q4_k: every
 *                                                   matrix Q4_K, head included, as a Q4_K gear)
 *
 * Each round, for each mode (llama.cpp's kernels; ours on every product the hook is offered,
 * launched with programmatic dependent launch as llama.cpp's kernels are, then without; ours
 * where gearbx_mmv_preferred says, as gearbx runs): a fresh context
 * (CUDA graphs are captured per context), N_PROMPT fixed tokens in one batch, then N_DECODE
 * single-token decodes of fixed tokens (teacher-forced), timed, each read back before the next.
 * Prints the best round's tokens/s of each and its ratio to llama.cpp's, and, from the first
 * round, the KL divergence of ours (every product) from llama.cpp's logits per step (mean, max)
 * and how often their argmax agrees.
 * With MMVD_PROFILE set: one round, no timing; the last decode step of each mode runs between
 * cudaProfilerStart/Stop (for `ncu --profile-from-start off`: the kernels of one token).
 * Float noise for scale: the same logits from llama.cpp alone computed another way, all tokens in
 * one batch (its batched kernels, other roundings), and the KL of its per-token logits from
 * those: llama.cpp against itself. */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_profiler_api.h>

#include "gearbx_mmv.h"
#include "ggml-cuda.h"
#include "ggml.h"
#include "llama.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Decodes the prompt and the steps; returns tokens/s of the steps; logits of each step go to
 * `keep` (n_decode * n_vocab floats) when not NULL. Step `profile_step` (-1: none) runs
 * between cudaProfilerStart and cudaProfilerStop. */
static double run(struct llama_model *model, const llama_token *toks, int n_prompt, int n_decode,
                  float *keep, int n_vocab, int profile_step) {
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_decode + 64;
    cp.n_batch = n_prompt;
    cp.n_ubatch = 512;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "context failed\n");
        exit(1);
    }
    llama_token *p = (llama_token *)toks;
    if (llama_decode(ctx, llama_batch_get_one(p, n_prompt)) != 0) exit(1);
    llama_synchronize(ctx);
    double t0 = 0;
    for (int i = 0; i < n_decode; i++) {
        if (i == 2) t0 = now(); /* the first steps capture CUDA graphs */
        if (i == profile_step) cudaProfilerStart();
        if (llama_decode(ctx, llama_batch_get_one(p + n_prompt + i, 1)) != 0) exit(1);
        const float *l = llama_get_logits_ith(ctx, -1);
        if (i == profile_step) cudaProfilerStop();
        if (keep) memcpy(keep + (size_t)i * n_vocab, l, (size_t)n_vocab * sizeof(float));
    }
    const double dt = now() - t0;
    llama_free(ctx);
    return (n_decode - 2) / dt;
}

/* llama.cpp's kernels (hook off) on all tokens in one batch: the logits of the steps' positions
 * into `keep`, as run() would give them. */
static void run_batched(struct llama_model *model, llama_token *toks, int n_prompt, int n_decode,
                        float *keep, int n_vocab) {
    struct llama_context_params cp = llama_context_default_params();
    const int n = n_prompt + n_decode;
    cp.n_ctx = n + 64;
    cp.n_batch = n;
    cp.n_ubatch = 512;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    struct llama_batch b = llama_batch_init(n, 0, 1);
    if (!ctx || n > 512) exit(1);
    for (int i = 0; i < n; i++) {
        b.token[i] = toks[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = i >= n_prompt;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b) != 0) exit(1);
    for (int i = 0; i < n_decode; i++)
        memcpy(keep + (size_t)i * n_vocab, llama_get_logits_ith(ctx, n_prompt + i),
               (size_t)n_vocab * sizeof(float));
    llama_batch_free(b);
    llama_free(ctx);
}

/* KL(p || q) of two logit rows, in double. */
static double kl(const float *a, const float *b, int n) {
    double ma = -INFINITY, mb = -INFINITY;
    for (int i = 0; i < n; i++) {
        ma = fmax(ma, a[i]);
        mb = fmax(mb, b[i]);
    }
    double za = 0, zb = 0;
    for (int i = 0; i < n; i++) {
        za += exp(a[i] - ma);
        zb += exp(b[i] - mb);
    }
    double s = 0;
    for (int i = 0; i < n; i++) {
        const double la = a[i] - ma - log(za), lb = b[i] - mb - log(zb);
        s += exp(la) * (la - lb);
    }
    return s;
}

static int argmax(const float *a, int n) {
    int k = 0;
    for (int i = 1; i < n; i++) k = a[i] > a[k] ? i : k;
    return k;
}

#define MODES 4

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    llama_log_set(quiet, NULL); /* NULL would restore llama.cpp's own logger */
    llama_backend_init();
    if (argc == 5 && !strcmp(argv[1], "--quantize")) {
        llama_model_quantize_params qp = llama_model_quantize_default_params();
        qp.ftype = !strcmp(argv[4], "q8_0")   ? LLAMA_FTYPE_MOSTLY_Q8_0
                   : !strcmp(argv[4], "q4_k") ? LLAMA_FTYPE_MOSTLY_Q4_K_S
                                              : LLAMA_FTYPE_MOSTLY_Q4_0;
        qp.pure = !strcmp(argv[4], "q4_k"); /* no Q5_K/Q6_K mix: Q4_K throughout */
        qp.nthread = 16;
        return llama_model_quantize(argv[2], argv[3], &qp) == 0 ? 0 : 1;
    }
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL N_PROMPT N_DECODE ROUNDS\n", argv[0]);
        return 2;
    }
    const int n_prompt = atoi(argv[2]), n_decode = atoi(argv[3]), rounds = atoi(argv[4]);
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 999;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_token *toks = malloc(sizeof(llama_token) * (n_prompt + n_decode));
    unsigned s = 12345;
    for (int i = 0; i < n_prompt + n_decode; i++) {
        s = s * 1103515245u + 12345u;
        toks[i] = (llama_token)((s >> 8) % (unsigned)n_vocab);
    }
    float *ref = malloc(sizeof(float) * (size_t)n_decode * n_vocab);
    float *ours = malloc(sizeof(float) * (size_t)n_decode * n_vocab);
    if (!ref || !ours) return 1;
    /* modes: llama.cpp's kernels; ours for every product they are offered (kernel 5), with and
     * without programmatic dependent launch; ours where gearbx_mmv_preferred says (what gearbx
     * does). Ours only on this thread's decodes under the hook's graph variant bit (patch
     * 0005). */
    static const int TUNE[MODES] = {0, 5, 5, 0}, PDL[MODES] = {1, 1, 0, 1};
    gearbx_mmv_install(1);
    if (getenv("MMVD_PROFILE")) {
        /* one decode step per mode between cudaProfilerStart/Stop, for ncu --profile-from-start off */
        for (int m = 0; m < MODES; m++) {
            gearbx_mmv_tune(TUNE[m], 0);
            gearbx_mmv_pdl(PDL[m]);
            ggml_backend_cuda_set_graph_variant(m ? GGML_CUDA_VARIANT_MMV_HOOK : 0);
            run(model, toks, n_prompt, n_decode, NULL, n_vocab, n_decode - 1);
        }
        return 0;
    }
    double best[MODES] = {0};
    float *keep[MODES] = {ref, ours, NULL, NULL};
    for (int r = 0; r < rounds; r++) {
        for (int m = 0; m < MODES; m++) {
            gearbx_mmv_tune(TUNE[m], 0);
            gearbx_mmv_pdl(PDL[m]);
            ggml_backend_cuda_set_graph_variant(m ? GGML_CUDA_VARIANT_MMV_HOOK : 0);
            const double tps =
                run(model, toks, n_prompt, n_decode, r == 0 ? keep[m] : NULL, n_vocab, -1);
            best[m] = tps > best[m] ? tps : best[m];
        }
    }
    gearbx_mmv_tune(0, 0);
    gearbx_mmv_pdl(1);
    ggml_backend_cuda_set_graph_variant(0);
    gearbx_mmv_install(0);
    double kl_mean = 0, kl_max = 0;
    int agree = 0;
    for (int i = 0; i < n_decode; i++) {
        const float *a = ref + (size_t)i * n_vocab, *b = ours + (size_t)i * n_vocab;
        const double k = kl(a, b, n_vocab);
        kl_mean += k / n_decode;
        kl_max = fmax(kl_max, k);
        agree += argmax(a, n_vocab) == argmax(b, n_vocab);
    }
    /* the noise scale: llama.cpp's per-token logits against its own batched ones */
    run_batched(model, toks, n_prompt, n_decode, ours, n_vocab);
    double noise = 0, noise_max = 0;
    for (int i = 0; i < n_decode; i++) {
        const double k = kl(ours + (size_t)i * n_vocab, ref + (size_t)i * n_vocab, n_vocab);
        noise += k / n_decode;
        noise_max = fmax(noise_max, k);
    }
    char desc[128];
    llama_model_desc(model, desc, sizeof desc);
    printf("| %s | %.1f | %.1f (%.3fx) | %.1f (%.3fx) | %.1f (%.3fx) |", desc, best[0], best[1],
           best[1] / best[0], best[2], best[2] / best[0], best[3], best[3] / best[0]);
    printf(" %.2e / %.2e / %d of %d |", kl_mean, kl_max, agree, n_decode);
    printf(" %.2e / %.2e |\n", noise, noise_max);
    return 0;
}
