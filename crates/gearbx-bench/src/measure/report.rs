//! Runs the whole harness on one model: builds the gearbox, makes the static baselines, then
//! measures speed, quality on real text, prompt-class entropy and one generation's timeline.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::lossless::{self, LosslessSection};
use super::quality::{self, EvalOptions, Lane, LaneResult, Policy};
use super::speed::{self, SpeedReport, SpeedSetup};
use gearbx::engine::{self, prompt, GearControl, GenerateParams, PromptSpec};
use gearbx::error::{Error, Result};
use gearbx::gearbox::{BuildReport, CacheOptions, Gear, Gearbox, GearboxOptions};
use gearbx::llama::requantize;
use gearbx::llama::{Context, ContextParams, GgmlType, Model, ModelParams, Token};
use gearbx::monitor::{classifier, Monitor, MonitorConfig};
use gearbx::store::{digest, verify::hex, ResolvedModel};

/// What to measure and where to keep intermediate files.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Plain text to score (a prepared Austen novel).
    pub text: PathBuf,
    pub positions: usize,
    pub window: usize,
    pub prompt: usize,
    pub rounds: usize,
    pub speed_tokens: usize,
    /// Auto-mode thresholds as multiples of the defaults (1.8 / 3.5 bits at V = 32768).
    pub sweep: Vec<f64>,
    pub threads: usize,
    /// Where static baselines and tiers are cached.
    pub cache_dir: PathBuf,
    pub separation_tokens: usize,
    pub timeline_tokens: usize,
    /// Lossless mode: windows of the text used as prompts, and tokens generated after each.
    pub lossless_prompts: usize,
    pub lossless_tokens: usize,
    /// Which matrices shift (`--manage`; the static baselines quantize the same ones).
    pub manage: gearbx::gearbox::Manage,
}

/// A static llama.cpp model standing in for one gear.
#[derive(Debug, Clone, Serialize)]
pub struct StaticBaseline {
    pub gear: Gear,
    pub file: PathBuf,
    pub types: String,
    pub tensors_requantized: usize,
}

/// One prompt's auto-mode generation.
#[derive(Debug, Clone, Serialize)]
pub struct PromptRun {
    pub prompt: String,
    pub tokens: usize,
    pub mean_entropy_bits: f64,
    pub token_fraction: [f64; 3],
}

/// Entropy of trivial against hard prompts.
#[derive(Debug, Clone, Serialize)]
pub struct Separation {
    pub trivial: Vec<PromptRun>,
    pub hard: Vec<PromptRun>,
    pub trivial_mean_bits: f64,
    pub hard_mean_bits: f64,
    /// hard / trivial mean entropy (gearbx's target: > 2).
    pub ratio: f64,
    pub trivial_token_fraction: [f64; 3],
    pub hard_token_fraction: [f64; 3],
}

/// Entropy and gear per token of one auto-mode generation.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub prompt: String,
    pub entropy_bits: Vec<f64>,
    /// 0 low, 1 mid, 2 high: the gear of the pass that produced each token.
    pub gear: Vec<usize>,
    pub thresholds_bits: (f64, f64),
}

/// Does entropy pick the right positions? One auto lane against two routers with the same
/// per-gear fractions, run in lockstep over the same text: one that ignores the text (random)
/// and one that knows every tier's KL at every position (oracle).
#[derive(Debug, Clone, Serialize)]
pub struct RouterControl {
    pub auto: String,
    pub gear_fraction: [f64; 3],
    pub auto_kl: f64,
    pub random_kl: f64,
    pub oracle_kl: f64,
    /// (random − auto) / (random − oracle): 0 = no better than random, 1 = as good as the
    /// oracle; None where the oracle gains less than a tenth of random's KL (the ratio is
    /// then noise over a near-zero denominator).
    pub share_of_oracle_gain: Option<f64>,
    pub random: LaneResult,
    pub oracle: LaneResult,
}

/// Everything measured on one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub model: String,
    pub description: String,
    pub n_vocab: usize,
    pub threads: usize,
    pub system: String,
    pub tiers: BuildReport,
    pub baselines: Vec<StaticBaseline>,
    pub speed: SpeedReport,
    pub lossless: LosslessSection,
    pub text_file: String,
    pub window: usize,
    pub window_prompt: usize,
    pub quality: Vec<LaneResult>,
    /// Each auto lane against routers with its gear fractions: random and oracle.
    pub routers: Vec<RouterControl>,
    pub separation: Separation,
    pub timeline: Timeline,
}

/// The second lockstep pass: for every auto lane of `quality`, a random and an oracle router
/// with its fractions (the oracle ranks positions by the fixed low and mid lanes' KL).
#[allow(clippy::too_many_arguments)] // the pieces of one report pass
fn router_controls(
    model: &Model,
    plain: &Model,
    gb: &mut Gearbox<'_>,
    quality: &[LaneResult],
    tokens: &[Token],
    opts: &ReportOptions,
    t: usize,
    log: &mut impl FnMut(&str),
) -> Result<Vec<RouterControl>> {
    let kl_of = |name: &str| {
        quality
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.kl_per_position.clone())
            .unwrap_or_default()
    };
    let (kl_low, kl_mid) = (kl_of("low gear"), kl_of("mid gear"));
    let autos: Vec<&LaneResult> = quality.iter().filter(|l| l.policy == "auto").collect();
    let w = opts.window as u32;
    let mut lanes = vec![Lane::new(
        "source (reference)",
        context(plain, w, t)?,
        Policy::Plain,
    )];
    for (k, a) in autos.iter().enumerate() {
        let (random, oracle) = quality::routers(a.gear_fraction, &kl_low, &kl_mid, k as u64 + 1);
        lanes.push(Lane::new(
            format!("random ({} fractions)", a.name),
            context(model, w, t)?,
            Policy::Sequence("random".into(), random),
        ));
        lanes.push(Lane::new(
            format!("oracle ({} fractions)", a.name),
            context(model, w, t)?,
            Policy::Sequence("oracle".into(), oracle),
        ));
    }
    log("quality: random and oracle routers");
    let res = quality::evaluate(
        &mut lanes,
        Some(gb),
        tokens,
        &EvalOptions {
            window: opts.window,
            prompt: opts.prompt,
            max_positions: opts.positions,
        },
        |_, _| {},
    )?;
    Ok(autos
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let (random, oracle) = (res[1 + 2 * k].clone(), res[2 + 2 * k].clone());
            let gain = random.kl_mean - oracle.kl_mean;
            RouterControl {
                auto: a.name.clone(),
                gear_fraction: a.gear_fraction,
                auto_kl: a.kl_mean,
                random_kl: random.kl_mean,
                oracle_kl: oracle.kl_mean,
                share_of_oracle_gain: (gain > 0.1 * random.kl_mean)
                    .then(|| (random.kl_mean - a.kl_mean) / gain),
                random,
                oracle,
            }
        })
        .collect())
}

pub const TRIVIAL: &[&str] = &[
    "Say hello.",
    "Repeat after me: the cat sat on the mat.",
    "Count from 1 to 10.",
    "What colour is the sky on a clear day?",
    "Say the word yes.",
    "Spell the word cat.",
];

pub const HARD: &[&str] = &[
    "Solve for x: 3x + 7 = 22. Show each step.",
    "Write a Python function that returns the n-th prime number.",
    "Prove that the square root of 2 is irrational.",
    "A train leaves at 3:40 pm and travels 150 km at 60 km/h. When does it arrive?",
    "Explain the difference between a mutex and a semaphore.",
    "What is 17 * 23? Work it out step by step.",
];

/// A measurement context; `rebuild_graphs` for one whose weights a gearbox shifts on a GPU.
pub fn context_with<'m>(
    model: &'m Model,
    n_ctx: u32,
    threads: usize,
    rebuild_graphs: bool,
) -> Result<Context<'m>> {
    Context::new(
        model,
        &ContextParams {
            n_ctx,
            n_batch: n_ctx.min(512),
            n_threads: threads as i32,
            rebuild_graphs,
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )
}

fn context<'m>(model: &'m Model, n_ctx: u32, threads: usize) -> Result<Context<'m>> {
    context_with(model, n_ctx, threads, model.shifts_need_graph_rebuild())
}

/// Windows of the lossless section on which the width noise floor is measured.
const LOSSLESS_NOISE_WINDOWS: usize = 4;

/// Text windows for scoring: the novel from its first chapter on, tokenized, cut into windows
/// that each start with the model's BOS (if it uses one).
pub fn text_windows(
    model: &Model,
    text_file: &Path,
    window: usize,
    n_windows: usize,
) -> Result<Vec<Token>> {
    let text = std::fs::read_to_string(text_file)
        .map_err(|e| Error::io(format!("reading {}", text_file.display()), e))?;
    let start = text.find("Chapter 1").unwrap_or(0);
    // Enough characters for the windows asked for (~4 characters per token, with margin).
    let end = text.len().min(start + window * n_windows * 6 + 1000);
    let mut end_c = end;
    while !text.is_char_boundary(end_c) {
        end_c -= 1;
    }
    let body = model.tokenize(&text[start..end_c], false, false)?;
    let bos = model.tokenize("", true, false)?;
    let per = window - bos.len();
    let mut out = Vec::new();
    for chunk in body.chunks_exact(per).take(n_windows) {
        out.extend_from_slice(&bos);
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

fn auto_run(
    model: &Model,
    gb: &mut Gearbox<'_>,
    user: &str,
    n: usize,
    ignore_eos: bool,
    threads: usize,
    mut on: impl FnMut(f64, Gear),
) -> Result<(engine::Outcome, (f64, f64))> {
    let p = prompt::build(
        model,
        &PromptSpec {
            user: user.into(),
            ..Default::default()
        },
    )?;
    let mut ctx = context(model, (p.tokens.len() + n + 8) as u32, threads)?;
    let cold = classifier::classify(user).gear;
    let monitor = Monitor::new(MonitorConfig::default(), model.n_vocab(), cold);
    let thresholds = monitor.thresholds();
    let o = engine::generate(
        &mut ctx,
        &p.tokens,
        &GenerateParams::greedy(n, ignore_eos),
        Some(GearControl {
            gearbox: gb,
            monitor: Some(monitor),
            fixed: Gear::High,
            calibrate: None,
        }),
        |ev| {
            if let (true, Some(g)) = (ev.token >= 0, ev.gear) {
                on(ev.entropy_bits as f64, g);
            }
        },
    )?;
    Ok((o, thresholds))
}

fn class_runs(
    model: &Model,
    gb: &mut Gearbox<'_>,
    prompts: &[&str],
    n: usize,
    threads: usize,
) -> Result<Vec<PromptRun>> {
    prompts
        .iter()
        .map(|p| {
            let (o, _) = auto_run(model, gb, p, n, false, threads, |_, _| {})?;
            Ok(PromptRun {
                prompt: p.to_string(),
                tokens: o.generated_tokens,
                mean_entropy_bits: o.mean_entropy_bits,
                token_fraction: o.gears.map_or([0.0; 3], |g| g.token_fraction.0),
            })
        })
        .collect()
}

fn class_mean(runs: &[PromptRun]) -> (f64, [f64; 3]) {
    let n: usize = runs.iter().map(|r| r.tokens).sum::<usize>().max(1);
    let h = runs
        .iter()
        .map(|r| r.mean_entropy_bits * r.tokens as f64)
        .sum::<f64>()
        / n as f64;
    let mut f = [0.0; 3];
    for r in runs {
        for (i, x) in f.iter_mut().enumerate() {
            *x += r.token_fraction[i] * r.tokens as f64 / n as f64;
        }
    }
    (h, f)
}

/// The static model of `gear`, written once into `dir` and reused (None when the gear's types
/// are the source's own).
fn static_model(
    m: &ResolvedModel,
    gb: &Gearbox<'_>,
    gear: Gear,
    source_sha: &str,
    dir: &Path,
    threads: usize,
) -> Result<Option<(StaticBaseline, Model)>> {
    let names = gb.current_types();
    let types: Vec<(String, GgmlType)> = names
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), gb.type_at(gear, i)))
        .collect();
    let src_types: Vec<GgmlType> = names
        .iter()
        .enumerate()
        .map(|(i, _)| gb.type_at(Gear::High, i))
        .collect();
    if types.iter().zip(&src_types).all(|((_, a), b)| a == b) {
        return Ok(None);
    }
    let mut h = Sha256::new();
    for (n, t) in &types {
        h.update(format!("{n}:{}\n", t.id()));
    }
    let key = &hex(&h.finalize())[..12];
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let file = dir.join(format!("{}-{gear}-{key}.gguf", &source_sha[..12]));
    let mut changed = types
        .iter()
        .zip(&src_types)
        .filter(|((_, a), b)| a != *b)
        .count();
    if !file.exists() {
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        changed = requantize::write_typed(&m.path, &m.info, &types, &tmp, threads)?;
        std::fs::rename(&tmp, &file)
            .map_err(|e| Error::io(format!("renaming into {}", file.display()), e))?;
    }
    let model = Model::load(&file, &ModelParams::default())?;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (_, t) in &types {
        *counts.entry(t.name()).or_default() += 1;
    }
    let summary = counts
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Some((
        StaticBaseline {
            gear,
            file,
            types: summary,
            tensors_requantized: changed,
        },
        model,
    )))
}

/// Measures one model. `log` receives progress lines.
pub fn run(
    m: &ResolvedModel,
    opts: &ReportOptions,
    mut log: impl FnMut(&str),
) -> Result<ModelReport> {
    let t = opts.threads;
    let plain = Model::load(&m.path, &ModelParams::default())?;
    let model = Model::load(&m.path, &ModelParams::default())?;
    let tier_dir = opts.cache_dir.join("tiers");
    let source_sha = digest::source_sha256(m, &tier_dir.join("digests"), false)?;
    log("building tiers");
    let mut gb = Gearbox::build(
        &model,
        &m.path,
        &m.info,
        &GearboxOptions {
            manage: opts.manage.clone(),
            threads: t,
            cache: Some(CacheOptions {
                dir: tier_dir,
                source_sha256: source_sha.clone(),
            }),
            ..Default::default()
        },
    )?;
    log("writing static baselines with llama_model_quantize");
    let dir = opts.cache_dir.join("baselines");
    let low = static_model(m, &gb, Gear::Low, &source_sha, &dir, t)?;
    let mid = static_model(m, &gb, Gear::Mid, &source_sha, &dir, t)?;
    let baselines: Vec<StaticBaseline> = [&low, &mid]
        .iter()
        .filter_map(|b| b.as_ref().map(|(s, _)| s.clone()))
        .collect();

    // Speed: generation interleaved round by round.
    let n_ctx = 512u32.max((opts.speed_tokens + 300) as u32);
    let speed_prompt = plain.tokenize(
        "Once upon a time, in a small village by the sea,",
        true,
        false,
    )?;
    let prefill = text_windows(&plain, &opts.text, 256, 1)?;
    let mut gear_ctx = context(&model, n_ctx, t)?;
    let mut plain_ctx = context(&plain, n_ctx, t)?;
    let mut low_ctx = low
        .as_ref()
        .map(|(_, m)| context(m, n_ctx, t))
        .transpose()?;
    let mut mid_ctx = mid
        .as_ref()
        .map(|(_, m)| context(m, n_ctx, t))
        .transpose()?;
    let speed = speed::measure(
        SpeedSetup {
            gearbox: &mut gb,
            gear_ctx: &mut gear_ctx,
            plain_ctx: &mut plain_ctx,
            static_ctx: [low_ctx.as_mut(), mid_ctx.as_mut(), None],
            monitor: MonitorConfig::default(),
            prompt: speed_prompt,
            prefill,
        },
        opts.rounds,
        opts.speed_tokens,
        |r, n| log(&format!("speed round {r}/{n}")),
    )?;
    drop((gear_ctx, plain_ctx, low_ctx, mid_ctx));

    // Lossless against the high gear alone, continuing windows of the text.
    let lossless_prompts: Vec<Vec<Token>> =
        text_windows(&model, &opts.text, 48, opts.lossless_prompts)?
            .chunks(48)
            .map(<[Token]>::to_vec)
            .collect();
    let mut ctx = context(&model, (48 + opts.lossless_tokens + 16) as u32, t)?;
    let lossless = lossless::measure(
        &mut ctx,
        &mut gb,
        &lossless_prompts,
        opts.lossless_tokens,
        true,
        LOSSLESS_NOISE_WINDOWS,
        |s| log(s),
    )?;
    drop(ctx);

    // Quality: all lanes in lockstep over the text.
    let per = opts.window - opts.prompt;
    let n_windows = opts.positions.div_ceil(per - 1);
    let tokens = text_windows(&plain, &opts.text, opts.window, n_windows)?;
    let w = opts.window as u32;
    let mut lanes = vec![
        Lane::new("source (reference)", context(&plain, w, t)?, Policy::Plain),
        Lane::new(
            "high gear",
            context(&model, w, t)?,
            Policy::Fixed(Gear::High),
        ),
        Lane::new("mid gear", context(&model, w, t)?, Policy::Fixed(Gear::Mid)),
        Lane::new("low gear", context(&model, w, t)?, Policy::Fixed(Gear::Low)),
    ];
    if let Some((_, sm)) = &mid {
        lanes.push(Lane::new(
            "static mid (llama.cpp)",
            context(sm, w, t)?,
            Policy::Plain,
        ));
    }
    if let Some((_, sm)) = &low {
        lanes.push(Lane::new(
            "static low (llama.cpp)",
            context(sm, w, t)?,
            Policy::Plain,
        ));
    }
    let defaults = MonitorConfig::default();
    for &s in &opts.sweep {
        let cfg = MonitorConfig {
            low_bits: defaults.low_bits * s,
            high_bits: defaults.high_bits * s,
            ..defaults.clone()
        };
        lanes.push(Lane::new(
            format!("auto x{s}"),
            context(&model, w, t)?,
            Policy::Auto(cfg),
        ));
    }
    let mut last = 0;
    let quality = quality::evaluate(
        &mut lanes,
        Some(&mut gb),
        &tokens,
        &EvalOptions {
            window: opts.window,
            prompt: opts.prompt,
            max_positions: opts.positions,
        },
        |d, n| {
            if d * 10 / n != last {
                last = d * 10 / n;
                log(&format!("quality {d}/{n} positions"));
            }
        },
    )?;
    drop(lanes);
    let routers = router_controls(
        &model, &plain, &mut gb, &quality, &tokens, opts, t, &mut log,
    )?;

    log("prompt classes");
    let trivial = class_runs(&model, &mut gb, TRIVIAL, opts.separation_tokens, t)?;
    let hard = class_runs(&model, &mut gb, HARD, opts.separation_tokens, t)?;
    let (tm, tf) = class_mean(&trivial);
    let (hm, hf) = class_mean(&hard);
    let separation = Separation {
        trivial,
        hard,
        trivial_mean_bits: tm,
        hard_mean_bits: hm,
        ratio: hm / tm,
        trivial_token_fraction: tf,
        hard_token_fraction: hf,
    };

    log("timeline");
    let story = "Tell me a story about a lighthouse keeper who finds a message in a bottle.";
    let (mut entropy, mut gear) = (Vec::new(), Vec::new());
    let (_, thresholds) = auto_run(
        &model,
        &mut gb,
        story,
        opts.timeline_tokens,
        true,
        t,
        |h, g| {
            entropy.push(h);
            gear.push(g as usize);
        },
    )?;
    Ok(ModelReport {
        model: m
            .path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        description: model.description(),
        n_vocab: model.n_vocab(),
        threads: t,
        system: gearbx::llama::system_info(),
        tiers: gb.report().clone(),
        baselines,
        speed,
        lossless,
        text_file: opts.text.display().to_string(),
        window: opts.window,
        window_prompt: opts.prompt,
        quality,
        routers,
        separation,
        timeline: Timeline {
            prompt: story.into(),
            entropy_bits: entropy,
            gear,
            thresholds_bits: thresholds,
        },
    })
}
