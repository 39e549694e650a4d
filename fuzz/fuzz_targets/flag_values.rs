//! The values of gearbx-run's flags and the C API's strings, through the library parsers that
//! read them: --tiers, --gears, --gear, --manage, --layers, --lossless, --entropy.
#![no_main]

use gearbx::engine::lossless::Guarantee;
use gearbx::engine::EntropySource;
use gearbx::gearbox::{plan, Gear, GearSet, Manage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let _ = plan::parse_overrides(s);
    let _ = s.parse::<GearSet>();
    let _ = s.parse::<Gear>();
    let _ = Manage::parse_kind(s);
    if let Ok((a, b)) = Manage::parse_layers(s) {
        assert!(a <= b, "{s:?} -> {a}..{b}");
    }
    let _ = s.parse::<Guarantee>();
    let _ = s.parse::<EntropySource>();
});
