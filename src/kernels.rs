//! Safe wrappers over gearbx's own C kernels in csrc/ (compiled by build.rs).

use std::ffi::c_float;

mod ffi {
    use std::ffi::c_float;
    unsafe extern "C" {
        pub fn gearbx_entropy_bits(
            logits: *const c_float,
            n: usize,
            n_nonfinite: *mut usize,
        ) -> c_float;
    }
}

/// Entropy of softmax(logits) in bits, and the number of NaN/+inf logits (then it is NaN).
pub fn entropy_bits(logits: &[f32]) -> (f32, usize) {
    let mut bad = 0usize;
    // SAFETY: logits is valid for logits.len() floats; bad is a valid out pointer.
    let h: c_float = unsafe { ffi::gearbx_entropy_bits(logits.as_ptr(), logits.len(), &mut bad) };
    (h, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn nan_and_inf_are_reported() {
        let mut l = vec![0.0f32; 100];
        l[5] = f32::NAN;
        l[6] = f32::INFINITY;
        let (h, bad) = entropy_bits(&l);
        assert!(h.is_nan());
        assert_eq!(bad, 2);
        assert!(entropy_bits(&[]).0.is_nan());
    }
}
