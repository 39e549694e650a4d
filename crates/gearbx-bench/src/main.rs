//! `gearbx-bench`: the measurement harness. Without a subcommand: speed (against static
//! llama.cpp models) and quality (against the high tier, on real text) for each model, written
//! as the report. Subcommands: `gpu` (the GPU harness on a float model), `kernels` (our
//! requantization kernels against ggml's quantizer), `synth` (random-weight models of real
//! shapes), `memory` (what a tier plan keeps resident).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use gearbx::kernels::{self, parity};
use gearbx::llama::GgmlType;
use gearbx::store::{self, default_model, OllamaStore};
use gearbx_bench::measure::{self, gpu, markdown, report};
use gearbx_bench::synth;

#[derive(Parser, Debug)]
#[command(
    name = "gearbx-bench",
    version,
    about = "Measure gears against static llama.cpp models: speed ratios, KL/top-1/perplexity on \
             real text, prompt-class entropy; writes results.md, results.json and SVG charts.",
    after_help = "Prepare the text first: python3 scripts/fetch-austen.py DIR (make report does \
                  it). Exit codes as gearbx-run's (0 ok, 2 usage, 3 not found, 4 bad model, 7 \
                  runtime; `kernels`: 1 when a kernel differs from ggml).",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    report: ReportArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// KV cache types side by side on real text (measure/kv.rs): for each (K, V) pair, with and
    /// without llama.cpp's rotation, teacher-forced KL, top-1 and perplexity against the F16
    /// cache over the last positions of a long window, KV bytes per token (computed and
    /// measured), and auto gears with a few cache types. Writes kv.md and kv.json.
    Kv {
        /// GGUF files (repeat for several models).
        #[arg(short = 'm', long = "model", value_name = "FILE", required = true)]
        models: Vec<PathBuf>,
        /// Plain-text file read from its first chapter (e.g. an Austen novel).
        #[arg(long, value_name = "FILE")]
        text: PathBuf,
        /// Context lengths to fill (repeat), each one window of that many tokens.
        #[arg(long = "ctx", value_name = "N", default_values_t = [2048usize])]
        ctx: Vec<usize>,
        /// Scored positions at the end of each window.
        #[arg(long, default_value_t = 64)]
        scored: usize,
        /// (K/V) pairs besides the F16 reference, comma-separated.
        #[arg(
            long,
            default_value = "bf16/bf16,q8_0/q8_0,q5_1/q5_1,q5_0/q5_0,q4_1/q4_1,iq4_nl/iq4_nl,q4_0/q4_0,q8_0/q4_0"
        )]
        pairs: String,
        /// Pairs measured with auto gears too.
        #[arg(long, default_value = "f16/f16,q8_0/q8_0,q4_0/q4_0")]
        auto_with: String,
        /// Simulated (K/V) formats, comma-separated (measure/kv_sim.rs): `tq2`, `tq3`, `tq4`
        /// (TurboQuant-style: randomized Hadamard rotation, Lloyd-Max codes, an f16 scale per
        /// 64 values) or a cache type (llama.cpp's format through ggml's quantizer, the check
        /// of the method against the real cache), e.g. `tq4/tq2,q4_0/q4_0`.
        #[arg(long, default_value = "")]
        simulate: String,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(short = 't', long)]
        threads: Option<usize>,
    },
    /// Write a random-weight F16 GGUF of a real model shape (normal weights, std 0.02, no
    /// tokenizer): real speed for benchmarking hardware, meaningless text and entropy.
    Synth {
        /// llama-3.2-1b, llama-3.1-8b or tiny.
        #[arg(long, value_name = "SHAPE")]
        shape: String,
        /// Output .gguf path.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Load a model as gearbx-run would for a tier plan (a quantized top gear loads its
    /// requantized copy), build the tiers, and print what is resident as one JSON line: the
    /// loaded model's bytes, the tiers' bytes, the plan per device. Works on models without a
    /// tokenizer (the synthetic shapes).
    Memory {
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        /// As gearbx-run's --tiers, e.g. high=Q8_0.
        #[arg(long, value_name = "SPEC")]
        tiers: Option<String>,
        /// As gearbx-run's --gears, e.g. low,high.
        #[arg(long, default_value = "low,mid,high", value_name = "GEARS")]
        gears: String,
        /// As gearbx-run's -ngl.
        #[arg(
            short = 'n',
            long = "n-gpu-layers",
            visible_alias = "ngl",
            value_name = "N"
        )]
        n_gpu_layers: Option<i32>,
        /// Where the tier cache folder (and a quantized top's copy) lives.
        #[arg(long, value_name = "DIR")]
        tier_cache: Option<PathBuf>,
    },
    /// Check our requantization kernels against ggml's quantizer on random and adversarial
    /// blocks (zeros, ties, largest values, subnormals, random bits, inf/NaN): the scalar C
    /// twin always, the CUDA kernel when built with --features cuda and a GPU is present.
    Kernels {
        /// Blocks of 32 per input class and type pair.
        #[arg(long, default_value_t = 65536)]
        blocks: usize,
        /// Also time the CUDA kernel on this many million F16 values.
        #[arg(long, default_value_t = 256, value_name = "M")]
        bench_mvalues: usize,
    },
    /// The GPU harness on a float GGUF (e.g. from `synth`): tier build time, static Q8_0/
    /// Q4_0/Q4_K baselines, fixed gears vs those, a replayed gear trace vs the harmonic mix,
    /// shift cost, entropy in the graph vs on the host. Writes gpu.md and gpu.json.
    Gpu {
        /// Float (F16/BF16/F32) GGUF.
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        /// Gear trace (l/m/h per forward pass) recorded from a real model, replayed as auto
        /// mode (repeatable; docs/traces holds SmolLM2's on Austen).
        #[arg(long, value_name = "FILE")]
        trace: Vec<PathBuf>,
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Shift low/high every N tokens, for each N (the cost of a shift).
        #[arg(long, default_value = "1,2,4,16", value_delimiter = ',')]
        shift_periods: Vec<usize>,
        /// Directory for gpu.md and gpu.json.
        #[arg(long, default_value = "gpu-results", value_name = "DIR")]
        out: PathBuf,
        /// Directory for the static baseline GGUFs (default: OUT/baselines).
        #[arg(long, value_name = "DIR")]
        baselines: Option<PathBuf>,
        /// CPU threads (default: all cores).
        #[arg(short, long, env = "GEARBX_THREADS")]
        threads: Option<usize>,
        /// Control: rebuild llama.cpp's graph every token in the gearbox context (how gears ran
        /// before each had its own CUDA graph). Other controls are llama.cpp's environment:
        /// LLAMA_GRAPH_REUSE_DISABLE=1 (no graph reuse anywhere), GGML_CUDA_DISABLE_GRAPHS=1.
        #[arg(long)]
        rebuild_graphs: bool,
        /// Manage the output head too (as gearbx-run --manage all,output); the static
        /// baselines quantize it to the same types.
        #[arg(long)]
        manage_output: bool,
        /// The gears' decode kernels (the static baselines always run llama.cpp's own).
        #[command(flatten)]
        kernels: gearbx::args::KernelArgs,
    },
    /// Lossless mode on one model against its high gear alone. With --cycles: acceptance
    /// replayed from a report's recorded verifications (every model's in results.json), for
    /// random-weight models of real shapes (e.g. from `synth`); with --text: end to end on a
    /// real model, both guarantees, with identity, re-scoring and the width noise floor.
    /// Writes lossless.md and lossless.json.
    Lossless {
        /// GGUF file.
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        /// Recorded verifications: docs/traces/lossless-cycles.json (SmolLM2's and Gemma's on
        /// Austen, drafting wherever allowed), or a results.json of `make report`.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "text",
            required_unless_present = "text"
        )]
        cycles: Option<PathBuf>,
        /// Plain-text file whose windows are continued (e.g. a prepared Austen novel).
        #[arg(long, value_name = "FILE")]
        text: Option<PathBuf>,
        /// Generated tokens per run.
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        /// Interleaved rounds (--cycles) or text windows (--text).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value = "lossless-results", value_name = "DIR")]
        out: PathBuf,
        /// Draft wherever the entropy gate allows (--text; the controller off), to check
        /// identity over many drafted tokens.
        #[arg(long)]
        draft_always: bool,
        /// Tier types per gear, as gearbx-run's --tiers (e.g. low=Q4_0: the fastest drafter).
        #[arg(long, value_name = "LIST")]
        tiers: Option<String>,
        /// CPU threads (default: all cores).
        #[arg(short, long, env = "GEARBX_THREADS")]
        threads: Option<usize>,
    },
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// Models (Ollama names or .gguf paths); default: the default model.
    #[arg(short, long = "model", value_name = "MODEL")]
    models: Vec<String>,

    /// Plain-text file to score (e.g. a prepared Austen novel).
    #[arg(long, value_name = "FILE", required = true)]
    text: Option<PathBuf>,

    /// Directory for results.md, results.json and the charts.
    #[arg(long, default_value = "docs", value_name = "DIR")]
    out: PathBuf,

    /// Scored positions per lane.
    #[arg(long, default_value_t = 512)]
    positions: usize,

    /// Tokens per text window (each starts with an empty KV cache).
    #[arg(long, default_value_t = 128)]
    window: usize,

    /// Leading tokens of each window decoded as a prompt at the high gear.
    #[arg(long, default_value_t = 16)]
    prompt: usize,

    /// Interleaved speed rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,

    /// Generated tokens per speed run.
    #[arg(long, default_value_t = 128)]
    tokens: usize,

    /// Auto-mode threshold multiples of the defaults, comma-separated.
    #[arg(long, default_value = "0.5,0.75,1,1.5,2,3", value_delimiter = ',')]
    sweep: Vec<f64>,

    /// Tokens per prompt-class generation and for the timeline.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,

    /// Lossless mode vs the high gear: windows of the text (48 tokens each) continued...
    #[arg(long, default_value_t = 8)]
    lossless_prompts: usize,

    /// ... by this many greedy tokens each (both runs of a window interleaved).
    #[arg(long, default_value_t = 256)]
    lossless_tokens: usize,

    /// Which weight matrices shift, as gearbx-run's --manage (e.g. all,output: the output
    /// head too; the static baselines then quantize it as well).
    #[arg(long, default_value = "all", value_name = "KINDS")]
    manage: String,

    /// CPU threads (default: all cores).
    #[arg(short, long, env = "GEARBX_THREADS")]
    threads: Option<usize>,

    /// Ollama store root.
    #[arg(
        long,
        env = "OLLAMA_MODELS",
        value_name = "DIR",
        hide_env_values = true
    )]
    ollama_models: Option<PathBuf>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores, CPU backend")
}

fn main() -> ExitCode {
    let cli: Cli = match gearbx::args::parse() {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    let result = match &cli.cmd {
        None => run(&cli.report),
        Some(Cmd::Synth { shape, out, seed }) => run_synth(shape, out, *seed),
        Some(Cmd::Kv {
            models,
            text,
            ctx,
            scored,
            pairs,
            auto_with,
            simulate,
            out,
            threads,
        }) => run_kv(
            models,
            text,
            (ctx, *scored),
            (pairs, auto_with, simulate),
            out,
            threads_or_all(*threads),
        ),
        Some(Cmd::Memory {
            model,
            tiers,
            gears,
            n_gpu_layers,
            tier_cache,
        }) => run_memory(model, tiers.as_deref(), gears, *n_gpu_layers, tier_cache),
        Some(Cmd::Kernels {
            blocks,
            bench_mvalues,
        }) => match run_kernels(*blocks, *bench_mvalues) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Some(Cmd::Gpu {
            model,
            trace,
            tokens,
            rounds,
            shift_periods,
            out,
            baselines,
            threads,
            rebuild_graphs,
            manage_output,
            kernels,
        }) => run_gpu(
            model,
            trace,
            *tokens,
            *rounds,
            shift_periods,
            out,
            baselines.clone().unwrap_or_else(|| out.join("baselines")),
            *threads,
            (*rebuild_graphs, *manage_output, kernels.ours()),
        ),
        Some(Cmd::Lossless {
            model,
            cycles,
            text,
            tokens,
            rounds,
            out,
            draft_always,
            tiers,
            threads,
        }) => run_lossless(
            model,
            cycles.as_deref(),
            text.as_deref(),
            (*tokens, *rounds, !*draft_always),
            (out, tiers.as_deref()),
            threads_or_all(*threads),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gearbx-bench: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn threads_or_all(t: Option<usize>) -> usize {
    gearbx::session::threads_or_all(t)
}

fn run_synth(shape: &str, out: &std::path::Path, seed: u64) -> gearbx::Result<()> {
    let s = synth::Shape::preset(shape).ok_or_else(|| {
        gearbx::Error::InvalidParam(format!(
            "unknown shape {shape:?} (one of {})",
            synth::Shape::PRESETS.join(", ")
        ))
    })?;
    let pb = indicatif::ProgressBar::new(s.file_bytes());
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {eta}")
            .expect("valid template"),
    );
    pb.set_message(format!("writing {}", out.display()));
    let r = synth::write(&s, out, seed, |w, _| pb.set_position(w))?;
    pb.finish_and_clear();
    println!(
        "{}: {} ({} parameters), {} tensors, {:.2} GB in {:.1} s",
        out.display(),
        s.name,
        s.n_params(),
        r.tensors,
        r.bytes as f64 / 1e9,
        r.seconds
    );
    Ok(())
}

/// `K/V` pairs, comma-separated, of cache types or simulated parts.
fn parse_pairs<T: std::str::FromStr<Err = gearbx::Error>>(s: &str) -> gearbx::Result<Vec<(T, T)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.trim().split_once('/').ok_or_else(|| {
                gearbx::Error::InvalidParam(format!("{p:?}: a pair is K/V, e.g. q8_0/q4_0"))
            })?;
            Ok((k.parse()?, v.parse()?))
        })
        .collect()
}

fn run_kv(
    models: &[PathBuf],
    text: &std::path::Path,
    (ctxs, scored): (&[usize], usize),
    (pairs, auto_with, simulate): (&str, &str, &str),
    out: &std::path::Path,
    threads: usize,
) -> gearbx::Result<()> {
    use gearbx::gearbox::{Gearbox, GearboxOptions};
    use gearbx::llama::{Model, ModelParams};
    use measure::kv;
    let mut lanes = kv::lanes(&parse_pairs(pairs)?, &parse_pairs(auto_with)?);
    lanes.extend(kv::sim_lanes(&parse_pairs(simulate)?));
    if std::env::var_os("LLAMA_ATTN_ROT_DISABLE").is_some() {
        return Err(gearbx::Error::InvalidParam(
            "LLAMA_ATTN_ROT_DISABLE is set: the rotation rows would be mislabelled; unset it \
             (the bench turns the rotation off per row itself)"
                .into(),
        ));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| gearbx::Error::io(format!("creating {}", out.display()), e))?;
    let mut md = format!(
        "# KV cache types on real text\n\n{}, `gearbx-bench kv`, {} threads. Reference: F16 K and V \
         cache with the source weights; every other row reads the same window, in the same \
         process. KL and top-1 over the last {scored} positions of each window.\n\n",
        machine(),
        threads
    );
    let mut all = Vec::new();
    for path in models {
        let info = gearbx::store::gguf::inspect(path)?;
        let model = Model::load(path, &ModelParams::default())?;
        let mut gb = Gearbox::build(
            &model,
            path,
            &info,
            &GearboxOptions {
                threads,
                ..Default::default()
            },
        )?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for &ctx in ctxs {
            let t0 = Instant::now();
            let rows = kv::run(
                &model,
                Some(&mut gb),
                text,
                ctx,
                scored,
                &lanes,
                threads,
                |s| eprintln!("gearbx-bench kv: {name}, {ctx}: {s}"),
            )?;
            eprintln!(
                "gearbx-bench kv: {name}, {ctx} tokens: {:.0} s",
                t0.elapsed().as_secs_f64()
            );
            md.push_str(&kv::markdown(&name, &rows));
            md.push('\n');
            all.extend(rows.into_iter().map(|r| (name.clone(), r)));
            let write = |file: &str, body: String| {
                std::fs::write(out.join(file), body)
                    .map_err(|e| gearbx::Error::io(format!("writing {file}"), e))
            };
            // Written after every window, so a long run keeps what it measured.
            write("kv.md", md.clone())?;
            write(
                "kv.json",
                serde_json::to_string_pretty(
                    &all.iter()
                        .map(|(m, r)| serde_json::json!({ "model": m, "result": r }))
                        .collect::<Vec<_>>(),
                )
                .expect("serializable"),
            )?;
        }
    }
    print!("{md}");
    Ok(())
}

fn run_memory(
    path: &std::path::Path,
    tiers: Option<&str>,
    gears: &str,
    n_gpu_layers: Option<i32>,
    tier_cache: &Option<PathBuf>,
) -> gearbx::Result<()> {
    use gearbx::gearbox::plan;
    use gearbx::session::{Session, SessionOptions, TierCache, TierOptions};
    let t0 = Instant::now();
    // Opened as gearbx-run opens a model (a quantized top loads its copy).
    let sess = Session::open(&SessionOptions {
        model: Some(path.to_string_lossy().into_owned()),
        n_gpu_layers: n_gpu_layers.unwrap_or(SessionOptions::default().n_gpu_layers),
        tiers: Some(TierOptions {
            overrides: tiers
                .map(plan::parse_overrides)
                .transpose()?
                .unwrap_or_default(),
            gears: gears.parse().map_err(gearbx::Error::InvalidParam)?,
            cache: tier_cache
                .clone()
                .map_or(TierCache::Default, TierCache::Dir),
            ..Default::default()
        }),
        progress: true,
        log: Some(|s| eprintln!("gearbx-bench: {s}")),
        ..Default::default()
    })?;
    let r = sess.tiers().expect("opened with tiers");
    let model_bytes = sess.model().size_bytes();
    println!(
        "{}",
        serde_json::json!({
            "model": path,
            "loaded_model": sess.loaded_file().path,
            "tiers": tiers,
            "gears": gears,
            "model_bytes": model_bytes,
            "shadow_bytes": r.shadow_bytes,
            "resident_bytes": model_bytes + r.shadow_bytes,
            "types": r.types,
            "bytes": r.bytes,
            "memory": r.memory,
            "seconds": t0.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Prints one line per (source, target, class); true when every block matched.
fn run_kernels(blocks: usize, bench_mvalues: usize) -> gearbx::Result<bool> {
    #[cfg(feature = "cuda")]
    let gpu = kernels::cuda::device_count() > 0;
    #[cfg(not(feature = "cuda"))]
    let gpu = false;
    println!(
        "requantization kernels vs ggml_quantize_chunk, {blocks} blocks per class; GPU: {}",
        if gpu {
            gpu::device_name()
        } else {
            "none (CPU twin only)".into()
        }
    );
    println!(
        "| source | target | class | twin mismatches | GPU mismatches |\n|---|---|---|---|---|"
    );
    let mut ok = true;
    for src in parity::SOURCES {
        for case in parity::cases(src, blocks, 1) {
            for dst in parity::TARGETS {
                let ggml = parity::ggml_reference(src, &case.bytes, dst)?;
                let twin = kernels::requant_ref(src, &case.bytes, dst)
                    .ok_or_else(|| gearbx::Error::Llama("twin refused a supported pair".into()))?;
                let tw = parity::mismatches(&twin, &ggml, dst);
                let gpu_cell = if gpu {
                    gpu_mismatches(src, &case.bytes, dst, &ggml)?.to_string()
                } else {
                    "-".into()
                };
                ok &= tw == 0 && (gpu_cell == "-" || gpu_cell == "0");
                println!("| {} | {} | {} | {tw} | {gpu_cell} |", src, dst, case.class);
            }
        }
    }
    #[cfg(feature = "cuda")]
    if gpu && bench_mvalues > 0 {
        let n = bench_mvalues << 20;
        let src: Vec<u8> = (0..n)
            .flat_map(|i| {
                kernels::fp32_to_fp16(((i * 2654435761usize) % 2001) as f32 * 1e-3 - 1.0)
                    .to_le_bytes()
            })
            .collect();
        for dst in parity::TARGETS {
            let (_, ms) = kernels::cuda::requant_host(GgmlType::F16, &src, dst)?;
            println!(
                "F16 -> {}: {n} values in {ms:.2} ms on the GPU ({:.0} GB/s of F16 read)",
                dst,
                src.len() as f64 / ms as f64 / 1e6
            );
        }
    }
    let _ = bench_mvalues;
    println!(
        "{}",
        if ok {
            "all blocks bit-identical"
        } else {
            "MISMATCH"
        }
    );
    Ok(ok)
}

#[cfg(feature = "cuda")]
fn gpu_mismatches(
    src: GgmlType,
    bytes: &[u8],
    dst: GgmlType,
    ggml: &[u8],
) -> gearbx::Result<usize> {
    let (out, _) = kernels::cuda::requant_host(src, bytes, dst)?;
    Ok(parity::mismatches(&out, ggml, dst))
}

#[cfg(not(feature = "cuda"))]
fn gpu_mismatches(_: GgmlType, _: &[u8], _: GgmlType, _: &[u8]) -> gearbx::Result<usize> {
    unreachable!("no GPU without --features cuda")
}

#[allow(clippy::too_many_arguments)] // one per CLI option of `gearbx-bench gpu`
fn run_gpu(
    model: &std::path::Path,
    traces: &[PathBuf],
    tokens: usize,
    rounds: usize,
    shift_periods: &[usize],
    out: &std::path::Path,
    baselines_dir: PathBuf,
    threads: Option<usize>,
    (rebuild_graphs, manage_output, decode_kernels): (bool, bool, bool),
) -> gearbx::Result<()> {
    if tokens == 0 || rounds == 0 || shift_periods.contains(&0) {
        return Err(gearbx::Error::InvalidParam(
            "--tokens, --rounds and every --shift-periods value must be at least 1".into(),
        ));
    }
    if !model.is_file() {
        return Err(gearbx::Error::FileNotFound(model.to_path_buf()));
    }
    let mut trace_gears = Vec::new();
    for p in traces {
        let s = std::fs::read_to_string(p)
            .map_err(|e| gearbx::Error::io(format!("reading {}", p.display()), e))?;
        let name = p.file_stem().map_or_else(
            || p.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        trace_gears.push((name, gpu::parse_trace(&s)?));
    }
    let info = gearbx::store::gguf::inspect(model)?;
    let opts = gpu::GpuOptions {
        tokens,
        rounds,
        threads: threads_or_all(threads),
        traces: trace_gears,
        shift_periods: shift_periods.to_vec(),
        baselines_dir,
        rebuild_graphs,
        manage_output,
        decode_kernels,
    };
    let t0 = Instant::now();
    let r = gpu::run_all(model, &info, &opts, |s| {
        eprintln!("  [{:>5.0} s] {s}", t0.elapsed().as_secs_f64())
    })?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let md = gpu::markdown(&r, &command, &date);
    std::fs::create_dir_all(out)
        .map_err(|e| gearbx::Error::io(format!("creating {}", out.display()), e))?;
    let write = |name: &str, body: &str| {
        std::fs::write(out.join(name), body)
            .map_err(|e| gearbx::Error::io(format!("writing {}", out.join(name).display()), e))
    };
    write("gpu.md", &md)?;
    write(
        "gpu.json",
        &serde_json::to_string_pretty(&r).expect("report serializes"),
    )?;
    print!("{md}");
    Ok(())
}

/// One model's recorded verifications: (model description, (drafted, accepted) each).
type Cycles = (String, Vec<(usize, usize)>);

/// Each model's recorded cycles in a report's results.json.
fn recorded_cycles(path: &std::path::Path) -> gearbx::Result<Vec<Cycles>> {
    let bad = |m: String| gearbx::Error::InvalidParam(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path)
        .map_err(|e| gearbx::Error::io(format!("reading {}", path.display()), e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let models = v
        .as_array()
        .ok_or_else(|| bad("not a list of models".into()))?;
    models
        .iter()
        .map(|m| {
            let l = &m["lossless"];
            // This report's layout, or the one before the guarantees.
            let c = l["guarantees"][0]["cycles"]
                .as_array()
                .or_else(|| l["cycles"].as_array())
                .ok_or_else(|| bad("a model without lossless cycles".into()))?;
            let cycles = c
                .iter()
                .map(|p| match (p[0].as_u64(), p[1].as_u64()) {
                    (Some(d), Some(a)) if a <= d => Ok((d as usize, a as usize)),
                    _ => Err(bad(format!("bad cycle {p}"))),
                })
                .collect::<gearbx::Result<Vec<_>>>()?;
            Ok((
                m["description"].as_str().unwrap_or("model").to_string(),
                cycles,
            ))
        })
        .collect()
}

fn run_lossless(
    path: &std::path::Path,
    cycles: Option<&std::path::Path>,
    text: Option<&std::path::Path>,
    (tokens, rounds, adaptive): (usize, usize, bool),
    (out, tiers): (&std::path::Path, Option<&str>),
    threads: usize,
) -> gearbx::Result<()> {
    use gearbx::gearbox::{Gearbox, GearboxOptions};
    use gearbx_bench::measure::{lossless, lossless_replay};
    if tokens == 0 || rounds == 0 {
        return Err(gearbx::Error::InvalidParam(
            "--tokens and --rounds must be at least 1".into(),
        ));
    }
    if !path.is_file() {
        return Err(gearbx::Error::FileNotFound(path.to_path_buf()));
    }
    let info = gearbx::store::gguf::inspect(path)?;
    let model = gearbx::llama::Model::load(path, &Default::default())?;
    let gopts = GearboxOptions {
        threads,
        overrides: tiers
            .map(gearbx::gearbox::plan::parse_overrides)
            .transpose()?
            .unwrap_or_default(),
        ..Default::default()
    };
    let mut gb = Gearbox::build(&model, path, &info, &gopts)?;
    let t0 = Instant::now();
    let log = |s: &str| eprintln!("  [{:>5.0} s] {s}", t0.elapsed().as_secs_f64());
    let (md, json) = if let Some(c) = cycles {
        let mut ctx = report::context_with(&model, (tokens + 64) as u32, threads, false)?;
        let mut md = String::new();
        let mut all = Vec::new();
        for (name, cyc) in recorded_cycles(c)? {
            log(&format!("replaying {name} ({} verifications)", cyc.len()));
            let r = lossless_replay::measure(&mut ctx, &mut gb, &name, &cyc, tokens, rounds, log)?;
            md += &lossless_replay::markdown(&r);
            md += "\n";
            all.push(r);
        }
        (md, serde_json::to_string_pretty(&all))
    } else {
        let text = text.expect("clap requires --cycles or --text");
        let prompts: Vec<Vec<gearbx::llama::Token>> =
            report::text_windows(&model, text, 48, rounds)?
                .chunks(48)
                .map(<[gearbx::llama::Token]>::to_vec)
                .collect();
        let mut ctx = report::context_with(&model, (48 + tokens + 16) as u32, threads, false)?;
        let r = lossless::measure(
            &mut ctx,
            &mut gb,
            &prompts,
            tokens,
            adaptive,
            rounds.min(4),
            log,
        )?;
        (lossless::markdown(&r), serde_json::to_string_pretty(&r))
    };
    std::fs::create_dir_all(out)
        .map_err(|e| gearbx::Error::io(format!("creating {}", out.display()), e))?;
    let header = format!(
        "# Lossless mode: {} on {}\n\nCommand: `{}`\n\n",
        path.display(),
        gearbx_bench::measure::gpu::device_name(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    for (name, body) in [
        ("lossless.md", header + &md),
        ("lossless.json", json.expect("report serializes")),
    ] {
        std::fs::write(out.join(name), &body)
            .map_err(|e| gearbx::Error::io(format!("writing {}", out.join(name).display()), e))?;
    }
    print!("{md}");
    Ok(())
}

fn run(cli: &ReportArgs) -> gearbx::Result<()> {
    let text = cli.text.clone().expect("clap requires --text");
    if cli.positions == 0
        || cli.rounds == 0
        || cli.tokens == 0
        || cli.sweep.is_empty()
        || cli.lossless_prompts == 0
        || cli.lossless_tokens == 0
    {
        return Err(gearbx::Error::InvalidParam(
            "--positions, --rounds, --tokens, --sweep, --lossless-prompts and --lossless-tokens \
             must be non-empty"
                .into(),
        ));
    }
    if !text.is_file() {
        return Err(gearbx::Error::FileNotFound(text.clone()));
    }
    let threads = threads_or_all(cli.threads);
    let store = match &cli.ollama_models {
        Some(d) => OllamaStore::new(d.clone()),
        None => OllamaStore::from_env()?,
    };
    let opts = report::ReportOptions {
        text,
        positions: cli.positions,
        window: cli.window,
        prompt: cli.prompt,
        rounds: cli.rounds,
        speed_tokens: cli.tokens,
        sweep: cli.sweep.clone(),
        threads,
        cache_dir: default_model::cache_dir()?,
        separation_tokens: cli.gen_tokens,
        timeline_tokens: cli.gen_tokens * 2,
        lossless_prompts: cli.lossless_prompts,
        lossless_tokens: cli.lossless_tokens,
        manage: gearbx::gearbox::Manage::parse_kind(&cli.manage)
            .map_err(gearbx::Error::InvalidParam)?,
    };
    let names: Vec<Option<&str>> = if cli.models.is_empty() {
        vec![None]
    } else {
        cli.models.iter().map(|m| Some(m.as_str())).collect()
    };
    let t0 = Instant::now();
    let mut reports = Vec::new();
    for name in names {
        let m = store::resolve(name, &store, true)?;
        eprintln!("gearbx-bench: {}", m.path.display());
        let r = report::run(&m, &opts, |s| {
            eprintln!("  [{:>5.0} s] {s}", t0.elapsed().as_secs_f64())
        })?;
        reports.push(r);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let files = markdown::write(&reports, &cli.out, &command, &machine())?;
    for f in files {
        println!("{}", f.display());
    }
    eprintln!("gearbx-bench: done in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
