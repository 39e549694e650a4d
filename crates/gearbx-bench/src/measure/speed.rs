//! Speed side by side: fixed-gear generation against the static llama.cpp model of the same
//! types, auto mode against the harmonic mix predicted from its own gear fractions, and prefill
//! with and without the gearbox; every figure a ratio of runs interleaved round by round.

use serde::Serialize;

use gearbx::engine::{self, GearControl, GenerateParams, Outcome};
use gearbx::error::Result;
use gearbx::gearbox::{Gear, Gearbox};
use gearbx::llama::{Context, Token};
use gearbx::monitor::{Monitor, MonitorConfig};

/// Median and range of one series.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

impl Series {
    pub fn of(values: Vec<f64>) -> Self {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            values,
        }
    }
}

/// One gear against its static baseline.
#[derive(Debug, Clone, Serialize)]
pub struct GearVsStatic {
    pub gear: Gear,
    pub gear_tokens_per_s: Series,
    pub static_tokens_per_s: Series,
    /// Per-round ratios gear / static.
    pub ratio: Series,
}

/// Auto mode against the mix its own gear fractions predict.
#[derive(Debug, Clone, Serialize)]
pub struct AutoVsMix {
    pub auto_tokens_per_s: Series,
    /// 1 / Σ fᵢ/tᵢ with fᵢ the round's pass fractions and tᵢ the same round's fixed-gear rates.
    pub predicted_tokens_per_s: Series,
    pub ratio: Series,
    pub pass_fraction: [f64; 3],
    pub shifts_per_round: f64,
}

/// Prefill with the gearbox (at high) against the plain model.
#[derive(Debug, Clone, Serialize)]
pub struct Prefill {
    pub prompt_tokens: usize,
    pub gearbox_tokens_per_s: Series,
    pub plain_tokens_per_s: Series,
    pub ratio: Series,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub rounds: usize,
    pub tokens_per_round: usize,
    pub gears: Vec<GearVsStatic>,
    pub auto: AutoVsMix,
    pub prefill: Prefill,
}

/// What to run: contexts of the gearbox's model, of a plain (no gearbox) source model, and of
/// the static model of each gear (None where the gear's types are the source's own).
pub struct SpeedSetup<'a, 'm, 's> {
    pub gearbox: &'a mut Gearbox<'m>,
    pub gear_ctx: &'a mut Context<'m>,
    pub plain_ctx: &'a mut Context<'s>,
    pub static_ctx: [Option<&'a mut Context<'s>>; 3],
    pub monitor: MonitorConfig,
    pub prompt: Vec<Token>,
    pub prefill: Vec<Token>,
}

fn run(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    n: usize,
    gears: Option<GearControl<'_, '_>>,
) -> Result<Outcome> {
    ctx.clear();
    engine::generate(ctx, prompt, &GenerateParams::greedy(n, true), gears, |_| {})
}

fn prefill_rate(ctx: &mut Context<'_>, prompt: &[Token]) -> Result<f64> {
    ctx.clear();
    let t = std::time::Instant::now();
    ctx.decode(prompt)?;
    ctx.logits()?;
    Ok(prompt.len() as f64 / t.elapsed().as_secs_f64())
}

/// Runs `rounds` interleaved rounds of `n` generated tokens each.
pub fn measure(
    s: SpeedSetup<'_, '_, '_>,
    rounds: usize,
    n: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<SpeedReport> {
    let n_vocab = s.plain_ctx.model().n_vocab();
    let mut gear_tps: [Vec<f64>; 3] = Default::default();
    let mut static_tps: [Vec<f64>; 3] = Default::default();
    let (mut auto_tps, mut predicted) = (Vec::new(), Vec::new());
    let mut passes = [0usize; 3];
    let mut shifts = 0usize;
    let (mut pre_gb, mut pre_plain) = (Vec::new(), Vec::new());
    let SpeedSetup {
        gearbox,
        gear_ctx,
        plain_ctx,
        mut static_ctx,
        monitor,
        prompt,
        prefill,
    } = s;
    for r in 0..rounds {
        for g in Gear::ALL {
            let o = run(
                gear_ctx,
                &prompt,
                n,
                Some(GearControl {
                    gearbox,
                    monitor: None,
                    fixed: g,
                    calibrate: None,
                }),
            )?;
            gear_tps[g as usize].push(o.decode_tokens_per_s);
            let base = match static_ctx[g as usize].as_deref_mut() {
                Some(c) => c,
                None => &mut *plain_ctx,
            };
            static_tps[g as usize].push(run(base, &prompt, n, None)?.decode_tokens_per_s);
        }
        let o = run(
            gear_ctx,
            &prompt,
            n,
            Some(GearControl {
                gearbox,
                monitor: Some(Monitor::new(monitor.clone(), n_vocab, Gear::High)),
                fixed: Gear::High,
                calibrate: None,
            }),
        )?;
        let gs = o.gears.as_ref().expect("auto run has gear stats");
        let total: usize = gs.passes.iter().sum();
        let mix: f64 = (0..3)
            .map(|i| gs.passes[i] as f64 / total.max(1) as f64 / gear_tps[i][r])
            .sum();
        auto_tps.push(o.decode_tokens_per_s);
        predicted.push(1.0 / mix);
        for (p, n) in passes.iter_mut().zip(gs.passes.0) {
            *p += n;
        }
        shifts += gs.shifts;
        gearbox.shift(gear_ctx, Gear::High);
        pre_gb.push(prefill_rate(gear_ctx, &prefill)?);
        pre_plain.push(prefill_rate(plain_ctx, &prefill)?);
        progress(r + 1, rounds);
    }
    let ratio = |a: &[f64], b: &[f64]| Series::of(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let all: usize = passes.iter().sum::<usize>().max(1);
    Ok(SpeedReport {
        rounds,
        tokens_per_round: n,
        gears: Gear::ALL
            .iter()
            .map(|&g| GearVsStatic {
                gear: g,
                ratio: ratio(&gear_tps[g as usize], &static_tps[g as usize]),
                gear_tokens_per_s: Series::of(gear_tps[g as usize].clone()),
                static_tokens_per_s: Series::of(static_tps[g as usize].clone()),
            })
            .collect(),
        auto: AutoVsMix {
            ratio: ratio(&auto_tps, &predicted),
            auto_tokens_per_s: Series::of(auto_tps),
            predicted_tokens_per_s: Series::of(predicted),
            pass_fraction: passes.map(|p| p as f64 / all as f64),
            shifts_per_round: shifts as f64 / rounds as f64,
        },
        prefill: Prefill {
            prompt_tokens: prefill.len(),
            ratio: ratio(&pre_gb, &pre_plain),
            gearbox_tokens_per_s: Series::of(pre_gb),
            plain_tokens_per_s: Series::of(pre_plain),
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_median_and_range() {
        let s = super::Series::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(super::Series::of(vec![5.0, 1.0, 3.0]).median, 3.0);
    }
}
