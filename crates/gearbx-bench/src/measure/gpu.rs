//! The GPU harness (`gearbx-bench gpu`): on one float model held on the GPU, the tier build,
//! static baselines written by llama.cpp's quantizer, fixed gears against those baselines,
//! auto mode replaying a recorded gear trace against the harmonic mix of its gear fractions,
//! what a shift costs (CUDA graphs included), and entropy in the graph against on the host.
//! Every speed is a ratio of runs interleaved round by round in this one process.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::report::context_with;
use super::speed::Series;
use gearbx::engine::{self, EntropySource, GearControl, GenerateParams, Outcome};
use gearbx::error::{Error, Result};
use gearbx::gearbox::plan::{TierOverrides, TierType};
use gearbx::gearbox::{BuildReport, Gear, Gearbox, GearboxOptions, Manage};
use gearbx::llama::requantize;
use gearbx::llama::{Context, GgmlType, Model, ModelParams, Token};
use gearbx::monitor::Monitor;
use gearbx::store::GgufInfo;

/// What to run.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Generated tokens per run.
    pub tokens: usize,
    /// Interleaved rounds.
    pub rounds: usize,
    pub threads: usize,
    /// Gear traces (name, gear of each forward pass of a real model's generation), each
    /// replayed as auto mode.
    pub traces: Vec<(String, Vec<Gear>)>,
    /// Shift every N tokens, for each N here (what a shift costs).
    pub shift_periods: Vec<usize>,
    /// Directory for the static baseline GGUFs (reused when newer than the source).
    pub baselines_dir: PathBuf,
    /// Control: the gearbox context rebuilds llama.cpp's graph every decode (as gearbx did
    /// before each gear had its own CUDA graph), so a gap to that is visible.
    pub rebuild_graphs: bool,
    /// Manage the output head too (`--manage all,output`); the static baselines then quantize
    /// it to the same type.
    pub manage_output: bool,
    /// The gears decode with our CUDA decode kernels (`--decode-kernels`); the static
    /// baselines always with llama.cpp's.
    pub decode_kernels: bool,
}

/// One tier plan's build.
#[derive(Debug, Clone, Serialize)]
pub struct TierBuild {
    pub plan: String,
    pub report: BuildReport,
}

/// One static baseline: its type, llama.cpp's time to write it, its size.
#[derive(Debug, Clone, Serialize)]
pub struct StaticModel {
    pub ggml_type: String,
    pub quantize_s: f64,
    pub file_bytes: u64,
}

/// A fixed gear against the static model of the same types.
#[derive(Debug, Clone, Serialize)]
pub struct FixedVsStatic {
    pub gear: Gear,
    pub tier_type: String,
    pub gear_tokens_per_s: Series,
    pub static_tokens_per_s: Series,
    pub ratio: Series,
}

/// A replayed gear sequence against the mix its fractions predict.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub name: String,
    pub tokens_per_s: Series,
    pub predicted_tokens_per_s: Series,
    pub ratio: Series,
    pub pass_fraction: [f64; 3],
    pub shifts_per_token: f64,
    /// (measured − predicted time per token) / shifts per token, in ms.
    pub ms_per_shift: Series,
}

/// Entropy in the graph (one float crosses) against the logits copied to the host.
#[derive(Debug, Clone, Serialize)]
pub struct EntropyPlacement {
    pub n_vocab: usize,
    pub backend_tokens_per_s: Series,
    pub host_tokens_per_s: Series,
    pub ratio: Series,
    /// Host time per token minus backend time per token, µs.
    pub host_extra_us: Series,
}

/// Tokens under reused graphs (greedy, host logits): gears must take effect exactly.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftCheck {
    pub tokens: usize,
    /// The high gear (the loaded weights) gives the plain model's tokens.
    pub high_equals_plain: bool,
    /// Alternating low/high every token, with each gear's captured graph replayed, gives the
    /// same tokens as the same alternation with llama.cpp's graph rebuilt every token.
    pub alternation_equals_rebuilt: bool,
    /// Positions where the alternation's token differs from the high gear alone's (above 0:
    /// the gears really differ, so the check above could fail).
    pub alternation_differs_from_high: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    pub model: String,
    pub device: String,
    pub cuda_graphs: bool,
    /// The CUDA backend keeps a captured graph per gear (our ggml-cuda patch is present).
    pub graph_variants: bool,
    /// The gearbox context rebuilt llama.cpp's graph every decode.
    pub rebuild_graphs: bool,
    /// The output head had tiers too (and the same type in the static baselines).
    pub manage_output: bool,
    /// The gears decoded with our CUDA decode kernels (the static baselines with llama.cpp's).
    pub decode_kernels: bool,
    pub shift_check: Option<ShiftCheck>,
    pub n_params: u64,
    pub rounds: usize,
    pub tokens_per_run: usize,
    pub builds: Vec<TierBuild>,
    pub statics: Vec<StaticModel>,
    pub fixed: Vec<FixedVsStatic>,
    pub auto: Vec<Replay>,
    pub shifts: Vec<Replay>,
    pub entropy: Option<EntropyPlacement>,
    pub seconds: f64,
}

/// The first GPU's description ("NVIDIA H100 80GB HBM3"), or "CPU only".
pub fn device_name() -> String {
    gearbx::llama::gpu_description().unwrap_or_else(|| "CPU only".into())
}

/// Parses a gear trace: one letter per forward pass, `l`, `m` or `h` (whitespace ignored).
pub fn parse_trace(s: &str) -> Result<Vec<Gear>> {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c.to_ascii_lowercase() {
            'l' => Ok(Gear::Low),
            'm' => Ok(Gear::Mid),
            'h' => Ok(Gear::High),
            _ => Err(Error::InvalidParam(format!(
                "gear traces hold only l, m and h, not {c:?}"
            ))),
        })
        .collect()
}

/// Low and high alternating every `period` tokens.
fn alternating(period: usize) -> Vec<Gear> {
    [Gear::Low, Gear::High]
        .iter()
        .flat_map(|&g| std::iter::repeat_n(g, period))
        .collect()
}

fn params(n: usize, entropy: EntropySource) -> GenerateParams {
    let mut p = GenerateParams::greedy(n, true);
    p.entropy = entropy;
    p
}

fn run(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    n: usize,
    entropy: EntropySource,
    gears: Option<GearControl<'_, '_>>,
) -> Result<Outcome> {
    ctx.clear();
    engine::generate(ctx, prompt, &params(n, entropy), gears, |_| {})
}

fn fixed<'a, 'm>(gearbox: &'a mut Gearbox<'m>, g: Gear) -> Option<GearControl<'a, 'm>> {
    Some(GearControl {
        gearbox,
        monitor: None,
        fixed: g,
        calibrate: None,
    })
}

fn replayed<'a, 'm>(
    gearbox: &'a mut Gearbox<'m>,
    trace: &[Gear],
    n_vocab: usize,
) -> Option<GearControl<'a, 'm>> {
    Some(GearControl {
        gearbox,
        monitor: Some(Monitor::replay(trace.to_vec(), n_vocab)),
        fixed: Gear::High,
        calibrate: None,
    })
}

fn ratio(a: &[f64], b: &[f64]) -> Series {
    Series::of(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

/// Collects one replayed sequence's rounds.
#[derive(Default)]
struct ReplayRounds {
    tps: Vec<f64>,
    predicted: Vec<f64>,
    ms_per_shift: Vec<f64>,
    passes: [usize; 3],
    shifts: usize,
    tokens: usize,
}

impl ReplayRounds {
    /// Adds a run; `rates` are the same round's fixed-gear rates (low, mid, high).
    fn add(&mut self, o: &Outcome, rates: [f64; 3]) {
        let gs = o.gears.as_ref().expect("a run with a gearbox");
        let total = gs.passes.iter().sum::<usize>().max(1) as f64;
        let t_pred: f64 = (0..3).map(|i| gs.passes[i] as f64 / total / rates[i]).sum();
        self.tps.push(o.decode_tokens_per_s);
        self.predicted.push(1.0 / t_pred);
        let per_token_shifts = gs.shifts as f64 / total;
        if per_token_shifts > 0.0 {
            let excess = 1.0 / o.decode_tokens_per_s - t_pred;
            self.ms_per_shift.push(excess / per_token_shifts * 1e3);
        }
        for (p, n) in self.passes.iter_mut().zip(gs.passes.0) {
            *p += n;
        }
        self.shifts += gs.shifts;
        self.tokens += total as usize;
    }

    fn finish(self, name: String) -> Replay {
        let all = self.passes.iter().sum::<usize>().max(1) as f64;
        Replay {
            name,
            ratio: ratio(&self.tps, &self.predicted),
            tokens_per_s: Series::of(self.tps),
            predicted_tokens_per_s: Series::of(self.predicted),
            pass_fraction: self.passes.map(|p| p as f64 / all),
            shifts_per_token: self.shifts as f64 / self.tokens.max(1) as f64,
            ms_per_shift: Series::of(self.ms_per_shift),
        }
    }
}

/// Greedy tokens of one run (host logits, so no sampler in the graph).
fn tokens(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    n: usize,
    gears: Option<GearControl<'_, '_>>,
) -> Result<Vec<Token>> {
    let mut out = Vec::with_capacity(n);
    ctx.clear();
    engine::generate(ctx, prompt, &params(n, EntropySource::Host), gears, |e| {
        out.push(e.token)
    })?;
    Ok(out)
}

/// [`ShiftCheck`]: run after the timed rounds, when every gear's CUDA graph is captured.
fn shift_check(
    model: &Model,
    gear_ctx: &mut Context<'_>,
    plain_ctx: &mut Context<'_>,
    gb: &mut Gearbox<'_>,
    prompt: &[Token],
    n: usize,
    threads: usize,
) -> Result<ShiftCheck> {
    let n_vocab = model.n_vocab();
    let high = tokens(gear_ctx, prompt, n, fixed(gb, Gear::High))?;
    let plain = tokens(plain_ctx, prompt, n, None)?;
    let alt = tokens(gear_ctx, prompt, n, replayed(gb, &alternating(1), n_vocab))?;
    let mut rebuilt_ctx = context_with(model, gear_ctx.n_ctx(), threads, true)?;
    let rebuilt = tokens(
        &mut rebuilt_ctx,
        prompt,
        n,
        replayed(gb, &alternating(1), n_vocab),
    )?;
    gb.shift(gear_ctx, Gear::High);
    Ok(ShiftCheck {
        tokens: n,
        high_equals_plain: high == plain,
        alternation_equals_rebuilt: alt == rebuilt,
        alternation_differs_from_high: alt.iter().zip(&high).filter(|(a, b)| a != b).count(),
    })
}

/// The static model of `ty` for every managed tensor of `gb`, written into `dir` unless a file
/// written after the source is already there (the baselines take ~90 s each at 8B).
fn static_model(
    path: &Path,
    info: &GgufInfo,
    gb: &Gearbox<'_>,
    ty: GgmlType,
    dir: &Path,
    threads: usize,
    log: &mut impl FnMut(&str),
) -> Result<(StaticModel, Model)> {
    let types: Vec<(String, GgmlType)> = gb
        .current_types()
        .into_iter()
        .map(|(n, _)| (n, ty))
        .collect();
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let stem = path
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    // The type list decides the file: the output head's type is in the name when managed.
    let head = if types.iter().any(|(n, _)| !n.starts_with("blk.")) {
        "-head"
    } else {
        ""
    };
    let file = dir.join(format!("{stem}-{}{head}.gguf", ty.name().to_lowercase()));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((modified(&file), modified(path)), (Some(f), Some(s)) if f >= s);
    let quantize_s = if fresh {
        log(&format!("static {} reused: {}", ty.name(), file.display()));
        0.0
    } else {
        let t = Instant::now();
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        requantize::write_typed(path, info, &types, &tmp, threads)?;
        std::fs::rename(&tmp, &file)
            .map_err(|e| Error::io(format!("renaming into {}", file.display()), e))?;
        let s = t.elapsed().as_secs_f64();
        log(&format!(
            "static {} written by llama_model_quantize in {s:.1} s",
            ty.name()
        ));
        s
    };
    // llama.cpp's own kernels: the baseline a user of llama.cpp gets.
    let model = Model::load(
        &file,
        &ModelParams {
            decode_kernels: false,
            ..Default::default()
        },
    )?;
    let file_bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
    Ok((
        StaticModel {
            ggml_type: ty.name(),
            quantize_s,
            file_bytes,
        },
        model,
    ))
}

fn overrides(low: GgmlType, mid: GgmlType) -> TierOverrides {
    TierOverrides([Some(TierType::Type(low)), Some(TierType::Type(mid)), None])
}

fn build<'m>(
    model: &'m Model,
    path: &Path,
    info: &GgufInfo,
    (low, mid): (GgmlType, GgmlType),
    opts: &GpuOptions,
) -> Result<Gearbox<'m>> {
    Gearbox::build(
        model,
        path,
        info,
        &GearboxOptions {
            overrides: overrides(low, mid),
            threads: opts.threads,
            manage: Manage {
                output: opts.manage_output,
                ..Manage::default()
            },
            ..Default::default()
        },
    )
}

/// Runs the whole GPU harness on the float model at `path`.
pub fn run_all(
    path: &Path,
    info: &GgufInfo,
    opts: &GpuOptions,
    mut log: impl FnMut(&str),
) -> Result<GpuReport> {
    let t_all = Instant::now();
    let (n, t) = (opts.tokens, opts.threads);
    let model = Model::load(
        path,
        &ModelParams {
            decode_kernels: opts.decode_kernels,
            ..Default::default()
        },
    )?;
    let n_vocab = model.n_vocab();
    let n_params = info
        .tensors
        .iter()
        .map(|t| t.ne.iter().product::<u64>())
        .sum();
    let (q8, q4, q4k) = (GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K);

    // Tiers Q4_0/Q8_0 (every shadow by our kernels when the weights are on a GPU); the
    // default plan (Q4_K low) is built after the first part, for the Q4_K comparison.
    log("building tiers (low Q4_0, mid Q8_0)");
    let mut gb = build(&model, path, info, (q4, q8), opts)?;
    let mut builds = vec![TierBuild {
        plan: "low Q4_0, mid Q8_0".into(),
        report: gb.report().clone(),
    }];
    log(&format!(
        "  {:.0} ms, {:?}",
        builds[0].report.build_ms, builds[0].report.origin
    ));
    let mut statics = Vec::new();
    let mut static_models = Vec::new();
    for ty in [q8, q4, q4k] {
        let (s, m) = static_model(path, info, &gb, ty, &opts.baselines_dir, t, &mut log)?;
        statics.push(s);
        static_models.push(m);
    }

    let prompt: Vec<Token> = (1..=16).collect();
    let n_ctx = (n + prompt.len() + 64) as u32;
    let rebuild = opts.rebuild_graphs || model.shifts_need_graph_rebuild();
    let mut gear_ctx = context_with(&model, n_ctx, t, rebuild)?;
    // The plain model: the same weights at the high gear (set 0 is the loaded storage).
    let mut plain_ctx = context_with(&model, n_ctx, t, false)?;
    let mut static_ctx: Vec<Context<'_>> = static_models
        .iter()
        .map(|m| context_with(m, n_ctx, t, false))
        .collect::<Result<_>>()?;
    let auto = EntropySource::Auto;

    let mut gear_tps: [Vec<f64>; 3] = Default::default();
    let mut static_tps: [Vec<f64>; 3] = Default::default();
    let mut trace_rounds: Vec<ReplayRounds> = opts
        .traces
        .iter()
        .map(|_| ReplayRounds::default())
        .collect();
    let mut shift_rounds: Vec<ReplayRounds> = opts
        .shift_periods
        .iter()
        .map(|_| ReplayRounds::default())
        .collect();
    let (mut backend_tps, mut host_tps) = (Vec::new(), Vec::new());
    // Warm-up: one run each (CUDA graphs, allocations).
    run(&mut gear_ctx, &prompt, 16, auto, fixed(&mut gb, Gear::Low))?;
    run(&mut gear_ctx, &prompt, 16, auto, fixed(&mut gb, Gear::High))?;
    for c in static_ctx.iter_mut() {
        run(c, &prompt, 16, auto, None)?;
    }
    for r in 0..opts.rounds {
        for g in Gear::ALL {
            let o = run(&mut gear_ctx, &prompt, n, auto, fixed(&mut gb, g))?;
            gear_tps[g as usize].push(o.decode_tokens_per_s);
            let base = match g {
                Gear::Low => &mut static_ctx[1],
                Gear::Mid => &mut static_ctx[0],
                Gear::High => &mut plain_ctx,
            };
            static_tps[g as usize].push(run(base, &prompt, n, auto, None)?.decode_tokens_per_s);
        }
        let rates = [0, 1, 2].map(|i| gear_tps[i][r]);
        for (k, (_, trace)) in opts.traces.iter().enumerate() {
            let o = run(
                &mut gear_ctx,
                &prompt,
                n,
                auto,
                replayed(&mut gb, trace, n_vocab),
            )?;
            trace_rounds[k].add(&o, rates);
        }
        for (k, &p) in opts.shift_periods.iter().enumerate() {
            let o = run(
                &mut gear_ctx,
                &prompt,
                n,
                auto,
                replayed(&mut gb, &alternating(p), n_vocab),
            )?;
            shift_rounds[k].add(&o, rates);
        }
        gb.shift(&gear_ctx, Gear::High);
        backend_tps.push(
            run(&mut plain_ctx, &prompt, n, EntropySource::Backend, None)?.decode_tokens_per_s,
        );
        host_tps
            .push(run(&mut plain_ctx, &prompt, n, EntropySource::Host, None)?.decode_tokens_per_s);
        log(&format!(
            "round {}/{}: low {:.0}/{:.0} mid {:.0}/{:.0} high {:.0}/{:.0} tok/s (gear/static)",
            r + 1,
            opts.rounds,
            gear_tps[0][r],
            static_tps[0][r],
            gear_tps[1][r],
            static_tps[1][r],
            gear_tps[2][r],
            static_tps[2][r]
        ));
    }
    log("checking tokens under reused graphs");
    let check = shift_check(
        &model,
        &mut gear_ctx,
        &mut plain_ctx,
        &mut gb,
        &prompt,
        n,
        t,
    )?;
    log(&format!("  {check:?}"));
    let tier_types = [q4.name(), q8.name(), GgmlType::F16.name()];
    let mut fixed_report: Vec<FixedVsStatic> = Gear::ALL
        .iter()
        .map(|&g| FixedVsStatic {
            gear: g,
            tier_type: tier_types[g as usize].clone(),
            ratio: ratio(&gear_tps[g as usize], &static_tps[g as usize]),
            gear_tokens_per_s: Series::of(gear_tps[g as usize].clone()),
            static_tokens_per_s: Series::of(static_tps[g as usize].clone()),
        })
        .collect();
    let entropy = Some(EntropyPlacement {
        n_vocab,
        ratio: ratio(&backend_tps, &host_tps),
        host_extra_us: Series::of(
            backend_tps
                .iter()
                .zip(&host_tps)
                .map(|(b, h)| (1.0 / h - 1.0 / b) * 1e6)
                .collect(),
        ),
        backend_tokens_per_s: Series::of(backend_tps),
        host_tokens_per_s: Series::of(host_tps),
    });

    // The default plan's low gear (Q4_K) against the static Q4_K model.
    drop(gb);
    log("building tiers (low Q4_K, mid Q8_0: the default plan for float weights)");
    let mut gb = build(&model, path, info, (q4k, q8), opts)?;
    builds.push(TierBuild {
        plan: "low Q4_K, mid Q8_0 (default)".into(),
        report: gb.report().clone(),
    });
    log(&format!(
        "  {:.0} ms, {:?}",
        builds[1].report.build_ms, builds[1].report.origin
    ));
    let (mut k_gear, mut k_static) = (Vec::new(), Vec::new());
    run(&mut gear_ctx, &prompt, 16, auto, fixed(&mut gb, Gear::Low))?;
    for _ in 0..opts.rounds {
        k_gear.push(
            run(&mut gear_ctx, &prompt, n, auto, fixed(&mut gb, Gear::Low))?.decode_tokens_per_s,
        );
        k_static.push(run(&mut static_ctx[2], &prompt, n, auto, None)?.decode_tokens_per_s);
    }
    fixed_report.push(FixedVsStatic {
        gear: Gear::Low,
        tier_type: q4k.name(),
        ratio: ratio(&k_gear, &k_static),
        gear_tokens_per_s: Series::of(k_gear),
        static_tokens_per_s: Series::of(k_static),
    });
    drop(gb);

    Ok(GpuReport {
        model: path.display().to_string(),
        device: device_name(),
        cuda_graphs: std::env::var_os("GGML_CUDA_DISABLE_GRAPHS").is_none(),
        graph_variants: gearbx::llama::cuda_graphs::variants_available(),
        decode_kernels: model.decode_kernels(),
        rebuild_graphs: rebuild,
        manage_output: opts.manage_output,
        shift_check: Some(check),
        n_params,
        rounds: opts.rounds,
        tokens_per_run: n,
        builds,
        statics,
        fixed: fixed_report,
        auto: opts
            .traces
            .iter()
            .zip(trace_rounds)
            .map(|((name, _), r)| r.finish(name.clone()))
            .collect(),
        shifts: opts
            .shift_periods
            .iter()
            .zip(shift_rounds)
            .map(|(p, r)| r.finish(format!("low/high every {p} tokens")))
            .collect(),
        entropy,
        seconds: t_all.elapsed().as_secs_f64(),
    })
}

/// The report as a Markdown section (the README's H100 table is copied from it).
pub fn markdown(r: &GpuReport, command: &str, date: &str) -> String {
    let mut s = format!(
        "## {} on {}\n\n{} parameters, {} rounds of {} generated tokens, CUDA graphs {}, {}{}; \
         gears with {} decode kernels, static baselines with llama.cpp's; {date}.\n\
         Command: `{command}`\n\n",
        r.model,
        r.device,
        r.n_params,
        r.rounds,
        r.tokens_per_run,
        if r.cuda_graphs { "on" } else { "off" },
        match (r.rebuild_graphs, r.graph_variants) {
            (true, _) => "gearbox graph rebuilt every token",
            (false, true) => "one captured graph per gear (graph reuse on)",
            (false, false) => "graph reuse on, no graph variants",
        },
        if r.manage_output {
            ", the output head managed too"
        } else {
            ""
        },
        if r.decode_kernels {
            "gearbx's"
        } else {
            "llama.cpp's"
        }
    );
    if let Some(c) = &r.shift_check {
        s += &format!(
            "Tokens ({} greedy): high gear == plain model: {}; low/high alternating every token \
             with reused graphs == the same with graphs rebuilt: {} (the alternation differs \
             from high alone at {} positions).\n\n",
            c.tokens,
            c.high_equals_plain,
            c.alternation_equals_rebuilt,
            c.alternation_differs_from_high
        );
    }
    s += "| tier build | ms | where | on GPU / on CPU | bytes low / mid / high |\n|---|---|---|---|---|\n";
    for b in &r.builds {
        s += &format!(
            "| {} | {:.0} | {:?} | {} / {} | {:.2} / {:.2} / {:.2} GB ({}) |\n",
            b.plan,
            b.report.build_ms,
            b.report.origin,
            b.report.built_on_gpu,
            b.report.built_on_cpu,
            b.report.bytes[0] as f64 / 1e9,
            b.report.bytes[1] as f64 / 1e9,
            b.report.bytes[2] as f64 / 1e9,
            b.report.placement.join(" / ")
        );
    }
    s += "\n| static baseline | llama_model_quantize s | file GB |\n|---|---|---|\n";
    for m in &r.statics {
        s += &format!(
            "| {} | {:.1} | {:.2} |\n",
            m.ggml_type,
            m.quantize_s,
            m.file_bytes as f64 / 1e9
        );
    }
    s += "\n| gear | type | gear tok/s | static tok/s | gear/static (min-max) |\n|---|---|---|---|---|\n";
    for f in &r.fixed {
        s += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.3} ({:.3}-{:.3}) |\n",
            f.gear,
            f.tier_type,
            f.gear_tokens_per_s.median,
            f.static_tokens_per_s.median,
            f.ratio.median,
            f.ratio.min,
            f.ratio.max
        );
    }
    s += "\n| replayed gears | tok/s | harmonic mix tok/s | ratio | low/mid/high | shifts/token | ms per shift |\n|---|---|---|---|---|---|---|\n";
    for p in r.auto.iter().chain(&r.shifts) {
        s += &format!(
            "| {} | {:.1} | {:.1} | {:.3} | {:.2}/{:.2}/{:.2} | {:.3} | {:.3} |\n",
            p.name,
            p.tokens_per_s.median,
            p.predicted_tokens_per_s.median,
            p.ratio.median,
            p.pass_fraction[0],
            p.pass_fraction[1],
            p.pass_fraction[2],
            p.shifts_per_token,
            p.ms_per_shift.median
        );
    }
    if let Some(e) = &r.entropy {
        s += &format!(
            "\nEntropy at vocabulary {}: in the graph {:.1} tok/s, logits to the host {:.1} tok/s \
             (backend/host {:.3}; the host path costs {:.0} µs more per token).\n",
            e.n_vocab,
            e.backend_tokens_per_s.median,
            e.host_tokens_per_s.median,
            e.ratio.median,
            e.host_extra_us.median
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_parse_and_alternate() {
        assert_eq!(
            parse_trace("lm h\nH").unwrap(),
            vec![Gear::Low, Gear::Mid, Gear::High, Gear::High]
        );
        assert!(parse_trace("lx").is_err());
        assert_eq!(
            alternating(2),
            vec![Gear::Low, Gear::Low, Gear::High, Gear::High]
        );
    }
}
