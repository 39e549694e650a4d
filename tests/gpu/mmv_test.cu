/* Parity, width invariance and bandwidth of gearbx's CUDA decode products (csrc/cuda/mmv.cu),
 * run on the GPU machine by scripts/mmv-gpu.sh (not in CI: no GPU here).
 *
 *   parity     every output against the scalar twin (csrc/generic/mmv_ref.h) in double on the
 *              same q8_1 activations (tolerance: float accumulation), the activations bit for
 *              bit against the twin's quantizer, and the error against the exact F32 product
 *              reported; random and adversarial weights/activations, every 1B and 8B shape.
 *   width      columns 1..8: each column's result bit-identical to the 8-column launch.
 *   speed      per shape and width, time per product over weight copies larger than L2, as
 *              GB/s and % of the card's HBM peak (NVIDIA's figure: H200 4.8 TB/s, H100 3.35).
 *   ggml       (built with -DWITH_GGML against our patched libggml) the same products through
 *              ggml_mul_mat on the CUDA backend, llama.cpp's own kernels (mmvq) vs ours through
 *              patch 0005's hook, in the same process: outputs checked, time per product.
 * Exit status 0 only when every check passed. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "gearbx_mmv.h"
#include "mmv_ref.h"

#ifdef WITH_GGML
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cuda.h"
#include "ggml.h"
#endif

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));          \
            exit(3);                                                                           \
        }                                                                                      \
    } while (0)

/* HBM peak in bytes/s, NVIDIA's figure for the card (H200 HBM3e; H100 SXM HBM3 otherwise) */
static double PEAK = 4.8e12;
static int failures = 0;

struct Shape {
    const char *name;
    int64_t rows, k;
};
static const Shape SHAPES[] = {
    {"8B attn_q/o 4096x4096", 4096, 4096},     {"8B attn_k/v 1024x4096", 1024, 4096},
    {"8B ffn_gate/up 14336x4096", 14336, 4096}, {"8B ffn_down 4096x14336", 4096, 14336},
    {"8B output 128256x4096", 128256, 4096},    {"1B attn_q/o 2048x2048", 2048, 2048},
    {"1B attn_k/v 512x2048", 512, 2048},        {"1B ffn_gate/up 8192x2048", 8192, 2048},
    {"1B ffn_down 2048x8192", 2048, 8192},      {"1B output 128256x2048", 128256, 2048},
};

static uint64_t rng_state = 0x12345678ULL;
static uint64_t rnd() {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static float uni() { return (float)((rnd() >> 11) * (1.0 / 9007199254740992.0)); }

static const int TYPES[] = {GEARBX_T_Q4_0, GEARBX_T_Q8_0, GEARBX_T_Q4_K};
/* a row's bytes and weight blocks */
static size_t rbytes(int t, int64_t k) {
    return (size_t)(k / gearbx_mmv_block_values(t)) * gearbx_mmv_block_bytes(t);
}
static int64_t rblocks(int t, int64_t k) { return k / gearbx_mmv_block_values(t); }
static const char *tname(int t) {
    return t == GEARBX_T_Q4_0 ? "q4_0" : t == GEARBX_T_Q8_0 ? "q8_0" : "q4_k";
}

enum Case { RANDOM, MAX_SCALES, ZERO_SCALES, EXTREME_CODES, OUTLIER_X, ZERO_X, TINY_X, N_CASES };
static const char *CASE_NAMES[] = {"random",        "max scales", "zero scales", "extreme codes",
                                   "outlier in x", "zero x",     "tiny x"};

/* Random blocks: each half scale (Q4_K: d and dmin) random, extreme or zero by case, every
 * other byte (codes; Q4_K's 6-bit scales and mins too) random, or all set/clear. */
static void fill_weights(int t, int c, uint8_t *w, int64_t nblocks) {
    const int bb = gearbx_mmv_block_bytes(t);
    const int halves = t == GEARBX_T_Q4_K ? 2 : 1;
    for (int64_t b = 0; b < nblocks; b++) {
        uint8_t *p = w + b * bb;
        for (int i = 0; i < halves; i++) {
            float s = (uni() * 2 - 1) * 0.05f;
            if (c == MAX_SCALES) s = (rnd() & 1) ? 65504.0f : -65504.0f;
            if (c == ZERO_SCALES) s = 0.0f;
            uint16_t h = gearbx_f32_to_f16(s);
            memcpy(p + 2 * i, &h, 2);
        }
        for (int j = 2 * halves; j < bb; j++) {
            p[j] = (uint8_t)rnd();
            if (c == EXTREME_CODES) p[j] = (b & 1) ? 0xFF : (t == GEARBX_T_Q8_0 ? 0x80 : 0x00);
        }
    }
}

static void fill_x(int c, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = (uni() * 2 - 1) * 2.0f;
        if (c == MAX_SCALES) x[i] *= 1e-4f;
        if (c == OUTLIER_X && i % 4096 == 17) x[i] = 1e4f;
        if (c == ZERO_X) x[i] = 0.0f;
        if (c == TINY_X) x[i] *= 1e-38f;
    }
}

/* Runs the product on the device; returns outputs (ncols x rows) and the q8_1 activations. */
struct Dev {
    uint8_t *w = nullptr;
    float *x = nullptr, *dst = nullptr, *bias = nullptr;
    void *scratch = nullptr;
    size_t wbytes = 0;
};

static void run(int t, const Shape &s, int ncols, Dev &d, std::vector<float> &out,
                std::vector<uint8_t> *xq) {
    char err[256];
    if (gearbx_mmv(t, d.w, rbytes(t, s.k), s.rows, s.k, d.x, s.k, ncols, d.dst,
                   s.rows, d.scratch, nullptr, err, sizeof err) != 0) {
        fprintf(stderr, "gearbx_mmv: %s\n", err);
        exit(3);
    }
    CK(cudaDeviceSynchronize());
    out.resize((size_t)ncols * s.rows);
    CK(cudaMemcpy(out.data(), d.dst, out.size() * 4, cudaMemcpyDeviceToHost));
    if (xq) {
        /* the product keeps its activations in shared memory: the same quantizer, here to
         * scratch, gives the twin its input */
        if (gearbx_mmv_quantize_x(d.x, s.k, s.k, ncols, d.scratch, nullptr) != 0) exit(3);
        CK(cudaDeviceSynchronize());
        xq->resize(gearbx_mmv_scratch_bytes(t, s.k, ncols));
        CK(cudaMemcpy(xq->data(), d.scratch, xq->size(), cudaMemcpyDeviceToHost));
    }
}

static bool same(double a, double b, double tol) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    return fabs(a - b) <= tol;
}

/* Parity of one shape and case at 8 columns, then width invariance (random case). */
static void parity(int t, const Shape &s, int c, Dev &d, const std::vector<uint8_t> &w) {
    const int nc = 8;
    const int64_t nb = s.k / 32;
    std::vector<float> x((size_t)nc * s.k);
    fill_x(c, x.data(), (int64_t)x.size());
    CK(cudaMemcpy(d.x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    std::vector<float> out;
    std::vector<uint8_t> xq;
    run(t, s, nc, d, out, &xq);
    long bad_x = 0, bad = 0;
    double worst = 0, worst_exact = 0;
    std::vector<uint8_t> twin(GEARBX_Q8_1_BYTES);
    for (int col = 0; col < nc; col++) {
        for (int64_t b = 0; b < nb; b++) {
            gearbx_mmv_quantize_block_ref(&x[col * s.k + b * 32], twin.data());
            bad_x += memcmp(twin.data(), &xq[(col * nb + b) * GEARBX_Q8_1_BYTES], 36) != 0;
        }
        /* every row for the first column, a sample of rows for the others */
        const int64_t step = col == 0 ? 1 : 97;
        for (int64_t r = 0; r < s.rows; r += step) {
            const uint8_t *row = &w[(size_t)r * rbytes(t, s.k)];
            double terms = 0;
            const double ref = gearbx_mmv_dot_q8_ref(t, row, &xq[col * nb * GEARBX_Q8_1_BYTES],
                                                     nb, &terms);
            const double g = out[col * s.rows + r];
            const double tol = 2e-6 * terms + 1e-30;
            if (!same(g, ref, tol)) {
                if (bad < 3)
                    fprintf(stderr, "  %s %s %s col %d row %ld: gpu %.9g twin %.9g (tol %.3g)\n",
                            tname(t), s.name, CASE_NAMES[c], col, (long)r, g, ref, tol);
                bad++;
            } else if (isfinite(g) && terms > 0) {
                worst = fmax(worst, fabs(g - ref) / terms);
            }
            if (c == RANDOM && col == 0) {
                double norm = 0;
                const double ex = gearbx_mmv_dot_f64(t, row, &x[0], s.k, &norm);
                worst_exact = fmax(worst_exact, fabs(g - ex) / norm);
            }
        }
    }
    char exact[32] = "-";
    if (c == RANDOM) {
        snprintf(exact, sizeof exact, "%.2e", worst_exact);
    }
    printf("| %s | %s | %s | %ld | %ld | %.2e | %s |\n", tname(t), s.name, CASE_NAMES[c], bad_x,
           bad, worst, exact);
    failures += (bad_x != 0) + (bad != 0);
    if (c != RANDOM) {
        return;
    }
    /* width invariance: columns 0..n-1 of an n-column launch == the 8-column launch's */
    long diff = 0;
    for (int n = 1; n < nc; n++) {
        std::vector<float> o;
        run(t, s, n, d, o, nullptr);
        for (size_t i = 0; i < o.size(); i++) {
            diff += memcmp(&o[i], &out[i], 4) != 0;
        }
    }
    printf("| %s | %s | width 1..8 | bit-identical: %s (%ld differ) |   |   |   |\n", tname(t),
           s.name, diff == 0 ? "yes" : "NO", diff);
    failures += diff != 0;
}

/* The gate's activation in exact arithmetic's stead (unary.cuh's formula, the host's expf and
 * tanhf; the device computes it as ggml-cuda does, with approximate exp2, division and tanh). */
static float act(int op, float g) {
    if (op == GEARBX_MMV_SWIGLU) return g / (1.0f + expf(-g));
    return 0.5f * g * (1.0f + tanhf(0.79788456080286535587989211986876f * g * (1.0f + 0.044715f * g * g)));
}

static void run_fused(int t, const Shape &s, int ncols, Dev &d, const gearbx_mmv_fusion *f,
                      std::vector<float> &out) {
    char err[256];
    if (gearbx_mmv_fused(t, d.w, rbytes(t, s.k), s.rows, s.k, d.x, s.k, ncols, d.dst, s.rows, f,
                         d.scratch, nullptr, err, sizeof err) != 0) {
        fprintf(stderr, "gearbx_mmv_fused: %s\n", err);
        exit(3);
    }
    CK(cudaDeviceSynchronize());
    out.resize((size_t)ncols * s.rows);
    CK(cudaMemcpy(out.data(), d.dst, out.size() * 4, cudaMemcpyDeviceToHost));
}

/* The unfused products of an up matrix at d.w and its gate right after it. */
static void run_up_gate(int t, const Shape &s, int ncols, Dev &d, std::vector<float> &up,
                        std::vector<float> &gate) {
    uint8_t *const w_up = d.w;
    run(t, s, ncols, d, up, nullptr);
    d.w = w_up + (size_t)s.rows * rbytes(t, s.k);
    run(t, s, ncols, d, gate, nullptr);
    d.w = w_up;
}

/* Fused products (gearbx_mmv_fused, as patch 0005 offers ggml-cuda's fused mmvq products):
 * up + bias bit for bit the unfused up plus the bias; (up + bias) * act(gate) against the
 * unfused products with the activation applied here (the device's expf/tanhf may differ from
 * the host's by an ulp or two); the gated product at widths 1..7 bit-identical to its
 * 8-column launch. W (up) at d.w, the gate right after it, the bias in d.bias. */
static void fused_parity(int t, const Shape &s, Dev &d) {
    const int nc = 8;
    const size_t wb = (size_t)s.rows * rbytes(t, s.k);
    std::vector<uint8_t> w(wb);
    fill_weights(t, RANDOM, w.data(), s.rows * rblocks(t, s.k));
    CK(cudaMemcpy(d.w, w.data(), wb, cudaMemcpyHostToDevice));
    fill_weights(t, RANDOM, w.data(), s.rows * rblocks(t, s.k));
    CK(cudaMemcpy(d.w + wb, w.data(), wb, cudaMemcpyHostToDevice));
    std::vector<float> x((size_t)nc * s.k), b((size_t)nc * s.rows);
    fill_x(RANDOM, x.data(), (int64_t)x.size());
    fill_x(RANDOM, b.data(), (int64_t)b.size());
    CK(cudaMemcpy(d.x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.bias, b.data(), b.size() * 4, cudaMemcpyHostToDevice));
    std::vector<float> up, gate, o;
    run_up_gate(t, s, nc, d, up, gate);
    uint8_t *const w_up = d.w;
    long off_bias = 0, off_gate = 0, diff = 0;
    double worst[2] = {0, 0}; /* silu, gelu */
    const gearbx_mmv_fusion fb = {nullptr, 0, d.bias, s.rows};
    run_fused(t, s, nc, d, &fb, o);
    for (size_t i = 0; i < o.size(); i++) {
        const float want = up[i] + b[i];
        off_bias += memcmp(&o[i], &want, 4) != 0;
    }
    for (int op : {GEARBX_MMV_SWIGLU, GEARBX_MMV_GEGLU}) {
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            const gearbx_mmv_fusion fg = {w_up + wb, op, with_bias ? d.bias : nullptr, s.rows};
            run_fused(t, s, nc, d, &fg, o);
            for (size_t i = 0; i < o.size(); i++) {
                const double u = (double)(up[i] + (with_bias ? b[i] : 0.0f));
                const double want = u * act(op, gate[i]);
                const double e = fabs(o[i] - want);
                /* silu: ex2.approx and div.approx are good to 2 ulp; gelu: tanh.approx to 2^-11
                 * relative, i.e. up to 5e-4 absolute in 1 + tanh, so 0.5 g (1 + tanh) within
                 * 2.5e-4 |g| (run f measured up to 4e-3 relative where 1 + tanh cancels) */
                const double tol = op == GEARBX_MMV_GEGLU ? 1e-5 * fabs(want) + 3e-4 * fabs(u * gate[i])
                                                          : 1e-5 * fabs(want);
                if (!(e <= tol + 1e-30)) {
                    if (off_gate < 3)
                        fprintf(stderr, "  %s %s fused op %d row %zu: gpu %.9g host %.9g\n",
                                tname(t), s.name, op, i % s.rows, o[i], want);
                    off_gate++;
                } else if (want != 0) {
                    worst[op == GEARBX_MMV_GEGLU] = fmax(worst[op == GEARBX_MMV_GEGLU], e / fabs(want));
                }
            }
            if (op == GEARBX_MMV_SWIGLU && with_bias) {
                for (int n = 1; n < nc; n++) {
                    std::vector<float> on;
                    run_fused(t, s, n, d, &fg, on);
                    for (size_t i = 0; i < on.size(); i++) diff += memcmp(&on[i], &o[i], 4) != 0;
                }
            }
        }
    }
    printf("| %s | %s | %ld | %ld | %.2e / %.2e | %s (%ld differ) |\n", tname(t), s.name,
           off_bias, off_gate, worst[0], worst[1], diff == 0 ? "yes" : "NO", diff);
    failures += (off_bias != 0) + (off_gate != 0) + (diff != 0);
}

/* Time per product over weight copies that do not fit L2 (60 MB), CUDA-graph replayed. */
static double time_product(int t, const Shape &s, int ncols, Dev &d, int copies) {
    const size_t wb = (size_t)s.rows * rbytes(t, s.k);
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    const int per_graph = copies * 4;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < per_graph; i++) {
        gearbx_mmv(t, d.w + (i % copies) * wb, wb / s.rows, s.rows, s.k, d.x, s.k, ncols, d.dst,
                   s.rows, d.scratch, st, nullptr, 0);
    }
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    const int reps = 5;
    CK(cudaEventRecord(a, st));
    for (int r = 0; r < reps; r++) CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(st);
    return ms * 1e-3 / (reps * per_graph);
}

static int copies_for(size_t wb) {
    int c = (int)((400u << 20) / wb) + 1;
    return c < 2 ? 2 : c;
}

#ifdef WITH_GGML
/* The hook must have run our kernel (its output bitwise ours, o_mine) and llama.cpp's (o_ref)
 * must be close to it; prints and counts a failure otherwise. */
static void check_hook(const std::vector<float> &o_hook, const std::vector<float> &o_mine,
                       const std::vector<float> &o_ref) {
    long not_ours = 0;
    double dev = 0, mag = 0;
    for (size_t i = 0; i < o_mine.size(); i++) {
        not_ours += memcmp(&o_hook[i], &o_mine[i], 4) != 0;
        dev = fmax(dev, fabs((double)o_ref[i] - o_mine[i]));
        mag = fmax(mag, fabs((double)o_mine[i]));
    }
    if (not_ours || !(dev <= 1e-3 * mag + 1e-6)) {
        printf(" **hook output not ours (%ld) or mmvq far (%.3g of %.3g)** |", not_ours, dev, mag);
        failures++;
    }
}

/* Seconds per compute of gf on be: two warm-ups (the first captures its CUDA graph), then 5
 * computes between events. */
static double graph_seconds(ggml_backend_t be, ggml_cgraph *gf) {
    ggml_backend_graph_compute(be, gf);
    ggml_backend_graph_compute(be, gf);
    const int reps = 5;
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaDeviceSynchronize());
    CK(cudaEventRecord(a, 0));
    for (int r = 0; r < reps; r++) ggml_backend_graph_compute(be, gf);
    CK(cudaEventRecord(b, 0));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1e-3 / reps;
}

/* The same products through ggml_mul_mat on the CUDA backend: `copies` weight tensors in one
 * graph, computed `reps` times; returns seconds per product and the first product's output. */
static double ggml_products(int t, const Shape &s, int ncols, const std::vector<uint8_t> &w,
                            const std::vector<float> &x, int copies, std::vector<float> &out) {
    ggml_backend_t be = ggml_backend_cuda_init(0);
    struct ggml_init_params ip = {ggml_tensor_overhead() * (2 * copies + 8) + ggml_graph_overhead(),
                                  nullptr, true};
    ggml_context *ctx = ggml_init(ip);
    ggml_tensor *xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, s.k, ncols);
    std::vector<ggml_tensor *> ws, ys;
    for (int i = 0; i < copies; i++) ws.push_back(ggml_new_tensor_2d(ctx, (ggml_type)t, s.k, s.rows));
    ggml_cgraph *gf = ggml_new_graph_custom(ctx, 2 * copies + 8, false);
    for (int i = 0; i < copies; i++) {
        ys.push_back(ggml_mul_mat(ctx, ws[i], xt));
        ggml_build_forward_expand(gf, ys[i]);
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    for (int i = 0; i < copies; i++) ggml_backend_tensor_set(ws[i], w.data(), 0, w.size());
    ggml_backend_tensor_set(xt, x.data(), 0, (size_t)s.k * ncols * 4);
    const double sec = graph_seconds(be, gf);
    out.resize((size_t)s.rows * ncols);
    ggml_backend_tensor_get(ys[0], out.data(), 0, out.size() * 4);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    ggml_backend_free(be);
    return sec / copies;
}

/* ggml-cuda's own GLU op (swiglu_split / geglu_split) on F32 up and gate vectors: what a
 * product unfused (widths 2-8, where ggml-cuda does not fuse) gets after ours. */
static std::vector<float> ggml_glu(int op, const std::vector<float> &up, const std::vector<float> &gate) {
    ggml_backend_t be = ggml_backend_cuda_init(0);
    struct ggml_init_params ip = {ggml_tensor_overhead() * 8 + ggml_graph_overhead(), nullptr, true};
    ggml_context *ctx = ggml_init(ip);
    ggml_tensor *u = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, (int64_t)up.size());
    ggml_tensor *g = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, (int64_t)up.size());
    ggml_tensor *y = op == GEARBX_MMV_SWIGLU ? ggml_swiglu_split(ctx, g, u) : ggml_geglu_split(ctx, g, u);
    ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    ggml_backend_tensor_set(u, up.data(), 0, up.size() * 4);
    ggml_backend_tensor_set(g, gate.data(), 0, gate.size() * 4);
    ggml_backend_graph_compute(be, gf);
    std::vector<float> out(up.size());
    ggml_backend_tensor_get(y, out.data(), 0, out.size() * 4);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    ggml_backend_free(be);
    return out;
}

/* ggml-cuda's fused products at width 1 through ggml: kind 1 swiglu_split(W_gate x, W_up x)
 * (ggml-cuda fuses gate/up + GLU into one mmvq), kind 2 W x + r (mul_mat + add); `copies`
 * weight sets in one graph, as ggml_products; seconds per fused product, first output. */
static double ggml_fused_products(int t, const Shape &s, int kind, const std::vector<uint8_t> &w,
                                  const std::vector<float> &x, const std::vector<float> &r,
                                  int copies, std::vector<float> &out) {
    ggml_backend_t be = ggml_backend_cuda_init(0);
    struct ggml_init_params ip = {ggml_tensor_overhead() * (6 * copies + 8) + ggml_graph_overhead(),
                                  nullptr, true};
    ggml_context *ctx = ggml_init(ip);
    ggml_tensor *xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, s.k, 1);
    ggml_tensor *rt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, s.rows, 1);
    std::vector<ggml_tensor *> ws, ys;
    ggml_cgraph *gf = ggml_new_graph_custom(ctx, 6 * copies + 8, false);
    for (int i = 0; i < copies; i++) {
        ggml_tensor *a = ggml_new_tensor_2d(ctx, (ggml_type)t, s.k, s.rows);
        ws.push_back(a);
        ggml_tensor *y;
        if (kind == 1) {
            ggml_tensor *g = ggml_new_tensor_2d(ctx, (ggml_type)t, s.k, s.rows);
            ws.push_back(g);
            y = ggml_swiglu_split(ctx, ggml_mul_mat(ctx, g, xt), ggml_mul_mat(ctx, a, xt));
        } else {
            y = ggml_add(ctx, ggml_mul_mat(ctx, a, xt), rt);
        }
        ys.push_back(y);
        ggml_build_forward_expand(gf, y);
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    const size_t half = w.size() / 2; /* up, then gate */
    for (size_t i = 0; i < ws.size(); i++) {
        const bool is_gate = kind == 1 && i % 2 == 1;
        ggml_backend_tensor_set(ws[i], w.data() + (is_gate ? half : 0), 0, half);
    }
    ggml_backend_tensor_set(xt, x.data(), 0, (size_t)s.k * 4);
    ggml_backend_tensor_set(rt, r.data(), 0, (size_t)s.rows * 4);
    const double sec = graph_seconds(be, gf);
    out.resize((size_t)s.rows);
    ggml_backend_tensor_get(ys[0], out.data(), 0, out.size() * 4);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    ggml_backend_free(be);
    return sec / copies;
}

/* The fused products of a Llama layer through ggml at width 1: llama.cpp's fused mmvq against
 * ours through the hook (bitwise gearbx_mmv_fused's output; mmvq's close to it). */
static void ggml_fused_table(Dev &d) {
    printf("\n## Fused products through ggml at width 1 (ggml-cuda fuses only there): llama.cpp's "
           "fused mmvq vs ours through patch 0005's hook, same process; and whether our fused "
           "gate (silu and gelu) gives the bits of our unfused products through ggml-cuda's GLU "
           "op (what widths 2-8 compute: strict lossless needs them equal)\n\n| type | product "
           "| llama.cpp fused mmvq us | ours via hook us | speedup | gearbx uses | fused == "
           "unfused + ggml GLU, bitwise |\n|---|---|---|---|---|---|---|\n");
    struct F {
        const char *name;
        int kind;
        Shape s;
    };
    static const F FS[] = {
        {"8B ffn gate/up + swiglu 2x14336x4096", 1, {"", 14336, 4096}},
        {"8B ffn_down + residual 4096x14336", 2, {"", 4096, 14336}},
        {"8B attn_output + residual 4096x4096", 2, {"", 4096, 4096}},
        {"1B ffn gate/up + swiglu 2x8192x2048", 1, {"", 8192, 2048}},
        {"1B ffn_down + residual 2048x8192", 2, {"", 2048, 8192}},
        {"1B attn_output + residual 2048x2048", 2, {"", 2048, 2048}},
    };
    for (int t : TYPES) {
        for (const F &f : FS) {
            const Shape &s = f.s;
            const size_t wb = (size_t)s.rows * rbytes(t, s.k);
            std::vector<uint8_t> w(2 * wb);
            fill_weights(t, RANDOM, w.data(), 2 * s.rows * rblocks(t, s.k));
            std::vector<float> x((size_t)s.k), r((size_t)s.rows);
            fill_x(RANDOM, x.data(), s.k);
            fill_x(RANDOM, r.data(), s.rows);
            const int copies = copies_for(wb * (f.kind == 1 ? 2 : 1));
            std::vector<float> o_ref, o_hook, o_mine;
            gearbx_mmv_install(1);
            const double t_ref = ggml_fused_products(t, s, f.kind, w, x, r, copies, o_ref);
            ggml_backend_cuda_set_graph_variant(GGML_CUDA_VARIANT_MMV_HOOK);
            gearbx_mmv_tune(5, 0); /* every product the hook is offered */
            const double t_hook = ggml_fused_products(t, s, f.kind, w, x, r, copies, o_hook);
            gearbx_mmv_tune(0, 0);
            ggml_backend_cuda_set_graph_variant(0);
            gearbx_mmv_install(0);
            /* the same directly: up at d.w, gate after it, residual as the bias */
            CK(cudaMemcpy(d.w, w.data(), 2 * wb, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(d.x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(d.bias, r.data(), r.size() * 4, cudaMemcpyHostToDevice));
            const gearbx_mmv_fusion fu = f.kind == 1
                                             ? gearbx_mmv_fusion{d.w + wb, GEARBX_MMV_SWIGLU, nullptr, 0}
                                             : gearbx_mmv_fusion{nullptr, 0, d.bias, s.rows};
            run_fused(t, s, 1, d, &fu, o_mine);
            /* strict lossless: at widths 2-8 ggml-cuda does not fuse, and the same values come
             * from our unfused products and its GLU op: they must be the fused bits */
            long glu_off = 0;
            if (f.kind == 1) {
                std::vector<float> up1, gate1;
                run_up_gate(t, s, 1, d, up1, gate1);
                for (int op : {GEARBX_MMV_SWIGLU, GEARBX_MMV_GEGLU}) {
                    const std::vector<float> ref = ggml_glu(op, up1, gate1);
                    const gearbx_mmv_fusion fo = {d.w + wb, op, nullptr, 0};
                    std::vector<float> o_op;
                    run_fused(t, s, 1, d, &fo, o_op);
                    for (size_t i = 0; i < ref.size(); i++) glu_off += memcmp(&ref[i], &o_op[i], 4) != 0;
                }
            }
            printf("| %s | %s | %.2f | %.2f | %.2fx | %s | %s |", tname(t), f.name, t_ref * 1e6,
                   t_hook * 1e6, t_ref / t_hook,
                   gearbx_mmv_preferred(t, s.rows, s.k, 1) ? "ours" : "llama.cpp",
                   f.kind == 1 ? (glu_off ? "**NO**" : "yes") : "-");
            if (glu_off) {
                printf(" **%ld of %ld differ** |", glu_off, 2 * (long)s.rows);
                failures++;
            }
            check_hook(o_hook, o_mine, o_ref);
            printf("\n");
            fflush(stdout);
        }
    }
}
#endif

int main(int argc, char **argv) {
    const bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    /* --speed: our kernels' times alone (no parity, no llama.cpp), for builds that force a
     * variant (-DGEARBX_MMV_R) */
    const bool speed = argc > 1 && strcmp(argv[1], "--speed") == 0;
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("# gearbx CUDA decode products: %s, %d SMs\n\n", p.name, p.multiProcessorCount);
    if (strstr(p.name, "H100")) PEAK = 3.35e12;
    size_t max_w = 0;
    for (const Shape &s : SHAPES) {
        const size_t wb = (size_t)s.rows * (s.k / 32) * 34;
        max_w = wb * copies_for(wb) > max_w ? wb * copies_for(wb) : max_w;
    }
    Dev d;
    CK(cudaMalloc(&d.w, max_w));
    CK(cudaMalloc(&d.x, 8 * 14336 * 4));
    CK(cudaMalloc(&d.dst, 8 * 128256 * 4));
    CK(cudaMalloc(&d.bias, 8 * 128256 * 4));
    CK(cudaMalloc(&d.scratch, gearbx_mmv_scratch_bytes(GEARBX_T_Q8_0, 14336, 8)));

    printf("## Parity (8 columns) and width invariance\n\n| type | shape | case | q8_1 x "
           "mismatches | outputs off the twin | max err / sum of abs terms | max err / sum abs(w x), exact F32 product |\n|---|---|---|---|---|---|---|\n");
    for (int t : TYPES) {
        for (const Shape &s : SHAPES) {
            if (speed) break;
            std::vector<uint8_t> w((size_t)s.rows * rbytes(t, s.k));
            for (int c = 0; c < N_CASES; c++) {
                if (c != RANDOM && (quick || s.rows > 14336)) continue;
                fill_weights(t, c, w.data(), s.rows * rblocks(t, s.k));
                CK(cudaMemcpy(d.w, w.data(), w.size(), cudaMemcpyHostToDevice));
                parity(t, s, c, d, w);
            }
        }
    }

    printf("\n## Fused products (gearbx_mmv_fused, 8 columns): up + bias, (up [+ bias]) * "
           "act(gate) for silu and gelu, against the unfused products\n\n| type | shape | "
           "up + bias off (bitwise) | gated off (silu > 1e-5 relative, gelu > 1e-5 relative + "
           "3e-4 abs(up gate)) | max relative "
           "error of gated, silu / gelu | gated widths 1..7 bit-identical to 8 |\n|---|---|---|---|---|---|\n");
    for (int t : TYPES) {
        for (const Shape &s : SHAPES) {
            if (speed || s.rows > 14336 || (quick && s.rows != 14336)) continue;
            fused_parity(t, s, d);
        }
    }

    /* the variants measured side by side: {kernel, rows per lane or warp} (gearbx_mmv_tune) */
    static const int VARIANTS[][2] = {{5, 1}, {5, 2}, {5, 4}, {6, 2}, {7, 1}, {7, 2}, {7, 4}};
    const int nvar = (int)(sizeof VARIANTS / sizeof VARIANTS[0]);
    printf("\n## Speed: time per product (activation quantization included), weights cycled over "
           "copies larger than L2\n\nus per product for each kernel variant (vK rR: kernel K, R "
           "rows at a time; gearbx_mmv_tune), then the default's GB/s and %% of %.2f TB/s.\n\n"
           "| type | shape | cols |",
           PEAK / 1e12);
    for (int v = 0; v < nvar; v++) printf(" v%d r%d us |", VARIANTS[v][0], VARIANTS[v][1]);
    printf(" default us | default without PDL us | GB/s | %% of peak |"
#ifdef WITH_GGML
           " llama.cpp mmvq us (ggml) | ours via hook us (ggml) | speedup | ours via hook without "
           "PDL us | ours (kernel 7) via hook us | gearbx uses |"
#endif
           "\n|---|---|---|");
    for (int v = 0; v <= nvar + 3; v++) printf("---|");
#ifdef WITH_GGML
    printf("---|---|---|---|");
#endif
    printf("\n");
    for (int t : TYPES) {
        for (const Shape &s : SHAPES) {
            const size_t wb = (size_t)s.rows * rbytes(t, s.k);
            const int copies = copies_for(wb);
            std::vector<uint8_t> w(wb);
            fill_weights(t, RANDOM, w.data(), s.rows * rblocks(t, s.k));
            for (int i = 0; i < copies; i++)
                CK(cudaMemcpy(d.w + i * wb, w.data(), wb, cudaMemcpyHostToDevice));
            std::vector<float> x((size_t)8 * s.k);
            fill_x(RANDOM, x.data(), (int64_t)x.size());
            CK(cudaMemcpy(d.x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
            for (int nc : {1, 2, 4, 8}) {
                printf("| %s | %s | %d |", tname(t), s.name, nc);
                std::vector<float> o_def;
                run(t, s, nc, d, o_def, nullptr);
                for (int v = 0; v < nvar; v++) {
                    gearbx_mmv_tune(VARIANTS[v][0], VARIANTS[v][1]);
                    printf(" %.2f", time_product(t, s, nc, d, copies) * 1e6);
                    /* every kernel and R gives the default's bits */
                    std::vector<float> o;
                    run(t, s, nc, d, o, nullptr);
                    long off = 0;
                    for (size_t i = 0; i < o.size(); i++) {
                        off += memcmp(&o[i], &o_def[i], 4) != 0;
                    }
                    if (off) printf(" **%ld off**", off);
                    failures += off != 0;
                    printf(" |");
                }
                gearbx_mmv_tune(0, 0);
                const double sec = time_product(t, s, nc, d, copies);
                gearbx_mmv_pdl(0);
                const double sec_nopdl = time_product(t, s, nc, d, copies);
                gearbx_mmv_pdl(1);
                const double bytes = (double)wb + (double)nc * s.k * 4 + (double)nc * s.rows * 4;
                printf(" %.2f | %.2f | %.0f | %.1f |", sec * 1e6, sec_nopdl * 1e6, bytes / sec / 1e9,
                       100 * bytes / sec / PEAK);
#ifdef WITH_GGML
                if (!speed) {
                    std::vector<float> o_ref, o_hook, o_mine;
                    /* ours on every product through the hook: the default kernel forced (with
                     * and without PDL), then kernel 7 */
                    gearbx_mmv_install(1);
                    gearbx_mmv_tune(5, 0);
                    const double t_ref = ggml_products(t, s, nc, w, x, copies, o_ref);
                    ggml_backend_cuda_set_graph_variant(GGML_CUDA_VARIANT_MMV_HOOK);
                    const double t_hook = ggml_products(t, s, nc, w, x, copies, o_hook);
                    gearbx_mmv_pdl(0);
                    std::vector<float> o_other;
                    const double t_nopdl = ggml_products(t, s, nc, w, x, copies, o_other);
                    gearbx_mmv_pdl(1);
                    gearbx_mmv_tune(7, 0);
                    const double t_fused = ggml_products(t, s, nc, w, x, copies, o_other);
                    ggml_backend_cuda_set_graph_variant(0);
                    gearbx_mmv_tune(0, 0);
                    gearbx_mmv_install(0);
                    run(t, s, nc, d, o_mine, nullptr);
                    printf(" %.2f | %.2f | %.2fx | %.2f | %.2f | %s |", t_ref * 1e6, t_hook * 1e6,
                           t_ref / t_hook, t_nopdl * 1e6, t_fused * 1e6,
                           gearbx_mmv_preferred(t, s.rows, s.k, nc) ? "ours" : "llama.cpp");
                    check_hook(o_hook, o_mine, o_ref);
                }
#endif
                printf("\n");
                fflush(stdout);
            }
        }
    }
#ifdef WITH_GGML
    if (!speed) ggml_fused_table(d);
#endif
    printf("\n%s: %d failed checks\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
