//! When drafting pays: online estimates of the plain high-gear step, the draft step and the
//! verification pass, and of the chance that the high gear keeps a draft token; from them, the
//! draft length that maximizes expected tokens per second, or none when a plain high-gear
//! step is faster.
//!
//! With per-token acceptance `a`, a draft of `k` tokens yields `E(k) = 1 + a + … + a^k` emitted
//! tokens (the accepted prefix plus the high gear's own token) for `k · t_draft + t_verify(k+1)`
//! seconds; a plain step yields one token in `t_high`. Drafting runs only while
//! `E(k) · t_high / (k · t_draft + t_verify(k+1))` exceeds [`MIN_GAIN`]; when it does not, the
//! controller runs plain steps and tries one short draft again after a back-off (16 steps,
//! doubling to 256), so a change of text (more predictable) is noticed at a bounded cost.

use serde::Serialize;

/// Drafting must promise at least this gain over plain high-gear steps (estimates are noisy).
pub const MIN_GAIN: f64 = 1.03;
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
    /// The expected gain of the best draft length over plain steps (1 = none).
    pub expected_gain: f64,
}

/// Chooses the next draft length from measured costs and acceptance.
#[derive(Debug, Clone)]
pub struct DraftController {
    t_high: Ewma,
    t_draft: Ewma,
    /// (t_verify(w) / t_high − 1) / (w − 1), per verification.
    column_cost: Ewma,
    hits: f64,
    misses: f64,
    /// Plain steps since the last draft, and the back-off before the next try.
    idle: usize,
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
            hits: 0.0,
            misses: 0.0,
            idle: 0,
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

    /// The verification width for a draft of `k` (`Some(w)`: a fixed width).
    fn width(k: usize, fixed: Option<usize>) -> usize {
        fixed.unwrap_or(k + 1)
    }

    /// Expected gain of a draft of `k` over plain steps, once every cost is known.
    fn gain(&self, k: usize, fixed_width: Option<usize>) -> Option<f64> {
        let (th, td) = (self.t_high.0?, self.t_draft.0?);
        let c = self.column_cost.0?.max(0.0);
        let w = Self::width(k, fixed_width);
        let cost = k as f64 * td + th * (1.0 + c * (w as f64 - 1.0));
        Some(Self::expected_tokens(self.acceptance(), k) * th / cost)
    }

    /// The best draft length in `1..=k_max` and its expected gain.
    fn best(&self, k_max: usize, fixed_width: Option<usize>) -> Option<(usize, f64)> {
        (1..=k_max)
            .filter_map(|k| self.gain(k, fixed_width).map(|g| (k, g)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The next draft length, at most `k_max` (0: a plain high-gear step). `fixed_width`: the
    /// verification width when it does not follow the draft length.
    pub fn next(&mut self, k_max: usize, fixed_width: Option<usize>) -> usize {
        let k = self.choose(k_max, fixed_width);
        if k == 0 && self.drafting {
            self.turned_off += 1;
        }
        self.drafting = k > 0;
        k
    }

    fn choose(&mut self, k_max: usize, fixed_width: Option<usize>) -> usize {
        if k_max == 0 || self.t_high.0.is_none() {
            return 0; // nothing to draft, or a plain step to measure first
        }
        match self.best(k_max, fixed_width) {
            None => FIRST_DRAFT.min(k_max), // explore: costs of drafting not known yet
            Some((k, g)) if g >= MIN_GAIN => {
                self.backoff = BACKOFF_FIRST;
                k
            }
            Some((k, _)) => {
                if self.idle >= self.backoff {
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    k.min(2)
                } else {
                    0
                }
            }
        }
    }

    /// A plain high-gear step took `secs`.
    pub fn plain(&mut self, secs: f64) {
        self.t_high.add(secs);
        self.idle += 1;
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
        self.t_draft.add(draft_secs / k as f64);
        if let Some(th) = self.t_high.0 {
            if width > 1 {
                self.column_cost
                    .add((verify_secs / th - 1.0) / (width as f64 - 1.0));
            }
        }
        self.hits = self.hits * ACCEPT_DECAY + accepted as f64;
        self.misses = self.misses * ACCEPT_DECAY + f64::from(u8::from(accepted < k));
        self.idle = 0;
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
    fn a_plain_step_comes_first_then_one_exploring_draft() {
        let mut c = DraftController::default();
        assert_eq!(c.next(7, None), 0);
        c.plain(0.01);
        assert_eq!(c.next(7, None), FIRST_DRAFT);
        assert_eq!(c.next(2, None), 2);
        assert_eq!(c.next(0, None), 0);
    }

    #[test]
    fn cheap_drafts_that_are_kept_are_long() {
        // Draft step 1/4 of a high step, verification nearly free per column, 90% kept.
        let mut c = warmed(0.01, 0.0025, 0.02, (7, 7));
        assert!(c.acceptance() > 0.9, "{}", c.acceptance());
        assert_eq!(c.next(7, None), 7);
        assert!(c.estimates(7, None).expected_gain > 2.0);
    }

    #[test]
    fn drafts_as_expensive_as_high_steps_turn_drafting_off_with_rare_retries() {
        let mut c = warmed(0.01, 0.01, 0.1, (4, 2));
        assert!(c.estimates(7, None).expected_gain < 1.0);
        let mut tries = 0;
        for _ in 0..1000 {
            match c.next(7, None) {
                0 => c.plain(0.01),
                k => {
                    tries += 1;
                    c.verified(k, 0, k + 1, 0.01 * k as f64, 0.011);
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
