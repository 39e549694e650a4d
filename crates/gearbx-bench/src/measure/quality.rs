//! Quality against the high tier: every configuration ("lane") reads the same text token by
//! token, in lockstep with a reference lane, and each position's distribution is compared with
//! the reference's (KL divergence, top-1 agreement) and scored on the real next token
//! (perplexity). In auto lanes the gear of position t+1 is decided from positions ≤ t exactly
//! as in generation. Lanes are decoded one after another at every position, so their decode
//! times are interleaved token by token and comparable within one run.

use std::time::Instant;

use serde::Serialize;

use gearbx::error::{Error, Result};
use gearbx::gearbox::{Gear, Gearbox};
use gearbx::llama::{Context, Token};
use gearbx::monitor::{classifier, Monitor, MonitorConfig};

/// How a lane picks its gear.
#[derive(Debug, Clone)]
pub enum Policy {
    /// A model with no gearbox (the reference, or a static baseline).
    Plain,
    /// The gearbox model held at one gear.
    Fixed(Gear),
    /// The gearbox model routed by a monitor with this configuration.
    Auto(MonitorConfig),
    /// The gearbox model following a given gear for every scored position (in order, across
    /// windows; the prompt at high): the control routers of [`routers`].
    Sequence(String, Vec<Gear>),
}

/// One configuration under test: a context (of the source model or of a static model) and how
/// it chooses gears.
pub struct Lane<'m> {
    pub name: String,
    pub ctx: Context<'m>,
    pub policy: Policy,
    monitor: Option<Monitor>,
    gear: Gear,
    stats: Accum,
}

#[derive(Default)]
struct Accum {
    kl: Vec<f64>,
    top1: usize,
    nll: f64,
    n: usize,
    gear_positions: [usize; 3],
    decode_s: f64,
    decodes: usize,
    shifts: usize,
    entropy_sum: f64,
}

/// One lane's results.
#[derive(Debug, Clone, Serialize)]
pub struct LaneResult {
    pub name: String,
    pub policy: String,
    /// (low, high) thresholds in bits at the model's vocabulary, for auto lanes.
    pub thresholds_bits: Option<(f64, f64)>,
    pub positions: usize,
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    pub top1_agreement: f64,
    pub perplexity: f64,
    pub mean_entropy_bits: f64,
    /// Fraction of scored positions decoded at low, mid, high (gearbox lanes).
    pub gear_fraction: [f64; 3],
    pub shifts: usize,
    /// Single-token decodes per second, timed around llama_decode only, interleaved with the
    /// other lanes token by token.
    pub decode_tokens_per_s: f64,
    /// KL at every scored position, in order (for the control routers; not in results.json).
    #[serde(skip)]
    pub kl_per_position: Vec<f64>,
}

impl<'m> Lane<'m> {
    pub fn new(name: impl Into<String>, ctx: Context<'m>, policy: Policy) -> Self {
        Self {
            name: name.into(),
            ctx,
            policy,
            monitor: None,
            gear: Gear::High,
            stats: Accum::default(),
        }
    }

    fn uses_gearbox(&self) -> bool {
        !matches!(self.policy, Policy::Plain)
    }

    fn result(&self) -> LaneResult {
        let s = &self.stats;
        let mut kl = s.kl.clone();
        kl.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            kl.get(((kl.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let n = s.n.max(1) as f64;
        let g = s.gear_positions.iter().sum::<usize>().max(1) as f64;
        LaneResult {
            name: self.name.clone(),
            policy: match &self.policy {
                Policy::Plain => "plain".into(),
                Policy::Fixed(g) => g.to_string(),
                Policy::Auto(_) => "auto".into(),
                Policy::Sequence(kind, _) => kind.clone(),
            },
            thresholds_bits: self.monitor.as_ref().map(|m| m.thresholds()),
            positions: s.n,
            kl_mean: kl.iter().sum::<f64>() / n,
            kl_p99: pick(0.99),
            kl_max: kl.last().copied().unwrap_or(0.0),
            top1_agreement: s.top1 as f64 / n,
            perplexity: (s.nll / n).exp(),
            mean_entropy_bits: s.entropy_sum / n,
            gear_fraction: s.gear_positions.map(|c| c as f64 / g),
            shifts: s.shifts,
            decode_tokens_per_s: if s.decode_s > 0.0 {
                s.decodes as f64 / s.decode_s
            } else {
                0.0
            },
            kl_per_position: s.kl.clone(),
        }
    }
}

/// Natural-log softmax of `logits` into `out` (f64 accumulation); false if any is not finite.
fn log_softmax(logits: &[f32], out: &mut Vec<f64>) -> bool {
    out.clear();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return false;
    }
    let mut sum = 0.0f64;
    for &l in logits {
        if !l.is_finite() {
            return false;
        }
        sum += (l as f64 - max).exp();
    }
    let lse = max + sum.ln();
    out.extend(logits.iter().map(|&l| l as f64 - lse));
    true
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// KL(ref ‖ cand) in nats from two log-softmax vectors.
fn kl(reference: &[f64], cand: &[f64]) -> f64 {
    reference
        .iter()
        .zip(cand)
        .map(|(&r, &c)| if r > -80.0 { r.exp() * (r - c) } else { 0.0 })
        .sum::<f64>()
        .max(0.0)
}

/// Entropy in bits from a log-softmax vector.
fn entropy_bits(lp: &[f64]) -> f64 {
    -lp.iter().map(|&l| l.exp() * l).sum::<f64>() / std::f64::consts::LN_2
}

/// Settings of one evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Tokens per window; each window starts with an empty KV cache.
    pub window: usize,
    /// Leading tokens of each window decoded as a prompt (not scored): at the lane's gear for
    /// fixed lanes, at high for auto lanes.
    pub prompt: usize,
    /// Stop after this many scored positions per lane.
    pub max_positions: usize,
}

/// Runs every lane over `tokens` (lane 0 is the reference). `gearbox` serves the lanes whose
/// policy is not [`Policy::Plain`]; `progress` gets (positions done, total).
pub fn evaluate(
    lanes: &mut [Lane<'_>],
    mut gearbox: Option<&mut Gearbox<'_>>,
    tokens: &[Token],
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<LaneResult>> {
    if opts.prompt == 0 || opts.window <= opts.prompt + 1 {
        return Err(Error::InvalidParam(
            "the window must be longer than its prompt + 1".into(),
        ));
    }
    if lanes.iter().any(Lane::uses_gearbox) && gearbox.is_none() {
        return Err(Error::InvalidParam("gear lanes need a gearbox".into()));
    }
    let per_window = opts.window - opts.prompt;
    let total = opts
        .max_positions
        .min(tokens.len() / opts.window * per_window);
    if total == 0 {
        return Err(Error::InvalidParam(format!(
            "the text has {} tokens, fewer than one window of {}",
            tokens.len(),
            opts.window
        )));
    }
    let model = lanes[0].ctx.model();
    let n_vocab = model.n_vocab();
    let mut reference = Vec::with_capacity(n_vocab);
    let mut lp = Vec::with_capacity(n_vocab);
    let mut done = 0usize;
    for win in tokens.chunks_exact(opts.window) {
        if done >= total {
            break;
        }
        let (prompt, rest) = win.split_at(opts.prompt);
        let prompt_text: String = prompt
            .iter()
            .map(|&t| String::from_utf8_lossy(&model.token_bytes(t, false)).into_owned())
            .collect();
        let cold = classifier::classify(&prompt_text).gear;
        // Prompt at the high gear, then the first gear from the prompt's last distribution.
        for lane in lanes.iter_mut() {
            lane.ctx.clear();
            // A fixed lane is the tier as a static model: its prompt runs at its gear too.
            // An auto lane runs its prompt at high, as generation does.
            let prompt_gear = match &lane.policy {
                Policy::Fixed(g) => *g,
                _ => Gear::High,
            };
            if lane.uses_gearbox() {
                gearbox
                    .as_deref_mut()
                    .expect("checked")
                    .shift(&lane.ctx, prompt_gear);
            }
            lane.ctx.decode(prompt)?;
            lane.monitor = match &lane.policy {
                Policy::Auto(cfg) => Some(Monitor::new(cfg.clone(), n_vocab, cold)),
                _ => None,
            };
            lane.gear = match &lane.policy {
                Policy::Plain => Gear::High,
                Policy::Fixed(g) => *g,
                Policy::Auto(_) => cold,
                Policy::Sequence(..) => Gear::High,
            };
            if !log_softmax(lane.ctx.logits()?, &mut lp) {
                return Err(Error::NanLogits(0));
            }
            if let Some(m) = lane.monitor.as_mut() {
                lane.gear = m.update(entropy_bits(&lp)).0;
            }
        }
        // Teacher-forced single-token decodes; position t predicts rest[t + 1].
        for t in 0..rest.len() - 1 {
            if done >= total {
                break;
            }
            for (k, lane) in lanes.iter_mut().enumerate() {
                if let Policy::Sequence(_, seq) = &lane.policy {
                    lane.gear = seq.get(done).copied().unwrap_or(Gear::High);
                }
                if let (true, Some(gb)) = (lane.uses_gearbox(), gearbox.as_deref_mut()) {
                    if gb.gear() != lane.gear {
                        gb.shift(&lane.ctx, lane.gear);
                    }
                }
                let t0 = Instant::now();
                lane.ctx.decode(&[rest[t]])?;
                let logits = lane.ctx.logits()?;
                lane.stats.decode_s += t0.elapsed().as_secs_f64();
                lane.stats.decodes += 1;
                if !log_softmax(logits, &mut lp) {
                    return Err(Error::NanLogits(done));
                }
                if k == 0 {
                    reference.clone_from(&lp);
                }
                let (used, gear) = (lane.uses_gearbox(), lane.gear);
                let s = &mut lane.stats;
                s.kl.push(kl(&reference, &lp));
                s.top1 += usize::from(argmax(&lp) == argmax(&reference));
                s.nll -= lp[rest[t + 1] as usize];
                s.n += 1;
                s.gear_positions[gear as usize] += usize::from(used);
                let h = entropy_bits(&lp);
                s.entropy_sum += h;
                if let Some(m) = lane.monitor.as_mut() {
                    let next = m.update(h).0;
                    s.shifts += usize::from(next != lane.gear);
                    lane.gear = next;
                }
            }
            done += 1;
            progress(done, total);
        }
    }
    if let Some(gb) = gearbox {
        gb.shift(&lanes[0].ctx, Gear::High);
    }
    Ok(lanes.iter().map(Lane::result).collect())
}

/// Gear sequences of two control routers with the fractions `fraction` (low, mid, high) over
/// `n` positions, to tell whether entropy routing picks the right positions:
/// - *random*: those fractions at positions drawn at random (seeded);
/// - *oracle*: knowing each tier's KL at every position (`kl_low`, `kl_mid`, from the fixed
///   lanes in lockstep), low where low's KL is smallest, then mid where mid's KL is smallest
///   among the rest, high elsewhere: the cheapest tier whose KL stays under a budget, with the
///   budgets set so the fractions match.
pub fn routers(
    fraction: [f64; 3],
    kl_low: &[f64],
    kl_mid: &[f64],
    seed: u64,
) -> (Vec<Gear>, Vec<Gear>) {
    let n = kl_low.len().min(kl_mid.len());
    let n_low = (fraction[0] * n as f64).round() as usize;
    let n_mid = ((fraction[1] * n as f64).round() as usize).min(n - n_low.min(n));
    let n_low = n_low.min(n);
    // Random: the exact counts, shuffled (Fisher-Yates over a xorshift64* stream).
    let mut random: Vec<Gear> = std::iter::repeat_n(Gear::Low, n_low)
        .chain(std::iter::repeat_n(Gear::Mid, n_mid))
        .chain(std::iter::repeat_n(Gear::High, n - n_low - n_mid))
        .collect();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..n).rev() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let j = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
        random.swap(i, j);
    }
    // Oracle: by rank of each tier's own KL.
    let mut oracle = vec![Gear::High; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| kl_low[a].total_cmp(&kl_low[b]));
    for &i in &order[..n_low] {
        oracle[i] = Gear::Low;
    }
    let mut rest: Vec<usize> = order[n_low..].to_vec();
    rest.sort_by(|&a, &b| kl_mid[a].total_cmp(&kl_mid[b]));
    for &i in &rest[..n_mid] {
        oracle[i] = Gear::Mid;
    }
    (random, oracle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_routers_keep_the_fractions_and_the_oracle_picks_the_easy_positions() {
        use super::{routers, Gear};
        let kl_low = [0.9, 0.1, 0.5, 0.05, 0.7, 0.3, 0.2, 0.8];
        let kl_mid = [0.3, 0.05, 0.2, 0.01, 0.1, 0.15, 0.02, 0.4];
        let (random, oracle) = routers([0.25, 0.25, 0.5], &kl_low, &kl_mid, 7);
        let count = |v: &[Gear], g| v.iter().filter(|&&x| x == g).count();
        for v in [&random, &oracle] {
            assert_eq!((count(v, Gear::Low), count(v, Gear::Mid)), (2, 2));
        }
        // Low at the two smallest low KLs (positions 3, 1), mid at the two smallest mid KLs of
        // the rest (6, 4).
        assert_eq!(oracle[3], Gear::Low);
        assert_eq!(oracle[1], Gear::Low);
        assert_eq!(oracle[6], Gear::Mid);
        assert_eq!(oracle[4], Gear::Mid);
        // Seeded: the same seed gives the same draw, another seed another one.
        assert_eq!(routers([0.25, 0.25, 0.5], &kl_low, &kl_mid, 7).0, random);
        assert_ne!(
            (1..20)
                .map(|s| routers([0.25, 0.25, 0.5], &kl_low, &kl_mid, s).0)
                .filter(|r| *r != random)
                .count(),
            0
        );
    }

    use super::*;

    #[test]
    fn kl_is_zero_for_equal_and_positive_for_different_distributions() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        assert!(log_softmax(&[1.0, 2.0, 3.0], &mut a));
        assert!(log_softmax(&[1.0, 2.0, 3.0], &mut b));
        assert_eq!(kl(&a, &b), 0.0);
        assert!(log_softmax(&[3.0, 2.0, 1.0], &mut b));
        // KL([.090,.245,.665] ‖ reversed) = (.665 - .090) · ln(.665/.090) ≈ 1.1504 nats.
        assert!((kl(&a, &b) - 1.1504).abs() < 1e-3, "{}", kl(&a, &b));
        assert!(!log_softmax(&[1.0, f32::NAN], &mut b));
    }

    #[test]
    fn entropy_of_uniform_is_log2_n() {
        let mut a = Vec::new();
        assert!(log_softmax(&[0.5; 8], &mut a));
        assert!((entropy_bits(&a) - 3.0).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
    }
}
