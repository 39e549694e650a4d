//! The one decode loop: the prompt at the high gear, then steps of a strategy until a stop —
//! one token per step (plain, [`Plain`]), or drafts at the low gear verified at the high gear
//! ([`super::lossless`]) — through one emitter and one outcome builder.

use std::rc::Rc;
use std::time::Instant;

use super::driver::GearDriver;
use super::emit::{Emitter, Telemetry, Timing};
use super::logprobs;
use super::lossless::{LosslessParams, LosslessStep};
use super::{
    per_s, EntropyPlace, EntropySource, GearControl, GearStats, GenerateParams, Outcome,
    StopReason, TokenEvent,
};
use crate::error::{param, Error, Result};
use crate::gearbox::{Gear, Gearbox, PerGear};
use crate::kernels;
use crate::llama::backend_entropy::Probe;
use crate::llama::{Context, Sampler, Token};

/// What one generation shares between its steps: the context, the gearbox and the driver that
/// shifts it, the emitter, the pass tallies and the caller's callback.
pub(crate) struct Run<'r, 'c, 'g, 'p> {
    pub ctx: &'r mut Context<'c>,
    pub gearbox: Option<&'r mut Gearbox<'g>>,
    /// Policy and shift tallies (None: no gearbox).
    pub driver: Option<GearDriver>,
    pub out: Emitter<'p>,
    pub params: &'p GenerateParams,
    /// Forward passes after the prompt per gear, and their time (ms).
    pub passes: [usize; 3],
    pub gear_ms: [f64; 3],
    on_token: &'r mut dyn FnMut(&TokenEvent<'_>),
}

impl Run<'_, '_, '_, '_> {
    /// The gearbox's gear (None: no gearbox).
    pub fn gear(&self) -> Option<Gear> {
        self.gearbox.as_ref().map(|g| g.gear())
    }

    /// Shifts to `g` if the gearbox is elsewhere, counting the shift; its time in µs (0: none).
    pub fn shift(&mut self, g: Gear) -> f64 {
        let Some(gb) = self.gearbox.as_mut() else {
            return 0.0;
        };
        if gb.gear() == g {
            return 0.0;
        }
        let us = gb.shift(self.ctx, g).as_secs_f64() * 1e6;
        if let Some(d) = self.driver.as_mut() {
            d.shifted(us);
        }
        us
    }

    /// Sets the gear without counting a shift (before the prompt, and the first gear after it).
    pub fn set_gear(&mut self, g: Gear) {
        if let Some(gb) = self.gearbox.as_mut() {
            gb.shift(self.ctx, g);
        }
    }

    /// Emits `tok` (see [`Emitter::emit`]).
    pub fn emit(
        &mut self,
        tok: Token,
        entropy: f32,
        n_past_after: u32,
        tele: Telemetry<'_>,
    ) -> Option<StopReason> {
        self.out.emit(
            self.ctx,
            tok,
            entropy,
            n_past_after,
            tele,
            &mut self.on_token,
        )
    }
}

/// A failed decode is an interruption when the abort flag stopped it, an error otherwise.
pub(crate) fn interrupted(e: Error, ctx: &Context<'_>) -> Result<()> {
    if ctx.aborted() {
        Ok(())
    } else {
        Err(e)
    }
}

/// The strategies: what happens before the prompt, after it, and at every later step.
enum Step<'p> {
    Plain(Plain),
    Lossless(Box<LosslessStep<'p>>),
}

/// Generates from `prompt`, decoded after what the context already holds, calling `on_token`
/// for every token: one token per step, or with `lossless`, drafts verified at the high gear
/// (which needs `gears`; its monitor and fixed gear are not used).
pub fn run(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    params: &GenerateParams,
    gears: Option<GearControl<'_, '_>>,
    lossless: Option<&LosslessParams>,
    mut on_token: impl FnMut(&TokenEvent<'_>),
) -> Result<Outcome> {
    let r = run_steps(ctx, prompt, params, gears, lossless, &mut on_token);
    // A backend chain and strict mode's kernels end with the generation, also on errors.
    ctx.set_width_invariant(false);
    ctx.detach_sampler();
    r
}

fn run_steps(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    params: &GenerateParams,
    gears: Option<GearControl<'_, '_>>,
    lossless: Option<&LosslessParams>,
    on_token: &mut dyn FnMut(&TokenEvent<'_>),
) -> Result<Outcome> {
    super::check_prompt(ctx, prompt)?;
    let (gearbox, monitor, fixed, calibrate) = match gears {
        Some(g) => (Some(g.gearbox), g.monitor, g.fixed, g.calibrate),
        None => (None, None, Gear::High, None),
    };
    if lossless.is_some() && gearbox.is_none() {
        return Err(Error::InvalidParam(
            "lossless mode needs tiers: a low gear to draft with".into(),
        ));
    }
    let driver = match (&gearbox, lossless) {
        (None, _) => None,
        // Lossless: every token is the high gear's; the driver only counts shifts.
        (Some(_), Some(_)) => Some(GearDriver::new(None, Gear::High)),
        (Some(_), None) => Some(GearDriver::new(monitor, fixed)),
    };
    // Calibration reads every prompt position's entropy (auto mode's plain loop only).
    let calibrate = calibrate
        .filter(|_| lossless.is_none() && driver.as_ref().is_some_and(|d| d.monitor.is_some()));
    let mut r = Run {
        ctx,
        gearbox,
        driver,
        out: Emitter::new(params),
        params,
        passes: [0; 3],
        gear_ms: [0.0; 3],
        on_token,
    };
    r.ctx.detach_sampler();
    let mut step = match lossless {
        None => Step::Plain(Plain::new(&mut r, calibrate.is_some())?),
        Some(lp) => Step::Lossless(Box::new(LosslessStep::new(&mut r, prompt, lp)?)),
    };

    // The prompt runs at the high gear: its KV cache serves every later token.
    match &step {
        Step::Plain(_) => r.set_gear(Gear::High),
        Step::Lossless(_) => {
            r.shift(Gear::High);
        }
    }
    let t0 = Instant::now();
    let mut stop = None;
    let prefill = match calibrate {
        Some(_) => r.ctx.decode_with_entropies(prompt),
        None => r.ctx.decode(prompt).map(|_| Vec::new()),
    };
    match prefill {
        Err(e) => {
            interrupted(e, r.ctx)?;
            stop = Some(StopReason::Interrupted);
        }
        Ok(h) => {
            if let (Some((keep_low, keep_high)), Some(m)) = (
                calibrate,
                r.driver.as_mut().and_then(|d| d.monitor.as_mut()),
            ) {
                let h: Vec<f64> = h.iter().map(|&x| x as f64).collect();
                m.calibrate(&h, keep_low, keep_high);
            }
        }
    }
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut first = true;
    while stop.is_none() {
        if r.ctx.aborted() {
            stop = Some(StopReason::Interrupted);
            break;
        }
        let stepped = match (&mut step, first) {
            (Step::Plain(s), true) => s.first(&mut r),
            (Step::Plain(s), false) => s.next(&mut r),
            (Step::Lossless(s), true) => s.first(&mut r),
            (Step::Lossless(s), false) => s.next(&mut r),
        };
        // Whatever failed inside a step after an abort (a decode the abort stopped, or what
        // read its missing output) is the interruption, reported as one with the totals.
        stop = match stepped {
            Err(_) if r.ctx.aborted() => Some(StopReason::Interrupted),
            s => s?,
        };
        first = false;
    }
    let stop_reason = stop.expect("the loop ends with a reason");
    let eval_ms = t1.elapsed().as_secs_f64() * 1e3;
    let (eval_count, entropy_on, gear_stats, lossless_stats) = match step {
        Step::Plain(s) => {
            let stats = s.gear_stats(&r);
            (s.eval_count, s.entropy_on(), stats, None)
        }
        Step::Lossless(s) => {
            let (gears, st) = s.finish(&r, eval_ms);
            (
                r.out.n_gen().saturating_sub(1),
                EntropyPlace::Host,
                Some(gears),
                Some(st),
            )
        }
    };
    let Run {
        out, mut on_token, ..
    } = r;
    Ok(out.finish(
        stop_reason,
        Timing {
            prompt_tokens: prompt.len(),
            prompt_ms,
            eval_count,
            eval_ms,
        },
        entropy_on,
        gear_stats,
        lossless_stats,
        &mut on_token,
    ))
}

/// How plain steps draw tokens and read entropy: a host chain over host logits, or a chain
/// attached to the context whose probe reports the entropy.
enum Draw {
    Host(Sampler),
    Backend(Rc<Probe>),
}

/// One token per step: sample, let the driver pick the next gear, emit, decode the token.
struct Plain {
    draw: Draw,
    /// The gear of the pass the next token is drawn from (the prompt's: high).
    used_gear: Option<Gear>,
    last: Token,
    eval_count: usize,
}

impl Plain {
    fn new(r: &mut Run<'_, '_, '_, '_>, calibrating: bool) -> Result<Self> {
        let model = r.ctx.model();
        if r.gearbox.is_some() && model.shifts_need_graph_rebuild() && !r.ctx.rebuilds_graphs() {
            return Err(Error::InvalidParam(
                "shifting gears on this GPU backend needs a context made with rebuild_graphs \
                 (it cannot keep a captured graph per gear, so llama.cpp's reused graphs would \
                 keep the old weights)"
                    .into(),
            ));
        }
        let params = r.params;
        let backend = match params.entropy {
            // Log-probabilities read the full logits on the host.
            _ if params.top_logprobs.is_some() => false,
            EntropySource::Host => false,
            EntropySource::Auto => model.offloaded() && !calibrating,
            EntropySource::Backend if calibrating => {
                return Err(Error::bad_param(
                    param::CALIBRATE,
                    "reads the logits of every prompt position on the host: it needs entropy \
                     computed on the host (host or auto)",
                ))
            }
            EntropySource::Backend => true,
        };
        // Host: a plain chain over host logits. Backend: the chain, between the entropy probe's
        // head and tail, attached to the context so it runs inside the graph.
        let draw = if backend {
            let (s, probe) = Sampler::with_entropy_probe(&params.sampling, model, r.ctx.n_ctx())?;
            r.ctx.attach_sampler(s)?;
            Draw::Backend(probe)
        } else {
            Draw::Host(Sampler::new(&params.sampling, model, r.ctx.n_ctx())?)
        };
        Ok(Self {
            draw,
            used_gear: r.gearbox.as_ref().map(|_| Gear::High),
            last: -1,
            eval_count: 0,
        })
    }

    /// After the prompt: the cold-start gear (auto) or the fixed gear, then the first token.
    fn first(&mut self, r: &mut Run<'_, '_, '_, '_>) -> Result<Option<StopReason>> {
        if let Some(g) = r.driver.as_ref().map(GearDriver::first_gear) {
            r.set_gear(g);
        }
        self.draw_emit(r)
    }

    /// Decodes the last token at the current gear, then draws and emits the next.
    fn next(&mut self, r: &mut Run<'_, '_, '_, '_>) -> Result<Option<StopReason>> {
        let g = r.gear();
        let td = Instant::now();
        if let Err(e) = r.ctx.decode(&[self.last]) {
            interrupted(e, r.ctx)?;
            return Ok(Some(StopReason::Interrupted));
        }
        self.eval_count += 1;
        if let Some(g) = g {
            r.passes[g as usize] += 1;
            r.gear_ms[g as usize] += td.elapsed().as_secs_f64() * 1e3;
        }
        self.used_gear = g;
        self.draw_emit(r)
    }

    fn draw_emit(&mut self, r: &mut Run<'_, '_, '_, '_>) -> Result<Option<StopReason>> {
        let n_gen = r.out.n_gen();
        let mut logprobs = None;
        let (tok, entropy) = match &mut self.draw {
            Draw::Host(s) => {
                let (entropy, n_bad) = kernels::entropy_bits(r.ctx.logits()?);
                if n_bad > 0 {
                    return Err(Error::NanLogits(n_gen));
                }
                let tok = s.sample(r.ctx);
                if let Some(n) = r.params.top_logprobs {
                    logprobs = Some(logprobs::of(r.ctx.model(), r.ctx.logits()?, tok, n));
                }
                (tok, entropy)
            }
            Draw::Backend(p) => {
                let tok = r.ctx.sample_attached()?;
                let entropy = match r.ctx.sampled_probs() {
                    Some(v) => v[0],
                    None => p.host_bits(),
                };
                if !entropy.is_finite() {
                    return Err(Error::NanLogits(n_gen));
                }
                (tok, entropy)
            }
        };
        if r.ctx.model().is_eog(tok) {
            return Ok(Some(StopReason::Eos));
        }
        let mut tele = Telemetry {
            gear: self.used_gear,
            logprobs: logprobs.as_ref(),
            ..Default::default()
        };
        if let (Some(used), Some(d)) = (self.used_gear, r.driver.as_mut()) {
            let (next, why) = d.step(used, entropy as f64);
            tele.swap_us = r.shift(next);
            tele.next_gear = Some((next, why));
        }
        self.last = tok;
        Ok(r.emit(tok, entropy, r.ctx.n_past(), tele))
    }

    fn entropy_on(&self) -> EntropyPlace {
        match &self.draw {
            Draw::Backend(p) if p.on_backend() => EntropyPlace::Backend,
            _ => EntropyPlace::Host,
        }
    }

    fn gear_stats(&self, r: &Run<'_, '_, '_, '_>) -> Option<GearStats> {
        let (gb, d) = (r.gearbox.as_ref()?, r.driver.as_ref()?);
        let n_gen = r.out.n_gen();
        let tokens_at = d.tokens();
        let (shifts, swap_us_mean, swap_us_max) = d.shifts();
        let (passes, gear_ms) = (r.passes, r.gear_ms);
        Some(GearStats {
            mode: if d.monitor.is_some() {
                "auto".into()
            } else {
                d.fixed.to_string()
            },
            passes: PerGear(passes),
            tokens: PerGear(tokens_at),
            token_fraction: PerGear(tokens_at.map(|n| {
                if n_gen > 0 {
                    n as f64 / n_gen as f64
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
            tiers: gb.report().clone(),
        })
    }
}
