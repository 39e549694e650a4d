//! Simulated KV cache formats for `gearbx-bench kv --simulate`: a quantize/dequantize round
//! trip applied to every row llama.cpp writes into an F32 cache ([`KvRowHook`]), so a context
//! computes as one storing the format would, without the format's kernels. Two families:
//! TurboQuant-style parts (`tqN`: a randomized Walsh-Hadamard rotation, then N-bit Lloyd-Max
//! codes for a unit Gaussian with one f16 scale per 64 values) and llama.cpp's own types
//! (ggml's quantizer, with llama.cpp's Hadamard rotation), the check of the method against
//! llama.cpp's real caches in the same run.

use std::fmt;
use std::str::FromStr;

use gearbx::error::{Error, Result};
use gearbx::kernels::{fp16_to_fp32, fp32_to_fp16};
use gearbx::llama::kv::{head_sizes, CacheType, KvPart, KvRowHook};
use gearbx::llama::{weights, GgmlType, Model};

/// Values sharing one scale in a `tqN` part.
pub const TQ_BLOCK: usize = 64;

/// Lloyd-Max reconstruction levels for a unit Gaussian (Max 1960), positive half; the
/// codebook is symmetric. Checked against the centroid condition in the tests.
const LLOYD_MAX_2: [f32; 2] = [0.4528, 1.5104];
const LLOYD_MAX_3: [f32; 4] = [0.2451, 0.7560, 1.3439, 2.1520];
const LLOYD_MAX_4: [f32; 8] = [
    0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0690, 2.7326,
];

/// How one half of the cache (K or V) is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPart {
    /// A llama.cpp cache type, through ggml's quantizer.
    Ggml(CacheType),
    /// TurboQuant-style codes of this many bits (2, 3 or 4).
    Turbo(u8),
}

impl SimPart {
    /// Bits per stored value, scales included.
    pub fn bits(self) -> f64 {
        match self {
            SimPart::Ggml(t) => {
                let (blck, bytes) = t.layout();
                bytes as f64 * 8.0 / blck as f64
            }
            SimPart::Turbo(b) => b as f64 + 16.0 / TQ_BLOCK as f64,
        }
    }

    fn is_quantized(self) -> bool {
        match self {
            SimPart::Ggml(t) => t.is_quantized(),
            SimPart::Turbo(_) => true,
        }
    }

    fn levels(self) -> &'static [f32] {
        match self {
            SimPart::Turbo(2) => &LLOYD_MAX_2,
            SimPart::Turbo(3) => &LLOYD_MAX_3,
            SimPart::Turbo(4) => &LLOYD_MAX_4,
            _ => &[],
        }
    }
}

impl fmt::Display for SimPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimPart::Ggml(t) => write!(f, "{t}"),
            SimPart::Turbo(b) => write!(f, "tq{b}"),
        }
    }
}

impl FromStr for SimPart {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tq2" => Ok(SimPart::Turbo(2)),
            "tq3" => Ok(SimPart::Turbo(3)),
            "tq4" => Ok(SimPart::Turbo(4)),
            other => other.parse().map(SimPart::Ggml).map_err(|_| {
                Error::InvalidParam(format!(
                    "unknown simulated cache part {s:?}: use tq2, tq3, tq4 or a cache type"
                ))
            }),
        }
    }
}

/// A simulated (K, V) format; `rotation` applies llama.cpp's rule to the llama.cpp parts
/// (rotate a quantized part); `tqN` parts always rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimFormat {
    pub k: SimPart,
    pub v: SimPart,
    pub rotation: bool,
}

/// The rotation sizes llama.cpp uses (src/llama-kv-cache.cpp): K the largest power-of-two
/// multiple of 64 dividing the head size, V 64; none where the head size is not a multiple
/// of 64.
pub fn rotation_sizes(head_k: usize, head_v: usize) -> (Option<usize>, Option<usize>) {
    let k = (head_k > 0 && head_k.is_multiple_of(64)).then(|| {
        let mut n = 64;
        while head_k.is_multiple_of(2 * n) {
            n *= 2;
        }
        n
    });
    let v = (head_v > 0 && head_v.is_multiple_of(64)).then_some(64);
    (k, v)
}

/// In-place orthonormal Walsh-Hadamard transform of `x` (length a power of two), the
/// Sylvester matrix llama.cpp builds (symmetric: its own inverse).
pub fn hadamard(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
}

/// ±1 signs of the randomized rotation (a fixed seed: the rotation is data-oblivious and the
/// same for every layer, head and run).
fn signs(n: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            if (z ^ (z >> 31)) & 1 == 1 {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

/// The nearest level of the symmetric codebook `half` to `u`.
fn nearest(half: &[f32], u: f32) -> f32 {
    let a = u.abs();
    let mut best = half[0];
    for &l in &half[1..] {
        if (a - l).abs() < (a - best).abs() {
            best = l;
        }
    }
    best.copysign(u)
}

/// Quantizes one block to scale × codebook level and writes the dequantized values back: the
/// scale starts at the block's RMS, is refit by least squares to the chosen codes a few
/// times, then rounded to f16 as a cache would store it, and the codes chosen again for it.
pub fn lloyd_max_round_trip(half: &[f32], x: &mut [f32]) {
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    if rms == 0.0 || !rms.is_finite() {
        x.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut s = rms;
    for _ in 0..4 {
        let (mut num, mut den) = (0f32, 0f32);
        for &v in x.iter() {
            let c = nearest(half, v / s);
            num += v * c;
            den += c * c;
        }
        if den > 0.0 && num > 0.0 {
            s = num / den;
        }
    }
    let s = fp16_to_fp32(fp32_to_fp16(s));
    for v in x.iter_mut() {
        *v = s * nearest(half, *v / s);
    }
}

/// One half's round trip for a row of `n_head` heads.
struct PartSim {
    part: SimPart,
    /// Rotation block and its signs (all +1 for llama.cpp's rotation).
    rot: Option<(usize, Vec<f32>)>,
}

impl PartSim {
    fn new(part: SimPart, rotation: bool, rot_size: Option<usize>) -> Self {
        let rot = match part {
            SimPart::Turbo(_) => rot_size.map(|n| (n, signs(n))),
            SimPart::Ggml(_) if rotation && part.is_quantized() => {
                rot_size.map(|n| (n, vec![1.0; n]))
            }
            SimPart::Ggml(_) => None,
        };
        Self { part, rot }
    }

    fn rotate(&self, row: &mut [f32], inverse: bool) {
        let Some((n, signs)) = &self.rot else {
            return;
        };
        for chunk in row.chunks_exact_mut(*n) {
            // R = H·diag(signs): forward multiplies by the signs first; the inverse
            // R^T = diag(signs)·H multiplies after.
            if !inverse {
                chunk.iter_mut().zip(signs).for_each(|(v, s)| *v *= s);
            }
            hadamard(chunk);
            if inverse {
                chunk.iter_mut().zip(signs).for_each(|(v, s)| *v *= s);
            }
        }
    }

    fn round_trip(&self, row: &mut [f32]) -> Result<()> {
        self.rotate(row, false);
        match self.part {
            SimPart::Ggml(t) if t.is_quantized() || t.0 != GgmlType::F32 => {
                let bytes = weights::quantize_ggml(t.0, row, 1, row.len())?;
                let back = weights::to_f32(t.0, &bytes, row.len())?;
                row.copy_from_slice(&back);
            }
            SimPart::Ggml(_) => {}
            SimPart::Turbo(_) => {
                let half = self.part.levels();
                for block in row.chunks_mut(TQ_BLOCK) {
                    lloyd_max_round_trip(half, block);
                }
            }
        }
        self.rotate(row, true);
        Ok(())
    }
}

/// The [`KvRowHook`] of a simulated format.
pub struct SimHook {
    k: PartSim,
    v: PartSim,
    /// Rows edited (a lane that edited none measured nothing).
    pub rows: u64,
    /// The first error of ggml's quantizer, if any (then rows stop being edited).
    pub error: Option<String>,
}

impl SimHook {
    /// Checks that the model's head sizes suit the format (`tqN` needs rotation blocks and
    /// scale blocks of 64 to divide them).
    pub fn new(model: &Model, f: SimFormat) -> Result<Self> {
        let (hk, hv) = head_sizes(model);
        let (hk, hv) = (hk as usize, hv as usize);
        let (rk, rv) = rotation_sizes(hk, hv);
        for (what, part, head) in [("K", f.k, hk), ("V", f.v, hv)] {
            let ok = match part {
                SimPart::Turbo(_) => head % TQ_BLOCK == 0,
                SimPart::Ggml(t) => !t.is_quantized() || (head as u64).is_multiple_of(t.layout().0),
            };
            if !ok {
                return Err(Error::InvalidParam(format!(
                    "the simulated {what} part {part} does not divide this model's head size {head}"
                )));
            }
        }
        Ok(Self {
            k: PartSim::new(f.k, f.rotation, rk),
            v: PartSim::new(f.v, f.rotation, rv),
            rows: 0,
            error: None,
        })
    }

    /// Applies the format to one row of K or V values.
    pub fn apply(&mut self, part: KvPart, row: &mut [f32]) {
        if self.error.is_some() {
            return;
        }
        let sim = match part {
            KvPart::K => &self.k,
            KvPart::V => &self.v,
        };
        match sim.round_trip(row) {
            Ok(()) => self.rows += 1,
            Err(e) => self.error = Some(e.to_string()),
        }
    }
}

/// Shares a [`SimHook`] between the context that calls it and the lane that reads its counts.
#[derive(Clone)]
pub struct SharedSimHook(pub std::sync::Arc<std::sync::Mutex<SimHook>>);

impl KvRowHook for SharedSimHook {
    fn edit_row(&mut self, part: KvPart, _layer: u32, row: &mut [f32]) {
        if let Ok(mut h) = self.0.lock() {
            h.apply(part, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normal samples from a fixed-seed Box-Muller.
    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut uni = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (a, b) = (uni(), uni());
                ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
            })
            .collect()
    }

    #[test]
    fn codebooks_satisfy_the_lloyd_max_centroid_condition() {
        // Each level is the mean of N(0,1) over its cell (midpoints between levels), by
        // numerical integration.
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        for half in [&LLOYD_MAX_2[..], &LLOYD_MAX_3[..], &LLOYD_MAX_4[..]] {
            for (i, &l) in half.iter().enumerate() {
                let lo = if i == 0 {
                    0.0
                } else {
                    (half[i - 1] + l) as f64 / 2.0
                };
                let hi = half.get(i + 1).map_or(8.0, |&h| (h + l) as f64 / 2.0);
                let n = 20_000;
                let dx = (hi - lo) / n as f64;
                let (mut m0, mut m1) = (0.0, 0.0);
                for j in 0..n {
                    let x = lo + (j as f64 + 0.5) * dx;
                    m0 += pdf(x) * dx;
                    m1 += x * pdf(x) * dx;
                }
                assert!(
                    (m1 / m0 - l as f64).abs() < 2e-3,
                    "level {l}: centroid {}",
                    m1 / m0
                );
            }
        }
    }

    #[test]
    fn hadamard_with_signs_is_orthonormal_and_inverts() {
        let x = gaussian(256, 1);
        let sim = PartSim::new(SimPart::Turbo(4), true, Some(64));
        let mut y = x.clone();
        sim.rotate(&mut y, false);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x) - norm(&y)).abs() < 1e-3 * norm(&x));
        assert!(x.iter().zip(&y).any(|(a, b)| (a - b).abs() > 1e-3));
        sim.rotate(&mut y, true);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn turbo_distortion_matches_lloyd_max_on_gaussian_data() {
        // Lloyd-Max's mean squared error for N(0,1): 0.1175 (2 bits), 0.03454 (3), 0.009497
        // (4); a per-block scale fitted to the data lands close to it.
        for (bits, mse_ref) in [(2u8, 0.1175f32), (3, 0.03454), (4, 0.009497)] {
            let x = gaussian(64 * 200, 7 + bits as u64);
            let mut y = x.clone();
            for b in y.chunks_mut(TQ_BLOCK) {
                lloyd_max_round_trip(SimPart::Turbo(bits).levels(), b);
            }
            let mse = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / x.len() as f32;
            assert!(
                mse < mse_ref * 1.15 && mse > mse_ref * 0.6,
                "{bits} bits: mse {mse} vs {mse_ref}"
            );
        }
    }

    #[test]
    fn rotated_turbo_keys_keep_attention_scores_against_f32() {
        // A key with an outlier channel (what rotation is for): the rotated 4-bit round trip
        // keeps q·k close to the F32 product, and closer than without the rotation.
        let mut k = gaussian(64, 3);
        k[5] = 12.0;
        let q = gaussian(64, 4);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let exact = dot(&q, &k);
        let rotated = PartSim::new(SimPart::Turbo(4), true, Some(64));
        let mut kr = k.clone();
        rotated.round_trip(&mut kr).unwrap();
        let mut kp = k.clone();
        lloyd_max_round_trip(SimPart::Turbo(4).levels(), &mut kp);
        let err = |a: &[f32]| {
            a.iter()
                .zip(&k)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
        };
        assert!(
            err(&kr) < err(&kp),
            "rotated {} plain {}",
            err(&kr),
            err(&kp)
        );
        assert!(
            (dot(&q, &kr) - exact).abs() < 0.05 * dot(&k, &k).sqrt() * dot(&q, &q).sqrt(),
            "{} vs {exact}",
            dot(&q, &kr)
        );
    }

    #[test]
    fn ggml_parts_round_trip_through_ggml_and_f32_is_untouched() {
        let x = gaussian(128, 9);
        let sim = PartSim::new(SimPart::Ggml("q4_0".parse().unwrap()), false, Some(64));
        let mut y = x.clone();
        sim.round_trip(&mut y).unwrap();
        let bytes = weights::quantize_ggml(GgmlType::Q4_0, &x, 1, 128).unwrap();
        assert_eq!(y, weights::to_f32(GgmlType::Q4_0, &bytes, 128).unwrap());
        let f32_part = PartSim::new(SimPart::Ggml("f32".parse().unwrap()), true, Some(64));
        let mut z = x.clone();
        f32_part.round_trip(&mut z).unwrap();
        assert_eq!(z, x);
    }

    #[test]
    fn parts_parse_and_count_bits() {
        assert_eq!("tq2".parse::<SimPart>().unwrap(), SimPart::Turbo(2));
        assert_eq!("TQ4".parse::<SimPart>().unwrap().bits(), 4.25);
        assert_eq!("q4_0".parse::<SimPart>().unwrap().bits(), 4.5);
        assert_eq!("q8_0".parse::<SimPart>().unwrap().bits(), 8.5);
        assert!("tq5".parse::<SimPart>().is_err());
        assert_eq!(rotation_sizes(64, 64), (Some(64), Some(64)));
        assert_eq!(rotation_sizes(256, 256), (Some(256), Some(64)));
        assert_eq!(rotation_sizes(80, 80), (None, None));
    }
}
