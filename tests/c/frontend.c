/*
 * A minimal llama.cpp frontend: its own model load, context, prompt decode and greedy loop
 * through llama.h, linked against its own llama.cpp. It attaches gearbx (libgearbx-host.a,
 * pkg-config gearbx-host) and calls one gearbx function after each decode; gears shift while
 * the frontend keeps its loop and sampling. Detaching must leave the model exactly as loaded.
 *
 * usage: frontend MODEL.gguf PROMPT N_TOKENS
 * stdout: PLAIN<<text>>PLAIN, GEARS<<text>>GEARS, AFTER<<text>>AFTER, then KEY=VALUE lines.
 * stderr: one line per token with its entropy and gear.
 * Exit status: 0 when every check passed.
 */
#include <llama.h>
#include <gearbx.h> /* after llama.h: defines gearbx_host_llama_abi() */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "frontend.c:%d: check failed: %s: ", __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fprintf(stderr, " (gearbx: %s)\n", gearbx_last_error());                         \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static const struct llama_vocab *vocab;

static llama_token argmax(const float *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* Greedy generation of up to n tokens; after every decode, gearbx (if attached) measures the
 * logits and shifts. Writes the text into out and returns the number of tokens. */
static int generate(struct llama_context *ctx, gearbx_attachment *gb, const char *prompt, int n,
                    char *out, size_t out_size, llama_token *toks) {
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_token ptoks[512];
    int np = llama_tokenize(vocab, prompt, (int) strlen(prompt), ptoks, 512, true, true);
    CHECK(np > 0, "tokenize");
    if (gb) CHECK(gearbx_attach_begin(gb, prompt) == GEARBX_OK, "begin");
    CHECK(llama_decode(ctx, llama_batch_get_one(ptoks, np)) == 0, "prompt decode");
    size_t len = 0;
    out[0] = 0;
    int i = 0;
    for (; i < n; i++) {
        gearbx_token_info info;
        if (gb) CHECK(gearbx_attach_after_decode(gb, -1, &info) == GEARBX_OK, "after_decode");
        llama_token t = argmax(llama_get_logits_ith(ctx, -1), llama_vocab_n_tokens(vocab));
        if (llama_vocab_is_eog(vocab, t)) break;
        toks[i] = t;
        char piece[256];
        int k = llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
        if (k > 0 && len + (size_t) k < out_size) {
            memcpy(out + len, piece, (size_t) k);
            len += (size_t) k;
            out[len] = 0;
        }
        if (gb)
            fprintf(stderr, "token %3d entropy %.3f gear %d -> %d\n", i, info.entropy_bits,
                    info.gear, info.next_gear);
        CHECK(llama_decode(ctx, llama_batch_get_one(&toks[i], 1)) == 0, "decode");
    }
    return i;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT N_TOKENS\n", argv[0]);
        return 2;
    }
    const char *path = argv[1], *prompt = argv[2];
    int n = atoi(argv[3]);
    if (n < 1 || n > 1024) n = 64;

    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(path, mp);
    CHECK(model != NULL, "load %s", path);
    vocab = llama_model_get_vocab(model);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    CHECK(ctx != NULL, "context");

    static char plain[8192], geared[8192], after[8192];
    static llama_token t_plain[1024], t_geared[1024], t_after[1024];
    int n_plain = generate(ctx, NULL, prompt, n, plain, sizeof plain, t_plain);

    /* A host whose llama.h differs from gearbx's is refused, with the difference named. */
    gearbx_attach_params ap = gearbx_attach_default_params();
    ap.model_path = path;
    ap.n_threads = 1;
    ap.llama_abi = gearbx_host_llama_abi();
    gearbx_attach_params wrong = ap;
    wrong.llama_abi.context_params_size += 8;
    gearbx_attachment *gb = NULL;
    CHECK(gearbx_attach(model, ctx, &wrong, &gb) == GEARBX_ERR_VERSION_MISMATCH, "mismatch");
    CHECK(gb == NULL && strstr(gearbx_last_error(), "llama_context_params") != NULL, "named");
    printf("MISMATCH_ERROR=%s\n", gearbx_last_error());
    CHECK(gearbx_check_llama_abi(&ap.llama_abi) == GEARBX_OK, "own abi");

    CHECK(gearbx_attach(model, ctx, &ap, &gb) == GEARBX_OK, "attach");
    int n_geared = generate(ctx, gb, prompt, n, geared, sizeof geared, t_geared);
    gearbx_stats st;
    CHECK(gearbx_attach_stats(gb, &st) == GEARBX_OK, "stats");
    gearbx_detach(gb);

    int n_after = generate(ctx, NULL, prompt, n, after, sizeof after, t_after);
    int restored = n_after == n_plain && memcmp(t_plain, t_after, sizeof(llama_token) * n_plain) == 0;

    printf("PLAIN<<%s>>PLAIN\nGEARS<<%s>>GEARS\nAFTER<<%s>>AFTER\n", plain, geared, after);
    printf("TOKENS=%d\nOBSERVED=%u\nLOW=%u\nMID=%u\nHIGH=%u\nSHIFTS=%u\nRESTORED=%d\n", n_geared,
           st.generated_tokens, st.tokens_per_gear[0], st.tokens_per_gear[1],
           st.tokens_per_gear[2], st.shifts, restored);
    printf("FIRST_TOKEN_EQUAL=%d\n", n_geared > 0 && n_plain > 0 && t_geared[0] == t_plain[0]);

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return restored ? 0 : 1;
}
