//! Generation: what a request asks for (params, stop conditions), what it reports (token
//! events, the outcome, gear totals), and the entry points into the one decode loop
//! ([`decode`]) for each strategy.

pub mod decode;
pub mod drafting;
pub mod driver;
mod emit;
pub mod logprobs;
pub mod lossless;
pub mod prompt;
pub mod speculative;
pub mod text;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gearbox::{BuildReport, Gear, Gearbox, PerGear};
use crate::llama::{Context, SamplingParams, Token};
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
    /// Report each token's log-probability and the n most likely tokens' (computed on the
    /// host from the full logits; not in lossless mode). None: not computed.
    pub top_logprobs: Option<usize>,
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
            top_logprobs: None,
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
    /// The token's log-probability and the most likely alternatives, when the request asked.
    pub logprobs: Option<&'a logprobs::Logprobs>,
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
/// session keeps its cache), one token per step, calling `on_token` for every token (the
/// decode loop of [`decode::run`] with the plain strategy).
pub fn generate(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    params: &GenerateParams,
    gears: Option<GearControl<'_, '_>>,
    on_token: impl FnMut(&TokenEvent<'_>),
) -> Result<Outcome> {
    decode::run(ctx, prompt, params, gears, None, on_token)
}
