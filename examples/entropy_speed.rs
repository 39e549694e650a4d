//! The entropy twins side by side in one process: the scalar C reference and the kernel this
//! CPU runs (AVX2+FMA on x86-64), interleaved in rounds, at vocabulary sizes of real models
//! (SmolLM2 49,152; Llama 3 128,256; Gemma 3 262,144). Prints the median time of each and the
//! ratio. `cargo run --release --example entropy_speed`
use std::time::Instant;

use gearbx::kernels::{entropy_bits_with, entropy_kernel, EntropyKernel};

fn main() {
    let fast = entropy_kernel();
    println!("entropy kernel on this CPU: {fast:?}");
    let mut x = 0x2545F4914F6CDD1Du64;
    for v in [49152usize, 128256, 262144] {
        let row: Vec<f32> = (0..v)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 16.0
            })
            .collect();
        let time = |k: EntropyKernel| {
            let t = Instant::now();
            for _ in 0..20 {
                std::hint::black_box(entropy_bits_with(k, std::hint::black_box(&row)));
            }
            t.elapsed().as_secs_f64() / 20.0 * 1e6
        };
        let (mut scalar, mut kernel) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            scalar.push(time(EntropyKernel::Scalar));
            kernel.push(time(fast));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (s, k) = (median(&mut scalar), median(&mut kernel));
        println!(
            "V {v:>6}: scalar {s:8.1} us, {fast:?} {k:8.1} us, {:.2}x",
            s / k
        );
    }
}
