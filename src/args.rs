//! Command-line pieces the binaries share: the parse with llama.cpp's short flags of several
//! letters, and the KV cache, RPC server, GPU split and decode kernel flags.

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

/// Remote devices through llama.cpp's RPC backend, as llama.cpp's `--rpc`.
#[derive(clap::Args, Debug, Clone)]
pub struct RpcArgs {
    /// RPC servers whose devices take a share of the offloaded layers (llama.cpp's --rpc:
    /// host:port,host:port; gearbx-rpc-server or llama.cpp's rpc-server on the other end).
    /// Each layer's gear tiers are built here and sent to its server once; a shift sends no
    /// weights. The protocol has no authentication: use it on a network you trust.
    #[arg(long = "rpc", value_name = "SERVERS")]
    pub rpc: Option<String>,

    /// Seconds a call to an RPC server may take before the run stops with exit code 9
    /// (0: no limit).
    #[arg(long = "rpc-timeout", value_name = "SECS", default_value_t = crate::llama::rpc::DEFAULT_TIMEOUT_S)]
    pub rpc_timeout: u32,
}

impl RpcArgs {
    /// Connects to the servers named by `--rpc` (none: nothing to do) and registers their
    /// devices; from then on a lost server ends the process with one line naming `program`
    /// and exit code 9. Returns the remote devices' names.
    pub fn connect(&self, program: &str) -> crate::error::Result<Vec<String>> {
        let Some(list) = &self.rpc else {
            return Ok(Vec::new());
        };
        let endpoints = crate::llama::rpc::parse_endpoints(list)?;
        crate::llama::rpc::exit_on_abort(program);
        crate::llama::rpc::add_servers(&endpoints, self.rpc_timeout)
    }
}

/// How the offloaded layers spread over several GPUs (local, or remote with `--rpc`), as
/// llama.cpp's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SplitArgs {
    /// How to split the model over several GPUs, as llama.cpp's -sm: none (all on
    /// --main-gpu), layer (whole layers per GPU; the default), row (rows of each matrix; CUDA).
    #[arg(
        long = "split-mode",
        value_name = "none|layer|row",
        default_value = "layer"
    )]
    pub split_mode: crate::llama::split::SplitMode,

    /// Proportion of the layers per GPU, as llama.cpp's -ts (e.g. 3,1); default: by each
    /// GPU's free memory.
    #[arg(long = "tensor-split", value_name = "N0,N1,...")]
    pub tensor_split: Option<String>,

    /// The GPU for --split-mode none, as llama.cpp's -mg (0 = the first).
    #[arg(long = "main-gpu", value_name = "N", default_value_t = 0)]
    pub main_gpu: i32,
}

impl SplitArgs {
    /// The split these flags ask for.
    pub fn split(&self) -> crate::error::Result<crate::llama::split::GpuSplit> {
        Ok(crate::llama::split::GpuSplit {
            mode: self.split_mode,
            tensor_split: match &self.tensor_split {
                Some(s) => crate::llama::split::parse_tensor_split(s)?,
                None => Vec::new(),
            },
            main_gpu: self.main_gpu,
        })
    }
}

/// Which kernels compute a decode's quantized products on CUDA.
#[derive(clap::Args, Debug, Clone)]
pub struct KernelArgs {
    /// Decode products of Q4_0/Q8_0/Q4_K weights on CUDA (1-8 tokens): gearbx (our kernels,
    /// csrc/cuda/mmv.cu, on every product they cover, the ones llama.cpp fuses included) or
    /// llama.cpp (its own, as a static llama.cpp model runs). No effect without a CUDA GPU.
    #[arg(
        long = "decode-kernels",
        value_name = "gearbx|llama.cpp",
        default_value = if crate::llama::DEFAULT_DECODE_KERNELS { "gearbx" } else { "llama.cpp" }
    )]
    pub decode_kernels: DecodeKernels,
}

/// The values of `--decode-kernels`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeKernels {
    Gearbx,
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

impl KernelArgs {
    /// Whether our decode kernels were asked for.
    pub fn ours(&self) -> bool {
        self.decode_kernels == DecodeKernels::Gearbx
    }
}

/// Parses a program's command line (llama.cpp's spellings first, [`llama_cpp_spellings`]):
/// `--help` and `--version` print and give `Err(0)`, a bad command line prints clap's message
/// and gives `Err(2)` (exit code [`crate::error::exit::USAGE`]).
pub fn parse<C: clap::Parser>() -> Result<C, u8> {
    C::try_parse_from(llama_cpp_spellings(std::env::args_os())).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            crate::error::exit::USAGE
        } else {
            crate::error::exit::OK
        }
    })
}

/// llama.cpp spells some flags with one dash and several letters (`-ngl N`, `-nr`, `-sm`,
/// `-ts`, `-mg`, `-ctk q8_0`, `-ctv q8_0`, `-fa on`), which no option parser reads as one
/// flag: they become their long names.
pub fn llama_cpp_spellings(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    const SHORT: [(&str, &str); 8] = [
        ("-ngl", "--n-gpu-layers"),
        ("-nr", "--no-repack"),
        ("-sm", "--split-mode"),
        ("-ts", "--tensor-split"),
        ("-mg", "--main-gpu"),
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
            "-nr",
            "-ts=3,1",
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
                "--no-repack",
                "--tensor-split=3,1",
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
