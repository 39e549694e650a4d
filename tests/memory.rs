//! Switching gears every token for 2,000 tokens leaves memory flat.
//!
//! This test has its own binary on purpose: RSS is per process, and the other tests of a binary
//! run on threads of the same process, loading models while this one measures.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::*;
use gearbx::gearbox::{Gear, Gearbox, GearboxOptions};
use gearbx::llama::{Context, ContextParams, Model, ModelParams, Token};
use gearbx::store::gguf;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

#[test]
fn switching_every_token_for_2000_tokens_keeps_memory_flat() {
    let f = fixture();
    let model = Model::load(&f.model, &ModelParams::default()).unwrap();
    let info = gguf::inspect(&f.model).unwrap();
    let opts = GearboxOptions {
        threads: 1,
        ..Default::default()
    };
    let mut gb = Gearbox::build(&model, &f.model, &info, &opts).unwrap();
    let mut ctx = Context::new(
        &model,
        &ContextParams {
            n_ctx: 2048,
            n_batch: 64,
            n_threads: 1,
            rebuild_graphs: false,
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    ctx.decode(&[1]).unwrap();
    let gears = [Gear::Low, Gear::High, Gear::Mid];
    let mut at_200 = 0;
    for i in 0..2000u32 {
        gb.shift(&ctx, gears[i as usize % 3]);
        ctx.decode(&[(100 + i % 500) as Token]).unwrap();
        assert!(ctx.logits().unwrap().iter().all(|x| x.is_finite()));
        if i == 200 {
            at_200 = rss_kib();
        }
    }
    let end = rss_kib();
    eprintln!("RSS at token 200: {at_200} KiB, at token 2000: {end} KiB");
    assert!(
        end < at_200 + 4096,
        "RSS grew from {at_200} KiB to {end} KiB over 1800 switching tokens"
    );
}
