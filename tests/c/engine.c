/*
 * A C program on the engine API, linked against libgearbx.a (pkg-config gearbx): opens a model
 * by Ollama name, generates greedily with a per-token callback, forces a gear, cancels a
 * generation from another thread, and checks that misuse is reported rather than crashed on.
 *
 * usage: engine MODELS_DIR MODEL PROMPT N_TOKENS
 * stdout: the first generation's text between "TEXT<<" and ">>TEXT", then KEY=VALUE lines.
 * Exit status: 0 when every check passed; the failed check is printed on stderr.
 */
#include <gearbx.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "engine.c:%d: check failed: %s: ", __LINE__, #cond);             \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fprintf(stderr, " (last error: %s)\n", gearbx_last_error());                     \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

struct collect {
    char text[16384];
    size_t len;
    int tokens;
    int per_gear[3];
    int bad_telemetry;
    int stop_after; /* return false after this many tokens (0: never) */
    gearbx_engine *engine;
    int reentrant_status;
    volatile int seen; /* read by the cancelling thread */
};

static bool on_token(const char *piece, size_t len, const gearbx_token_info *info, void *ud) {
    struct collect *c = ud;
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, piece, len);
        c->len += len;
        c->text[c->len] = 0;
    }
    if (strlen(piece) != len && memchr(piece, 0, len) == NULL) c->bad_telemetry++;
    if (info->token >= 0) {
        if (info->gear < GEARBX_GEAR_LOW || info->gear > GEARBX_GEAR_HIGH) c->bad_telemetry++;
        else c->per_gear[info->gear]++;
        if (!(info->entropy_bits >= 0.0f)) c->bad_telemetry++;
        if (info->index != c->tokens) c->bad_telemetry++;
        c->tokens++;
        __atomic_store_n(&c->seen, c->tokens, __ATOMIC_SEQ_CST);
    }
    if (c->engine != NULL && c->tokens == 1) {
        /* Calling back into the same engine from its callback is misuse: reported as busy. */
        gearbx_generate_params p = gearbx_generate_default_params(NULL);
        p.prompt = "nested";
        c->reentrant_status = gearbx_engine_generate(c->engine, &p, NULL, NULL, NULL);
    }
    return !(c->stop_after > 0 && c->tokens >= c->stop_after);
}

struct canceller {
    gearbx_engine *engine;
    struct collect *c;
    int status;
};

static void *cancel_after_five(void *arg) {
    struct canceller *k = arg;
    struct timespec ms = {0, 1000000};
    while (__atomic_load_n(&k->c->seen, __ATOMIC_SEQ_CST) < 5) nanosleep(&ms, NULL);
    k->status = gearbx_engine_cancel(k->engine);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s MODELS_DIR MODEL PROMPT N_TOKENS [BAD_GGUF]\n", argv[0]);
        return 2;
    }
    const char *models_dir = argv[1], *model = argv[2], *prompt = argv[3];
    int n_tokens = atoi(argv[4]);

    /* Misuse is reported with a code and a message, never a crash. */
    gearbx_engine *engine = (gearbx_engine *) 1;
    CHECK(gearbx_engine_open(model, NULL, &engine) == GEARBX_ERR_INVALID_ARGUMENT, "NULL params");
    CHECK(engine == NULL, "*out is cleared on failure");
    CHECK(strstr(gearbx_last_error(), "params") != NULL, "message names the argument");
    gearbx_engine_params ep = gearbx_engine_default_params();
    ep.models_dir = models_dir;
    ep.n_threads = 1;
    CHECK(gearbx_engine_open("no-such-model:7b", &ep, &engine) == GEARBX_ERR_NOT_FOUND, "unknown");
    CHECK(strstr(gearbx_last_error(), "no-such-model") != NULL, "message names the model");
    if (argc == 6) {
        /* A GGUF whose values llama.cpp asserts on: an error, not an abort of this program. */
        CHECK(gearbx_engine_open(argv[5], &ep, &engine) == GEARBX_ERR_BAD_MODEL, "bad values");
        CHECK(engine == NULL && strstr(gearbx_last_error(), "epsilon") != NULL, "names the key");
    }
    CHECK(gearbx_engine_generate(NULL, NULL, NULL, NULL, NULL) == GEARBX_ERR_INVALID_ARGUMENT,
          "NULL engine");
    CHECK(gearbx_engine_cancel(NULL) == GEARBX_ERR_INVALID_ARGUMENT, "NULL cancel");
    gearbx_engine_close(NULL);
    ep.gears.window = 0;
    CHECK(gearbx_engine_open(model, &ep, &engine) == GEARBX_ERR_INVALID_ARGUMENT, "window 0");
    ep.gears.window = 5;
    /* KV cache settings as llama.cpp's -ctk/-ctv/-fa: refused before anything is built. */
    ep.cache_type_k = "q3_k";
    CHECK(gearbx_engine_open(model, &ep, &engine) == GEARBX_ERR_INVALID_ARGUMENT &&
              strstr(gearbx_last_error(), "q3_k") != NULL,
          "unknown cache type");
    ep.cache_type_k = "q8_0";
    ep.cache_type_v = "q4_0";
    ep.flash_attn = GEARBX_FLASH_ATTN_OFF;
    CHECK(gearbx_engine_open(model, &ep, &engine) == GEARBX_ERR_INVALID_ARGUMENT &&
              strstr(gearbx_last_error(), "flash attention") != NULL,
          "a quantized V cache without flash attention");
    ep.flash_attn = 7;
    CHECK(gearbx_engine_open(model, &ep, &engine) == GEARBX_ERR_INVALID_ARGUMENT, "bad flash_attn");
    ep.cache_type_k = NULL;
    ep.cache_type_v = NULL;
    ep.flash_attn = GEARBX_FLASH_ATTN_AUTO;

    CHECK(gearbx_engine_open(model, &ep, &engine) == GEARBX_OK, "open %s", model);
    CHECK(gearbx_engine_set_gear(engine, 42) == GEARBX_ERR_INVALID_ARGUMENT, "bad gear");

    /* 1. Greedy generation in auto mode, as `gearbx-run --temp 0 -n N` does it. */
    gearbx_generate_params gp = gearbx_generate_default_params(engine);
    gp.prompt = "  ";
    CHECK(gearbx_engine_generate(engine, &gp, NULL, NULL, NULL) == GEARBX_ERR_INVALID_ARGUMENT,
          "an empty prompt is refused, as gearbx-run refuses it");
    gp.prompt = prompt;
    gp.n_predict = n_tokens;
    gp.sampling.temperature = 0.0f;
    gp.sampling.seed = 1;
    struct collect c1 = {0};
    c1.engine = engine;
    gearbx_stats st;
    CHECK(gearbx_engine_generate(engine, &gp, on_token, &c1, &st) == GEARBX_OK, "generate");
    CHECK(c1.reentrant_status == GEARBX_ERR_BUSY, "re-entrant call got %d", c1.reentrant_status);
    CHECK(c1.bad_telemetry == 0, "%d bad telemetry fields", c1.bad_telemetry);
    CHECK((int) st.generated_tokens == c1.tokens, "stats %u vs callback %d", st.generated_tokens,
          c1.tokens);
    for (int g = 0; g < 3; g++)
        CHECK((int) st.tokens_per_gear[g] == c1.per_gear[g], "gear %d counts", g);
    CHECK(st.tier_bytes[GEARBX_GEAR_LOW] < st.tier_bytes[GEARBX_GEAR_HIGH], "tier bytes");
    /* Low and mid share SmolLM2's Q4_0 shadows: stored once, so less than the two together. */
    CHECK(st.tier_resident_bytes > 0 &&
              st.tier_resident_bytes < st.tier_bytes[GEARBX_GEAR_LOW] + st.tier_bytes[GEARBX_GEAR_MID],
          "resident tier bytes %llu", (unsigned long long) st.tier_resident_bytes);
    CHECK(st.tier_gpu_bytes == 0, "no GPU in this test");
    gearbx_stats again;
    CHECK(gearbx_engine_stats(engine, &again) == GEARBX_OK, "stats");
    CHECK(again.generated_tokens == st.generated_tokens, "stats kept");
    printf("TEXT<<%s>>TEXT\n", c1.text);
    printf("TOKENS=%d\nLOW=%d\nMID=%d\nHIGH=%d\nSHIFTS=%u\nSTOP=%d\n", c1.tokens, c1.per_gear[0],
           c1.per_gear[1], c1.per_gear[2], st.shifts, st.stop_reason);

    /* 2. A fixed gear: every token after the prompt's comes from the low tiers. */
    CHECK(gearbx_engine_set_gear(engine, GEARBX_GEAR_LOW) == GEARBX_OK, "set low");
    struct collect c2 = {0};
    CHECK(gearbx_engine_generate(engine, &gp, on_token, &c2, &st) == GEARBX_OK, "generate low");
    CHECK(c2.per_gear[GEARBX_GEAR_LOW] == c2.tokens - 1 && c2.per_gear[GEARBX_GEAR_HIGH] == 1,
          "low %d of %d", c2.per_gear[GEARBX_GEAR_LOW], c2.tokens);
    printf("LOW_FIXED_TOKENS=%d\n", c2.tokens);

    /* 2b. Lossless: drafts at the low gear, the high gear's text exactly. */
    CHECK(gearbx_engine_set_gear(engine, GEARBX_GEAR_HIGH) == GEARBX_OK, "set high");
    struct collect ch = {0};
    CHECK(gearbx_engine_generate(engine, &gp, on_token, &ch, &st) == GEARBX_OK, "generate high");
    gearbx_generate_params lp = gp;
    lp.lossless = true;
    lp.draft_always = true; /* the controller would not draft on this CPU, where it does not pay */
    struct collect cl = {0};
    CHECK(gearbx_engine_generate(engine, &lp, on_token, &cl, &st) == GEARBX_OK, "lossless");
    CHECK(strcmp(cl.text, ch.text) == 0, "lossless text differs:\n%s\nvs\n%s", cl.text, ch.text);
    CHECK(st.drafted > 0 && st.accepted <= st.drafted && cl.per_gear[GEARBX_GEAR_HIGH] == cl.tokens,
          "drafted %u accepted %u", st.drafted, st.accepted);
    CHECK(st.guarantee == GEARBX_GUARANTEE_STRICT, "CPU default guarantee %d", st.guarantee);
    gearbx_generate_params vp = lp;
    vp.guarantee = GEARBX_GUARANTEE_VERIFIED;
    struct collect cv = {0};
    CHECK(gearbx_engine_generate(engine, &vp, on_token, &cv, &st) == GEARBX_OK, "verified");
    CHECK(st.guarantee == GEARBX_GUARANTEE_VERIFIED && st.drafted > 0, "verified: guarantee %d",
          st.guarantee);
    vp.guarantee = 7;
    CHECK(gearbx_engine_generate(engine, &vp, on_token, &cv, &st) == GEARBX_ERR_INVALID_ARGUMENT,
          "an unknown guarantee is refused");
    printf("LOSSLESS_DRAFTED=%u\nLOSSLESS_ACCEPTED=%u\n", st.drafted, st.accepted);
    CHECK(gearbx_engine_set_gear(engine, GEARBX_GEAR_AUTO) == GEARBX_OK, "set auto");

    /* 3. The callback stops the generation. */
    struct collect c3 = {0};
    c3.stop_after = 3;
    CHECK(gearbx_engine_generate(engine, &gp, on_token, &c3, &st) == GEARBX_OK, "generate stop");
    CHECK(c3.tokens == 3 && st.stop_reason == GEARBX_STOP_CALLBACK, "stopped at %d reason %d",
          c3.tokens, st.stop_reason);

    /* 4. Cancel from another thread, mid-generation of a long run. */
    gearbx_generate_params longp = gp;
    longp.n_predict = 100000;
    longp.sampling.ignore_eos = true;
    struct collect c4 = {0};
    struct canceller k = {engine, &c4, -1};
    pthread_t th;
    pthread_create(&th, NULL, cancel_after_five, &k);
    int rc = gearbx_engine_generate(engine, &longp, on_token, &c4, &st);
    pthread_join(th, NULL);
    CHECK(k.status == GEARBX_OK, "cancel returned %d", k.status);
    CHECK(rc == GEARBX_ERR_CANCELLED, "generate returned %d", rc);
    CHECK(st.stop_reason == GEARBX_STOP_CANCELLED && c4.tokens >= 5 && c4.tokens < 100,
          "cancelled after %d tokens, reason %d", c4.tokens, st.stop_reason);
    printf("CANCELLED_AFTER=%d\n", c4.tokens);

    /* 5. The engine is still usable and deterministic after all that. */
    struct collect c5 = {0};
    CHECK(gearbx_engine_generate(engine, &gp, on_token, &c5, NULL) == GEARBX_OK, "again");
    CHECK(strcmp(c5.text, c1.text) == 0, "same greedy text after cancel:\n%s\nvs\n%s", c5.text,
          c1.text);

    /* 6. A prompt longer than the context is an error with its own code. */
    static char huge[200000];
    for (size_t i = 0; i + 6 < sizeof huge; i += 6) memcpy(huge + i, "hello ", 6);
    gearbx_generate_params hp = gp;
    hp.prompt = huge;
    CHECK(gearbx_engine_generate(engine, &hp, NULL, NULL, NULL) == GEARBX_ERR_PROMPT_TOO_LONG,
          "long prompt");

    gearbx_engine_close(engine);
    printf("VERSION=%s\nOK\n", gearbx_version());
    return 0;
}
