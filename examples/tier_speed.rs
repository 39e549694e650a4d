//! Tier building side by side in one process: ggml's reference path (the whole tensor through
//! its to_float, then `ggml_quantize_chunk` per type: the gearbox's build before our kernels)
//! against ours (`weights::requantize`: chunks of rows converted in cache by our F16 converter,
//! then our SIMD quantizers), on the same tensors, 2 threads each (rows split in halves), every
//! output compared byte for byte.
//! The tensors are a synthetic model of Llama-3.2-1B's shape in F16 (16 layers of 2048/8192
//! matrices and the 128,256 x 2048 head, 1.24 G weights, random values of real weights' scale),
//! or the float matrices of a GGUF file given as the argument (e.g. an F16 SmolLM2).
//! Prints per tier type the time of each path and the ratio, and the default plan (Q8_0 and
//! Q4_K from one dequantization, as the gearbox builds a float model's tiers).
//! `cargo run --release --example tier_speed [-- MODEL.gguf]`
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use gearbx::llama::{weights, GgmlType};
use gearbx::store::gguf;

/// One matrix: its name, rows and row length, and its values in `ty` (F32, F16 or BF16).
struct Matrix {
    name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

/// The matrices of Llama-3.2-1B's shape (hidden 2048, FFN 8192, 8 KV heads of 64, 16 layers,
/// vocabulary 128,256), F16 values ~ N(0, 0.02) from a fixed seed, one layer at a time.
fn synthetic_layer(layer: usize) -> Vec<Matrix> {
    let (h, f, kv) = (2048usize, 8192usize, 512usize);
    let mut shapes = vec![
        ("attn_q", h, h),
        ("attn_k", kv, h),
        ("attn_v", kv, h),
        ("attn_output", h, h),
        ("ffn_gate", f, h),
        ("ffn_up", f, h),
        ("ffn_down", h, f),
    ];
    if layer == 16 {
        shapes = vec![("output", 128256, h)];
    }
    shapes
        .into_iter()
        .enumerate()
        .map(|(k, (name, rows, cols))| {
            let mut x =
                0x9E37_79B9_7F4A_7C15u64 ^ ((layer * 16 + k) as u64).wrapping_mul(0x2545_F491);
            let mut bytes = Vec::with_capacity(rows * cols * 2);
            for _ in 0..rows * cols {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Sum of two uniforms: a bell of the weights' scale, cheap to make.
                let u = ((x >> 40) as f32 + ((x >> 16) & 0xff_ffff) as f32) / (1u64 << 24) as f32;
                let v = (u - 1.0) * 0.035;
                bytes.extend(gearbx::kernels::fp32_to_fp16(v).to_le_bytes());
            }
            Matrix {
                name: if layer == 16 {
                    name.to_string()
                } else {
                    format!("blk.{layer}.{name}")
                },
                ty: GgmlType::F16,
                rows,
                cols,
                bytes,
            }
        })
        .collect()
}

/// The 2-D float matrices of a GGUF file whose rows are whole blocks of 32 (Q4_K is built
/// only for those whose rows hold whole blocks of 256, as the gearbox's plan does).
fn gguf_matrices(path: &str) -> Vec<Matrix> {
    let info = gguf::inspect(path.as_ref()).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file = File::open(path).expect("open the model");
    info.tensors
        .iter()
        .filter_map(|t| {
            let ty = GgmlType::from_id(t.ggml_type)?;
            let float = [GgmlType::F32, GgmlType::F16, GgmlType::BF16].contains(&ty);
            let rows = (t.ne[1] * t.ne[2] * t.ne[3]) as usize;
            if !float || rows < 2 || t.ne[0] % 32 != 0 {
                return None;
            }
            let mut bytes = vec![0u8; t.size as usize];
            file.read_exact_at(&mut bytes, t.file_offset)
                .expect("read a tensor");
            Some(Matrix {
                name: t.name.clone(),
                ty,
                rows,
                cols: t.ne[0] as usize,
                bytes,
            })
        })
        .collect()
}

/// ggml's own to_float for `ty` (what `weights::to_f32` did for every type before).
fn ggml_to_f32(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    weights::to_f32_ggml_into(ty, bytes, &mut out).expect("dequantize");
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Ggml,
    Ours,
}

/// Builds `types` from `m` on 2 threads (each half the rows: dequantize once, then each type);
/// returns the outputs and the seconds taken.
fn build(m: &Matrix, types: &[GgmlType], path: Path) -> (Vec<Vec<u8>>, f64) {
    let elem = if m.ty == GgmlType::F32 { 4 } else { 2 };
    let half = m.rows / 2;
    let parts = [(0, half), (half, m.rows - half)];
    let t = Instant::now();
    let outs: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|&(r0, nr)| {
                s.spawn(move || {
                    let bytes = &m.bytes[r0 * m.cols * elem..(r0 + nr) * m.cols * elem];
                    match path {
                        Path::Ggml => {
                            let f = ggml_to_f32(m.ty, bytes, nr * m.cols);
                            types
                                .iter()
                                .map(|&ty| weights::quantize_ggml(ty, &f, nr, m.cols))
                                .collect::<Result<Vec<_>, _>>()
                                .expect("quantize")
                        }
                        Path::Ours => {
                            weights::requantize(m.ty, bytes, nr, m.cols, types).expect("requantize")
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let joined = (0..types.len())
        .map(|k| outs.iter().flat_map(|o| o[k].iter().copied()).collect())
        .collect();
    (joined, secs)
}

fn main() {
    let arg = std::env::args().nth(1);
    println!(
        "tier build, 2 threads: ggml's quantize_chunk vs our kernels ({:?} on this CPU), {}",
        gearbx::kernels::entropy_kernel(),
        arg.as_deref()
            .unwrap_or("synthetic Llama-3.2-1B shape, F16")
    );
    let plans: [(&str, Vec<GgmlType>); 4] = [
        ("Q8_0", vec![GgmlType::Q8_0]),
        ("Q4_0", vec![GgmlType::Q4_0]),
        ("Q4_K", vec![GgmlType::Q4_K]),
        (
            "default plan (Q8_0 + Q4_K)",
            vec![GgmlType::Q8_0, GgmlType::Q4_K],
        ),
    ];
    let mut secs = vec![[0.0f64; 2]; plans.len()];
    let (mut weights_n, mut differ) = (0usize, 0usize);
    let chunks: Box<dyn Iterator<Item = Vec<Matrix>>> = match &arg {
        Some(p) => Box::new(std::iter::once(gguf_matrices(p))),
        None => Box::new((0..=16).map(synthetic_layer)),
    };
    for layer in chunks {
        for m in &layer {
            weights_n += m.rows * m.cols;
            for (k, (_, all_types)) in plans.iter().enumerate() {
                let types: Vec<GgmlType> = all_types
                    .iter()
                    .copied()
                    .filter(|t| (m.cols as u64).is_multiple_of(t.layout().0))
                    .collect();
                if types.is_empty() {
                    continue;
                }
                // Alternate which path goes first, so neither always finds a warm cache.
                let order = if k % 2 == 0 {
                    [Path::Ggml, Path::Ours]
                } else {
                    [Path::Ours, Path::Ggml]
                };
                let mut got = Vec::new();
                for p in order {
                    let (out, s) = build(m, &types, p);
                    secs[k][(p == Path::Ours) as usize] += s;
                    got.push(out);
                }
                if got[0] != got[1] {
                    differ += 1;
                    eprintln!("{}: {:?} outputs differ", m.name, plans[k].0);
                }
            }
        }
    }
    println!("{:.2} G weights", weights_n as f64 / 1e9);
    for (k, (name, _)) in plans.iter().enumerate() {
        let [g, o] = secs[k];
        println!("{name:<28} ggml {g:7.2} s  ours {o:7.2} s  {:5.2}x", g / o);
    }
    if differ > 0 {
        eprintln!("{differ} outputs differ from ggml's");
        std::process::exit(1);
    }
    println!("every output bit-identical to ggml's");
}
