//! The per-token gear step shared by the decode loop and the attach API: the policy (the
//! monitor, or a fixed gear) picks the next gear from the last token's entropy, and the tallies
//! a generation reports grow (tokens per gear, shifts and their swap times). Shifting itself
//! stays with the caller, who owns the gearbox and the context.

use crate::gearbox::Gear;
use crate::monitor::{Monitor, Reason};

/// Policy and tallies of one generation (or one attachment).
#[derive(Debug)]
pub struct GearDriver {
    /// `Some`: auto mode; `None`: fixed at `fixed`.
    pub monitor: Option<Monitor>,
    pub fixed: Gear,
    tokens: [usize; 3],
    shifts: usize,
    swap_sum_us: f64,
    swap_max_us: f64,
}

impl GearDriver {
    pub fn new(monitor: Option<Monitor>, fixed: Gear) -> Self {
        Self {
            monitor,
            fixed,
            tokens: [0; 3],
            shifts: 0,
            swap_sum_us: 0.0,
            swap_max_us: 0.0,
        }
    }

    /// The gear before any token has been seen: the monitor's cold-start gear, or the fixed one.
    pub fn first_gear(&self) -> Gear {
        self.monitor.as_ref().map_or(self.fixed, Monitor::gear)
    }

    /// Counts a token drawn from a pass at `used` with `entropy` bits and returns the gear of
    /// the next pass, with the reason.
    pub fn step(&mut self, used: Gear, entropy: f64) -> (Gear, Reason) {
        self.tokens[used as usize] += 1;
        match self.monitor.as_mut() {
            Some(m) => m.update(entropy),
            None => (self.fixed, Reason::Fixed),
        }
    }

    /// Records a shift that took `us` microseconds.
    pub fn shifted(&mut self, us: f64) {
        self.shifts += 1;
        self.swap_sum_us += us;
        self.swap_max_us = self.swap_max_us.max(us);
    }

    /// Tokens counted per gear (low, mid, high).
    pub fn tokens(&self) -> [usize; 3] {
        self.tokens
    }

    /// (shifts, mean swap µs, max swap µs).
    pub fn shifts(&self) -> (usize, f64, f64) {
        let mean = if self.shifts > 0 {
            self.swap_sum_us / self.shifts as f64
        } else {
            0.0
        };
        (self.shifts, mean, self.swap_max_us)
    }

    /// The monitor's thresholds in bits at this vocabulary (auto mode only).
    pub fn thresholds(&self) -> Option<(f64, f64)> {
        self.monitor.as_ref().map(Monitor::thresholds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::MonitorConfig;

    #[test]
    fn fixed_policy_keeps_its_gear_and_counts_tokens_and_shifts() {
        let mut d = GearDriver::new(None, Gear::Mid);
        assert_eq!(d.first_gear(), Gear::Mid);
        assert_eq!(d.step(Gear::High, 9.0), (Gear::Mid, Reason::Fixed));
        assert_eq!(d.step(Gear::Mid, 0.0), (Gear::Mid, Reason::Fixed));
        d.shifted(10.0);
        d.shifted(30.0);
        assert_eq!(d.tokens(), [0, 1, 1]);
        assert_eq!(d.shifts(), (2, 20.0, 30.0));
        assert_eq!(d.thresholds(), None);
    }

    #[test]
    fn auto_policy_follows_the_monitor() {
        let cfg = MonitorConfig {
            window: 1,
            min_duration: 1,
            ..Default::default()
        };
        let mut d = GearDriver::new(Some(Monitor::new(cfg, 32768, Gear::High)), Gear::High);
        assert_eq!(d.first_gear(), Gear::High);
        assert_eq!(
            d.step(Gear::High, 0.1).0,
            Gear::Low,
            "low entropy, low gear"
        );
        assert_eq!(
            d.step(Gear::Low, 12.0).0,
            Gear::High,
            "high entropy, high gear"
        );
        assert_eq!(d.tokens(), [1, 0, 1]);
        assert!(d.thresholds().is_some());
    }
}
