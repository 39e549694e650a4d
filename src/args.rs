//! Command-line pieces the binaries share: llama.cpp's short flags of several letters, and the
//! KV cache flags.

use crate::llama::kv::{CacheType, FlashAttn, KvCache};

/// The KV cache flags, as llama.cpp names them (`-ctk`, `-ctv`, `-fa` through
/// [`llama_cpp_spellings`]).
#[derive(clap::Args, Debug, Clone)]
pub struct KvArgs {
    /// KV cache type for K, as llama.cpp's -ctk: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl,
    /// q5_0, q5_1 (llama.cpp rotates K and V before a quantized cache stores them; set
    /// LLAMA_ATTN_ROT_DISABLE=1 to compare without).
    #[arg(long = "cache-type-k", value_name = "TYPE", default_value = "f16")]
    pub cache_type_k: CacheType,

    /// KV cache type for V, as llama.cpp's -ctv (same types); a quantized V cache needs flash
    /// attention.
    #[arg(long = "cache-type-v", value_name = "TYPE", default_value = "f16")]
    pub cache_type_v: CacheType,

    /// Flash attention, as llama.cpp's -fa: on, off, or auto (llama.cpp decides per device,
    /// and turns it on for a quantized V cache).
    #[arg(
        long = "flash-attn",
        value_name = "on|off|auto",
        default_value = "auto"
    )]
    pub flash_attn: FlashAttn,
}

impl KvArgs {
    /// The cache these flags ask for (llama.cpp's rotation on).
    pub fn cache(&self) -> KvCache {
        KvCache {
            type_k: self.cache_type_k,
            type_v: self.cache_type_v,
            flash_attn: self.flash_attn,
            rotation: true,
        }
    }
}

/// llama.cpp spells some flags with one dash and several letters (`-ngl N`, `-ctk q8_0`,
/// `-ctv q8_0`, `-fa on`), which no option parser reads as one flag: they become their long
/// names.
pub fn llama_cpp_spellings(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    const SHORT: [(&str, &str); 4] = [
        ("-ngl", "--n-gpu-layers"),
        ("-ctk", "--cache-type-k"),
        ("-ctv", "--cache-type-v"),
        ("-fa", "--flash-attn"),
    ];
    args.map(|a| {
        let Some(s) = a.to_str() else { return a };
        for (short, long) in SHORT {
            if s == short {
                return long.into();
            }
            if let Some(v) = s.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                return format!("{long}={v}").into();
            }
        }
        a
    })
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn multi_letter_flags_become_long_ones() {
        let args = [
            "x",
            "-ngl",
            "0",
            "-ctk=q8_0",
            "-ctv",
            "q4_0",
            "-fa",
            "on",
            "-fab",
            "-c",
            "9",
        ];
        let out: Vec<String> = super::llama_cpp_spellings(args.iter().map(Into::into))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            [
                "x",
                "--n-gpu-layers",
                "0",
                "--cache-type-k=q8_0",
                "--cache-type-v",
                "q4_0",
                "--flash-attn",
                "on",
                "-fab",
                "-c",
                "9"
            ]
        );
    }
}
