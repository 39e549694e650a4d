//! Lossless mode at model shapes whose weights cannot accept drafts on their own (random
//! weights of a real shape): the real loop, passes and controller, with the acceptance of
//! each verification replayed from a real model's recorded cycles, against the high gear
//! alone, runs interleaved round by round.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::lossless as measured;
use super::speed::Series;
use gearbx::engine::drafting::DraftEstimates;
use gearbx::engine::lossless::{self, AcceptanceReplay, Guarantee, LosslessParams};
use gearbx::engine::{EntropySource, GenerateParams, Outcome};
use gearbx::error::{Error, Result};
use gearbx::gearbox::Gearbox;
use gearbx::llama::{Context, Token};

/// One lossless configuration against the high gear alone.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayLane {
    pub guarantee: Guarantee,
    /// True: the controller chooses draft lengths (and may not draft); false: the recorded
    /// draft lengths, always.
    pub adaptive: bool,
    pub tokens_per_s: Series,
    /// lossless / high alone, per round.
    pub ratio: Series,
    pub verifies: usize,
    pub plain_steps: usize,
    pub acceptance_rate: f64,
    pub drafts_per_verify: f64,
    pub verify_width: usize,
    /// The controller's estimates at the end of the last round.
    pub estimates: DraftEstimates,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub trace: String,
    pub recorded_acceptance: f64,
    pub recorded_drafts_per_verify: f64,
    pub tokens_per_run: usize,
    pub rounds: usize,
    /// The high gear alone (entropy where the default puts it: in the graph on a GPU).
    pub high_tokens_per_s: Series,
    pub lanes: Vec<ReplayLane>,
}

/// Greedy parameters with entropy where the default puts it (in the graph on a GPU): the high
/// gear alone as users run it, and lossless mode's plain steps likewise.
fn params(n: usize) -> GenerateParams {
    let mut p = GenerateParams::greedy(n, true);
    p.entropy = EntropySource::Auto;
    p
}

/// Replays `cycles` (a real model's (drafted, accepted) per verification) on `gb`'s model:
/// per round, the high gear alone, then each guarantee with the recorded draft lengths and
/// with the controller.
pub fn measure(
    ctx: &mut Context<'_>,
    gb: &mut Gearbox<'_>,
    trace: &str,
    cycles: &[(usize, usize)],
    tokens: usize,
    rounds: usize,
    mut log: impl FnMut(&str),
) -> Result<ReplayReport> {
    let replay = AcceptanceReplay::new(cycles)
        .ok_or_else(|| Error::InvalidParam(format!("{trace}: no cycle drafted anything")))?;
    let drafted: usize = cycles.iter().map(|c| c.0).sum();
    let accepted: usize = cycles.iter().map(|c| c.1).sum();
    let max_len = cycles.iter().map(|c| c.0).max().unwrap_or(1);
    let prompt: Vec<Token> = (1..=16).collect();
    let lanes: Vec<(Guarantee, bool)> = [Guarantee::Strict, Guarantee::Verified]
        .into_iter()
        .flat_map(|g| [(g, false), (g, true)])
        .collect();
    let lane_params = |&(g, adaptive): &(Guarantee, bool)| LosslessParams {
        draft_max: max_len.clamp(1, 7),
        guarantee: Some(g),
        adaptive,
        replay: Some(Arc::new(Mutex::new(replay.clone()))),
        ..Default::default()
    };
    // Warm-up: CUDA graphs and allocations of every shape.
    measured::run(ctx, gb, &prompt, &params(16), None)?;
    for l in &lanes {
        measured::run(ctx, gb, &prompt, &params(32), Some(&lane_params(l)))?;
    }
    let mut high_tps = Vec::new();
    let mut runs: Vec<Vec<Outcome>> = lanes.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        high_tps.push(
            measured::run(ctx, gb, &prompt, &params(tokens), None)?
                .0
                .decode_tokens_per_s,
        );
        for (i, l) in lanes.iter().enumerate() {
            runs[i]
                .push(measured::run(ctx, gb, &prompt, &params(tokens), Some(&lane_params(l)))?.0);
        }
        log(&format!(
            "round {}/{rounds}: high {:.1} tok/s; {}",
            r + 1,
            high_tps[r],
            lanes
                .iter()
                .zip(&runs)
                .map(|((g, a), o)| format!(
                    "{g}{} {:.1}",
                    if *a { "+ctl" } else { "" },
                    o[r].decode_tokens_per_s
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let lanes = lanes
        .iter()
        .zip(runs)
        .map(|(&(guarantee, adaptive), outs)| {
            let tps: Vec<f64> = outs.iter().map(|o| o.decode_tokens_per_s).collect();
            let stats: Vec<_> = outs.iter().filter_map(|o| o.lossless.clone()).collect();
            let sum = |f: fn(&lossless::LosslessStats) -> usize| stats.iter().map(f).sum::<usize>();
            let (d, a, v) = (sum(|s| s.drafted), sum(|s| s.accepted), sum(|s| s.verifies));
            ReplayLane {
                guarantee,
                adaptive,
                ratio: Series::of(tps.iter().zip(&high_tps).map(|(l, h)| l / h).collect()),
                tokens_per_s: Series::of(tps),
                verifies: v,
                plain_steps: sum(|s| s.plain_steps),
                acceptance_rate: if d > 0 { a as f64 / d as f64 } else { 0.0 },
                drafts_per_verify: if v > 0 { d as f64 / v as f64 } else { 0.0 },
                verify_width: stats.iter().map(|s| s.verify_width).min().unwrap_or(1),
                estimates: stats.last().map(|s| s.estimates).unwrap_or_default(),
            }
        })
        .collect();
    Ok(ReplayReport {
        trace: trace.to_string(),
        recorded_acceptance: accepted as f64 / drafted.max(1) as f64,
        recorded_drafts_per_verify: drafted as f64 / cycles.len().max(1) as f64,
        tokens_per_run: tokens,
        rounds,
        high_tokens_per_s: Series::of(high_tps),
        lanes,
    })
}

/// The report as a Markdown table.
pub fn markdown(r: &ReplayReport) -> String {
    let mut s = format!(
        "Acceptance replayed from `{}` (recorded: {:.0}% of draft tokens kept, {:.2} drafted per \
         verification); {} rounds of {} tokens; high gear alone {:.1} tok/s.\n\n\
         | guarantee | draft lengths | tok/s | lossless/high (min-max) | verifies | plain steps | \
         kept | drafted/verify | verify width | draft step / high step |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        r.trace,
        r.recorded_acceptance * 100.0,
        r.recorded_drafts_per_verify,
        r.rounds,
        r.tokens_per_run,
        r.high_tokens_per_s.median
    );
    for l in &r.lanes {
        let step = match (l.estimates.draft_step_ms, l.estimates.high_step_ms) {
            (Some(d), Some(h)) => format!("{:.2}", d / h),
            _ => "-".into(),
        };
        s += &format!(
            "| {} | {} | {:.1} | {:.3} ({:.3}-{:.3}) | {} | {} | {:.0}% | {:.2} | {} | {} |\n",
            l.guarantee,
            if l.adaptive { "controller" } else { "recorded" },
            l.tokens_per_s.median,
            l.ratio.median,
            l.ratio.min,
            l.ratio.max,
            l.verifies,
            l.plain_steps,
            l.acceptance_rate * 100.0,
            l.drafts_per_verify,
            l.verify_width,
            step
        );
    }
    s
}
