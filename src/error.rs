//! The library's typed error, and the process exit code each kind of error maps to.

use std::path::PathBuf;

/// Exit codes of `gearbx-run`, one per class of failure (documented in the README).
pub mod exit {
    /// Generation finished (end of text, stop word, token limit or full context).
    pub const OK: u8 = 0;
    /// An unexpected internal error.
    pub const INTERNAL: u8 = 1;
    /// Invalid command line: unknown flag or a value out of range.
    pub const USAGE: u8 = 2;
    /// The model could not be found: unknown name, missing file, missing blob.
    pub const NOT_FOUND: u8 = 3;
    /// The model was found but cannot be used: bad manifest, not GGUF, truncated, unsupported.
    pub const BAD_MODEL: u8 = 4;
    /// A blob's sha256 does not match the digest that names it.
    pub const DIGEST_MISMATCH: u8 = 5;
    /// The prompt does not fit in the context window.
    pub const PROMPT_TOO_LONG: u8 = 6;
    /// llama.cpp failed while loading or decoding, or the model produced NaN logits.
    pub const RUNTIME: u8 = 7;
    /// The default model could not be obtained (pip missing or failing, no cache directory).
    pub const FETCH: u8 = 8;
    /// An RPC server (`--rpc`) could not be reached, or was lost or timed out mid-run.
    pub const RPC: u8 = 9;
    /// A file could not be read or written: permissions, a full disk, a write error on
    /// stdout, the JSON or the trace file.
    pub const IO: u8 = 11;
    /// Generation was interrupted by Ctrl-C (the statistics are still printed).
    pub const INTERRUPTED: u8 = 130;
}

/// Everything that can go wrong in gearbx, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid model name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("model {name:?} not found: no manifest at {manifest}{}", suggest(.close))]
    ModelNotFound {
        name: String,
        manifest: PathBuf,
        close: Vec<String>,
    },

    #[error("model file {0} does not exist")]
    FileNotFound(PathBuf),

    /// A FIFO, a device or a folder where a model, a blob or a layer was expected: opening
    /// one could block or never end.
    #[error("{0} is not a regular file (a FIFO, a device or a folder cannot be read as a model, a blob or a layer)")]
    NotAFile(PathBuf),

    #[error("blob {digest} of model {name:?} is missing: expected it at {path}")]
    BlobMissing {
        name: String,
        digest: String,
        path: PathBuf,
    },

    #[error("manifest {path} is invalid: {reason}")]
    BadManifest { path: PathBuf, reason: String },

    #[error("model {name:?} has no GGUF layer (media types: {media_types}); it is probably a safetensors model from a newer Ollama, which gearbx cannot run: use a GGUF model")]
    NoGgufLayer { name: String, media_types: String },

    #[error("{path} is not a usable GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },

    #[error("sha256 mismatch for {path}: the name says {expected}, the content is {actual}")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("the prompt is {n_prompt} tokens but the context holds {n_ctx}; raise the context size (n_ctx; the model was trained with {n_ctx_train}) or shorten the prompt")]
    PromptTooLong {
        n_prompt: usize,
        n_ctx: u32,
        n_ctx_train: u32,
    },

    #[error("invalid parameter: {0}")]
    InvalidParam(String),

    /// One parameter out of range, named as the library's and the C API's fields name it
    /// (`top_p`); `gearbx-run` shows its flag instead ([`Error::cli_message`]).
    #[error("invalid parameter: {} {rule}", param.name)]
    BadParam { param: Param, rule: String },

    /// A tier plan that does not fit a device's free memory (checked before allocating).
    #[error("not enough memory for the gear tiers: {0}")]
    TiersDoNotFit(String),

    /// A context whose KV cache does not fit the free memory of where it would live
    /// (checked before allocating).
    #[error("not enough memory for the KV cache: {0}")]
    ContextDoesNotFit(String),

    #[error("llama.cpp failed: {0}")]
    Llama(String),

    /// An RPC server could not be reached or listened on.
    #[error("{0}")]
    Rpc(String),

    #[error("the model produced non-finite (NaN) logits at generated token {0}; the weights or the tier may be broken")]
    NanLogits(usize),

    #[error("tier cache {path} cannot be used: {reason}")]
    TierCache { path: PathBuf, reason: String },

    /// Stopped by the caller's abort flag (Ctrl-C) before it finished (a generation that is
    /// interrupted ends normally instead, with what it generated).
    #[error("interrupted")]
    Interrupted,

    #[error("could not obtain the default model: {0}")]
    Fetch(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A parameter of the library, with the command-line flag that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// The field's name in the library and the C API (`top_p`).
    pub name: &'static str,
    /// gearbx-run's flag (`--top-p`).
    pub flag: &'static str,
}

/// The parameters the library checks, each with its flag.
pub mod param {
    use super::Param;
    macro_rules! params {
        ($($id:ident = $name:literal, $flag:literal;)*) => {
            $(pub const $id: Param = Param { name: $name, flag: $flag };)*
        };
    }
    params! {
        TEMPERATURE = "temperature", "--temp";
        TOP_K = "top_k", "--top-k";
        TOP_P = "top_p", "--top-p";
        MIN_P = "min_p", "--min-p";
        REPEAT_PENALTY = "repeat_penalty", "--repeat-penalty";
        REPEAT_LAST_N = "repeat_last_n", "--repeat-last-n";
        DRAFT_MAX = "draft_max", "--draft-max";
        CALIBRATE = "calibrate", "--calibrate";
        TOP_LOGPROBS = "top_logprobs", "top_logprobs";
        SEED = "seed", "-s/--seed";
        WINDOW = "window", "--window";
        HYSTERESIS = "hysteresis", "--hysteresis";
        MANAGE = "manage/layers", "--manage/--layers";
        TIERS = "tiers", "--tiers";
        N_CTX = "n_ctx", "-c/--ctx-size";
        N_BATCH = "n_batch", "n_batch";
        THREADS = "threads", "-t/--threads";
    }
}

fn suggest(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

impl Error {
    /// Wraps an I/O error with a sentence saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// `param` breaks `rule` ("must be in [0, 1], got 2").
    pub fn bad_param(param: Param, rule: impl Into<String>) -> Self {
        Error::BadParam {
            param,
            rule: rule.into(),
        }
    }

    /// The message as `gearbx-run` shows it: parameters by their flags.
    pub fn cli_message(&self) -> String {
        match self {
            Error::BadParam { param, rule } => format!("invalid parameter: {} {rule}", param.flag),
            Error::PromptTooLong {
                n_prompt,
                n_ctx,
                n_ctx_train,
            } => format!(
                "the prompt is {n_prompt} tokens but the context holds {n_ctx}; raise \
                 -c/--ctx-size (the model was trained with {n_ctx_train}) or shorten the prompt"
            ),
            _ => self.to_string(),
        }
    }

    /// The exit code `gearbx-run` uses for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InvalidName { .. } | Error::InvalidParam(_) | Error::BadParam { .. } => {
                exit::USAGE
            }
            Error::ModelNotFound { .. } | Error::FileNotFound(_) | Error::BlobMissing { .. } => {
                exit::NOT_FOUND
            }
            Error::BadManifest { .. }
            | Error::NoGgufLayer { .. }
            | Error::BadGguf { .. }
            | Error::NotAFile(_) => exit::BAD_MODEL,
            Error::DigestMismatch { .. } => exit::DIGEST_MISMATCH,
            Error::PromptTooLong { .. } => exit::PROMPT_TOO_LONG,
            Error::Llama(_)
            | Error::NanLogits(_)
            | Error::TiersDoNotFit(_)
            | Error::ContextDoesNotFit(_) => exit::RUNTIME,
            Error::Fetch(_) => exit::FETCH,
            Error::Rpc(_) => exit::RPC,
            Error::Interrupted => exit::INTERRUPTED,
            Error::Io { .. } | Error::TierCache { .. } => exit::IO,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
