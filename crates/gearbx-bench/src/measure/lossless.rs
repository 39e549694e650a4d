//! Lossless mode against the high gear alone: greedy continuations of windows of real text,
//! the runs of each window interleaved (their order rotating), under both guarantees, with
//! token identity, re-scoring at the verified shapes, and the acceptance trace kept for
//! replaying at other model shapes; and the noise floor the verified guarantee is judged by
//! (the high gear's logits at the verification width against single-token decoding).

use serde::Serialize;

use super::speed::Series;
use gearbx::engine::lossless::{self, Guarantee, LosslessParams, LosslessStats};
use gearbx::engine::{self, GearControl, GenerateParams, Outcome};
use gearbx::error::Result;
use gearbx::gearbox::{Gear, Gearbox};
use gearbx::llama::{Context, Sampler, Token};

#[derive(Debug, Clone, Serialize)]
pub struct LosslessReport {
    pub guarantee: Guarantee,
    /// The controller chose when to draft (false: drafting wherever the entropy gate allows).
    pub adaptive: bool,
    pub prompts: usize,
    pub tokens_per_prompt: usize,
    pub draft_max: usize,
    /// Strict: the narrowest verification width the exactness probe allowed (drafts ≤ width
    /// − 1; 1: no drafting). Verified: the declared width of every verification.
    pub verify_width: usize,
    /// Decode tok/s of each window's run, and lossless / high per window.
    pub high_tokens_per_s: Series,
    pub lossless_tokens_per_s: Series,
    pub ratio: Series,
    /// Windows whose tokens equal single-token decoding at the high gear.
    pub identical: usize,
    /// Per window that differs: the first differing position, and the high gear's logit
    /// margin there (single-token decoding, raw logits: its own token's minus lossless mode's
    /// token's; a near-tie is a small margin).
    pub divergences: Vec<(usize, f32)>,
    /// Windows whose tokens the high gear chooses again when re-scored at the shapes they
    /// were verified with (every window, or the verification is not what it claims).
    pub rescored_identical: usize,
    pub verifies: usize,
    pub plain_steps: usize,
    pub drafting_turned_off: usize,
    pub acceptance_rate: f64,
    pub mean_accepted_len: f64,
    pub drafts_per_verify: f64,
    /// Share of the lossless loop's time spent drafting at the low gear.
    pub draft_time_share: f64,
    /// Every verification, in order: (draft tokens, accepted).
    pub cycles: Vec<(usize, usize)>,
}

/// The high gear's logits at verification width W against single-token decoding, on the
/// high gear's own greedy continuations: the rounding the verified guarantee lets in.
#[derive(Debug, Clone, Serialize)]
pub struct WidthNoise {
    pub width: usize,
    pub positions: usize,
    /// Rows whose logits are bit-identical to single-token decoding.
    pub identical_rows: usize,
    /// Rows whose argmax is the same.
    pub top1_agree: f64,
    /// KL(single ‖ width W) per row, nats.
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Greedy decoding with every token computed as row 0 of a width-W batch (no drafting)
    /// against single-token decoding: windows identical, and the first differing position of
    /// each window that differs.
    pub windows: usize,
    pub plain_identical: usize,
    pub plain_first_divergence: Vec<usize>,
}

/// Both guarantees on the same windows, and the width noise floor.
#[derive(Debug, Clone, Serialize)]
pub struct LosslessSection {
    pub guarantees: Vec<LosslessReport>,
    pub noise: Option<WidthNoise>,
}

/// One greedy generation from an empty cache: the high gear alone (`lossless` None) or
/// lossless mode; its outcome and tokens.
pub(super) fn run(
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
    let high = GearControl {
        gearbox: gb,
        monitor: None,
        fixed: Gear::High,
        calibrate: None,
    };
    let o = engine::decode::run(ctx, prompt, params, Some(high), lossless, collect)?;
    Ok((o, toks))
}

/// The high gear's logit margin at position `at` of `want` (single-token decoding after
/// `prompt`): `want[at]`'s logit minus `got`'s.
fn margin(
    ctx: &mut Context<'_>,
    gb: &mut Gearbox<'_>,
    prompt: &[Token],
    want: &[Token],
    at: usize,
    got: Token,
) -> Result<f32> {
    ctx.clear();
    gb.shift(ctx, Gear::High);
    ctx.decode(prompt)?;
    for &t in &want[..at] {
        ctx.decode(&[t])?;
    }
    let l = ctx.logits()?;
    Ok(l[want[at] as usize] - l[got as usize])
}

#[derive(Default)]
struct Lane {
    tps: Vec<f64>,
    ratio: Vec<f64>,
    identical: usize,
    divergences: Vec<(usize, f32)>,
    rescored: usize,
    stats: Vec<LosslessStats>,
    draft_ms: f64,
    loop_ms: f64,
}

/// Generates `tokens` greedy tokens after each prompt at the high gear and in lossless mode
/// under each guarantee (`adaptive`: the controller on, as users run it; off: drafting
/// wherever the entropy gate allows, to exercise identity), then the width noise floor on the
/// first `noise_windows` prompts.
pub fn measure(
    ctx: &mut Context<'_>,
    gb: &mut Gearbox<'_>,
    prompts: &[Vec<Token>],
    tokens: usize,
    adaptive: bool,
    noise_windows: usize,
    mut progress: impl FnMut(&str),
) -> Result<LosslessSection> {
    // Entropy where users get it: in the graph on a GPU (the high gear alone and lossless
    // mode's plain steps), from host logits on the CPU.
    let mut params = GenerateParams::greedy(tokens, true);
    params.entropy = gearbx::engine::EntropySource::Auto;
    let guarantees = [Guarantee::Strict, Guarantee::Verified];
    let lp = |g| LosslessParams {
        guarantee: Some(g),
        adaptive,
        ..Default::default()
    };
    let mut lanes: Vec<Lane> = guarantees.iter().map(|_| Lane::default()).collect();
    let mut high_tps = Vec::new();
    let mut high_tokens = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        progress(&format!("lossless {}/{}", i + 1, prompts.len()));
        // Rotate the order of the three runs from window to window.
        let mut outs: Vec<Option<(Outcome, Vec<Token>)>> = vec![None, None, None];
        for r in 0..3 {
            let which = (r + i) % 3;
            outs[which] = Some(match which {
                0 => run(ctx, gb, p, &params, None)?,
                w => run(ctx, gb, p, &params, Some(&lp(guarantees[w - 1])))?,
            });
        }
        let (h, h_toks) = outs[0].take().expect("ran");
        high_tps.push(h.decode_tokens_per_s);
        for (k, lane) in lanes.iter_mut().enumerate() {
            let (o, toks) = outs[k + 1].take().expect("ran");
            lane.tps.push(o.decode_tokens_per_s);
            lane.ratio
                .push(o.decode_tokens_per_s / h.decode_tokens_per_s);
            let st = o.lossless.expect("lossless stats");
            match toks.iter().zip(&h_toks).position(|(a, b)| a != b) {
                None if toks.len() == h_toks.len() => lane.identical += 1,
                None => lane
                    .divergences
                    .push((toks.len().min(h_toks.len()), f32::NAN)),
                Some(at) => {
                    let m = margin(ctx, gb, p, &h_toks, at, toks[at])?;
                    lane.divergences.push((at, m));
                }
            }
            if lossless::rescore(ctx, gb, p, &toks, &params, &st)?.is_none() {
                lane.rescored += 1;
            }
            lane.draft_ms += st.draft_ms;
            lane.loop_ms += o.eval_ms;
            lane.stats.push(st);
        }
        high_tokens.push(h_toks);
    }
    let reports = guarantees
        .iter()
        .zip(lanes)
        .map(|(&g, lane)| {
            let sum = |f: fn(&LosslessStats) -> usize| lane.stats.iter().map(f).sum::<usize>();
            let (d, a, v) = (sum(|s| s.drafted), sum(|s| s.accepted), sum(|s| s.verifies));
            let ratio_of = |x: usize, y: usize| if y > 0 { x as f64 / y as f64 } else { 0.0 };
            LosslessReport {
                guarantee: g,
                adaptive,
                prompts: prompts.len(),
                tokens_per_prompt: tokens,
                draft_max: lp(g).draft_max,
                verify_width: lane.stats.iter().map(|s| s.verify_width).min().unwrap_or(1),
                high_tokens_per_s: Series::of(high_tps.clone()),
                lossless_tokens_per_s: Series::of(lane.tps),
                ratio: Series::of(lane.ratio),
                identical: lane.identical,
                divergences: lane.divergences,
                rescored_identical: lane.rescored,
                verifies: v,
                plain_steps: sum(|s| s.plain_steps),
                drafting_turned_off: sum(|s| s.drafting_turned_off),
                acceptance_rate: ratio_of(a, d),
                mean_accepted_len: ratio_of(a, v),
                drafts_per_verify: ratio_of(d, v),
                draft_time_share: if lane.loop_ms > 0.0 {
                    lane.draft_ms / lane.loop_ms
                } else {
                    0.0
                },
                cycles: lane.stats.iter().flat_map(|s| s.cycles.clone()).collect(),
            }
        })
        .collect();
    let noise = if noise_windows > 0 {
        progress("width noise floor");
        let n = noise_windows.min(prompts.len());
        let width = LosslessParams::default().draft_max + 1;
        Some(width_noise(
            ctx,
            gb,
            &prompts[..n],
            &high_tokens[..n],
            &params,
            width,
        )?)
    } else {
        None
    };
    Ok(LosslessSection {
        guarantees: reports,
        noise,
    })
}

/// KL(p ‖ q) of two logit rows, nats.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |l: &[f32]| {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            la.exp() * (la - (b as f64 - lq))
        })
        .sum::<f64>()
        .max(0.0)
}

fn argmax(l: &[f32]) -> usize {
    l.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// The noise floor of the verified guarantee at `width` (see [`WidthNoise`]).
pub fn width_noise(
    ctx: &mut Context<'_>,
    gb: &mut Gearbox<'_>,
    prompts: &[Vec<Token>],
    high_tokens: &[Vec<Token>],
    params: &GenerateParams,
    width: usize,
) -> Result<WidthNoise> {
    let model = ctx.model();
    let (mut positions, mut identical_rows, mut agree) = (0usize, 0usize, 0usize);
    let (mut kl_sum, mut kl_max) = (0f64, 0f64);
    let (mut plain_identical, mut plain_first_divergence) = (0usize, Vec::new());
    for (p, want) in prompts.iter().zip(high_tokens) {
        // Teacher-forced: the high gear's own continuation, in chunks of `width`, decoded one
        // token at a time and as one batch.
        ctx.clear();
        ctx.detach_sampler();
        gb.shift(ctx, Gear::High);
        ctx.decode(p)?;
        for chunk in want.chunks(width).filter(|c| c.len() == width) {
            let p0 = ctx.n_past();
            let mut single = Vec::with_capacity(width);
            for &t in chunk {
                ctx.decode(&[t])?;
                single.push(ctx.logits()?.to_vec());
            }
            ctx.truncate(p0)?;
            ctx.decode_all_logits(chunk)?;
            for (i, s) in single.iter().enumerate() {
                let b = ctx.logits_at(i)?;
                positions += 1;
                identical_rows +=
                    usize::from(s.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
                agree += usize::from(argmax(s) == argmax(b));
                let k = kl(s, b);
                kl_sum += k;
                kl_max = kl_max.max(k);
            }
        }
        // Greedy decoding with each token as row 0 of a width-wide batch.
        ctx.clear();
        let mut chain = Sampler::new(&params.sampling, model, ctx.n_ctx())?;
        ctx.decode(p)?;
        let mut got = vec![chain.sample(ctx)];
        while got.len() < want.len() {
            let p0 = ctx.n_past();
            ctx.decode_all_logits(&vec![*got.last().expect("one token"); width])?;
            got.push(chain.sample_at(ctx, 0));
            ctx.truncate(p0 + 1)?;
        }
        match got.iter().zip(want).position(|(a, b)| a != b) {
            None => plain_identical += 1,
            Some(at) => plain_first_divergence.push(at),
        }
    }
    Ok(WidthNoise {
        width,
        positions,
        identical_rows,
        top1_agree: agree as f64 / positions.max(1) as f64,
        mean_kl: kl_sum / positions.max(1) as f64,
        max_kl: kl_max,
        windows: prompts.len(),
        plain_identical,
        plain_first_divergence,
    })
}

/// The section as Markdown: one row per guarantee, then fidelity and the noise floor.
pub fn markdown(s: &LosslessSection) -> String {
    let Some(first) = s.guarantees.first() else {
        return String::new();
    };
    let mut o = format!(
        "### Lossless mode ({} windows of the text continued by {} greedy tokens; draft max {}; \
         {})\n\n\
         | guarantee | high gear alone tok/s | lossless tok/s | ratio median (min-max) | \
         identical to single-token decoding | re-scored identically | verifies / plain steps | \
         kept | drafted per verify | verify width |\n|---|---|---|---|---|---|---|---|---|---|\n",
        first.prompts,
        first.tokens_per_prompt,
        first.draft_max,
        if first.adaptive {
            "the controller on, as `--lossless` runs"
        } else {
            "drafting wherever the entropy gate allows, as `--lossless --draft-always` runs"
        }
    );
    for l in &s.guarantees {
        o += &format!(
            "| {} | {:.1} | {:.1} | **{:.3}** ({:.3}-{:.3}) | {} of {} | {} of {} | {} / {} | \
             {:.0}% | {:.2} | {} |\n",
            l.guarantee,
            l.high_tokens_per_s.median,
            l.lossless_tokens_per_s.median,
            l.ratio.median,
            l.ratio.min,
            l.ratio.max,
            l.identical,
            l.prompts,
            l.rescored_identical,
            l.prompts,
            l.verifies,
            l.plain_steps,
            l.acceptance_rate * 100.0,
            l.drafts_per_verify,
            l.verify_width
        );
    }
    for l in s.guarantees.iter().filter(|l| !l.divergences.is_empty()) {
        let d: Vec<String> = l
            .divergences
            .iter()
            .map(|(at, m)| format!("token {at} (margin {m:.3})"))
            .collect();
        o += &format!(
            "\n{} output first differs from single-token decoding at: {}.",
            l.guarantee,
            d.join(", ")
        );
    }
    if let Some(n) = &s.noise {
        o += &format!(
            "\n\nNoise floor at verification width {} (the high gear's own continuations, {} \
             positions): {} rows bit-identical to single-token decoding, top-1 agreement {:.4}, \
             KL mean {:.2e} / max {:.2e} nats; greedy decoding with every token computed in a \
             batch of {} (no drafting) equals single-token decoding in {} of {} windows{}.",
            n.width,
            n.positions,
            n.identical_rows,
            n.top1_agree,
            n.mean_kl,
            n.max_kl,
            n.width,
            n.plain_identical,
            n.windows,
            if n.plain_first_divergence.is_empty() {
                String::new()
            } else {
                format!(
                    " (first differences at tokens {:?})",
                    n.plain_first_divergence
                )
            }
        );
    }
    if let Some(strict) = s
        .guarantees
        .iter()
        .find(|l| l.guarantee == Guarantee::Strict)
    {
        if strict.adaptive && strict.ratio.median < 0.98 {
            o +=
                "\n\n- **Negative:** strict lossless mode is slower than the high gear alone here.";
        }
    }
    o + "\n\nThe acceptance traces are in results.json (`lossless.guarantees[].cycles`).\n"
}
