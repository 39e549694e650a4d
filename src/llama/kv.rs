//! The KV cache's settings as llama.cpp spells them: the K and V cache types (`-ctk`, `-ctv`),
//! flash attention (`-fa on|off|auto`) and the Hadamard rotation llama.cpp applies before
//! quantizing a cache (LLAMA_ATTN_ROT_DISABLE); their checks, made before any allocation; and
//! the bytes a cached token costs; and [`KvRowHook`], which edits the rows written into an F32
//! cache (how `gearbx-bench kv` simulates a cache format llama.cpp does not have).

use std::fmt;
use std::str::FromStr;

use super::{GgmlType, Model};
use crate::error::{Error, Result};

/// The cache types llama.cpp accepts for `-ctk`/`-ctv` (common/arg.cpp), in its order.
pub const CACHE_TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::IQ4_NL,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

/// A KV cache element type: one of [`CACHE_TYPES`], parsed from llama.cpp's lower-case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheType(pub GgmlType);

impl Default for CacheType {
    fn default() -> Self {
        Self(GgmlType::F16)
    }
}

impl CacheType {
    /// Whether the type is block-quantized (then a V cache of it needs flash attention).
    pub fn is_quantized(self) -> bool {
        ![GgmlType::F32, GgmlType::F16, GgmlType::BF16].contains(&self.0)
    }

    /// Values per block and bytes per block.
    pub fn layout(self) -> (u64, u64) {
        self.0.layout()
    }

    fn names() -> String {
        CACHE_TYPES
            .iter()
            .map(|t| t.to_string().to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for CacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_string().to_lowercase())
    }
}

impl FromStr for CacheType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CACHE_TYPES
            .iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(s))
            .map(|&t| Self(t))
            .ok_or_else(|| {
                Error::InvalidParam(format!(
                    "unknown KV cache type {s:?}: use one of {}",
                    Self::names()
                ))
            })
    }
}

/// When llama.cpp uses flash attention (`-fa`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlashAttn {
    /// llama.cpp decides per device (on where the backend supports it, and whenever a
    /// quantized V cache needs it).
    #[default]
    Auto,
    On,
    Off,
}

impl FlashAttn {
    pub(crate) fn llama_type(self) -> i32 {
        match self {
            FlashAttn::Auto => -1,
            FlashAttn::Off => 0,
            FlashAttn::On => 1,
        }
    }
}

impl fmt::Display for FlashAttn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlashAttn::Auto => "auto",
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        })
    }
}

impl FromStr for FlashAttn {
    type Err = Error;
    /// llama.cpp's spellings: on/off/auto (also 1/0, true/false, enabled/disabled).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "-1" => Ok(FlashAttn::Auto),
            "on" | "1" | "true" | "enabled" => Ok(FlashAttn::On),
            "off" | "0" | "false" | "disabled" => Ok(FlashAttn::Off),
            _ => Err(Error::InvalidParam(format!(
                "flash attention must be on, off or auto, not {s:?}"
            ))),
        }
    }
}

/// The KV cache of a context: element types, flash attention, rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCache {
    pub type_k: CacheType,
    pub type_v: CacheType,
    pub flash_attn: FlashAttn,
    /// llama.cpp's Hadamard rotation of K and V before a quantized cache stores them (on by
    /// default; off sets LLAMA_ATTN_ROT_DISABLE while the context is made).
    pub rotation: bool,
}

impl Default for KvCache {
    /// llama.cpp's defaults: F16 K and V, flash attention auto, rotation on.
    fn default() -> Self {
        Self {
            type_k: CacheType::default(),
            type_v: CacheType::default(),
            flash_attn: FlashAttn::Auto,
            rotation: true,
        }
    }
}

/// Whether the user's environment turns llama.cpp's rotation off (LLAMA_ATTN_ROT_DISABLE set
/// to a non-zero number, as llama.cpp reads it with atoi).
pub fn rotation_disabled_by_env() -> bool {
    std::env::var("LLAMA_ATTN_ROT_DISABLE")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|v| v != 0)
}

/// The head sizes of the model's attention (from its GGUF metadata), per layer uniform.
pub fn head_sizes(model: &Model) -> (u64, u64) {
    let arch = model.meta("general.architecture").unwrap_or_default();
    let n_embd = model.n_embd() as u64;
    let n_head = (model.n_head() as u64).max(1);
    let key = |k: &str| {
        model
            .meta(&format!("{arch}.attention.{k}"))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let k = key("key_length").unwrap_or(n_embd / n_head);
    let v = key("value_length").unwrap_or(k);
    (k, v)
}

impl KvCache {
    /// Refuses, before any allocation, what llama.cpp would refuse when the context is made
    /// (or crash on): a quantized V cache with flash attention off, and a quantized type whose
    /// block does not divide the model's head size.
    pub fn check(&self, model: &Model) -> Result<()> {
        if self.type_v.is_quantized() && self.flash_attn == FlashAttn::Off {
            return Err(Error::InvalidParam(format!(
                "a quantized V cache ({}) needs flash attention: use -fa on or auto, or -ctv f16",
                self.type_v
            )));
        }
        let (k, v) = head_sizes(model);
        for (what, t, head) in [("K", self.type_k, k), ("V", self.type_v, v)] {
            let (blck, _) = t.layout();
            if t.is_quantized() && !head.is_multiple_of(blck) {
                return Err(Error::InvalidParam(format!(
                    "the {what} cache type {t} stores blocks of {blck} values, which do not \
                     divide this model's head size {head}: pick another type"
                )));
            }
        }
        Ok(())
    }

    /// Bytes one cached token takes across all layers (K and V of every KV head), as the
    /// types store them (every layer with attention of the model's KV heads: not exact for
    /// hybrid or MLA models). Sliding-window layers (Gemma 3) are allocated at full length by
    /// default (swa_full) but hold only their window's tokens.
    pub fn bytes_per_token(&self, model: &Model) -> u64 {
        let (k, v) = head_sizes(model);
        let n_head_kv = model.n_head_kv().max(1) as u64;
        let bytes = |t: CacheType, n: u64| {
            let (blck, per) = t.layout();
            n.div_ceil(blck) * per
        };
        model.n_layer() as u64
            * (bytes(self.type_k, k * n_head_kv) + bytes(self.type_v, v * n_head_kv))
    }
}

impl KvCache {
    /// Refuses a context of `n_ctx` tokens whose cache would not fit the free memory where it
    /// lives (the first GPU for a model offloaded there, else the host), with the bytes and a
    /// way out; unknown free memory is not refused.
    pub fn check_fits(&self, model: &Model, n_ctx: u32) -> Result<()> {
        let need = self.bytes_per_token(model) * n_ctx as u64;
        let (device, free) = if model.offloaded() {
            ("CUDA0", super::weights::device_memory("CUDA0").0)
        } else {
            (
                "host memory",
                super::weights::host_available_memory().unwrap_or(0),
            )
        };
        if free == 0 || need <= free {
            return Ok(());
        }
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        Err(Error::ContextDoesNotFit(format!(
            "a context of {n_ctx} tokens with a {}/{} cache needs {:.0} MiB, {device} has {:.0} MiB \
             free: use a smaller -c or a smaller cache type (-ctk/-ctv q8_0 or q4_0)",
            self.type_k,
            self.type_v,
            mib(need),
            mib(free)
        )))
    }
}

/// Which half of the cache a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPart {
    K,
    V,
}

/// Edits the rows llama.cpp writes into an F32 KV cache, after each layer's write and before
/// attention reads them, so that a context computes exactly as it would with a cache storing
/// `edit_row`'s result (a quantize/dequantize round trip simulates a cache format without its
/// kernels). Installed by [`crate::llama::Context::with_kv_hook`]; CPU backend only.
pub trait KvRowHook: Send {
    /// One token's row of one layer: the `n_head_kv` heads of the head size, in order.
    fn edit_row(&mut self, part: KvPart, layer: u32, row: &mut [f32]);
}

/// Parses llama.cpp's cache tensor names (`cache_k_l3`, `cache_v_l3`, with a tag such as
/// `cache_swa_k_l3` where a model has two caches) into the part and the layer.
pub(crate) fn parse_cache_name(name: &str) -> Option<(KvPart, u32)> {
    let rest = name.strip_prefix("cache_")?;
    let (head, layer) = rest.rsplit_once("_l")?;
    let layer = layer.parse().ok()?;
    match head.rsplit('_').next()? {
        "k" => Some((KvPart::K, layer)),
        "v" => Some((KvPart::V, layer)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_llama_cpp_spells_them() {
        for name in [
            "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
        ] {
            let t: CacheType = name.parse().unwrap();
            assert_eq!(t.to_string(), name);
        }
        assert_eq!("Q8_0".parse::<CacheType>().unwrap().0, GgmlType::Q8_0);
        let e = "q3_k".parse::<CacheType>().unwrap_err().to_string();
        assert!(e.contains("q3_k") && e.contains("iq4_nl"), "{e}");
        assert!("q2".parse::<CacheType>().is_err());
        assert_eq!("on".parse::<FlashAttn>().unwrap(), FlashAttn::On);
        assert_eq!("0".parse::<FlashAttn>().unwrap(), FlashAttn::Off);
        assert_eq!("AUTO".parse::<FlashAttn>().unwrap(), FlashAttn::Auto);
        assert!("maybe".parse::<FlashAttn>().is_err());
        assert!(!CacheType(GgmlType::BF16).is_quantized());
        assert!(CacheType(GgmlType::IQ4_NL).is_quantized());
    }

    #[test]
    fn cache_tensor_names_give_part_and_layer() {
        assert_eq!(parse_cache_name("cache_k_l0"), Some((KvPart::K, 0)));
        assert_eq!(parse_cache_name("cache_v_l17"), Some((KvPart::V, 17)));
        assert_eq!(parse_cache_name("cache_swa_k_l3"), Some((KvPart::K, 3)));
        assert_eq!(parse_cache_name("cache_k_lx"), None);
        assert_eq!(parse_cache_name("cache_q_l1"), None);
        assert_eq!(parse_cache_name("Kcur-3"), None);
    }
}
