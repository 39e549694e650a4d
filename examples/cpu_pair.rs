//! A fixed gear against the static llama.cpp model of exactly its types, on the CPU, in one
//! process: interleaved rounds of 128 greedy tokens, three lanes per round: the gear (gear
//! control in the loop), the static model written by `llama_model_quantize`, and the gear's
//! weights with no gear control (separates the weights' layout from the loop's overhead).
//!
//! `cargo run --release --example cpu_pair -- MODEL.gguf [low|mid|high] [ROUNDS] [THREADS]`

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use gearbx::engine::{self, GearControl, GenerateParams};
use gearbx::gearbox::{Gear, Gearbox, GearboxOptions};
use gearbx::llama::{Context, ContextParams, Model, ModelParams};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> gearbx::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first().map(std::path::PathBuf::from) else {
        eprintln!("usage: cpu_pair MODEL.gguf [low|mid|high] [ROUNDS] [THREADS]");
        std::process::exit(2);
    };
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or(default.into());
    let gear: Gear = arg(1, "mid").parse().map_err(gearbx::Error::InvalidParam)?;
    let rounds: usize = arg(2, "9").parse().unwrap_or(9).max(1);
    let threads: i32 = arg(3, "2").parse().unwrap_or(2);

    let info = gearbx::store::gguf::inspect(&path)?;
    let model = Model::load(&path, &ModelParams::default())?;
    let opts = GearboxOptions {
        threads: threads.max(1) as usize,
        ..Default::default()
    };
    let mut gb = Gearbox::build(&model, &path, &info, &opts)?;
    let types: Vec<(String, gearbx::llama::GgmlType)> = gb
        .current_types()
        .into_iter()
        .enumerate()
        .map(|(i, (name, _))| (name, gb.type_at(gear, i)))
        .collect();
    let dest = std::env::temp_dir().join(format!("gearbx-static-{gear}.gguf"));
    gearbx::llama::requantize::write_typed(&path, &info, &types, &dest, threads as usize)?;
    let stat = Model::load(&dest, &ModelParams::default())?;

    let cp = ContextParams {
        n_ctx: 512,
        n_batch: 512,
        n_threads: threads,
        rebuild_graphs: false,
        kv: Default::default(),
    };
    let abort = || Arc::new(AtomicBool::new(false));
    let mut gctx = Context::new(&model, &cp, abort())?;
    let mut sctx = Context::new(&stat, &cp, abort())?;
    let prompt = model.tokenize(
        "Once upon a time, in a quiet village by the sea,",
        true,
        false,
    )?;
    let p = GenerateParams::greedy(128, true);
    let (mut with, mut stat_tps, mut without) = (vec![], vec![], vec![]);
    for r in 0..rounds {
        gctx.clear();
        let control = GearControl {
            gearbox: &mut gb,
            monitor: None,
            fixed: gear,
            calibrate: None,
        };
        with.push(
            engine::generate(&mut gctx, &prompt, &p, Some(control), |_| {})?.decode_tokens_per_s,
        );
        sctx.clear();
        stat_tps.push(engine::generate(&mut sctx, &prompt, &p, None, |_| {})?.decode_tokens_per_s);
        gb.shift(&gctx, gear);
        gctx.clear();
        without.push(engine::generate(&mut gctx, &prompt, &p, None, |_| {})?.decode_tokens_per_s);
        eprintln!(
            "round {r}: gear {:.1} static {:.1} gear weights without control {:.1} tok/s",
            with[r], stat_tps[r], without[r]
        );
    }
    let (a, b, c) = (
        median(&mut with),
        median(&mut stat_tps),
        median(&mut without),
    );
    println!(
        "{gear}: gear {a:.1} static {b:.1} tok/s, ratio {:.3}; without gear control {c:.1}, ratio {:.3}",
        a / b,
        c / b
    );
    let _ = std::fs::remove_file(dest);
    Ok(())
}
