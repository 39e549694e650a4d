//! Writes the adversarial input classes of `gearbx::kernels::parity` (every source type) to a
//! file, for the C parity driver that runs the quantizers' twins under qemu-aarch64
//! (tests/arm/requant_parity.c, scripts/arm-check.sh). Format: "GBXV1\n", then per class its
//! source type (u32, ggml id), name (u32 length, bytes) and values (u64 length, bytes), all
//! little-endian. `cargo run --release --example kernel_vectors -- FILE`
use std::io::Write;

use gearbx::kernels::parity;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: kernel_vectors FILE");
        std::process::exit(2);
    };
    let mut out = Vec::from(&b"GBXV1\n"[..]);
    let mut classes = 0;
    for src in parity::SOURCES {
        for case in parity::cases(src, 2048, 7) {
            classes += 1;
            out.extend(src.id().to_le_bytes());
            out.extend((case.class.len() as u32).to_le_bytes());
            out.extend(case.class.as_bytes());
            out.extend((case.bytes.len() as u64).to_le_bytes());
            out.extend(&case.bytes);
        }
    }
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(&out));
    if let Err(e) = written {
        eprintln!("{path}: {e}");
        std::process::exit(11);
    }
    println!("{path}: {classes} classes, {} bytes", out.len());
}
