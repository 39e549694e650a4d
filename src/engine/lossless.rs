//! Lossless mode: entropy-gated self-speculative decoding. Draft a few tokens at the low gear,
//! verify them all at the high gear in one batched forward pass, keep the longest prefix the
//! high gear agrees with plus the high gear's own next token, and drop the rest from the KV
//! cache, which therefore only ever holds high-gear state for accepted tokens. A controller
//! ([`super::drafting`]) drafts only while it pays; otherwise the loop runs plain high-gear steps.
//!
//! Two guarantees ([`Guarantee`]): *strict* (greedy: every token is what single-token decoding
//! at the high gear emits; verification batches are capped at the widest one whose logits are
//! bit-identical to single-token decoding, probed per context) and *verified* (every token is
//! the high gear's choice from a verification pass of one declared width, as llama.cpp's and
//! vLLM's speculative decoding give; where batched kernels round differently from single-token
//! ones, a near-tie can flip). With temperature, drafts are drawn from the low gear's shaped
//! distribution and checked with the speculative-sampling rule ([`super::speculative`]): the
//! output is distributed as the high gear's sampling, though not the same draws as a plain run
//! with the same seed.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::decode::{interrupted, Run};
use super::drafting::{DraftController, DraftEstimates, Next};
use super::driver::GearDriver;
use super::emit::Telemetry;
use super::speculative::{self, Rng};
use super::{per_s, GearControl, GearStats, GenerateParams, Outcome, StopReason, TokenEvent};
use crate::error::{param, Error, Result};
use crate::gearbox::{Gear, Gearbox, PerGear};
use crate::kernels;
use crate::llama::backend_entropy::Probe;
use crate::llama::{Context, Model, Sampler, Token};
use crate::monitor::REF_VOCAB;

/// Every token lossless mode emits is the high gear's.
const HIGH: Telemetry<'static> = Telemetry {
    gear: Some(Gear::High),
    next_gear: None,
    swap_us: 0.0,
    logprobs: None,
};

/// What lossless mode promises about its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Guarantee {
    /// Every token is what single-token decoding at the high gear emits (greedy): batches are
    /// capped where they would round differently, and there is no drafting where none is exact.
    Strict,
    /// Every token is the high gear's choice from a verification pass of the declared width
    /// (`draft_max + 1`); plain steps are single-token decoding.
    Verified,
}

impl Guarantee {
    /// The faster guarantee on this model: strict on the CPU (its kernels are exact at the
    /// widths drafting uses, so strict loses nothing), verified when layers run on a GPU (no
    /// CUDA verification width rounds as single-token decoding does, so strict cannot draft).
    pub fn default_for(model: &Model) -> Self {
        if model.offloaded() {
            Guarantee::Verified
        } else {
            Guarantee::Strict
        }
    }
}

impl std::str::FromStr for Guarantee {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Ok(Self::Strict),
            "verified" => Ok(Self::Verified),
            _ => Err(format!("unknown guarantee {s:?}: use strict or verified")),
        }
    }
}

impl std::fmt::Display for Guarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guarantee::Strict => "strict",
            Guarantee::Verified => "verified",
        })
    }
}

/// Drafting settings.
#[derive(Debug, Clone)]
pub struct LosslessParams {
    /// Longest draft (tokens) per verification; the verified guarantee verifies
    /// `draft_max + 1` positions in every pass.
    pub draft_max: usize,
    /// Drafting stops after a token whose low-gear entropy exceeds this (bits at a 32768
    /// vocabulary, scaled to the model's).
    pub draft_stop_bits: f64,
    /// No draft at all when the high gear's last entropy exceeds this (same scale): the next
    /// token is decoded at the high gear alone.
    pub gate_bits: f64,
    /// None: [`Guarantee::default_for`] the model.
    pub guarantee: Option<Guarantee>,
    /// Draft only while the measured costs and acceptance say it pays ([`super::drafting`]);
    /// false drafts whenever the entropy gate allows (for measuring what drafting costs).
    pub adaptive: bool,
    /// Test hook: sleeps added to every draft step and to every high-gear pass, to make one
    /// of them expensive.
    #[doc(hidden)]
    pub penalty: StepPenalty,
    /// Measurement hook: acceptance replayed from a real model's recorded verifications
    /// (random-weight models of real shapes accept nothing on their own); the entropy gate
    /// and draft stop are off, since the recorded draft lengths already carry them.
    #[doc(hidden)]
    pub replay: Option<Arc<Mutex<AcceptanceReplay>>>,
}

/// Recorded verifications, (drafted, accepted) each, as a stream of per-draft-token outcomes:
/// a draft of any length is accepted as far as the stream's run of kept tokens goes.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct AcceptanceReplay {
    cycles: Vec<(usize, usize)>,
    /// Per draft token: kept or not, in recorded order.
    stream: Vec<bool>,
    pos: usize,
    at: usize,
}

impl AcceptanceReplay {
    /// None when no cycle drafted anything.
    pub fn new(cycles: &[(usize, usize)]) -> Option<Self> {
        let cycles: Vec<(usize, usize)> = cycles.iter().copied().filter(|c| c.0 > 0).collect();
        let mut stream = Vec::new();
        for &(k, j) in &cycles {
            stream.extend(std::iter::repeat_n(true, j.min(k)));
            if j < k {
                stream.push(false);
            }
        }
        (!stream.is_empty()).then_some(Self {
            cycles,
            stream,
            pos: 0,
            at: 0,
        })
    }

    /// The next recorded draft length.
    pub fn recorded_len(&self) -> usize {
        self.cycles[self.at % self.cycles.len()].0
    }

    /// How many of `k` drafted tokens are kept; advances past them (and the rejected one).
    pub fn accept(&mut self, k: usize) -> usize {
        self.at += 1;
        let mut j = 0;
        while j < k {
            let kept = self.stream[self.pos % self.stream.len()];
            self.pos += 1;
            if !kept {
                break;
            }
            j += 1;
        }
        j
    }
}

/// Test hook of [`LosslessParams`]: extra time per draft step and per high-gear pass.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StepPenalty {
    pub draft: Duration,
    pub high: Duration,
}

impl StepPenalty {
    fn pay(d: Duration) {
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

impl Default for LosslessParams {
    fn default() -> Self {
        Self {
            draft_max: 7,
            draft_stop_bits: 3.5,
            gate_bits: 5.0,
            guarantee: None,
            adaptive: true,
            penalty: StepPenalty::default(),
            replay: None,
        }
    }
}

/// What drafting did over one generation.
#[derive(Debug, Clone, Serialize)]
pub struct LosslessStats {
    /// The guarantee the tokens were generated under.
    pub guarantee: Guarantee,
    /// Batched high-gear passes that checked a draft.
    pub verifies: usize,
    /// High-gear passes without a draft (entropy gate, drafting not paying, or no room).
    pub plain_steps: usize,
    /// Draft tokens proposed by the low gear, and how many the high gear accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// accepted / drafted.
    pub acceptance_rate: f64,
    /// Accepted draft tokens per verification.
    pub mean_accepted_len: f64,
    /// Draft tokens per verification.
    pub drafts_per_verify: f64,
    /// Strict: the narrowest of the per-block widths, the widest verification batch whose
    /// logits equal single-token decoding bit for bit (probed per block of 256 KV positions;
    /// drafts there are capped at one less; 1: no drafting). Verified: the declared width of
    /// every verification pass.
    pub verify_width: usize,
    /// Time spent probing those widths, milliseconds (inside the loop's time).
    pub probe_ms: f64,
    /// Time drafting (low gear) and verifying (high gear, plain steps included), milliseconds.
    pub draft_ms: f64,
    pub verify_ms: f64,
    /// Times the controller stopped drafting because it did not pay.
    pub drafting_turned_off: usize,
    /// The controller's final estimates.
    pub estimates: DraftEstimates,
    /// Per verification: (drafted, accepted), for replaying acceptance at other shapes.
    pub cycles: Vec<(usize, usize)>,
    /// Every high-gear pass after the prompt: (width, tokens emitted from it), for re-scoring.
    #[serde(skip)]
    pub passes: Vec<(usize, usize)>,
}

impl LosslessStats {
    fn new(guarantee: Guarantee) -> Self {
        Self {
            guarantee,
            verifies: 0,
            plain_steps: 0,
            drafted: 0,
            accepted: 0,
            acceptance_rate: 0.0,
            mean_accepted_len: 0.0,
            drafts_per_verify: 0.0,
            verify_width: 1,
            probe_ms: 0.0,
            draft_ms: 0.0,
            verify_ms: 0.0,
            drafting_turned_off: 0,
            estimates: DraftEstimates::default(),
            cycles: Vec::new(),
            passes: Vec::new(),
        }
    }

    fn finish(&mut self) {
        let ratio = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        self.acceptance_rate = ratio(self.accepted, self.drafted);
        self.mean_accepted_len = ratio(self.accepted, self.verifies);
        self.drafts_per_verify = ratio(self.drafted, self.verifies);
    }
}

/// How tokens are chosen: the greedy chain itself, or shaped distributions and the
/// speculative-sampling rule.
enum Decider {
    Greedy(Sampler),
    Stochastic { shaper: Sampler, rng: Rng },
}

/// A draft chooser: a fork of the decider's chain (its penalty history included).
enum Drafter {
    Greedy(Sampler),
    /// The forked shaper, and the draft distribution of every drafted position.
    Stochastic(Sampler, Vec<Vec<(Token, f32)>>),
}

impl Decider {
    /// Records `t`, chosen elsewhere (a backend sampler), in the chain's history.
    fn record(&mut self, t: Token) {
        match self {
            Decider::Greedy(s) => s.accept(t),
            Decider::Stochastic { shaper, .. } => shaper.accept(t),
        }
    }

    /// The first token, from the prompt's last logits.
    fn first(&mut self, ctx: &Context<'_>) -> Result<Token> {
        Ok(match self {
            Decider::Greedy(s) => s.sample(ctx),
            Decider::Stochastic { shaper, rng } => {
                let p = shaper.distribution(ctx.logits()?);
                let t = speculative::draw(&p, rng);
                shaper.accept(t);
                t
            }
        })
    }

    fn drafter(&self) -> Result<Drafter> {
        Ok(match self {
            Decider::Greedy(s) => Drafter::Greedy(s.fork()?),
            Decider::Stochastic { shaper, .. } => Drafter::Stochastic(shaper.fork()?, Vec::new()),
        })
    }

    /// Draws the next draft token from the low gear's last logits.
    fn draft(&mut self, d: &mut Drafter, ctx: &Context<'_>) -> Result<Token> {
        Ok(match (d, self) {
            (Drafter::Greedy(f), _) => f.sample(ctx),
            (Drafter::Stochastic(f, qs), Decider::Stochastic { rng, .. }) => {
                let q = f.distribution(ctx.logits()?);
                let t = speculative::draw(&q, rng);
                f.accept(t);
                qs.push(q);
                t
            }
            (Drafter::Stochastic(..), Decider::Greedy(_)) => {
                unreachable!("drafter of another kind")
            }
        })
    }

    /// The high gear's token at verified output `i`, and whether it keeps `draft` (the draft
    /// token at that position, if any).
    fn verify(
        &mut self,
        d: Option<&Drafter>,
        ctx: &Context<'_>,
        i: usize,
        draft: Option<Token>,
    ) -> Result<(Token, bool)> {
        Ok(match self {
            Decider::Greedy(s) => {
                let t = s.sample_at(ctx, i);
                (t, draft == Some(t))
            }
            Decider::Stochastic { shaper, rng } => {
                let p = shaper.distribution(ctx.logits_at(i)?);
                let (t, kept) = match (draft, d) {
                    (Some(dt), Some(Drafter::Stochastic(_, qs))) => {
                        speculative::verify(&p, &qs[i], dt, rng)
                    }
                    _ => (speculative::draw(&p, rng), false),
                };
                shaper.accept(t);
                (t, kept)
            }
        })
    }
}

/// llama.cpp pads the number of KV cells a pass attends over to a multiple of this (at least
/// 256; `llama_kv_cache::get_n_kv`), and picks attention kernels and thread splits by that
/// length (on CPU with 2 threads, single-query attention over 512 cells rounds differently from
/// a batched one, over 256 it does not). So exactness is probed per block of KV_PAD positions,
/// and a verification batch never crosses a block.
const KV_PAD: u32 = 256;

/// Batch widths tried by [`exact_verify_width`], widest first.
const WIDTHS: [usize; 6] = [16, 9, 8, 4, 3, 2];

/// The widest batch whose logits are bit-identical to decoding the same tokens one at a
/// time, on this context at the current gear. llama.cpp picks kernels by batch width (on CPU,
/// repacked 4-bit weights switch from a per-column kernel to a blocked one at 4 columns, with
/// different rounding), and a verification that rounds differently from the plain loop could
/// flip a near-tie and change the output. Kernel choice depends on shapes and types, not on
/// values, so a probe over `probe` tokens stands for every batch. Leaves the cache as it was.
/// `timed` gets the time of every pass it makes: `(1, secs)` for each single-token pass,
/// `(w, secs)` for each batch of `w`.
pub fn exact_verify_width(
    ctx: &mut Context<'_>,
    probe: &[Token],
    mut timed: impl FnMut(usize, f64),
) -> Result<usize> {
    let p0 = ctx.n_past();
    // Never across a KV block: the attention length (and kernels chosen by it) would differ
    // between the single passes and the batch.
    let n = WIDTHS[0]
        .min(probe.len())
        .min((ctx.n_ctx() - p0).saturating_sub(1) as usize)
        .min((KV_PAD - p0 % KV_PAD) as usize);
    if n < 2 {
        return Ok(1);
    }
    let mut single = Vec::with_capacity(n);
    for &t in &probe[..n] {
        let t0 = Instant::now();
        ctx.decode(&[t])?;
        single.push(ctx.logits()?.to_vec());
        timed(1, t0.elapsed().as_secs_f64());
    }
    ctx.truncate(p0)?;
    for w in WIDTHS.into_iter().filter(|&w| w <= n) {
        let t0 = Instant::now();
        ctx.decode_all_logits(&probe[..w])?;
        let same = (0..w).try_fold(true, |ok, i| {
            Ok::<_, Error>(
                ok && ctx
                    .logits_at(i)?
                    .iter()
                    .zip(&single[i])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
            )
        })?;
        timed(w, t0.elapsed().as_secs_f64());
        ctx.truncate(p0)?;
        if same {
            return Ok(w);
        }
    }
    Ok(1)
}

/// Re-scores greedy output at the shapes it was generated with: replays the prompt and every
/// high-gear pass in `stats.passes` (each batch filled with the emitted tokens, padded as the
/// pass was) and returns the index of the first emitted token that the high gear's greedy
/// chain does not choose there (None: every one agrees). This is the verified guarantee made
/// checkable: a row's logits depend on the tokens up to it and on the batch shape, never on
/// the rejected drafts after it.
pub fn rescore(
    ctx: &mut Context<'_>,
    gearbox: &mut Gearbox<'_>,
    prompt: &[Token],
    tokens: &[Token],
    params: &GenerateParams,
    stats: &LosslessStats,
) -> Result<Option<usize>> {
    if !params.sampling.is_greedy() {
        return Err(Error::InvalidParam(
            "re-scoring needs greedy output (--temp 0)".into(),
        ));
    }
    ctx.clear();
    ctx.detach_sampler();
    gearbox.shift(ctx, Gear::High);
    // The kernels the passes ran with (strict: width-invariant ones on CUDA).
    ctx.set_width_invariant(stats.guarantee == Guarantee::Strict);
    let r = replay_passes(ctx, prompt, tokens, params, stats);
    ctx.set_width_invariant(false);
    r
}

fn replay_passes(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    tokens: &[Token],
    params: &GenerateParams,
    stats: &LosslessStats,
) -> Result<Option<usize>> {
    let model = ctx.model();
    let mut chain = Sampler::new(&params.sampling, model, ctx.n_ctx())?;
    ctx.decode(prompt)?;
    let Some(&first) = tokens.first() else {
        return Ok(None);
    };
    if chain.sample(ctx) != first {
        return Ok(Some(0));
    }
    let mut i = 1;
    for &(width, emitted) in &stats.passes {
        if i >= tokens.len() || emitted == 0 {
            break;
        }
        let p0 = ctx.n_past();
        let end = (i + width - 1).min(tokens.len());
        let mut batch = tokens[i - 1..end].to_vec();
        batch.resize(width, *batch.last().expect("one token at least"));
        ctx.decode_all_logits(&batch)?;
        for r in 0..emitted.min(tokens.len() - i) {
            let t = chain.sample_at(ctx, r);
            if t != tokens[i + r] {
                return Ok(Some(i + r));
            }
        }
        ctx.truncate(p0 + emitted as u32)?;
        i += emitted;
    }
    Ok(None)
}

/// The entropy of the last pass with a backend chain attached (computed in the graph, or by
/// the chain's host part where the backend could not).
fn attached_entropy(
    ctx: &Context<'_>,
    probe: &crate::llama::backend_entropy::Probe,
    n_gen: usize,
) -> Result<f32> {
    let h = match ctx.sampled_probs() {
        Some(v) => v[0],
        None => probe.host_bits(),
    };
    if !h.is_finite() {
        return Err(Error::NanLogits(n_gen));
    }
    Ok(h)
}

/// Reads the last pass's entropy as a step would (waiting for the pass): from the attached
/// chain's probe, or from host logits. True when it came from the attached chain.
fn read_entropy(
    ctx: &Context<'_>,
    attached: Option<&crate::llama::backend_entropy::Probe>,
    n_gen: usize,
) -> Result<bool> {
    match attached {
        Some(probe) => attached_entropy(ctx, probe, n_gen).map(|_| true),
        None => {
            kernels::entropy_bits(ctx.logits()?);
            Ok(false)
        }
    }
}

fn entropy_of(row: &[f32], n_gen: usize) -> Result<f32> {
    let (bits, n_bad) = kernels::entropy_bits(row);
    if n_bad > 0 {
        return Err(Error::NanLogits(n_gen));
    }
    Ok(bits)
}

/// Generates from `prompt` with drafts at the low gear and verification at the high gear
/// (the decode loop of [`super::decode::run`] with the lossless strategy).
pub fn generate(
    ctx: &mut Context<'_>,
    prompt: &[Token],
    params: &GenerateParams,
    gearbox: &mut Gearbox<'_>,
    lp: &LosslessParams,
    on_token: impl FnMut(&TokenEvent<'_>),
) -> Result<Outcome> {
    let gears = GearControl {
        gearbox,
        monitor: None,
        fixed: Gear::High,
        calibrate: None,
    };
    super::decode::run(ctx, prompt, params, Some(gears), Some(lp), on_token)
}

/// The lossless strategy's state over one generation: the token the next pass starts from,
/// the drafting controller, the strict guarantee's per-block widths, the statistics.
pub(crate) struct LosslessStep<'p> {
    lp: &'p LosslessParams,
    decider: Decider,
    /// The draft stop and the entropy gate, scaled to this vocabulary.
    stop_bits: f64,
    gate_bits: f64,
    st: LosslessStats,
    ctl: DraftController,
    /// Verified: every verification has the declared width; strict: as wide as is exact.
    fixed_width: Option<usize>,
    /// Strict: the tokens the per-block exactness probe decodes.
    probe: Vec<Token>,
    block_width: Option<(u32, usize)>,
    /// Plain steps sample on the backend (a GPU, greedy) while no draft is made.
    backend_plain: bool,
    attached: Option<Rc<Probe>>,
    /// The last emitted token, not yet decoded, and the entropy it was drawn with.
    pending: Token,
    last_h: f32,
    /// The next draft length when not adaptive.
    k_next: usize,
    /// The longest draft: the request's, shortened to what a batch of this context holds.
    draft_max: usize,
}

impl<'p> LosslessStep<'p> {
    pub(crate) fn new(
        r: &mut Run<'_, '_, '_, '_>,
        prompt: &[Token],
        lp: &'p LosslessParams,
    ) -> Result<Self> {
        if lp.draft_max == 0 {
            return Err(Error::bad_param(param::DRAFT_MAX, "must be at least 1"));
        }
        if r.params.top_logprobs.is_some() {
            return Err(Error::InvalidParam(
                "log-probabilities are not reported in lossless mode".into(),
            ));
        }
        // A verification batch holds the pending token and the drafts: in a context smaller
        // than that (n_batch never exceeds n_ctx), drafts are shorter, or none at all.
        let draft_max = lp.draft_max.min(r.ctx.n_batch() as usize - 1);
        let (model, params) = (r.ctx.model(), r.params);
        let guarantee = lp
            .guarantee
            .unwrap_or_else(|| Guarantee::default_for(model));
        let decider = if params.sampling.is_greedy() {
            Decider::Greedy(Sampler::new(&params.sampling, model, r.ctx.n_ctx())?)
        } else {
            Decider::Stochastic {
                shaper: Sampler::shaper(&params.sampling, model, r.ctx.n_ctx())?,
                rng: Rng::new(params.sampling.seed as u64),
            }
        };
        let scale = (model.n_vocab() as f64).log2() / REF_VOCAB.log2();
        // Strict on CUDA: verification batches with single-token kernels (our patch 0003); the
        // per-block probe still proves each width before it is used.
        r.ctx.set_width_invariant(guarantee == Guarantee::Strict);
        // Where the plain loop samples on the backend (a GPU, greedy), plain steps do too, with
        // a chain attached for as long as no draft is made: attaching or detaching one makes
        // llama.cpp re-reserve its compute graph (sched_need_reserve), so it is never toggled
        // while drafting does not pay.
        let backend_plain = lp.adaptive
            && model.offloaded()
            && params.sampling.is_greedy()
            && params.entropy != super::EntropySource::Host;
        let mut attached = None;
        if backend_plain {
            let (chain, probe) =
                Sampler::with_entropy_probe(&params.sampling, model, r.ctx.n_ctx())?;
            r.ctx.attach_sampler(chain)?;
            attached = Some(probe);
        }
        Ok(Self {
            lp,
            decider,
            stop_bits: lp.draft_stop_bits * scale,
            gate_bits: lp.gate_bits * scale,
            st: LosslessStats::new(guarantee),
            ctl: DraftController::default(),
            fixed_width: (guarantee == Guarantee::Verified).then_some(draft_max + 1),
            // Strict: drafts are capped per KV block so that verification rounds as the plain
            // loop does.
            probe: prompt.iter().copied().cycle().take(draft_max + 1).collect(),
            block_width: None,
            backend_plain,
            attached,
            pending: -1,
            last_h: 0.0,
            k_next: draft_max.div_ceil(2),
            draft_max,
        })
    }

    /// The first token, from the prompt's logits.
    pub(crate) fn first(&mut self, r: &mut Run<'_, '_, '_, '_>) -> Result<Option<StopReason>> {
        (self.pending, self.last_h) = match &self.attached {
            Some(probe) => {
                let tok = r.ctx.sample_attached()?;
                self.decider.record(tok);
                (tok, attached_entropy(r.ctx, probe, 0)?)
            }
            None => {
                let h = entropy_of(r.ctx.logits()?, 0)?;
                (self.decider.first(r.ctx)?, h)
            }
        };
        Ok(r.emit(self.pending, self.last_h, r.ctx.n_past(), HIGH))
    }

    /// One step: a plain high-gear pass over the pending token, or drafts at the low gear and
    /// one verification of them at the high gear.
    pub(crate) fn next(&mut self, r: &mut Run<'_, '_, '_, '_>) -> Result<Option<StopReason>> {
        let (lp, model) = (self.lp, r.ctx.model());
        let p0 = r.ctx.n_past();
        // Room: the batch [pending, drafts...] (padded to the declared width when verified)
        // must fit, a strict batch must not cross a KV block, and drafting past the token
        // budget is wasted work.
        let room = (r.ctx.n_ctx() - p0).saturating_sub(2) as usize;
        let budget = r
            .params
            .n_predict
            .map_or(usize::MAX, |n| n.saturating_sub(r.out.n_gen() + 1));
        let cap = match self.fixed_width {
            Some(w) if w - 1 > room => 0,
            Some(w) => (w - 1).min(budget),
            None => self
                .draft_max
                .min(room)
                .min(budget)
                .min((KV_PAD - 1 - p0 % KV_PAD) as usize),
        };
        let replay = lp.replay.as_ref().map(|r| r.lock().expect("replay state"));
        let gated = replay.is_none() && self.last_h as f64 > self.gate_bits;
        let mut k = if cap == 0 || gated {
            0
        } else if lp.adaptive {
            match self.ctl.next(cap, self.fixed_width) {
                Next::Plain => 0,
                Next::Draft(k) => k,
                Next::TimeDraft => {
                    self.time_draft(r, p0)?;
                    0
                }
            }
        } else if let Some(rp) = &replay {
            rp.recorded_len().min(cap)
        } else {
            self.k_next.min(cap)
        };
        drop(replay);
        // Drafting and probing read host logits: no backend chain attached from here on
        // (unless no probe will run: this generation found no exact width already).
        let no_width = self.fixed_width.is_none() && matches!(self.block_width, Some((_, 1)));
        if no_width {
            k = 0;
            self.ctl.not_drafted();
        }
        if k > 0 && self.attached.take().is_some() {
            r.ctx.detach_sampler();
        }
        if k > 0 && self.fixed_width.is_none() {
            k = k.min(self.strict_width(r, p0)? - 1);
            if k == 0 {
                self.ctl.not_drafted(); // a plain step after all: as the plain loop runs one
            }
        }

        // A plain step while drafting is off runs as the plain loop does on a GPU: token and
        // entropy from a chain attached to the context (backend sampling), not host logits.
        if k == 0 && self.backend_plain && !self.ctl.drafting() {
            return self.backend_step(r, p0);
        }
        if self.attached.take().is_some() {
            r.ctx.detach_sampler();
        }

        // Draft at the low gear with a fork of the chain; its KV entries are dropped after.
        let mut drafts: Vec<Token> = Vec::with_capacity(k);
        // Forked only when drafting: a plain step needs no copy of the chain.
        let mut drafter = if k > 0 {
            Some(self.decider.drafter()?)
        } else {
            None
        };
        let mut draft_secs = 0.0;
        if let Some(drafter) = drafter.as_mut() {
            let td = Instant::now();
            r.shift(Gear::Low);
            let mut cur = self.pending;
            let mut stop = None;
            for _ in 0..k {
                if let Err(e) = r.ctx.decode(&[cur]) {
                    interrupted(e, r.ctx)?;
                    stop = Some(StopReason::Interrupted);
                    break;
                }
                StepPenalty::pay(lp.penalty.draft);
                r.passes[Gear::Low as usize] += 1;
                let (h, n_bad) = kernels::entropy_bits(r.ctx.logits()?);
                if n_bad > 0 {
                    break; // a broken draft; the high gear decides alone
                }
                let d = self.decider.draft(drafter, r.ctx)?;
                drafts.push(d);
                if model.is_eog(d) || (h as f64 > self.stop_bits && lp.replay.is_none()) {
                    break;
                }
                cur = d;
            }
            r.ctx.truncate(p0)?;
            draft_secs = td.elapsed().as_secs_f64();
            self.st.draft_ms += draft_secs * 1e3;
            if stop.is_some() {
                return Ok(stop);
            }
        }

        // Verify: one high-gear pass over [pending, drafts...].
        let tv = Instant::now();
        r.shift(Gear::High);
        let mut batch = Vec::with_capacity(self.fixed_width.unwrap_or(drafts.len() + 1));
        batch.push(self.pending);
        batch.extend_from_slice(&drafts);
        if let (Some(w), false) = (self.fixed_width, drafts.is_empty()) {
            // Rows past the drafts are never read: causal attention keeps them out of the
            // rows that are.
            batch.resize(w, *batch.last().expect("pending"));
        }
        if let Err(e) = r.ctx.decode_all_logits(&batch) {
            interrupted(e, r.ctx)?;
            return Ok(Some(StopReason::Interrupted));
        }
        StepPenalty::pay(lp.penalty.high);
        r.passes[Gear::High as usize] += 1;
        let (mut j, n_before) = (0, r.out.n_gen());
        let replayed = lp
            .replay
            .as_ref()
            .filter(|_| !drafts.is_empty())
            .map(|rp| rp.lock().expect("replay state").accept(drafts.len()));
        let mut stop = None;
        for i in 0..=drafts.len() {
            self.last_h = entropy_of(r.ctx.logits_at(i)?, r.out.n_gen())?;
            let (s, kept) =
                self.decider
                    .verify(drafter.as_ref(), r.ctx, i, drafts.get(i).copied())?;
            let kept = replayed.map_or(kept, |rj| i < rj);
            self.pending = s;
            stop = r.emit(s, self.last_h, p0 + i as u32 + 1, HIGH);
            if stop.is_some() || !kept {
                break;
            }
            j += 1;
        }
        r.ctx.truncate(p0 + j as u32 + 1)?;
        let verify_secs = tv.elapsed().as_secs_f64();
        let st = &mut self.st;
        st.verify_ms += verify_secs * 1e3;
        st.passes.push((batch.len(), r.out.n_gen() - n_before));
        if drafts.is_empty() {
            st.plain_steps += 1;
            self.ctl.plain(verify_secs);
        } else {
            st.verifies += 1;
            st.drafted += drafts.len();
            st.accepted += j;
            st.cycles.push((drafts.len(), j));
            self.ctl
                .verified(drafts.len(), j, batch.len(), draft_secs, verify_secs);
            self.k_next = if j == drafts.len() {
                (self.k_next + 1).min(self.draft_max)
            } else {
                (j + 1).min(self.draft_max)
            };
        }
        Ok(stop)
    }

    /// Times what drafting would cost without drafting: a throw-away pass at the low gear, as
    /// a draft step (the pass, its entropy, a draw from a forked chain; with a backend chain
    /// attached: the pass and the entropy the graph computed, the chain's history untouched),
    /// then a throw-away batch of two at the high gear: what a verified column costs (on a
    /// compute-bound CPU nearly a whole step, which rules drafting out before any draft or
    /// exactness probe is paid for). One pass each: a first use (a CUDA graph not yet
    /// captured) makes it slower, which errs towards not drafting; re-timing corrects it.
    fn time_draft(&mut self, r: &mut Run<'_, '_, '_, '_>, p0: u32) -> Result<()> {
        let penalty = self.lp.penalty;
        let td = Instant::now();
        r.shift(Gear::Low);
        let t = Instant::now();
        r.ctx.decode(&[self.pending])?;
        StepPenalty::pay(penalty.draft);
        if !read_entropy(r.ctx, self.attached.as_deref(), r.out.n_gen())? {
            let mut d = self.decider.drafter()?;
            self.decider.draft(&mut d, r.ctx)?;
        }
        let secs = t.elapsed().as_secs_f64();
        r.ctx.truncate(p0)?;
        self.ctl.draft_step(secs);
        self.st.draft_ms += td.elapsed().as_secs_f64() * 1e3;
        let tb = Instant::now();
        r.shift(Gear::High);
        r.ctx.decode(&[self.pending, self.pending])?;
        StepPenalty::pay(penalty.high);
        read_entropy(r.ctx, self.attached.as_deref(), r.out.n_gen())?;
        self.ctl.batch(2, tb.elapsed().as_secs_f64());
        r.ctx.truncate(p0)?;
        self.st.verify_ms += tb.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    /// Strict: the verification width this KV block's probe found exact (probed when first
    /// needed, and only where the probe's widest batch fits in the block: near a block's end,
    /// plain steps until the next one).
    fn strict_width(&mut self, r: &mut Run<'_, '_, '_, '_>, p0: u32) -> Result<usize> {
        let block = p0 / KV_PAD;
        Ok(match self.block_width {
            Some((b, w)) if b == block => w,
            // No exact width found once: no more probing (each probe costs passes, and on a
            // GPU a chain detached and attached again) for this generation.
            Some((_, 1)) => 1,
            _ if ((KV_PAD - p0 % KV_PAD) as usize) < self.probe.len() => 1,
            _ => {
                let tp = Instant::now();
                r.shift(Gear::High);
                // The probe's passes teach the controller too (with the test hook's extra
                // high-gear time, as if it had been slept).
                let extra = self.lp.penalty.high.as_secs_f64();
                let ctl = &mut self.ctl;
                let w = exact_verify_width(r.ctx, &self.probe, |w, secs| {
                    if w == 1 {
                        ctl.plain(secs + extra);
                    } else {
                        ctl.batch(w, secs + extra);
                    }
                })?;
                self.st.probe_ms += tp.elapsed().as_secs_f64() * 1e3;
                self.st.verify_width = if self.block_width.is_none() {
                    w
                } else {
                    self.st.verify_width.min(w)
                };
                self.block_width = Some((block, w));
                w
            }
        })
    }

    /// A plain high-gear step with the backend chain attached (attached again if a draft had
    /// detached it, with the emitted tokens as its penalty history).
    fn backend_step(&mut self, r: &mut Run<'_, '_, '_, '_>, p0: u32) -> Result<Option<StopReason>> {
        let tv = Instant::now();
        r.shift(Gear::High);
        if self.attached.is_none() {
            let (mut chain, probe) =
                Sampler::with_entropy_probe(&r.params.sampling, r.ctx.model(), r.ctx.n_ctx())?;
            for &t in r.out.tokens() {
                chain.accept(t); // the penalty history the host chain has
            }
            r.ctx.attach_sampler(chain)?;
            self.attached = Some(probe);
        }
        if let Err(e) = r.ctx.decode(&[self.pending]) {
            interrupted(e, r.ctx)?;
            return Ok(Some(StopReason::Interrupted));
        }
        StepPenalty::pay(self.lp.penalty.high);
        r.passes[Gear::High as usize] += 1;
        let tok = r.ctx.sample_attached()?;
        let probe = self.attached.as_ref().expect("attached above");
        let h = attached_entropy(r.ctx, probe, r.out.n_gen())?;
        self.decider.record(tok);
        (self.last_h, self.pending) = (h, tok);
        let n_before = r.out.n_gen();
        let stop = r.emit(tok, h, p0 + 1, HIGH);
        let secs = tv.elapsed().as_secs_f64();
        self.st.verify_ms += secs * 1e3;
        self.st.passes.push((1, r.out.n_gen() - n_before));
        self.st.plain_steps += 1;
        self.ctl.plain(secs);
        Ok(stop)
    }

    /// The generation's gear totals and drafting statistics.
    pub(crate) fn finish(
        self,
        r: &Run<'_, '_, '_, '_>,
        eval_ms: f64,
    ) -> (GearStats, LosslessStats) {
        let Self {
            mut st,
            ctl,
            fixed_width,
            draft_max,
            ..
        } = self;
        if let Some(w) = fixed_width {
            st.verify_width = w;
        }
        st.drafting_turned_off = ctl.turned_off;
        st.estimates = ctl.estimates(draft_max, fixed_width);
        st.finish();
        let n_gen = r.out.n_gen();
        // Every emitted token after the first needed the forward passes of the loop.
        let eval_count = n_gen.saturating_sub(1);
        let (shifts, swap_us_mean, swap_us_max) =
            r.driver.as_ref().map_or((0, 0.0, 0.0), GearDriver::shifts);
        let gears = GearStats {
            mode: "lossless".into(),
            passes: PerGear(r.passes),
            tokens: PerGear([0, 0, n_gen]),
            token_fraction: PerGear([0.0, 0.0, if n_gen > 0 { 1.0 } else { 0.0 }]),
            // Draft and verify passes differ in width: only the emitted rate is meaningful.
            tokens_per_s: PerGear([
                None,
                None,
                (eval_count > 0).then(|| per_s(eval_count, eval_ms)),
            ]),
            shifts,
            swap_us_mean,
            swap_us_max,
            thresholds_bits: None,
            tiers: r
                .gearbox
                .as_ref()
                .expect("lossless runs with a gearbox")
                .report()
                .clone(),
        };
        (gears, st)
    }
}
