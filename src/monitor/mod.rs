//! Routing policy: per-token entropy → gear, with a rolling window, hysteresis on every
//! boundary, a minimum gear duration, vocabulary-scaled thresholds, opt-in calibration from
//! the prefill, and a catastrophic-entropy fallback to the safe gear.

pub mod classifier;

use std::collections::VecDeque;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::gearbox::Gear;

/// The vocabulary size the default thresholds were set at.
pub const REF_VOCAB: f64 = 32768.0;

/// Monitor settings (gearbx's defaults).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorConfig {
    /// Tokens in the rolling mean.
    pub window: usize,
    /// Below this mean entropy (bits, at a 32768 vocabulary) → low gear.
    pub low_bits: f64,
    /// Above this → high gear.
    pub high_bits: f64,
    /// Margin (bits) the mean must cross a boundary by before the gear changes.
    pub hysteresis: f64,
    /// Tokens a gear is kept at least (the fallback ignores it).
    pub min_duration: usize,
    /// Fallback: entropy above this fraction of log2(V) ...
    pub fallback_fraction: f64,
    /// ... for this many consecutive tokens shifts to high.
    pub fallback_tokens: usize,
    /// Thresholds are given in bits at REF_VOCAB and scaled by log2(V)/log2(32768); false when
    /// the user gave absolute thresholds for this model.
    pub scale_to_vocab: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            window: 5,
            low_bits: 1.8,
            high_bits: 3.5,
            hysteresis: 0.1,
            min_duration: 2,
            fallback_fraction: 0.9,
            fallback_tokens: 2,
            scale_to_vocab: true,
        }
    }
}

/// The longest entropy window (tokens) the monitor keeps.
pub const MAX_WINDOW: usize = 65_536;

impl MonitorConfig {
    pub fn validate(&self) -> Result<()> {
        use crate::error::{param, Param};
        let bad = |p, rule: &str| Err(Error::bad_param(p, rule));
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return bad(
                param::WINDOW,
                &format!("must be in 1..={MAX_WINDOW}, got {}", self.window),
            );
        }
        if !(self.low_bits.is_finite()
            && self.high_bits.is_finite()
            && self.low_bits >= 0.0
            && self.low_bits < self.high_bits)
        {
            const BITS: Param = Param {
                name: "low_bits/high_bits",
                flag: "--low-bits/--high-bits",
            };
            return bad(BITS, "must satisfy 0 <= low < high");
        }
        if !(self.hysteresis >= 0.0 && self.hysteresis.is_finite()) {
            return bad(param::HYSTERESIS, "must be >= 0");
        }
        Ok(())
    }
}

/// Why the monitor chose its gear for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The window is not full yet: the prompt classifier's gear.
    ColdStart,
    /// The window mean crossed a threshold (with hysteresis).
    Entropy,
    /// Kept: no crossing, or the minimum duration has not passed.
    Hold,
    /// Catastrophic entropy: forced to high.
    Fallback,
    /// A fixed gear (`--gear low|mid|high`).
    Fixed,
    /// Replaying a recorded gear trace ([`Monitor::replay`]).
    Replay,
}

/// The entropy → gear state machine.
#[derive(Debug, Clone)]
pub struct Monitor {
    cfg: MonitorConfig,
    /// Effective thresholds in bits for this vocabulary.
    low: f64,
    high: f64,
    fallback_bits: f64,
    window: VecDeque<f64>,
    gear: Gear,
    in_gear: usize,
    above_fallback: usize,
    /// A recorded gear sequence to replay instead of reading entropy, and the next position.
    script: Option<(Vec<Gear>, usize)>,
}

impl Monitor {
    /// A monitor for a vocabulary of `n_vocab`, starting at `cold_start`.
    pub fn new(cfg: MonitorConfig, n_vocab: usize, cold_start: Gear) -> Self {
        let log_v = (n_vocab.max(2) as f64).log2();
        let scale = if cfg.scale_to_vocab {
            log_v / REF_VOCAB.log2()
        } else {
            1.0
        };
        Self {
            low: cfg.low_bits * scale,
            high: cfg.high_bits * scale,
            fallback_bits: cfg.fallback_fraction * log_v,
            window: VecDeque::with_capacity(cfg.window),
            gear: cold_start,
            in_gear: 0,
            above_fallback: 0,
            script: None,
            cfg,
        }
    }

    /// A monitor that ignores entropy and replays `trace` (the gear of each forward pass
    /// after the prompt, cycling when the generation is longer): drives a model whose
    /// entropies mean nothing (random weights) with the gear pattern of a real one.
    pub fn replay(trace: Vec<Gear>, n_vocab: usize) -> Self {
        let first = trace.first().copied().unwrap_or(Gear::High);
        let mut m = Self::new(MonitorConfig::default(), n_vocab, first);
        m.script = Some((trace, 1));
        m
    }

    /// Effective (low, high) thresholds in bits.
    pub fn thresholds(&self) -> (f64, f64) {
        (self.low, self.high)
    }

    /// Sets effective thresholds from prefill entropies: low = 30th, high = 70th percentile
    /// (each only where `keep_low`/`keep_high` is false, i.e. the user did not give it).
    pub fn calibrate(
        &mut self,
        prefill_bits: &[f64],
        keep_low: bool,
        keep_high: bool,
    ) -> Option<(f64, f64)> {
        let mut v: Vec<f64> = prefill_bits
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        if v.len() < 4 {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let lo = percentile(&v, 0.30);
        let hi = percentile(&v, 0.70);
        if !keep_low {
            self.low = lo;
        }
        if !keep_high {
            self.high = hi;
        }
        if self.high <= self.low {
            self.high = self.low + 2.0 * self.cfg.hysteresis + 1e-3;
        }
        Some((self.low, self.high))
    }

    pub fn gear(&self) -> Gear {
        self.gear
    }

    /// Mean of the window (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.window.iter().sum::<f64>() / self.window.len() as f64
    }

    /// Feeds the entropy of the token just sampled; returns the gear for the next forward pass.
    pub fn update(&mut self, bits: f64) -> (Gear, Reason) {
        if let Some((trace, pos)) = &mut self.script {
            let g = trace
                .get(*pos % trace.len().max(1))
                .copied()
                .unwrap_or(Gear::High);
            *pos += 1;
            return (self.set(g), Reason::Replay);
        }
        if self.window.len() == self.cfg.window {
            self.window.pop_front();
        }
        self.window.push_back(bits);
        self.in_gear += 1;
        self.above_fallback = if bits > self.fallback_bits {
            self.above_fallback + 1
        } else {
            0
        };
        if self.above_fallback >= self.cfg.fallback_tokens {
            return (self.set(Gear::High), Reason::Fallback);
        }
        if self.window.len() < self.cfg.window {
            return (self.gear, Reason::ColdStart);
        }
        let target = self.target(self.mean());
        if target == self.gear || self.in_gear < self.cfg.min_duration {
            return (self.gear, Reason::Hold);
        }
        (self.set(target), Reason::Entropy)
    }

    /// The gear the mean asks for, given the current gear: a boundary counts as crossed
    /// only `hysteresis` beyond it, in whichever direction the gear would move.
    fn target(&self, m: f64) -> Gear {
        let h = self.cfg.hysteresis;
        let cur = self.gear;
        // Raw band of the mean, with the margin applied away from the current gear.
        let up = |boundary: f64| m > boundary + h;
        let down = |boundary: f64| m < boundary - h;
        match cur {
            Gear::Low => {
                if up(self.high) {
                    Gear::High
                } else if up(self.low) {
                    Gear::Mid
                } else {
                    Gear::Low
                }
            }
            Gear::Mid => {
                if up(self.high) {
                    Gear::High
                } else if down(self.low) {
                    Gear::Low
                } else {
                    Gear::Mid
                }
            }
            Gear::High => {
                if down(self.low) {
                    Gear::Low
                } else if down(self.high) {
                    Gear::Mid
                } else {
                    Gear::High
                }
            }
        }
    }

    fn set(&mut self, g: Gear) -> Gear {
        if g != self.gear {
            self.gear = g;
            self.in_gear = 0;
        }
        g
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    let next = sorted[(i + 1).min(sorted.len() - 1)];
    sorted[i] + (next - sorted[i]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_follows_the_trace_and_ignores_entropy() {
        use Gear::*;
        let mut m = Monitor::replay(vec![Low, Low, High, Mid], 32768);
        assert_eq!(m.gear(), Low);
        let got: Vec<Gear> = [9.0, 0.0, 9.0, 0.0, 9.0]
            .iter()
            .map(|&h| {
                let (g, why) = m.update(h);
                assert_eq!(why, Reason::Replay);
                g
            })
            .collect();
        // Positions 1, 2, 3, then the trace again from 0.
        assert_eq!(got, vec![Low, High, Mid, Low, Low]);
    }

    fn cfg() -> MonitorConfig {
        MonitorConfig {
            window: 1,
            min_duration: 1,
            scale_to_vocab: false,
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_scale_with_vocabulary() {
        let m = Monitor::new(MonitorConfig::default(), 32768, Gear::Mid);
        assert_eq!(m.thresholds(), (1.8, 3.5));
        let m = Monitor::new(MonitorConfig::default(), 128256, Gear::Mid);
        let s = 128256f64.log2() / 15.0;
        assert!(
            (m.thresholds().0 - 1.8 * s).abs() < 1e-12
                && (m.thresholds().1 - 3.5 * s).abs() < 1e-12
        );
    }

    #[test]
    fn hysteresis_at_the_low_boundary() {
        let mut m = Monitor::new(cfg(), 32768, Gear::Low);
        assert_eq!(m.update(1.85).0, Gear::Low, "inside the margin above 1.8");
        assert_eq!(m.update(1.95).0, Gear::Mid, "beyond 1.8 + 0.1");
        assert_eq!(m.update(1.75).0, Gear::Mid, "inside the margin below 1.8");
        assert_eq!(m.update(1.65).0, Gear::Low, "beyond 1.8 - 0.1");
    }

    #[test]
    fn hysteresis_at_the_high_boundary() {
        let mut m = Monitor::new(cfg(), 32768, Gear::Mid);
        assert_eq!(m.update(3.55).0, Gear::Mid);
        assert_eq!(m.update(3.65).0, Gear::High);
        assert_eq!(m.update(3.45).0, Gear::High);
        assert_eq!(m.update(3.35).0, Gear::Mid);
    }

    #[test]
    fn jumps_between_low_and_high_respect_hysteresis() {
        let mut m = Monitor::new(cfg(), 32768, Gear::Low);
        assert_eq!(
            m.update(3.55).0,
            Gear::Mid,
            "3.55 is within the high margin: only mid"
        );
        let mut m = Monitor::new(cfg(), 32768, Gear::Low);
        assert_eq!(m.update(3.7).0, Gear::High, "low → high in one step");
        assert_eq!(
            m.update(1.75).0,
            Gear::Mid,
            "1.75 is within the low margin: only mid"
        );
        let mut m = Monitor::new(cfg(), 32768, Gear::High);
        assert_eq!(m.update(1.6).0, Gear::Low, "high → low in one step");
    }

    #[test]
    fn minimum_duration_holds_a_gear() {
        let mut m = Monitor::new(
            MonitorConfig {
                min_duration: 3,
                ..cfg()
            },
            32768,
            Gear::Mid,
        );
        assert_eq!(m.update(5.0), (Gear::Mid, Reason::Hold));
        assert_eq!(m.update(5.0), (Gear::Mid, Reason::Hold));
        assert_eq!(m.update(5.0), (Gear::High, Reason::Entropy));
        assert_eq!(m.update(0.1), (Gear::High, Reason::Hold));
        assert_eq!(m.update(0.1), (Gear::High, Reason::Hold));
        assert_eq!(m.update(0.1), (Gear::Low, Reason::Entropy));
    }

    #[test]
    fn window_mean_and_cold_start() {
        let mut m = Monitor::new(
            MonitorConfig {
                window: 3,
                min_duration: 1,
                scale_to_vocab: false,
                ..Default::default()
            },
            32768,
            Gear::High,
        );
        assert_eq!(m.update(0.0), (Gear::High, Reason::ColdStart));
        assert_eq!(m.update(0.0), (Gear::High, Reason::ColdStart));
        assert_eq!(
            m.update(6.0),
            (Gear::Mid, Reason::Entropy),
            "window mean (0+0+6)/3 = 2.0 is below 3.5 - 0.1, above 1.8 - 0.1"
        );
        let mut m = Monitor::new(
            MonitorConfig {
                window: 3,
                min_duration: 1,
                scale_to_vocab: false,
                ..Default::default()
            },
            32768,
            Gear::High,
        );
        for _ in 0..3 {
            m.update(1.0);
        }
        assert_eq!(m.gear(), Gear::Low);
    }

    #[test]
    fn fallback_after_two_catastrophic_tokens() {
        let v = 32768;
        let mut m = Monitor::new(
            MonitorConfig {
                min_duration: 100,
                ..cfg()
            },
            v,
            Gear::Low,
        );
        let near_uniform = 0.95 * 15.0;
        assert_eq!(
            m.update(near_uniform).1,
            Reason::Hold,
            "one token is not enough (and min duration holds)"
        );
        assert_eq!(m.update(near_uniform), (Gear::High, Reason::Fallback));
        let mut m = Monitor::new(
            MonitorConfig {
                min_duration: 100,
                ..cfg()
            },
            v,
            Gear::Low,
        );
        m.update(near_uniform);
        m.update(0.5);
        assert_ne!(
            m.update(near_uniform).1,
            Reason::Fallback,
            "not consecutive"
        );
    }

    #[test]
    fn calibration_percentiles_and_user_thresholds_win() {
        let prefill: Vec<f64> = (0..=10).map(f64::from).collect();
        let mut m = Monitor::new(cfg(), 32768, Gear::Mid);
        assert_eq!(m.calibrate(&prefill, false, false), Some((3.0, 7.0)));
        let mut m = Monitor::new(cfg(), 32768, Gear::Mid);
        m.calibrate(&prefill, true, false);
        assert_eq!(
            m.thresholds(),
            (1.8, 7.0),
            "a low threshold the user gave is kept"
        );
        assert_eq!(
            Monitor::new(cfg(), 32768, Gear::Mid).calibrate(&[1.0, 2.0], false, false),
            None
        );
    }
}
