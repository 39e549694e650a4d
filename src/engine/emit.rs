//! Per-token emission for the decode loop (both strategies): end of generation, UTF-8
//! assembly, stop strings, the token budget and the context limit, the callback, and the
//! outcome built from what was emitted.

use super::logprobs::Logprobs;
use super::text::{StopFilter, Utf8Stream};
use super::{
    lossless::LosslessStats, per_s, EntropyPlace, GearStats, GenerateParams, Outcome, StopReason,
    TokenEvent,
};
use crate::gearbox::Gear;
use crate::llama::{Context, Token};
use crate::monitor::Reason;

/// The gear telemetry of one emitted token, and its log-probabilities when asked (see
/// [`TokenEvent`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Telemetry<'a> {
    pub gear: Option<Gear>,
    pub next_gear: Option<(Gear, Reason)>,
    pub swap_us: f64,
    pub logprobs: Option<&'a Logprobs>,
}

/// Where a generation's time went, for its outcome.
pub(crate) struct Timing {
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    /// Forward passes after the prompt, and the time of the generation loop.
    pub eval_count: usize,
    pub eval_ms: f64,
}

/// Streams emitted tokens as text and stops where the request says.
pub(crate) struct Emitter<'p> {
    params: &'p GenerateParams,
    utf8: Utf8Stream,
    stops: StopFilter,
    text: String,
    n_gen: usize,
    entropy_sum: f64,
    /// Every emitted token (a backend chain attached later replays them for its penalties).
    tokens: Vec<Token>,
}

impl<'p> Emitter<'p> {
    pub fn new(params: &'p GenerateParams) -> Self {
        Self {
            params,
            utf8: Utf8Stream::default(),
            stops: StopFilter::new(params.stop.clone()),
            text: String::new(),
            n_gen: 0,
            entropy_sum: 0.0,
            tokens: Vec::new(),
        }
    }

    /// Tokens emitted so far.
    pub fn n_gen(&self) -> usize {
        self.n_gen
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Emits `tok`, drawn from a distribution of `entropy` bits; `n_past_after` is where the
    /// KV cache stands once every token before it is decoded. Some(reason) ends the loop.
    pub fn emit(
        &mut self,
        ctx: &Context<'_>,
        tok: Token,
        entropy: f32,
        n_past_after: u32,
        tele: Telemetry<'_>,
        on_token: &mut impl FnMut(&TokenEvent<'_>),
    ) -> Option<StopReason> {
        let model = ctx.model();
        if model.is_eog(tok) {
            return Some(StopReason::Eos);
        }
        self.entropy_sum += entropy as f64;
        self.tokens.push(tok);
        let piece = self.utf8.push(&model.token_bytes(tok, false));
        let (visible, hit) = self.stops.push(&piece);
        self.text.push_str(&visible);
        on_token(&TokenEvent {
            index: self.n_gen,
            token: tok,
            text: &visible,
            entropy_bits: entropy,
            gear: tele.gear,
            next_gear: tele.next_gear,
            swap_us: tele.swap_us,
            logprobs: tele.logprobs,
        });
        self.n_gen += 1;
        if hit {
            Some(StopReason::StopWord)
        } else if self.params.n_predict.is_some_and(|n| self.n_gen >= n) {
            Some(StopReason::Length)
        } else if n_past_after + 1 >= ctx.n_ctx() {
            Some(StopReason::Context)
        } else {
            None
        }
    }

    /// Ends the generation: text held back (a split UTF-8 character, a possible stop-string
    /// prefix) is appended and passed on as a final event without a token, unless a stop
    /// string ended it; then the outcome.
    pub fn finish(
        mut self,
        stop_reason: StopReason,
        time: Timing,
        entropy_on: EntropyPlace,
        gears: Option<GearStats>,
        lossless: Option<LosslessStats>,
        on_token: &mut impl FnMut(&TokenEvent<'_>),
    ) -> Outcome {
        if stop_reason != StopReason::StopWord {
            let (tail, _) = self.stops.push(&self.utf8.finish());
            let tail = tail + &self.stops.finish();
            if !tail.is_empty() {
                self.text.push_str(&tail);
                on_token(&TokenEvent {
                    index: self.n_gen,
                    token: -1,
                    text: &tail,
                    entropy_bits: f32::NAN,
                    gear: None,
                    next_gear: None,
                    swap_us: 0.0,
                    logprobs: None,
                });
            }
        }
        let n_gen = self.n_gen;
        Outcome {
            text: self.text,
            prompt_tokens: time.prompt_tokens,
            prompt_cached: 0,
            generated_tokens: n_gen,
            prompt_ms: time.prompt_ms,
            prompt_tokens_per_s: per_s(time.prompt_tokens, time.prompt_ms),
            eval_count: time.eval_count,
            eval_ms: time.eval_ms,
            decode_tokens_per_s: per_s(time.eval_count, time.eval_ms),
            mean_entropy_bits: if n_gen > 0 {
                self.entropy_sum / n_gen as f64
            } else {
                0.0
            },
            stop_reason,
            entropy_on,
            gears,
            lossless,
        }
    }
}
