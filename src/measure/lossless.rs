//! Lossless mode against the high gear alone: greedy continuations of windows of real text,
//! the two runs of each window interleaved (their order alternating), with token identity
//! checked and the acceptance trace kept for replaying at other model shapes.

use serde::Serialize;

use super::speed::Series;
use crate::engine::lossless::{self, LosslessParams};
use crate::engine::{self, GearControl, GenerateParams, Outcome};
use crate::error::Result;
use crate::gearbox::{Gear, Gearbox};
use crate::llama::{Context, Token};

#[derive(Debug, Clone, Serialize)]
pub struct LosslessReport {
    pub prompts: usize,
    pub tokens_per_prompt: usize,
    pub draft_max: usize,
    /// The verification batch width the exactness probe allowed (drafts ≤ width − 1).
    pub verify_width: usize,
    /// Decode tok/s of each window's run, and lossless / high per window.
    pub high_tokens_per_s: Series,
    pub lossless_tokens_per_s: Series,
    pub ratio: Series,
    /// Windows whose lossless tokens equal the high gear's (all of them, or a bug).
    pub identical: usize,
    pub acceptance_rate: f64,
    pub mean_accepted_len: f64,
    pub drafts_per_verify: f64,
    /// Share of the lossless loop's time spent drafting at the low gear.
    pub draft_time_share: f64,
    /// Every verification, in order: (draft tokens, accepted).
    pub cycles: Vec<(usize, usize)>,
}

fn run(
    ctx: &mut Context<'_>,
    gb: &mut Gearbox<'_>,
    prompt: &[Token],
    params: &GenerateParams,
    lossless: Option<&LosslessParams>,
) -> Result<(Outcome, Vec<Token>)> {
    ctx.clear();
    let mut toks = Vec::new();
    let collect = |ev: &engine::TokenEvent<'_>| {
        if ev.token >= 0 {
            toks.push(ev.token);
        }
    };
    let o = match lossless {
        Some(lp) => lossless::generate(ctx, prompt, params, gb, lp, collect)?,
        None => engine::generate(
            ctx,
            prompt,
            params,
            Some(GearControl {
                gearbox: gb,
                monitor: None,
                fixed: Gear::High,
                calibrate: None,
            }),
            collect,
        )?,
    };
    Ok((o, toks))
}

/// Generates `tokens` greedy tokens after each prompt, at the high gear and in lossless mode.
pub fn measure(
    ctx: &mut Context<'_>,
    gb: &mut Gearbox<'_>,
    prompts: &[Vec<Token>],
    tokens: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<LosslessReport> {
    let params = GenerateParams::greedy(tokens, true);
    let lp = LosslessParams::default();
    let (mut high, mut fast, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut identical = 0;
    let (mut drafted, mut accepted, mut verifies) = (0usize, 0usize, 0usize);
    let (mut draft_ms, mut loop_ms) = (0f64, 0f64);
    let mut cycles = Vec::new();
    let mut verify_width = 0;
    for (i, p) in prompts.iter().enumerate() {
        progress(i + 1, prompts.len());
        let (h, l) = if i % 2 == 0 {
            let h = run(ctx, gb, p, &params, None)?;
            (h, run(ctx, gb, p, &params, Some(&lp))?)
        } else {
            let l = run(ctx, gb, p, &params, Some(&lp))?;
            (run(ctx, gb, p, &params, None)?, l)
        };
        high.push(h.0.decode_tokens_per_s);
        fast.push(l.0.decode_tokens_per_s);
        ratio.push(l.0.decode_tokens_per_s / h.0.decode_tokens_per_s);
        identical += usize::from(h.1 == l.1);
        let st = l.0.lossless.expect("lossless stats");
        verify_width = st.verify_width;
        drafted += st.drafted;
        accepted += st.accepted;
        verifies += st.verifies;
        draft_ms += st.draft_ms;
        loop_ms += l.0.eval_ms;
        cycles.extend(st.cycles);
    }
    let ratio_of = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    Ok(LosslessReport {
        prompts: prompts.len(),
        tokens_per_prompt: tokens,
        draft_max: lp.draft_max,
        verify_width,
        high_tokens_per_s: Series::of(high),
        lossless_tokens_per_s: Series::of(fast),
        ratio: Series::of(ratio),
        identical,
        acceptance_rate: ratio_of(accepted, drafted),
        mean_accepted_len: ratio_of(accepted, verifies),
        drafts_per_verify: ratio_of(drafted, verifies),
        draft_time_share: if loop_ms > 0.0 {
            draft_ms / loop_ms
        } else {
            0.0
        },
        cycles,
    })
}
