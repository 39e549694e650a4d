//! Manifest JSON and params layers from a store: parsed or refused, never a panic.
#![no_main]

use gearbx::store::manifest::{Manifest, OllamaParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        for l in &m.layers {
            let _ = gearbx::store::manifest::parse_digest(&l.digest);
        }
    }
    let _ = OllamaParams::parse(data);
});
