//! Decode speed through the session API against the same generation assembled by hand (model,
//! gearbox, context, `engine::generate`), at each gear, in interleaved rounds in one process:
//! the check that the session layer costs nothing.
//!
//! `cargo run --release --example session_speed -- [MODEL] [ROUNDS] [TOKENS]`

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use gearbx::engine::{self, GearControl, GenerateParams};
use gearbx::gearbox::{CacheOptions, Gear, Gearbox, GearboxOptions};
use gearbx::llama::{Context, ContextParams, Model, ModelParams};
use gearbx::session::{self, GearPolicy, Session, SessionOptions, TierOptions};
use gearbx::store::{self, OllamaStore};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> gearbx::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map(String::as_str);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let tokens: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let threads = session::threads_or_all(None);
    let m = store::resolve(name, &OllamaStore::from_env()?, true)?;

    // The session, as gearbx-run opens it.
    let mut sess = Session::open_resolved(
        m.clone(),
        &SessionOptions {
            threads: Some(threads),
            tiers: Some(TierOptions::default()),
            ..Default::default()
        },
    )?;
    // The same by hand.
    let model = Model::load(&m.path, &ModelParams::default())?;
    let mut gb = Gearbox::build(
        &model,
        &m.path,
        &m.info,
        &GearboxOptions {
            threads,
            cache: Some(CacheOptions::for_model(None, &m, false)?),
            ..Default::default()
        },
    )?;
    let mut ctx = Context::new(
        &model,
        &ContextParams {
            n_ctx: sess.n_ctx(),
            n_batch: session::DEFAULT_N_BATCH,
            n_threads: threads as i32,
            rebuild_graphs: model.shifts_need_graph_rebuild(),
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )?;

    let mut req = sess.default_request("Write a short story about a lighthouse keeper.");
    req.sampling = GenerateParams::greedy(tokens, true).sampling;
    req.n_predict = Some(tokens);
    let prompt = sess.prompt(&req.prompt)?;
    let params = GenerateParams {
        n_predict: req.n_predict,
        stop: req.stop.clone(),
        sampling: req.sampling.clone(),
        entropy: req.entropy,
        top_logprobs: None,
    };
    println!(
        "{}: {rounds} rounds of {tokens} greedy tokens, {threads} threads",
        m.path.display()
    );
    println!("| gear | by hand tok/s | session tok/s | session / by hand (min-max) |");
    println!("|---|---|---|---|");
    for gear in [Gear::Low, Gear::Mid, Gear::High] {
        let (mut hand, mut via, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        req.gear = GearPolicy::Fixed(gear);
        for r in 0..rounds {
            let mut by_hand = || -> gearbx::Result<f64> {
                ctx.clear();
                let control = GearControl {
                    gearbox: &mut gb,
                    monitor: None,
                    fixed: gear,
                    calibrate: None,
                };
                let o = engine::generate(&mut ctx, &prompt.tokens, &params, Some(control), |_| {})?;
                Ok(o.decode_tokens_per_s)
            };
            // Alternate which goes first.
            let (h, s) = if r % 2 == 0 {
                let h = by_hand()?;
                (h, sess.generate(&req, |_| {})?.decode_tokens_per_s)
            } else {
                let s = sess.generate(&req, |_| {})?.decode_tokens_per_s;
                (by_hand()?, s)
            };
            hand.push(h);
            via.push(s);
            ratio.push(s / h);
        }
        let lo = ratio.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratio.iter().copied().fold(0.0, f64::max);
        println!(
            "| {gear} | {:.1} | {:.1} | {:.3} ({lo:.3}-{hi:.3}) |",
            median(hand),
            median(via),
            median(ratio)
        );
    }
    Ok(())
}
