//! When drafting pays: online estimates of the plain high-gear step, the draft step and the
//! verification pass, and of the chance that the high gear keeps a draft token; from them, the
//! draft length that maximizes expected tokens per second, or none when a plain high-gear
//! step is faster.
//!
//! With per-token acceptance `a`, a draft of `k` tokens yields `E(k) = 1 + a + … + a^k` emitted
//! tokens (the accepted prefix plus the high gear's own token) for
//! `k · t_draft + t_high · (1 + c · (w − 1))` seconds, `w` the verification width and `c` the
//! measured cost of each extra verified column; a plain step yields one token in `t_high`.
//! Drafting runs only while the expected gain exceeds [`MIN_GAIN`].
//!
//! Costs are learned cheaply: the first step is a plain one (`t_high`), before the second one
//! pass at the low gear (`t_draft`) and one batch of two at the high gear (the cost of a
//! verified column) are timed and thrown away. If even an optimistic
//! acceptance ([`OPTIMISTIC_ACCEPTANCE`]) with free verification could not gain
//! [`EXPLORE_GAIN`] at that ratio, nothing else is ever tried (the draft step is re-timed every [`RETIME_STEPS`] plain steps).
//! Otherwise one short exploring draft measures the verification, and afterwards a draft that
//! stopped paying is tried again after a back-off (16 plain steps, doubling to 256).

use serde::Serialize;

/// Drafting must promise at least this gain over plain high-gear steps (estimates are noisy).
pub const MIN_GAIN: f64 = 1.03;
/// The acceptance assumed when deciding whether drafting could pay at all, and the gain that
/// optimistic estimate (free verification columns until measured) must promise before a
/// draft is tried: trying is not free (on a GPU it detaches the backend chain, which makes
/// llama.cpp re-reserve its graph).
pub const OPTIMISTIC_ACCEPTANCE: f64 = 0.9;
pub const EXPLORE_GAIN: f64 = 1.15;
/// Plain steps between re-timings of the draft step while drafting cannot pay.
pub const RETIME_STEPS: usize = 1024;
/// Plain steps before drafting is tried again, first and longest back-off.
const BACKOFF_FIRST: usize = 16;
const BACKOFF_MAX: usize = 256;
/// Weight of a new timing sample in its running mean.
const EWMA_W: f64 = 0.2;
/// Decay of the acceptance counts per verification, and their prior (rate, weight).
const ACCEPT_DECAY: f64 = 0.9;
const ACCEPT_PRIOR: (f64, f64) = (0.7, 2.0);
/// Draft length of the first, exploring, verification.
const FIRST_DRAFT: usize = 3;

#[derive(Debug, Clone, Copy, Default)]
struct Ewma(Option<f64>);

impl Ewma {
    fn add(&mut self, x: f64) {
        self.0 = Some(match self.0 {
            None => x,
            Some(m) => m + EWMA_W * (x - m),
        });
    }
}

/// The controller's view, for statistics: estimated seconds per step and acceptance.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DraftEstimates {
    /// Plain high-gear step, one draft step, milliseconds.
    pub high_step_ms: Option<f64>,
    pub draft_step_ms: Option<f64>,
    /// Extra cost of each verified column beyond the first, as a fraction of a plain step.
    pub verify_column_cost: Option<f64>,
    /// Chance that the high gear keeps a draft token.
    pub acceptance: f64,
    /// The expected gain of the best draft length over plain steps (1 = none known).
    pub expected_gain: f64,
}

/// What the loop should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A plain high-gear step.
    Plain,
    /// Time a low-gear pass and a high-gear batch of two (thrown away), then a plain step.
    TimeDraft,
    /// Draft this many tokens.
    Draft(usize),
}

/// Chooses the next draft length from measured costs and acceptance.
#[derive(Debug, Clone)]
pub struct DraftController {
    t_high: Ewma,
    t_draft: Ewma,
    /// (t_verify(w) / t_high − 1) / (w − 1), per verification or timed batch.
    column_cost: Ewma,
    /// Seconds per emitted token of whole draft-and-verify cycles: the model-free check that
    /// drafting pays (it catches every cost the model above leaves out).
    cycle_cost: Ewma,
    hits: f64,
    misses: f64,
    /// Plain steps since the last draft or draft timing, and the back-off before the next try.
    idle: usize,
    since_timing: usize,
    backoff: usize,
    /// Whether the last choice was a draft, and how often drafting was turned off.
    drafting: bool,
    pub turned_off: usize,
}

impl Default for DraftController {
    fn default() -> Self {
        Self {
            t_high: Ewma::default(),
            t_draft: Ewma::default(),
            column_cost: Ewma::default(),
            cycle_cost: Ewma::default(),
            hits: 0.0,
            misses: 0.0,
            idle: 0,
            since_timing: 0,
            backoff: BACKOFF_FIRST,
            drafting: false,
            turned_off: 0,
        }
    }
}

impl DraftController {
    /// The chance that the high gear keeps a draft token (decayed counts with a prior).
    pub fn acceptance(&self) -> f64 {
        let (p, w) = ACCEPT_PRIOR;
        (self.hits + p * w) / (self.hits + self.misses + w)
    }

    /// Expected emitted tokens of a draft of `k` at acceptance `a`.
    fn expected_tokens(a: f64, k: usize) -> f64 {
        (0..=k).map(|i| a.powi(i as i32)).sum()
    }

    /// Expected gain of a draft of `k` over plain steps at acceptance `a` and extra column
    /// cost `c`; None until both step times are known.
    fn gain_at(&self, k: usize, fixed_width: Option<usize>, a: f64, c: f64) -> Option<f64> {
        let (th, td) = (self.t_high.0?, self.t_draft.0?);
        let w = fixed_width.unwrap_or(k + 1);
        let cost = k as f64 * td + th * (1.0 + c.max(0.0) * (w as f64 - 1.0));
        Some(Self::expected_tokens(a, k) * th / cost)
    }

    fn gain(&self, k: usize, fixed_width: Option<usize>) -> Option<f64> {
        self.gain_at(k, fixed_width, self.acceptance(), self.column_cost.0?)
    }

    /// The best draft length in `1..=k_max` and its expected gain.
    fn best(&self, k_max: usize, fixed_width: Option<usize>) -> Option<(usize, f64)> {
        (1..=k_max)
            .filter_map(|k| self.gain(k, fixed_width).map(|g| (k, g)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Whether drafting could pay at all: optimistic acceptance, the measured column cost or
    /// none, at the measured step times.
    fn could_pay(&self, k_max: usize, fixed_width: Option<usize>) -> bool {
        let a = OPTIMISTIC_ACCEPTANCE.max(self.acceptance());
        let c = self.column_cost.0.unwrap_or(0.0);
        (1..=k_max).any(|k| {
            self.gain_at(k, fixed_width, a, c)
                .is_some_and(|g| g >= EXPLORE_GAIN)
        })
    }

    /// What to do next, drafting at most `k_max` tokens. `fixed_width`: the verification
    /// width when it does not follow the draft length.
    pub fn next(&mut self, k_max: usize, fixed_width: Option<usize>) -> Next {
        let n = self.choose(k_max, fixed_width);
        let drafting = matches!(n, Next::Draft(_));
        if !drafting && self.drafting {
            self.turned_off += 1;
        }
        self.drafting = drafting;
        n
    }

    fn choose(&mut self, k_max: usize, fixed_width: Option<usize>) -> Next {
        if k_max == 0 || self.t_high.0.is_none() {
            return Next::Plain; // nothing to draft, or a plain step to time first
        }
        if self.t_draft.0.is_none() || self.since_timing >= RETIME_STEPS {
            self.since_timing = 0;
            return Next::TimeDraft;
        }
        if !self.could_pay(k_max, fixed_width) {
            return Next::Plain;
        }
        // Cycles measured slower per token than plain steps do not pay, whatever the model says.
        let measured_ok = match (self.cycle_cost.0, self.t_high.0) {
            (Some(cc), Some(th)) => cc * MIN_GAIN <= th,
            _ => true,
        };
        match self.best(k_max, fixed_width) {
            None => Next::Draft(FIRST_DRAFT.min(k_max)), // explore: verification cost unknown
            Some((k, g)) if g >= MIN_GAIN && measured_ok => {
                self.backoff = BACKOFF_FIRST;
                Next::Draft(k)
            }
            Some((k, _)) if self.idle >= self.backoff => {
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Next::Draft(k.min(2))
            }
            Some(_) => Next::Plain,
        }
    }

    /// The loop could not draft after all (no exact verification width): the choice counts
    /// as a plain step.
    pub fn not_drafted(&mut self) {
        self.drafting = false;
    }

    /// Whether the last choice was to draft.
    pub fn drafting(&self) -> bool {
        self.drafting
    }

    /// A plain high-gear step (or a single-token pass timed elsewhere) took `secs`.
    pub fn plain(&mut self, secs: f64) {
        self.t_high.add(secs);
        self.idle += 1;
        self.since_timing += 1;
    }

    /// One low-gear pass took `secs` (a timing pass, or a draft step timed elsewhere).
    pub fn draft_step(&mut self, secs: f64) {
        self.t_draft.add(secs);
    }

    /// A high-gear batch of `width` took `secs` (a verification, or a timed probe).
    pub fn batch(&mut self, width: usize, secs: f64) {
        if let (Some(th), true) = (self.t_high.0, width > 1) {
            self.column_cost
                .add((secs / th - 1.0) / (width as f64 - 1.0));
        }
    }

    /// A verification: `k` drafted in `draft_secs`, `accepted` kept, the batch of `width`
    /// verified in `verify_secs`.
    pub fn verified(
        &mut self,
        k: usize,
        accepted: usize,
        width: usize,
        draft_secs: f64,
        verify_secs: f64,
    ) {
        if k == 0 {
            return;
        }
        self.draft_step(draft_secs / k as f64);
        self.batch(width, verify_secs);
        self.cycle_cost
            .add((draft_secs + verify_secs) / (accepted + 1) as f64);
        self.hits = self.hits * ACCEPT_DECAY + accepted as f64;
        self.misses = self.misses * ACCEPT_DECAY + f64::from(u8::from(accepted < k));
        self.idle = 0;
        self.since_timing = 0;
    }

    /// The current estimates, `k_max` and `fixed_width` as in [`Self::next`].
    pub fn estimates(&self, k_max: usize, fixed_width: Option<usize>) -> DraftEstimates {
        DraftEstimates {
            high_step_ms: self.t_high.0.map(|s| s * 1e3),
            draft_step_ms: self.t_draft.0.map(|s| s * 1e3),
            verify_column_cost: self.column_cost.0,
            acceptance: self.acceptance(),
            expected_gain: self.best(k_max.max(1), fixed_width).map_or(1.0, |b| b.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warmed(t_high: f64, t_draft: f64, column: f64, accept: (usize, usize)) -> DraftController {
        let mut c = DraftController::default();
        c.plain(t_high);
        for _ in 0..20 {
            c.verified(
                accept.0,
                accept.1,
                accept.0 + 1,
                t_draft * accept.0 as f64,
                t_high * (1.0 + column * accept.0 as f64),
            );
        }
        c
    }

    #[test]
    fn a_plain_step_and_a_draft_timing_come_first_then_one_exploring_draft() {
        let mut c = DraftController::default();
        assert_eq!(c.next(7, None), Next::Plain);
        c.plain(0.01);
        assert_eq!(c.next(7, None), Next::TimeDraft);
        c.draft_step(0.003);
        c.plain(0.01);
        assert_eq!(c.next(7, None), Next::Draft(FIRST_DRAFT));
        assert_eq!(c.next(2, None), Next::Draft(2));
        assert_eq!(c.next(0, None), Next::Plain);
    }

    #[test]
    fn a_draft_step_nearly_as_slow_as_a_high_step_is_never_tried() {
        // 0.9 of a high step: even 90% acceptance with free verification cannot pay.
        let mut c = DraftController::default();
        c.plain(0.01);
        assert_eq!(c.next(7, None), Next::TimeDraft);
        c.draft_step(0.009);
        let mut timings = 0;
        for _ in 0..RETIME_STEPS - 1 {
            match c.next(7, None) {
                Next::Plain => c.plain(0.01),
                Next::TimeDraft => {
                    timings += 1;
                    c.draft_step(0.009);
                    c.plain(0.01);
                }
                Next::Draft(k) => panic!("drafted {k}"),
            }
        }
        assert_eq!(timings, 0, "re-timed every {RETIME_STEPS} steps");
        assert_eq!(c.turned_off, 0);
    }

    #[test]
    fn cheap_drafts_that_are_kept_are_long() {
        // Draft step 1/4 of a high step, verification nearly free per column, all kept.
        let mut c = warmed(0.01, 0.0025, 0.02, (7, 7));
        assert!(c.acceptance() > 0.9, "{}", c.acceptance());
        assert_eq!(c.next(7, None), Next::Draft(7));
        assert!(c.estimates(7, None).expected_gain > 2.0);
    }

    #[test]
    fn drafts_that_stop_paying_are_turned_off_with_rare_retries() {
        // Cheap draft steps and verification, but the high gear keeps no draft token: could
        // pay at a good acceptance, so it is retried now and then.
        let mut c = warmed(0.01, 0.002, 0.05, (4, 0));
        assert!(c.estimates(7, None).expected_gain < 1.0);
        let mut tries = 0;
        for _ in 0..1000 {
            match c.next(7, None) {
                Next::Plain => c.plain(0.01),
                Next::TimeDraft => {
                    c.draft_step(0.002);
                    c.plain(0.01);
                }
                Next::Draft(k) => {
                    tries += 1;
                    c.verified(
                        k,
                        0,
                        k + 1,
                        0.002 * k as f64,
                        0.01 * (1.0 + 0.05 * k as f64),
                    );
                }
            }
        }
        // Back-off 16, 32, …, 256: a handful of tries in 1000 steps.
        assert!((3..=8).contains(&tries), "{tries} tries");
        assert!(c.turned_off >= 3);
    }

    #[test]
    fn a_fixed_verification_width_counts_its_full_cost() {
        // Columns cost 10% each: a fixed width of 8 makes a one-token draft a loss, while a
        // width that follows the draft does not.
        let c = warmed(0.01, 0.002, 0.1, (1, 1));
        let follow = c.gain(1, None).unwrap();
        let fixed = c.gain(1, Some(8)).unwrap();
        assert!(follow > fixed + 0.3, "{follow} vs {fixed}");
    }
}
