//! The decode loop: prompt → llama_decode → logits → entropy → sampler → streamed text, with
//! stop conditions and timing.

pub mod drafting;
pub mod driver;
mod emit;
pub mod lossless;
pub mod prompt;
pub mod speculative;
pub mod text;

use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gearbox::{BuildReport, Gear, Gearbox, PerGear};
use crate::kernels;
use crate::llama::backend_entropy::Probe;
use crate::llama::{Context, Sampler, SamplingParams, Token};
use crate::monitor::{Monitor, Reason};
pub use prompt::{Prompt, PromptSpec, Turn};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Stop after this many new tokens (`None`: until end of text or a full context).
    pub n_predict: Option<usize>,
    /// Stop strings; the text stops before the first one.
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    /// Where the entropy of each distribution is computed.
    pub entropy: EntropySource,
}

impl GenerateParams {
    /// Greedy decoding of up to `n` tokens with the default repeat penalty (1.1 over 64) and
    /// host entropy: what the benchmarks and the report generate with.
    pub fn greedy(n: usize, ignore_eos: bool) -> Self {
        Self {
            n_predict: Some(n),
            stop: vec![],
            sampling: SamplingParams {
                temperature: 0.0,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.0,
                repeat_penalty: 1.1,
                repeat_last_n: 64,
                seed: 1,
                ignore_eos,
            },
            entropy: EntropySource::Host,
        }
    }
}

/// Where to compute entropy: from host logits, or inside the graph through backend sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntropySource {
    /// Backend when the model runs on a GPU (one float per token crosses), host otherwise,
    /// and host when calibrating (calibration reads every prompt position).
    #[default]
    Auto,
    Host,
    Backend,
}

impl std::str::FromStr for EntropySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "host" => Ok(Self::Host),
            "backend" => Ok(Self::Backend),
            _ => Err(format!(
                "unknown entropy source {s:?}: use auto, host or backend"
            )),
        }
    }
}

/// Where the entropy of a generation was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntropyPlace {
    /// From the full logits copied to the host.
    Host,
    /// In the graph (backend sampling); only the value crosses.
    Backend,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string appeared.
    StopWord,
    /// `n_predict` tokens were generated.
    Length,
    /// The context window is full.
    Context,
    /// Cancelled (Ctrl-C or the abort flag).
    Interrupted,
}

/// One generated token, as the callback sees it.
#[derive(Debug, Clone)]
pub struct TokenEvent<'a> {
    /// 0-based index among generated tokens.
    pub index: usize,
    pub token: Token,
    /// Text that became visible with this token (may be empty while a stop string or a
    /// split UTF-8 character is pending).
    pub text: &'a str,
    /// Entropy (bits) of the distribution this token was sampled from.
    pub entropy_bits: f32,
    /// The gear of the forward pass that produced that distribution (None: no gearbox).
    pub gear: Option<Gear>,
    /// The gear chosen for the next forward pass, and why.
    pub next_gear: Option<(Gear, Reason)>,
    /// Time the shift after this token took (0 when the gear stayed).
    pub swap_us: f64,
}

/// Gear shifting during generation: a built gearbox and either a fixed gear or a monitor.
pub struct GearControl<'a, 'm> {
    pub gearbox: &'a mut Gearbox<'m>,
    /// `None`: fixed at `fixed`; `Some`: auto mode.
    pub monitor: Option<Monitor>,
    pub fixed: Gear,
    /// Calibrate the monitor's thresholds from the prompt's entropies; the flags keep a
    /// threshold the user gave (low, high).
    pub calibrate: Option<(bool, bool)>,
}

/// Gear totals of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct GearStats {
    pub mode: String,
    /// Forward passes (after the prompt) per gear.
    pub passes: PerGear<usize>,
    /// Generated tokens whose distribution came from each gear.
    pub tokens: PerGear<usize>,
    /// Fraction of generated tokens whose distribution came from each gear.
    pub token_fraction: PerGear<f64>,
    /// Single-token forward passes per second at each gear (None: no such pass ran; a token
    /// can come from a gear without one, as the first token comes from the prompt's pass).
    pub tokens_per_s: PerGear<Option<f64>>,
    pub shifts: usize,
    pub swap_us_mean: f64,
    pub swap_us_max: f64,
    pub thresholds_bits: Option<(f64, f64)>,
    pub tiers: BuildReport,
}

/// Totals of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub text: String,
    /// Tokens of the prompt, and how many of them were already in the KV cache (a session
    /// request with `reuse_cache`; 0 otherwise): the rest were decoded in `prompt_ms`.
    pub prompt_tokens: usize,
    pub prompt_cached: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub prompt_tokens_per_s: f64,
    /// Single-token forward passes after the prompt (the first token comes from the prompt's).
    pub eval_count: usize,
    /// Time in the generation loop: sampling, entropy, and those forward passes.
    pub eval_ms: f64,
    pub decode_tokens_per_s: f64,
    pub mean_entropy_bits: f64,
    pub stop_reason: StopReason,
    pub entropy_on: EntropyPlace,
    pub gears: Option<GearStats>,
    /// Drafting statistics of a lossless generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lossless: Option<lossless::LosslessStats>,
}

/// How tokens are drawn and entropy read: a host chain over host logits, or a chain attached
/// to the context whose probe reports the entropy.
enum Draw {
    Host(Sampler),
    Backend(Rc<Probe>),
}

pub(crate) fn per_s(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Refuses an empty prompt and one that leaves no room in the context.
pub(crate) fn check_prompt(ctx: &Context<'_>, prompt: &[Token]) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::InvalidParam("the prompt is empty".into()));
    }
    if prompt.len() as u64 + ctx.n_past() as u64 >= ctx.n_ctx() as u64 {
        return Err(Error::PromptTooLong {
            n_prompt: prompt.len(),
            n_ctx: ctx.n_ctx(),
            n_ctx_train: ctx.model().n_ctx_train(),
        });
    }
    Ok(())
}

/// Generates from `prompt`, decoded after what the context already holds (nothing, unless a
/// session keeps its cache), calling `on_token` for every token.
pub fn generate(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    params: &GenerateParams,
    mut gears: Option<GearControl<'_, '_>>,
    mut on_token: impl FnMut(&TokenEvent<'_>),
) -> Result<Outcome> {
    let model = ctx.model();
    check_prompt(ctx, prompt)?;
    if gears.is_some() && model.shifts_need_graph_rebuild() && !ctx.rebuilds_graphs() {
        return Err(Error::InvalidParam(
            "shifting gears on this GPU backend needs a context made with rebuild_graphs (it \
             cannot keep a captured graph per gear, so llama.cpp's reused graphs would keep the \
             old weights)"
                .into(),
        ));
    }
    ctx.detach_sampler();
    let calibrating = gears
        .as_ref()
        .is_some_and(|g| g.calibrate.is_some() && g.monitor.is_some());
    let backend = match params.entropy {
        EntropySource::Host => false,
        EntropySource::Auto => model.offloaded() && !calibrating,
        EntropySource::Backend if calibrating => {
            return Err(Error::InvalidParam(
                "--calibrate reads the logits of every prompt position on the host; use it \
                 with --entropy host or auto"
                    .into(),
            ))
        }
        EntropySource::Backend => true,
    };
    // Host: a plain chain over host logits. Backend: the chain, between the entropy probe's
    // head and tail, attached to the context so it runs inside the graph.
    let mut draw = if backend {
        let (s, probe) = Sampler::with_entropy_probe(&params.sampling, model, ctx.n_ctx())?;
        ctx.attach_sampler(s)?;
        Draw::Backend(probe)
    } else {
        Draw::Host(Sampler::new(&params.sampling, model, ctx.n_ctx())?)
    };
    let mut out = emit::Emitter::new(params);

    // The prompt runs at the high gear: its KV cache serves every later token.
    if let Some(g) = gears.as_mut() {
        g.gearbox.shift(ctx, Gear::High);
    }
    let t0 = Instant::now();
    let interrupted = |e: Error, ctx: &Context<'_>| if ctx.aborted() { Ok(()) } else { Err(e) };
    let mut stop_reason = None;
    let calibrate = gears
        .as_ref()
        .and_then(|g| g.calibrate.filter(|_| g.monitor.is_some()));
    let prefill = match calibrate {
        Some(_) => ctx.decode_with_entropies(prompt),
        None => ctx.decode(prompt).map(|_| Vec::new()),
    };
    match prefill {
        Err(e) => {
            interrupted(e, ctx)?;
            stop_reason = Some(StopReason::Interrupted);
        }
        Ok(h) => {
            if let (Some((keep_low, keep_high)), Some(m)) =
                (calibrate, gears.as_mut().and_then(|g| g.monitor.as_mut()))
            {
                let h: Vec<f64> = h.iter().map(|&x| x as f64).collect();
                m.calibrate(&h, keep_low, keep_high);
            }
        }
    }
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut eval_count = 0usize;
    let mut passes = [0usize; 3];
    let mut gear_ms = [0f64; 3];
    // After the prompt: the cold-start gear (auto) or the fixed gear.
    let mut used_gear = gears.as_ref().map(|_| Gear::High);
    let mut driver = gears
        .as_mut()
        .map(|g| driver::GearDriver::new(g.monitor.take(), g.fixed));
    if let (Some(g), Some(d)) = (gears.as_mut(), driver.as_ref()) {
        g.gearbox.shift(ctx, d.first_gear());
    }
    while stop_reason.is_none() {
        if ctx.aborted() {
            stop_reason = Some(StopReason::Interrupted);
            break;
        }
        let (tok, entropy) = match &mut draw {
            Draw::Host(s) => {
                let (entropy, n_bad) = kernels::entropy_bits(ctx.logits()?);
                if n_bad > 0 {
                    return Err(Error::NanLogits(out.n_gen()));
                }
                (s.sample(ctx), entropy)
            }
            Draw::Backend(p) => {
                let tok = ctx.sample_attached()?;
                let entropy = match ctx.sampled_probs() {
                    Some(v) => v[0],
                    None => p.host_bits(),
                };
                if !entropy.is_finite() {
                    return Err(Error::NanLogits(out.n_gen()));
                }
                (tok, entropy)
            }
        };
        if model.is_eog(tok) {
            stop_reason = Some(StopReason::Eos);
            break;
        }
        let mut tele = emit::Telemetry {
            gear: used_gear,
            ..Default::default()
        };
        if let (Some(g), Some(d)) = (gears.as_mut(), driver.as_mut()) {
            let before = g.gearbox.gear();
            let (next, why) = d.step(used_gear.expect("gearbox"), entropy as f64);
            if next != before {
                tele.swap_us = g.gearbox.shift(ctx, next).as_secs_f64() * 1e6;
                d.shifted(tele.swap_us);
            }
            tele.next_gear = Some((next, why));
        }
        stop_reason = out.emit(ctx, tok, entropy, ctx.n_past(), tele, &mut on_token);
        if stop_reason.is_none() {
            let g = gears.as_ref().map(|g| g.gearbox.gear());
            let td = Instant::now();
            if let Err(e) = ctx.decode(&[tok]) {
                interrupted(e, ctx)?;
                stop_reason = Some(StopReason::Interrupted);
            } else {
                eval_count += 1;
                if let Some(g) = g {
                    passes[g as usize] += 1;
                    gear_ms[g as usize] += td.elapsed().as_secs_f64() * 1e3;
                }
            }
            used_gear = g;
        }
    }
    let stop_reason = stop_reason.expect("loop ends with a reason");
    let entropy_on = match &draw {
        Draw::Backend(p) if p.on_backend() => EntropyPlace::Backend,
        _ => EntropyPlace::Host,
    };
    ctx.detach_sampler();
    let eval_ms = t1.elapsed().as_secs_f64() * 1e3;
    let gear_stats = gears.as_ref().zip(driver.as_ref()).map(|(g, d)| {
        let tokens_at = d.tokens();
        let (shifts, swap_us_mean, swap_us_max) = d.shifts();
        GearStats {
            mode: if d.monitor.is_some() {
                "auto".into()
            } else {
                d.fixed.to_string()
            },
            passes: PerGear(passes),
            tokens: PerGear(tokens_at),
            token_fraction: PerGear(tokens_at.map(|n| {
                if out.n_gen() > 0 {
                    n as f64 / out.n_gen() as f64
                } else {
                    0.0
                }
            })),
            tokens_per_s: PerGear(
                [0, 1, 2].map(|i| (passes[i] > 0).then(|| per_s(passes[i], gear_ms[i]))),
            ),
            shifts,
            swap_us_mean,
            swap_us_max,
            thresholds_bits: d.thresholds(),
            tiers: g.gearbox.report().clone(),
        }
    });
    Ok(out.finish(
        stop_reason,
        emit::Timing {
            prompt_tokens: prompt.len(),
            prompt_ms,
            eval_count,
            eval_ms,
        },
        entropy_on,
        gear_stats,
        None,
        &mut on_token,
    ))
}
