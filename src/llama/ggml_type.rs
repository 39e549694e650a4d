//! ggml's tensor types as a typed value: the id llama.cpp uses inside, with its name, block
//! layout and bits per weight.

use std::ffi::CStr;
use std::fmt;

use super::sys;

/// A ggml tensor type (`GgmlType::Q4_0`, `GgmlType::F16`, …).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(u32);

impl GgmlType {
    pub const F32: Self = Self(sys::GGML_TYPE_F32);
    pub const F16: Self = Self(sys::GGML_TYPE_F16);
    pub const BF16: Self = Self(sys::GGML_TYPE_BF16);
    pub const Q4_0: Self = Self(sys::GGML_TYPE_Q4_0);
    pub const Q4_1: Self = Self(sys::GGML_TYPE_Q4_1);
    pub const Q5_0: Self = Self(sys::GGML_TYPE_Q5_0);
    pub const Q5_1: Self = Self(sys::GGML_TYPE_Q5_1);
    pub const Q8_0: Self = Self(sys::GGML_TYPE_Q8_0);
    pub const Q8_1: Self = Self(sys::GGML_TYPE_Q8_1);
    pub const Q2_K: Self = Self(sys::GGML_TYPE_Q2_K);
    pub const Q3_K: Self = Self(sys::GGML_TYPE_Q3_K);
    pub const Q4_K: Self = Self(sys::GGML_TYPE_Q4_K);
    pub const Q5_K: Self = Self(sys::GGML_TYPE_Q5_K);
    pub const Q6_K: Self = Self(sys::GGML_TYPE_Q6_K);
    pub const IQ4_NL: Self = Self(sys::GGML_TYPE_IQ4_NL);

    /// The type ggml numbers `id`, if it is one ggml has.
    pub fn from_id(id: u32) -> Option<Self> {
        (id < sys::GGML_TYPE_COUNT && super::ggml_type_layout(id).is_some()).then_some(Self(id))
    }

    /// A type id that ggml itself reported (a tensor's `type_`): valid by construction.
    pub(crate) const fn from_ggml(id: u32) -> Self {
        Self(id)
    }

    /// ggml's number for this type (as GGUF files and the tier cache store it).
    pub fn id(self) -> u32 {
        self.0
    }

    /// ggml's name, upper-cased ("Q4_0", "F16").
    pub fn name(self) -> String {
        // SAFETY: a GgmlType is always a valid type id; ggml returns a static string.
        unsafe { CStr::from_ptr(sys::ggml_type_name(self.0 as sys::ggml_type)) }
            .to_string_lossy()
            .to_uppercase()
    }

    /// Parses a name like "Q4_0", "q8_0", "F16".
    pub fn from_name(name: &str) -> Option<Self> {
        (0..sys::GGML_TYPE_COUNT)
            .filter_map(Self::from_id)
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// (values per block, bytes per block).
    pub fn layout(self) -> (u64, u64) {
        super::ggml_type_layout(self.0).expect("a GgmlType has a layout")
    }

    pub fn bits_per_weight(self) -> f64 {
        let (b, s) = self.layout();
        s as f64 * 8.0 / b as f64
    }

    /// F32, F16 or BF16.
    pub fn is_float(self) -> bool {
        [Self::F32, Self::F16, Self::BF16].contains(&self)
    }

    /// A K-quant (blocks of 256 values).
    pub fn is_k_quant(self) -> bool {
        [Self::Q2_K, Self::Q3_K, Self::Q4_K, Self::Q5_K, Self::Q6_K].contains(&self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Debug for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::GgmlType;

    #[test]
    fn names_ids_and_bits() {
        assert_eq!(GgmlType::Q4_0.name(), "Q4_0");
        assert_eq!(GgmlType::from_name("q8_0"), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::from_name("F16"), Some(GgmlType::F16));
        assert_eq!(GgmlType::from_name("Q9_9"), None);
        assert_eq!(GgmlType::from_id(GgmlType::Q4_K.id()), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_id(10_000), None);
        assert_eq!(GgmlType::Q8_0.bits_per_weight(), 8.5);
        assert_eq!(GgmlType::Q4_K.bits_per_weight(), 4.5);
        assert!(GgmlType::BF16.is_float() && !GgmlType::Q8_0.is_float());
        assert!(GgmlType::Q6_K.is_k_quant() && !GgmlType::Q5_0.is_k_quant());
    }
}
