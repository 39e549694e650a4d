//! Safe wrappers over gearbx's own kernels in csrc/ (compiled by build.rs): entropy, and
//! requantization on the CPU (the scalar twin) and, with `--features cuda`, on the GPU.

use std::ffi::{c_float, c_int, c_void};

use crate::llama::GgmlType;

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod parity;

mod ffi {
    use std::ffi::{c_float, c_int, c_void};
    unsafe extern "C" {
        pub fn gearbx_entropy_bits(
            logits: *const c_float,
            n: usize,
            n_nonfinite: *mut usize,
        ) -> c_float;
        pub fn gearbx_entropy_bits_scalar(
            logits: *const c_float,
            n: usize,
            n_nonfinite: *mut usize,
        ) -> c_float;
        #[cfg(target_arch = "x86_64")]
        pub fn gearbx_entropy_bits_avx2(
            logits: *const c_float,
            n: usize,
            n_nonfinite: *mut usize,
        ) -> c_float;
        #[cfg(target_arch = "x86_64")]
        pub fn gearbx_have_avx2() -> c_int;
        #[cfg(target_arch = "x86_64")]
        pub fn gearbx_quantize_q8_0_avx2(x: *const c_float, out: *mut u8, nblocks: i64);
        #[cfg(target_arch = "x86_64")]
        pub fn gearbx_quantize_q4_0_avx2(x: *const c_float, out: *mut u8, nblocks: i64);
        #[cfg(target_arch = "x86_64")]
        pub fn gearbx_quantize_q4_k_avx2(x: *const c_float, out: *mut u8, nblocks: i64);
        #[cfg(target_arch = "x86_64")]
        pub fn gearbx_f16_to_f32_row_avx2(x: *const u16, out: *mut c_float, n: i64);
        #[cfg(target_arch = "aarch64")]
        pub fn gearbx_f16_to_f32_row_neon(x: *const u16, out: *mut c_float, n: i64);
        #[cfg(target_arch = "aarch64")]
        pub fn gearbx_quantize_q8_0_neon(x: *const c_float, out: *mut u8, nblocks: i64);
        #[cfg(target_arch = "aarch64")]
        pub fn gearbx_quantize_q4_0_neon(x: *const c_float, out: *mut u8, nblocks: i64);
        #[cfg(target_arch = "aarch64")]
        pub fn gearbx_quantize_q4_k_neon(x: *const c_float, out: *mut u8, nblocks: i64);
        pub fn gearbx_fp32_to_fp16(f: c_float) -> u16;
        pub fn gearbx_fp16_to_fp32(h: u16) -> c_float;
        pub fn gearbx_requant_supported(src_type: c_int, dst_type: c_int) -> c_int;
        pub fn gearbx_requant_ref(
            src_type: c_int,
            src: *const c_void,
            dst_type: c_int,
            dst: *mut c_void,
            n: i64,
        ) -> c_int;
    }
}

/// IEEE half of `f`, rounded to nearest even (the kernels' conversion).
pub fn fp32_to_fp16(f: f32) -> u16 {
    // SAFETY: pure function.
    unsafe { ffi::gearbx_fp32_to_fp16(f) }
}

/// The float value of IEEE half `h` (exact).
pub fn fp16_to_fp32(h: u16) -> f32 {
    // SAFETY: pure function.
    unsafe { ffi::gearbx_fp16_to_fp32(h) }
}

/// Values per block of Q8_0 and Q4_0 (the adversarial cases come in blocks of this size).
pub const REQUANT_BLOCK: usize = 32;

/// Values and bytes per block of a type the requantization kernels write (Q8_0, Q4_0, Q4_K).
pub fn requant_block(dst_type: GgmlType) -> Option<(usize, usize)> {
    match dst_type {
        GgmlType::Q8_0 => Some((32, 34)),
        GgmlType::Q4_0 => Some((32, 18)),
        GgmlType::Q4_K => Some((256, 144)),
        _ => None,
    }
}

/// Whether our kernels requantize `src_type` (ggml id: F32, F16, BF16) into `dst_type` (Q8_0,
/// Q4_0, Q4_K).
pub fn requant_supported(src_type: GgmlType, dst_type: GgmlType) -> bool {
    // SAFETY: pure function of two integers.
    unsafe { ffi::gearbx_requant_supported(src_type.id() as c_int, dst_type.id() as c_int) != 0 }
}

/// Bytes of one element of a requantization source type.
pub fn source_elem_bytes(src_type: GgmlType) -> Option<usize> {
    match src_type {
        GgmlType::F32 => Some(4),
        GgmlType::F16 | GgmlType::BF16 => Some(2),
        _ => None,
    }
}

/// Bytes `n` values take in `dst_type` (Q8_0: 34 per block of 32, Q4_0: 18, Q4_K: 144 per
/// 256); None when `n` is not whole blocks.
pub fn requant_bytes(dst_type: GgmlType, n: usize) -> Option<usize> {
    let (values, bytes) = requant_block(dst_type)?;
    n.is_multiple_of(values).then(|| n / values * bytes)
}

/// The scalar C twin of the CUDA kernels: `src` (bytes of `src_type` values, whole blocks of
/// `dst_type`) requantized into `dst_type`, bit-identical to ggml's reference quantizer.
/// None for an unsupported pair or a length that is not whole blocks.
pub fn requant_ref(src_type: GgmlType, src: &[u8], dst_type: GgmlType) -> Option<Vec<u8>> {
    let elem = source_elem_bytes(src_type)?;
    if !src.len().is_multiple_of(elem) || !requant_supported(src_type, dst_type) {
        return None;
    }
    let n = src.len() / elem;
    let mut out = vec![0u8; requant_bytes(dst_type, n)?];
    // SAFETY: src holds n values of src_type; out holds the bytes of n values of dst_type;
    // the pair and n are checked above (the C side checks them again).
    let rc = unsafe {
        ffi::gearbx_requant_ref(
            src_type.id() as c_int,
            src.as_ptr() as *const c_void,
            dst_type.id() as c_int,
            out.as_mut_ptr() as *mut c_void,
            n as i64,
        )
    };
    (rc == 0).then_some(out)
}

/// Entropy of softmax(logits) in bits, and the number of NaN/+inf logits (then it is NaN):
/// through the fastest twin this CPU runs ([`entropy_kernel`] says which).
pub fn entropy_bits(logits: &[f32]) -> (f32, usize) {
    let mut bad = 0usize;
    // SAFETY: logits is valid for logits.len() floats; bad is a valid out pointer.
    let h: c_float = unsafe { ffi::gearbx_entropy_bits(logits.as_ptr(), logits.len(), &mut bad) };
    (h, bad)
}

/// `x` (whole blocks of `dst_type`) in `dst_type` (Q8_0, Q4_0 or Q4_K) through the SIMD twin
/// of this CPU, bit-identical to ggml's reference quantizer; None where there is no twin for
/// the type on this CPU (or `x` is not whole blocks): then ggml's own quantizer does it.
pub fn quantize_fast(dst_type: GgmlType, x: &[f32]) -> Option<Vec<u8>> {
    let (values, bytes) = requant_block(dst_type)?;
    let mut out = vec![0u8; x.len() / values * bytes];
    quantize_fast_into(dst_type, x, &mut out).then_some(out)
}

/// [`quantize_fast`] into `out`, which must hold exactly the output's bytes; false (nothing
/// written) where there is no twin, or the lengths are not whole blocks.
pub fn quantize_fast_into(dst_type: GgmlType, x: &[f32], out: &mut [u8]) -> bool {
    let (Some((values, bytes)), Some(f)) = (requant_block(dst_type), simd_quantizer(dst_type))
    else {
        return false;
    };
    let blocks = x.len() / values;
    if !x.len().is_multiple_of(values) || out.len() != blocks * bytes {
        return false;
    }
    // SAFETY: x holds `blocks` blocks of dst_type's values, out their bytes (checked); the CPU
    // has the instructions of the twin (simd_quantizer checks).
    unsafe { f(x.as_ptr(), out.as_mut_ptr(), blocks as i64) };
    true
}

/// IEEE halves (little-endian bytes, two per value) into `out` (exact), through F16C or NEON
/// where the CPU has it. Panics if the lengths disagree.
pub fn f16_to_f32_into(src: &[u8], out: &mut [f32]) {
    assert_eq!(src.len(), out.len() * 2, "two bytes per half");
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        #[cfg(target_arch = "x86_64")]
        let f =
            (entropy_kernel() == EntropyKernel::Avx2).then_some(ffi::gearbx_f16_to_f32_row_avx2);
        #[cfg(target_arch = "aarch64")]
        let f = Some(ffi::gearbx_f16_to_f32_row_neon);
        if let Some(f) = f {
            // SAFETY: src holds out.len() halves (checked; unaligned loads in the kernels);
            // out is writable for as many floats; the CPU has the instructions.
            unsafe {
                f(
                    src.as_ptr() as *const u16,
                    out.as_mut_ptr(),
                    out.len() as i64,
                )
            };
            return;
        }
    }
    for (o, h) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = fp16_to_fp32(u16::from_le_bytes([h[0], h[1]]));
    }
}

type Quantizer = unsafe extern "C" fn(*const c_float, *mut u8, i64);

/// This CPU's SIMD twin of the `dst_type` quantizer: AVX2+FMA on x86-64 (checked at run
/// time), NEON on AArch64 (always there).
fn simd_quantizer(dst_type: GgmlType) -> Option<Quantizer> {
    #[cfg(target_arch = "x86_64")]
    if entropy_kernel() == EntropyKernel::Avx2 {
        return match dst_type {
            GgmlType::Q8_0 => Some(ffi::gearbx_quantize_q8_0_avx2),
            GgmlType::Q4_0 => Some(ffi::gearbx_quantize_q4_0_avx2),
            GgmlType::Q4_K => Some(ffi::gearbx_quantize_q4_k_avx2),
            _ => None,
        };
    }
    #[cfg(target_arch = "aarch64")]
    return match dst_type {
        GgmlType::Q8_0 => Some(ffi::gearbx_quantize_q8_0_neon),
        GgmlType::Q4_0 => Some(ffi::gearbx_quantize_q4_0_neon),
        GgmlType::Q4_K => Some(ffi::gearbx_quantize_q4_k_neon),
        _ => None,
    };
    #[allow(unreachable_code)]
    {
        let _ = dst_type;
        None
    }
}

/// The entropy twins: the scalar C reference, and the AVX2+FMA kernel where the CPU has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropyKernel {
    Scalar,
    Avx2,
}

/// The twin [`entropy_bits`] uses on this CPU.
pub fn entropy_kernel() -> EntropyKernel {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a CPU feature query.
    if unsafe { ffi::gearbx_have_avx2() } != 0 {
        return EntropyKernel::Avx2;
    }
    EntropyKernel::Scalar
}

/// [`entropy_bits`] through one given twin; None when this CPU cannot run it.
pub fn entropy_bits_with(k: EntropyKernel, logits: &[f32]) -> Option<(f32, usize)> {
    let mut bad = 0usize;
    let (p, n) = (logits.as_ptr(), logits.len());
    let h = match k {
        // SAFETY: p is valid for n floats; bad is a valid out pointer.
        EntropyKernel::Scalar => unsafe { ffi::gearbx_entropy_bits_scalar(p, n, &mut bad) },
        #[cfg(target_arch = "x86_64")]
        EntropyKernel::Avx2 if entropy_kernel() == EntropyKernel::Avx2 => {
            // SAFETY: as above, and the CPU has AVX2 and FMA (checked).
            unsafe { ffi::gearbx_entropy_bits_avx2(p, n, &mut bad) }
        }
        EntropyKernel::Avx2 => return None,
    };
    Some((h, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::{sys, weights};

    /// Naive two-pass reference in f64: softmax, then -sum p log2 p.
    fn reference(l: &[f32]) -> f64 {
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = l.iter().map(|&x| ((x as f64) - m).exp()).sum();
        l.iter()
            .map(|&x| ((x as f64) - m).exp() / z)
            .filter(|&p| p > 0.0)
            .map(|p| -p * p.log2())
            .sum()
    }

    #[test]
    fn uniform_is_log2_v_and_one_hot_is_zero() {
        for v in [2usize, 1000, 49152, 128256] {
            let (h, bad) = entropy_bits(&vec![0.25f32; v]);
            assert_eq!(bad, 0);
            assert!((h as f64 - (v as f64).log2()).abs() < 1e-4, "V={v}: {h}");
        }
        let mut one_hot = vec![-1e4f32; 49152];
        one_hot[7] = 1e4;
        assert_eq!(entropy_bits(&one_hot).0, 0.0);
        let mut masked = vec![f32::NEG_INFINITY; 10];
        masked[3] = 0.0;
        masked[4] = 0.0;
        assert!(
            (entropy_bits(&masked).0 - 1.0).abs() < 1e-6,
            "two live tokens = 1 bit"
        );
    }

    #[test]
    fn matches_reference_on_pseudo_random_logits() {
        let mut x = 0x2545F4914F6CDD1Du64;
        for scale in [0.1f32, 1.0, 10.0, 100.0] {
            let l: Vec<f32> = (0..49152)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
                })
                .collect();
            let (h, _) = entropy_bits(&l);
            assert!(
                (h as f64 - reference(&l)).abs() < 1e-3,
                "scale {scale}: {h} vs {}",
                reference(&l)
            );
        }
    }

    #[test]
    fn half_conversions_match_ggml() {
        for h in 0..=u16::MAX {
            // SAFETY: pure conversion functions of ggml.
            let g = unsafe { sys::ggml_fp16_to_fp32(h) };
            let ours = fp16_to_fp32(h);
            assert!(
                ours.to_bits() == g.to_bits() || (ours.is_nan() && g.is_nan()),
                "half {h:#06x}: {ours} vs {g}"
            );
        }
        let mut x = 0x9E37_79B9u32;
        for i in 0..2_000_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Every exponent, and the neighbourhood of every half's rounding boundary.
            let f = f32::from_bits(if i % 2 == 0 {
                x
            } else {
                (x & 0xc7ff_ffff) | 0x3800_0000
            });
            // SAFETY: pure conversion function of ggml.
            let g = unsafe { sys::ggml_fp32_to_fp16(f) };
            let ours = fp32_to_fp16(f);
            if f.is_nan() {
                assert!(ours & 0x7c00 == 0x7c00 && ours & 0x3ff != 0, "{f}");
            } else {
                assert_eq!(ours, g, "{f:e} ({:#010x})", f.to_bits());
            }
        }
    }

    /// The CPU twin of the CUDA kernels against ggml's quantizer, every block of every class
    /// of input, for each source and target type (the GPU side: `gearbx-bench kernels`).
    #[test]
    fn requant_twin_is_bit_identical_to_ggml() {
        for src in parity::SOURCES {
            for case in parity::cases(src, 2048, 7) {
                for dst in parity::TARGETS {
                    let ours = requant_ref(src, &case.bytes, dst).expect("supported pair");
                    let ggml = parity::ggml_reference(src, &case.bytes, dst).unwrap();
                    assert_eq!(
                        parity::first_mismatch(&ours, &ggml, dst),
                        None,
                        "{} -> {} on {}: {} of 2048 blocks differ",
                        src,
                        dst,
                        case.class,
                        parity::mismatches(&ours, &ggml, dst)
                    );
                }
            }
        }
    }

    /// The SIMD half converter against ggml's on every half (NaN payloads included).
    #[test]
    fn f16_converter_is_exact_for_every_half() {
        let halves: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let mut ggml = vec![0f32; 65536];
        weights::to_f32_ggml_into(GgmlType::F16, &halves, &mut ggml).unwrap();
        // Whole vectors, and every half in a tail too (a length of 7 per call).
        let mut ours = vec![0f32; 65536];
        f16_to_f32_into(&halves, &mut ours);
        let mut tails = vec![0f32; 65536];
        for (o, h) in tails.chunks_mut(7).zip(halves.chunks(14)) {
            f16_to_f32_into(h, o);
        }
        for h in 0..65536 {
            assert_eq!(ours[h].to_bits(), ggml[h].to_bits(), "half {h:#06x}");
            assert_eq!(
                tails[h].to_bits(),
                ggml[h].to_bits(),
                "half {h:#06x} in a tail"
            );
        }
    }

    /// The chunked pipeline of tier building (convert a chunk, quantize it into every type)
    /// against ggml's path (the whole tensor through ggml's to_float, then
    /// ggml_quantize_chunk per type), from float and quantized sources, with row counts that
    /// end chunks early and late.
    #[test]
    fn requantize_matches_ggml_path() {
        let types = [
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q4_0,
            GgmlType::Q5_K,
        ];
        for (src, cols, rows) in [
            (GgmlType::F16, 2048usize, 37usize),
            (GgmlType::BF16, 512, 300),
            (GgmlType::F32, 256, 257),
            (GgmlType::Q8_0, 768, 90),
        ] {
            let vals: Vec<f32> = parity::cases(GgmlType::F32, rows * cols / REQUANT_BLOCK, 3)
                .into_iter()
                .find(|c| c.class == "normal-1")
                .unwrap()
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let bytes = weights::quantize_ggml(src, &vals, rows, cols)
                .or_else(|_| -> crate::error::Result<Vec<u8>> {
                    Ok(match src {
                        GgmlType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        GgmlType::F16 => vals
                            .iter()
                            .flat_map(|&v| fp32_to_fp16(v).to_le_bytes())
                            .collect(),
                        _ => vals
                            .iter()
                            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                            .collect(),
                    })
                })
                .unwrap();
            let ours = weights::requantize(src, &bytes, rows, cols, &types).unwrap();
            let mut f = vec![0f32; rows * cols];
            if src == GgmlType::F32 {
                f = weights::to_f32(src, &bytes, rows * cols).unwrap(); // ggml has no F32 to_float
            } else {
                weights::to_f32_ggml_into(src, &bytes, &mut f).unwrap();
            }
            for (ty, got) in types.iter().zip(&ours) {
                let want = weights::quantize_ggml(*ty, &f, rows, cols).unwrap();
                assert!(got == &want, "{src} -> {ty}, {rows} rows of {cols}");
            }
        }
        assert!(weights::requantize(GgmlType::F16, &[0u8; 100], 1, 50, &types).is_err());
    }

    #[test]
    fn requant_refuses_what_it_cannot_do() {
        let f16 = vec![0u8; 64];
        assert!(requant_ref(GgmlType::F16, &f16, GgmlType::Q5_K).is_none());
        assert!(
            requant_ref(GgmlType::F16, &f16, GgmlType::Q4_K).is_none(),
            "not 256 values"
        );
        assert!(requant_ref(GgmlType::Q8_0, &f16, GgmlType::Q4_0).is_none());
        assert!(requant_ref(GgmlType::F16, &f16[..62], GgmlType::Q4_0).is_none());
        assert_eq!(
            requant_ref(GgmlType::F16, &f16, GgmlType::Q8_0)
                .unwrap()
                .len(),
            34
        );
    }

    #[test]
    fn nan_and_inf_are_reported() {
        let mut l = vec![0.0f32; 100];
        l[5] = f32::NAN;
        l[6] = f32::INFINITY;
        let (h, bad) = entropy_bits(&l);
        assert!(h.is_nan());
        assert_eq!(bad, 2);
        assert!(entropy_bits(&[]).0.is_nan());
    }

    /// The AVX2 twin against the scalar reference on every class: random logits at real
    /// vocabulary sizes and scales, flat and one-hot rows, masked (-inf) tokens, huge ranges,
    /// lengths around the vector width, and NaN / +inf in the body and in the tail. The same
    /// count of bad logits always; within 1e-5 bits (plus 1e-6 relative) otherwise.
    #[test]
    fn entropy_twins_agree_on_every_class() {
        let Some(_) = entropy_bits_with(EntropyKernel::Avx2, &[0.0]) else {
            eprintln!("this CPU has no AVX2+FMA: only the scalar twin runs");
            return;
        };
        let mut x = 0x9E3779B97F4A7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for v in [49152usize, 128256, 262144] {
            for scale in [0.01f32, 1.0, 8.0, 60.0] {
                rows.push((0..v).map(|_| rnd() * scale).collect());
            }
        }
        for n in (1..=40).chain([255, 256, 257, 1023]) {
            rows.push((0..n).map(|_| rnd() * 5.0).collect());
        }
        rows.push(vec![3.5; 4099]);
        let mut hot = vec![-1.0e4f32; 5000];
        hot[4321] = 10.0;
        rows.push(hot);
        let mut masked: Vec<f32> = (0..3001).map(|_| rnd() * 3.0).collect();
        for i in (0..3001).step_by(3) {
            masked[i] = f32::NEG_INFINITY;
        }
        rows.push(masked);
        rows.push(
            (0..4096)
                .map(|i| if i % 2 == 0 { 1.0e30 } else { -1.0e30 })
                .collect(),
        );
        rows.push(vec![f32::NEG_INFINITY; 100]);
        for (at, bad) in [
            (0usize, f32::NAN),
            (77, f32::INFINITY),
            (1001, f32::NAN),
            (1004, f32::INFINITY),
        ] {
            let mut r: Vec<f32> = (0..1005).map(|_| rnd()).collect();
            r[at] = bad;
            rows.push(r);
        }
        for r in &rows {
            let (hs, bs) = entropy_bits_with(EntropyKernel::Scalar, r).unwrap();
            let (ha, ba) = entropy_bits_with(EntropyKernel::Avx2, r).unwrap();
            assert_eq!(bs, ba, "bad-logit counts, n = {}", r.len());
            if hs.is_nan() {
                assert!(ha.is_nan(), "n = {}", r.len());
                continue;
            }
            let tol = 1e-5 + 1e-6 * hs.abs();
            assert!(
                (hs - ha).abs() <= tol,
                "n = {}: scalar {hs}, avx2 {ha}",
                r.len()
            );
        }
    }

    /// The SIMD quantizers (Q8_0, Q4_0, Q4_K; AVX2 or NEON) against the scalar twin (itself
    /// bit-identical to ggml) on every adversarial class of F32 rows: bit for bit.
    #[test]
    fn quantizer_simd_twins_are_bit_identical_on_every_class() {
        if quantize_fast(GgmlType::Q8_0, &[0.0; 32]).is_none() {
            eprintln!("this CPU has no SIMD twin: only the scalar twin runs");
            return;
        }
        for case in parity::cases(GgmlType::F32, 2048, 11) {
            let x: Vec<f32> = case
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            for dst in parity::TARGETS {
                let fast = quantize_fast(dst, &x).unwrap();
                let twin = requant_ref(GgmlType::F32, &case.bytes, dst).unwrap();
                assert_eq!(
                    parity::first_mismatch(&fast, &twin, dst),
                    None,
                    "{dst} on {}: {} blocks differ",
                    case.class,
                    parity::mismatches(&fast, &twin, dst)
                );
            }
        }
    }
}
