//! Inputs that try to break the requantization kernels (random weights at several scales,
//! zeros, constants, rounding ties, the largest finite values, subnormals, random bit
//! patterns, infinities and NaN), and ggml's own quantizer as the reference to compare with.
//! Used by the unit tests (CPU twin) and by `gearbx-bench kernels` (GPU).

use crate::error::Result;
use crate::llama::{weights, GgmlType};

use super::REQUANT_BLOCK;

/// One class of test input: its name and its bytes in the source type.
pub struct Case {
    pub class: &'static str,
    pub bytes: Vec<u8>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit().max(1e-7), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn encode(src_type: GgmlType, values: &[f32]) -> Vec<u8> {
    match src_type {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| super::fp32_to_fp16(v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
    }
}

/// Random bit patterns of the source type; `finite` leaves out infinities and NaN.
fn random_bits(src_type: GgmlType, n: usize, rng: &mut Rng, finite: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        let r = rng.next();
        match src_type {
            GgmlType::F32 => {
                let mut b = r as u32;
                if finite && (b >> 23) & 0xff == 0xff {
                    b &= !(1 << 30);
                }
                out.extend(b.to_le_bytes());
            }
            t => {
                let mut b = r as u16;
                let exp_all = if t == GgmlType::F16 { 0x7c00 } else { 0x7f80 };
                if finite && b & exp_all == exp_all {
                    b &= !(1 << 14);
                }
                out.extend(b.to_le_bytes());
            }
        }
    }
    out
}

/// Every input class for `src_type` (F32, F16 or BF16), `blocks` blocks of 32 each (a
/// multiple of 8 makes whole Q4_K blocks).
pub fn cases(src_type: GgmlType, blocks: usize, seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed ^ src_type.id() as u64);
    let n = blocks * REQUANT_BLOCK;
    let (max_finite, min_sub) = match src_type {
        GgmlType::F32 => (f32::MAX, f32::from_bits(1)),
        GgmlType::F16 => (65504.0, 5.960_464_5e-8),
        _ => (f32::from_bits(0x7f7f_0000), f32::from_bits(0x0001_0000)),
    };
    let mut v = |f: &mut dyn FnMut(usize, &mut Rng) -> f32| -> Vec<f32> {
        (0..n).map(|i| f(i, &mut rng)).collect()
    };
    let mut out = vec![
        ("normal-0.02", v(&mut |_, r| r.normal() * 0.02)),
        ("normal-1", v(&mut |_, r| r.normal())),
        ("uniform-1000", v(&mut |_, r| (r.unit() - 0.5) * 2000.0)),
        ("zeros", vec![0.0; n]),
        ("negative-zeros", vec![-0.0; n]),
        ("constant-blocks", {
            let c: Vec<f32> = v(&mut |_, r| r.normal());
            (0..n).map(|i| c[i / REQUANT_BLOCK]).collect()
        }),
        // Q8_0: a block maximum of 127 makes d = 1, so k + 0.5 rounds on a tie.
        (
            "ties-q8",
            v(&mut |i, r| {
                if i % REQUANT_BLOCK == 0 {
                    127.0
                } else {
                    (r.next() % 253) as f32 - 126.0 + 0.5
                }
            }),
        ),
        // Q4_0: a block maximum of -8 makes id = 1, so k - 0.5 lands x + 8.5 on an integer.
        (
            "ties-q4",
            v(&mut |i, r| {
                if i % REQUANT_BLOCK == 0 {
                    -8.0
                } else {
                    (r.next() % 16) as f32 - 7.0 - 0.5
                }
            }),
        ),
        // Q4_K: sub-blocks of 32 at scales from 0 to 1e4 side by side (a sub-block whose
        // 6-bit scale rounds to 0 keeps make_qkx2_quants' values), some of them constant.
        ("mixed-scales", {
            let scales = [0.0f32, 1e-6, 1e-3, 0.02, 1.0, 1e4];
            let (mut scale, mut flat) = (0.0f32, false);
            v(&mut |i, r| {
                if i % REQUANT_BLOCK == 0 {
                    scale = scales[(r.next() % 6) as usize];
                    flat = r.next() % 5 == 0;
                }
                scale * if flat { 0.5 } else { r.normal() }
            })
        }),
        // Q4_K: all-positive sub-blocks (the minimum is clamped to 0) and small integers
        // (candidate scales land values on rounding ties).
        ("positive", v(&mut |_, r| r.unit() * 3.0 + 0.25)),
        (
            "small-ints",
            v(&mut |_, r| (r.next() % 16) as f32 * 0.25 - 2.0),
        ),
        (
            "largest-finite",
            v(&mut |_, r| match r.next() % 4 {
                0 => max_finite,
                1 => -max_finite,
                _ => r.normal() * max_finite / 4.0,
            }),
        ),
        (
            "subnormals",
            v(&mut |_, r| match r.next() % 4 {
                0 => 0.0,
                k => min_sub * (r.next() % 1000) as f32 * if k == 1 { -1.0 } else { 1.0 },
            }),
        ),
    ]
    .into_iter()
    .map(|(class, vals)| Case {
        class,
        bytes: encode(src_type, &vals),
    })
    .collect::<Vec<_>>();
    out.push(Case {
        class: "random-bits",
        bytes: random_bits(src_type, n, &mut rng, true),
    });
    out.push(Case {
        class: "inf-and-nan",
        bytes: random_bits(src_type, n, &mut rng, false),
    });
    out
}

/// ggml's reference: the source converted to f32 by ggml's own to_float (F32 is read as it
/// is), quantized by `ggml_quantize_chunk` (what llama.cpp's quantizer runs), so that none of
/// gearbx's converters or quantizers is in it.
pub fn ggml_reference(src_type: GgmlType, bytes: &[u8], dst_type: GgmlType) -> Result<Vec<u8>> {
    let elem = super::source_elem_bytes(src_type).expect("a requantization source type");
    let n = bytes.len() / elem;
    let f = if src_type == GgmlType::F32 {
        weights::to_f32(src_type, bytes, n)?
    } else {
        let mut f = vec![0f32; n];
        weights::to_f32_ggml_into(src_type, bytes, &mut f)?;
        f
    };
    let (values, _) = super::requant_block(dst_type).expect("a requantization type");
    weights::quantize_ggml(dst_type, &f, n / values, values)
}

/// Index of the first block where `a` and `b` differ.
pub fn first_mismatch(a: &[u8], b: &[u8], dst_type: GgmlType) -> Option<usize> {
    let (_, bb) = super::requant_block(dst_type).expect("a requantization type");
    if a.len() != b.len() {
        return Some(0);
    }
    a.chunks(bb).zip(b.chunks(bb)).position(|(x, y)| x != y)
}

/// Number of blocks where `a` and `b` differ.
pub fn mismatches(a: &[u8], b: &[u8], dst_type: GgmlType) -> usize {
    let (_, bb) = super::requant_block(dst_type).expect("a requantization type");
    a.chunks(bb)
        .zip(b.chunks(bb))
        .filter(|(x, y)| x != y)
        .count()
}

/// The source and destination types the kernels cover.
pub const SOURCES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];
pub const TARGETS: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K];
