//! Synthetic benchmark models: the tiny shape is a valid GGUF that llama.cpp loads and decodes,
//! the gearbox builds on it and shifts gears, the output is a function of the seed, and the
//! F16 conversion matches ggml's.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use gearbx::gearbox::{Gear, Gearbox, GearboxOptions};
use gearbx::llama::{Context, ContextParams, GgmlType, Model, ModelParams};
use gearbx::store::gguf;
use gearbx_bench::synth::{self, Shape};

fn tiny() -> Shape {
    Shape::preset("tiny").unwrap()
}

/// Writes `shape` with `seed` into `dir`, checking the progress calls on the way.
fn write(shape: &Shape, dir: &Path, file: &str, seed: u64) -> (PathBuf, synth::SynthReport) {
    let path = dir.join(file);
    let mut calls: Vec<(u64, u64)> = Vec::new();
    let t0 = Instant::now();
    let report = synth::write(shape, &path, seed, |w, t| calls.push((w, t))).unwrap();
    eprintln!(
        "wrote {} ({} bytes) in {:.3} s",
        path.display(),
        report.bytes,
        t0.elapsed().as_secs_f64()
    );
    let total = shape.file_bytes();
    assert!(!calls.is_empty());
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    assert!(calls.iter().all(|&(w, t)| t == total && w <= t));
    assert_eq!(calls.last().unwrap().0, total, "progress ends at the total");
    (path, report)
}

fn context(model: &Model) -> Context<'_> {
    Context::new(
        model,
        &ContextParams {
            n_ctx: 64,
            n_batch: 64,
            n_threads: 2,
            rebuild_graphs: false,
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

/// Decodes `[1, 2, 3]` in a fresh sequence and checks the logits are usable.
fn decode_checks(ctx: &mut Context<'_>, n_vocab: usize) -> Vec<f32> {
    ctx.clear();
    ctx.decode(&[1, 2, 3]).unwrap();
    let logits = ctx.logits().unwrap().to_vec();
    assert_eq!(logits.len(), n_vocab);
    assert!(logits.iter().all(|l| l.is_finite()), "non-finite logits");
    assert!(
        logits.iter().any(|&l| l != logits[0]),
        "all logits are equal"
    );
    logits
}

#[test]
fn presets_have_the_real_shapes() {
    assert_eq!(Shape::PRESETS, ["llama-3.2-1b", "llama-3.1-8b", "tiny"]);
    for name in Shape::PRESETS {
        let s = Shape::preset(name).unwrap();
        s.validate().unwrap();
        assert_eq!(s.name, *name);
    }
    assert_eq!(Shape::preset("8B"), Shape::preset("llama-3.1-8b"));
    assert!(Shape::preset("70b").is_none());
    // Llama-3.2-1B has 1.24 B weights (embeddings tied), Llama-3.1-8B 8.03 B.
    let p1 = Shape::preset("llama-3.2-1b").unwrap().n_params();
    let p8 = Shape::preset("llama-3.1-8b").unwrap().n_params();
    assert!((1_235_000_000..1_236_000_000).contains(&p1), "{p1}");
    assert!((8_030_000_000..8_031_000_000).contains(&p8), "{p8}");
    // Nearly all of it is F16: two bytes a weight.
    let b8 = Shape::preset("llama-3.1-8b").unwrap().file_bytes();
    assert!(b8 > 2 * p8 && b8 < 2 * p8 + (8 << 20), "{b8}");
}

#[test]
fn tiny_model_loads_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let shape = tiny();
    let (path, report) = write(&shape, dir.path(), "tiny.gguf", 1);
    assert_eq!(report.tensors, 1 + 1 + 2 * 9 + 1, "tied: no output.weight");
    assert_eq!(report.bytes, shape.file_bytes());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    assert!(!dir.path().join("tiny.gguf.tmp").exists());

    // The crate's own header reader accepts it and sees the metadata.
    let info = gguf::inspect(&path).unwrap();
    assert_eq!(info.version, 3);
    assert_eq!(info.architecture.as_deref(), Some("llama"));
    assert_eq!(info.name.as_deref(), Some("synthetic-llama-tiny"));
    assert_eq!(info.file_type_name(), Some("F16"));
    assert_eq!(info.n_tensors, report.tensors as u64);
    let t = |n: &str| info.tensors.iter().find(|t| t.name == n).unwrap().clone();
    assert_eq!(t("token_embd.weight").ne, [256, 1000, 1, 1]);
    assert_eq!(t("token_embd.weight").ggml_type, 1);
    assert_eq!(t("rope_freqs.weight").ne, [16, 1, 1, 1]);
    assert_eq!(t("rope_freqs.weight").ggml_type, 0);
    assert_eq!(t("blk.1.attn_k.weight").ne, [256, 64, 1, 1]);
    assert_eq!(t("blk.0.ffn_down.weight").ne, [512, 256, 1, 1]);
    assert_eq!(t("blk.0.ffn_gate.weight").ne, [256, 512, 1, 1]);
    assert!(info.tensors.iter().all(|t| t.file_offset % 32 == 0));
    assert!(info.tensors.iter().all(|t| t.name != "output.weight"));
    let n_params: u64 = info
        .tensors
        .iter()
        .map(|t| t.ne.iter().product::<u64>())
        .sum();
    assert_eq!(n_params, shape.n_params());

    // Norms are ones, matrices look like normal(0, 0.02).
    let bytes = std::fs::read(&path).unwrap();
    let norm = t("blk.0.attn_norm.weight");
    let at = norm.file_offset as usize;
    assert!(bytes[at..at + norm.size as usize]
        .chunks(4)
        .all(|c| f32::from_le_bytes(c.try_into().unwrap()) == 1.0));
    let q = t("blk.0.attn_q.weight");
    let at = q.file_offset as usize;
    let vals: Vec<f32> = bytes[at..at + q.size as usize]
        .chunks(2)
        .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    let mean = vals.iter().sum::<f32>() / vals.len() as f32;
    let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / vals.len() as f32).sqrt();
    assert!(mean.abs() < 0.001, "mean {mean}");
    assert!((std - 0.02).abs() < 0.001, "std {std}");

    let model = Model::load(&path, &ModelParams::default()).unwrap();
    assert_eq!(model.n_vocab(), 1000);
    assert_eq!(model.n_ctx_train(), 4096);
    let desc = model.description();
    assert!(
        desc.starts_with("llama") && desc.contains("F16"),
        "description {desc:?}"
    );
    assert_eq!(model.size_bytes(), info.tensor_bytes);
    let mut ctx = context(&model);
    decode_checks(&mut ctx, 1000);
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = write(&tiny(), dir.path(), "a.gguf", 42);
    let (b, _) = write(&tiny(), dir.path(), "b.gguf", 42);
    let (c, _) = write(&tiny(), dir.path(), "c.gguf", 43);
    let (a, b, c) = (
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        std::fs::read(c).unwrap(),
    );
    assert!(a == b, "same seed, different bytes");
    assert_eq!(a.len(), c.len());
    assert!(a != c, "different seeds, same bytes");
    // The header is the same; the weights differ almost everywhere.
    let info = gguf::inspect(&dir.path().join("a.gguf")).unwrap();
    let start = info.tensors[0].file_offset as usize;
    assert_eq!(a[..start], c[..start]);
    let differ = a[start..]
        .chunks(2)
        .zip(c[start..].chunks(2))
        .filter(|(x, y)| x != y)
        .count();
    assert!(differ > (a.len() - start) / 2 * 9 / 10, "{differ}");
}

#[test]
fn untied_shape_has_an_output_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape {
        name: "tiny-untied".into(),
        tied: false,
        n_layer: 1,
        ..tiny()
    };
    let (path, report) = write(&shape, dir.path(), "u.gguf", 3);
    assert_eq!(report.tensors, 1 + 1 + 9 + 1 + 1);
    let info = gguf::inspect(&path).unwrap();
    let out = info
        .tensors
        .iter()
        .find(|t| t.name == "output.weight")
        .unwrap();
    assert_eq!(out.ne, [256, 1000, 1, 1]);
    let model = Model::load(&path, &ModelParams::default()).unwrap();
    let mut ctx = context(&model);
    decode_checks(&mut ctx, 1000);
}

#[test]
fn gearbox_builds_and_shifts_on_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write(&tiny(), dir.path(), "tiny.gguf", 5);
    let model = Model::load(&path, &ModelParams::default()).unwrap();
    let info = gguf::inspect(&path).unwrap();
    let mut gb = Gearbox::build(
        &model,
        &path,
        &info,
        &GearboxOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let loaded = gb.current_types();
    assert_eq!(loaded.len(), 2 * 7, "7 matrices in each of 2 layers");
    assert!(
        loaded.iter().all(|(_, ty)| *ty == GgmlType::F16),
        "all F16 when loaded"
    );
    let mut ctx = context(&model);
    let high = decode_checks(&mut ctx, 1000);
    for g in [Gear::Low, Gear::Mid, Gear::High] {
        gb.shift(&ctx, g);
        let now = gb.current_types();
        for (i, (name, ty)) in now.iter().enumerate() {
            assert_eq!(*ty, gb.type_at(g, i), "{name} at {g}");
        }
        if g == Gear::High {
            assert_eq!(now, loaded);
        } else {
            assert!(
                now.iter().all(|(_, ty)| *ty != GgmlType::F16),
                "{g}: {now:?}"
            );
        }
        let logits = decode_checks(&mut ctx, 1000);
        if g == Gear::High {
            assert_eq!(logits, high, "high gear is the loaded model");
        } else {
            assert_ne!(logits, high, "{g} gear changes the logits");
        }
    }
    let r = gb.report();
    assert!(
        r.bytes[0] < r.bytes[1] && r.bytes[1] < r.bytes[2],
        "{:?}",
        r.bytes
    );
}

#[test]
fn bad_shapes_and_paths_fail_without_leaving_files() {
    let dir = tempfile::tempdir().unwrap();
    let bad = Shape {
        n_head: 7,
        ..tiny()
    };
    let path = dir.path().join("bad.gguf");
    let e = synth::write(&bad, &path, 0, |_, _| {}).unwrap_err();
    assert!(matches!(e, gearbx::Error::InvalidParam(_)), "{e}");
    let missing = dir.path().join("no/such/dir/m.gguf");
    let e = synth::write(&tiny(), &missing, 0, |_, _| {}).unwrap_err();
    assert!(matches!(e, gearbx::Error::Io { .. }), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Writes a ~1 GB custom shape and prints the rate (`cargo test --release --test synth --
/// --ignored --nocapture`).
#[test]
#[ignore]
fn rate_of_a_one_gigabyte_shape() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape {
        name: "bench-1g".into(),
        n_embd: 2048,
        n_layer: 6,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 8192,
        n_vocab: 32000,
        tied: false,
        n_ctx: 8192,
    };
    let (path, r) = write(&shape, dir.path(), "m.gguf", 9);
    let gb = r.bytes as f64 / 1e9;
    eprintln!(
        "{} tensors, {gb:.3} GB in {:.2} s: {:.2} s/GB, {:.2} GB/s",
        r.tensors,
        r.seconds,
        r.seconds / gb,
        gb / r.seconds
    );
    gguf::inspect(&path).unwrap();
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as f32;
    sign * match exp {
        0 => man * 2f32.powi(-24),
        31 => f32::INFINITY,
        e => (1.0 + man / 1024.0) * 2f32.powi(e - 15),
    }
}
