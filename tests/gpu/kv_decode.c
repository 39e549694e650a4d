/* Decode speed at long context per KV cache type, with llama.cpp alone (the pinned source and
 * our patch series, built with CUDA on the GPU machine): the measurement behind the README's
 * "KV cache" table for the H200. gearbx's fixed gears decode as llama.cpp's static models of
 * the same types (README, CUDA), so this is what each cache type costs or saves there.
 *
 *   kv_decode MODEL.gguf CACHE_TYPE DEPTH N_DECODE ROUNDS   (flash attention on, all layers
 *                                                            on the GPU; prints one line)
 *   kv_decode --quantize IN.gguf OUT.gguf q4_0              (llama_model_quantize)
 *
 * For each round: the cache holds DEPTH tokens (decoded once, in batches of 2048), then
 * N_DECODE single-token decodes are timed, each read back (logits) before the next; the
 * decoded tokens are removed again between rounds. Prints the best round's tokens/s. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "llama.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static enum ggml_type cache_type(const char *s) {
    if (!strcmp(s, "f16")) return GGML_TYPE_F16;
    if (!strcmp(s, "q8_0")) return GGML_TYPE_Q8_0;
    if (!strcmp(s, "q4_0")) return GGML_TYPE_Q4_0;
    if (!strcmp(s, "q5_1")) return GGML_TYPE_Q5_1;
    if (!strcmp(s, "iq4_nl")) return GGML_TYPE_IQ4_NL;
    fprintf(stderr, "unknown cache type %s\n", s);
    exit(2);
}

int main(int argc, char **argv) {
    llama_backend_init();
    if (argc == 5 && !strcmp(argv[1], "--quantize")) {
        llama_model_quantize_params qp = llama_model_quantize_default_params();
        qp.ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
        qp.nthread = 16;
        return llama_model_quantize(argv[2], argv[3], &qp) == 0 ? 0 : 1;
    }
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL CACHE_TYPE DEPTH N_DECODE ROUNDS\n", argv[0]);
        return 2;
    }
    const int depth = atoi(argv[3]), n = atoi(argv[4]), rounds = atoi(argv[5]);
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 999;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = depth + n + 256;
    cp.n_batch = 2048;
    cp.n_ubatch = 512;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.type_k = cp.type_v = cache_type(argv[2]);
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_token *tok = malloc(sizeof(llama_token) * 2048);
    srand(1);
    for (int done = 0; done < depth;) {
        int k = depth - done < 2048 ? depth - done : 2048;
        for (int i = 0; i < k; i++) tok[i] = rand() % n_vocab;
        if (llama_decode(ctx, llama_batch_get_one(tok, k)) != 0) return 1;
        done += k;
    }
    double best = 0;
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        for (int i = 0; i < n; i++) {
            llama_token t = rand() % n_vocab;
            if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) return 1;
            (void)llama_get_logits_ith(ctx, -1);
        }
        llama_synchronize(ctx);
        double tps = n / (now() - t0);
        if (tps > best) best = tps;
        llama_memory_seq_rm(llama_get_memory(ctx), 0, depth, -1);
    }
    printf("| %s | %s | %d | %.1f |\n", strrchr(argv[1], '/') ? strrchr(argv[1], '/') + 1 : argv[1],
           argv[2], depth, best);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
