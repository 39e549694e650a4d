//! Gearbox benchmarks on the real SmolLM2-135M (CPU): shift latency over all managed tensors,
//! per-token cost of entropy + monitor, and decode tok/s per fixed gear against the plain
//! model (no gearbox) in the same process, interleaved round by round.
//!
//! Run: `cargo bench --bench gearbox` (needs the default model; `make run` obtains it).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use gearbx::engine::{self, EntropySource, GenerateParams};
use gearbx::gearbox::{CacheOptions, Gear, Gearbox, GearboxOptions, TierOrigin};
use gearbx::kernels::entropy_bits;
use gearbx::llama::{Context, ContextParams, Model, ModelParams, Token};
use gearbx::monitor::{Monitor, MonitorConfig};
use gearbx::store::{default_model, gguf};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// tok/s of `n` single-token decodes after a short prompt, in a fresh context.
fn decode_rate(model: &Model, threads: i32, n: usize) -> f64 {
    let mut ctx = Context::new(
        model,
        &ContextParams {
            n_ctx: 512,
            n_batch: 64,
            n_threads: threads,
            rebuild_graphs: false,
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    ctx.decode(
        &model
            .tokenize("The history of the city", true, false)
            .unwrap(),
    )
    .unwrap();
    let t = Instant::now();
    for i in 0..n {
        ctx.decode(&[(200 + i % 300) as Token]).unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Tier start-up: built without a cache, built into an empty cache (requantize + write), and
/// read back from that cache; interleaved over rounds.
fn start_up(model: &Model, path: &std::path::Path, info: &gguf::GgufInfo, threads: usize) {
    let build = |cache: Option<&std::path::Path>| {
        let opts = GearboxOptions {
            threads,
            cache: cache.map(|d| CacheOptions {
                dir: d.to_path_buf(),
                source_sha256: default_model::SHA256.into(),
            }),
            ..Default::default()
        };
        let gb = Gearbox::build(model, path, info, &opts).unwrap();
        (gb.report().build_ms, gb.report().origin)
    };
    let (mut plain, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        plain.push(build(None).0);
        let (ms, o) = build(Some(dir.path()));
        assert_eq!(o, TierOrigin::Built);
        cold.push(ms);
        let (ms, o) = build(Some(dir.path()));
        assert_eq!(o, TierOrigin::Cache);
        warm.push(ms);
    }
    let (p, c, w) = (median(&mut plain), median(&mut cold), median(&mut warm));
    println!(
        "tier start-up (median of 3): build {p:.0} ms, build + write cache {c:.0} ms, \
         read cache {w:.0} ms (cache/build = {:.3})",
        w / p
    );
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
    let path = default_model::ensure(true).expect("default model");
    let info = gguf::inspect(&path).unwrap();
    let model = Model::load(&path, &ModelParams::default()).unwrap();
    start_up(&model, &path, &info, threads as usize);
    let mut gb = Gearbox::build(
        &model,
        &path,
        &info,
        &GearboxOptions {
            threads: threads as usize,
            ..Default::default()
        },
    )
    .unwrap();
    let r = gb.report().clone();
    println!(
        "model: {} ({}), {threads} threads",
        path.display(),
        model.description()
    );
    println!(
        "tiers: {} tensors built in {:.0} ms",
        r.managed_tensors, r.build_ms
    );
    for g in Gear::ALL {
        println!(
            "  {g:>4}: {:>6.1} MB  {}",
            r.bytes[g as usize] as f64 / 1e6,
            r.types[g as usize]
        );
    }

    // Shift latency: all managed tensors, alternating gears.
    let ctx = Context::new(
        &model,
        &ContextParams {
            n_ctx: 64,
            n_batch: 64,
            n_threads: threads,
            rebuild_graphs: false,
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let mut us: Vec<f64> = (0..20_000)
        .map(|i| {
            gb.shift(&ctx, if i % 2 == 0 { Gear::Low } else { Gear::High })
                .as_secs_f64()
                * 1e6
        })
        .collect();
    println!(
        "shift ({} tensors): median {:.2} us, p99 {:.2} us",
        r.managed_tensors,
        median(&mut us),
        pct(&mut us, 0.99)
    );
    drop(ctx);

    // Per-token monitor cost: entropy over the full vocabulary + the monitor update.
    let n_vocab = model.n_vocab();
    let logits: Vec<f32> = (0..n_vocab)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    let mut mon = Monitor::new(MonitorConfig::default(), n_vocab, Gear::Mid);
    let mut per: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let (h, _) = entropy_bits(std::hint::black_box(&logits));
            std::hint::black_box(mon.update(h as f64));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    println!(
        "entropy + monitor per token (V={n_vocab}): median {:.1} us, p99 {:.1} us",
        median(&mut per),
        pct(&mut per, 0.99)
    );

    // Decode tok/s per fixed gear vs the plain model, interleaved A B A B.
    let rounds = 5;
    let n = 96;
    let mut rates: [Vec<f64>; 4] = Default::default();
    let ctx_sync = Context::new(
        &model,
        &ContextParams {
            n_ctx: 16,
            n_batch: 16,
            n_threads: threads,
            rebuild_graphs: false,
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    for _ in 0..rounds {
        for (k, g) in [None, Some(Gear::Low), Some(Gear::Mid), Some(Gear::High)]
            .into_iter()
            .enumerate()
        {
            gb.shift(&ctx_sync, g.unwrap_or(Gear::High));
            // "plain" = the loaded tensors, which is what high is for a quantized source; the
            // plain row is measured separately so the ratio shows any gearbox overhead.
            rates[k].push(decode_rate(&model, threads, n));
        }
    }
    gb.shift(&ctx_sync, Gear::High);
    let plain = median(&mut rates[0].clone());
    println!("decode tok/s, median of {rounds} interleaved rounds of {n} tokens (spread min-max):");
    for (k, name) in ["plain", "low", "mid", "high"].iter().enumerate() {
        let mut v = rates[k].clone();
        let m = median(&mut v);
        println!(
            "  {name:>5}: {m:>7.1}  ({:.1}-{:.1})  ratio vs plain {:.3}",
            v[0],
            v[v.len() - 1],
            m / plain
        );
    }

    drop(ctx_sync);
    drop(gb);
    entropy_sources(&model, threads);
}

/// Generation tok/s with entropy read from host logits vs computed in the graph (backend
/// sampling), no gearbox, greedy, interleaved. On CPU both read the same memory; the figure
/// says what the graph-side path costs where there is no PCIe copy to save.
fn entropy_sources(model: &Model, threads: i32) {
    let prompt = model
        .tokenize(
            "Once upon a time, in a small village by the sea,",
            true,
            false,
        )
        .unwrap();
    let run = |src: EntropySource| {
        let mut ctx = Context::new(
            model,
            &ContextParams {
                n_ctx: 512,
                n_batch: 64,
                n_threads: threads,
                rebuild_graphs: false,
                kv: Default::default(),
            },
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        let params = GenerateParams {
            entropy: src,
            ..GenerateParams::greedy(96, false)
        };
        engine::generate(&mut ctx, &prompt, &params, None, |_| {})
            .unwrap()
            .decode_tokens_per_s
    };
    let (mut host, mut backend) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        host.push(run(EntropySource::Host));
        backend.push(run(EntropySource::Backend));
    }
    let (h, b) = (median(&mut host), median(&mut backend));
    println!(
        "generation tok/s with entropy on host {h:.1}, in the graph {b:.1} (graph/host = {:.3}, \
         median of 5 interleaved rounds of 96 tokens, repeat penalty in the chain)",
        b / h
    );
}
