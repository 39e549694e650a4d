//! Owning, safe handles over llama.cpp (built by llama-sys: the pinned source plus our patch
//! series): the only module where raw FFI calls live. Model and context own their pointers and
//! free them on drop; a context borrows its model so it cannot outlive it.

pub mod backend_entropy;
mod context;
pub mod cuda_graphs;
mod ggml_type;
pub mod kv;
mod log;
mod model;
pub mod requantize;
pub mod rpc;
mod sampler;
pub mod split;
pub mod weights;

use std::ffi::CStr;
use std::sync::Once;

pub use context::{Context, ContextParams};
pub(crate) use gearbx_llama_sys as sys;
pub use ggml_type::GgmlType;
pub use log::{set_verbose, take_last_error};
pub use model::{ChatMessage, Model, ModelParams, DEFAULT_DECODE_KERNELS};
pub use sampler::{random_seed, Sampler, SamplingParams};

/// A llama.cpp token id.
pub type Token = sys::llama_token;

static INIT: Once = Once::new();

/// What llama.cpp this build carries and which backends it runs on, for `--version`:
/// the pinned source, the patches applied, the registered backends and whether the CUDA
/// backend keeps a captured graph per gear.
pub fn build_info() -> String {
    init();
    let patches: Vec<&str> = sys::PATCHES_APPLIED.split(';').collect();
    // SAFETY: reads the backend registry, initialized by init().
    let n = unsafe { sys::ggml_backend_reg_count() };
    let backends: Vec<String> = (0..n)
        .map(|i| {
            // SAFETY: i < the registry's count; names are static NUL-terminated strings.
            let name =
                unsafe { CStr::from_ptr(sys::ggml_backend_reg_name(sys::ggml_backend_reg_get(i))) };
            name.to_string_lossy().into_owned()
        })
        .collect();
    let (source, sha) = sys::PRISTINE_SOURCE
        .split_once(" sha256:")
        .unwrap_or((sys::PRISTINE_SOURCE, ""));
    format!(
        "llama.cpp: {source} (ggml {}, sha256 {}…) + {} patches: {}\nbackends: {}{}",
        sys::GGML_VERSION,
        &sha[..sha.len().min(12)],
        patches.len(),
        patches.join(", "),
        backends.join(", "),
        if backends.iter().any(|b| b == "CUDA") {
            if cuda_graphs::variants_available() {
                " (CUDA: one captured graph per gear)"
            } else {
                " (CUDA: no graph variants, gears rebuild the graph every token)"
            }
        } else {
            ""
        }
    )
}

/// Initializes llama.cpp once per process (backends, logging hook). Called by [`Model::load`].
pub fn init() {
    INIT.call_once(|| {
        log::install();
        // SAFETY: llama_backend_init has no preconditions and runs once, guarded by `INIT`.
        unsafe { sys::llama_backend_init() };
    });
}

/// Block size (elements) and block byte size of a ggml type id, `None` for ids that are
/// unknown or no longer supported. Used to bound tensor sizes in untrusted GGUF headers.
pub(crate) fn ggml_type_layout(ty: u32) -> Option<(u64, u64)> {
    if ty >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `ty` is below GGML_TYPE_COUNT, so it indexes ggml's type-traits table; the two
    // functions only read that table.
    let (blck, size) = unsafe {
        (
            sys::ggml_blck_size(ty as sys::ggml_type),
            sys::ggml_type_size(ty as sys::ggml_type),
        )
    };
    (blck > 0 && size > 0).then_some((blck as u64, size as u64))
}

/// The first GPU's description as its backend gives it ("NVIDIA H200"); None without one.
pub fn gpu_description() -> Option<String> {
    init();
    // SAFETY: registry lookups; descriptions are static strings owned by the backend.
    unsafe {
        let d = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU);
        if d.is_null() {
            return None;
        }
        Some(
            CStr::from_ptr(sys::ggml_backend_dev_description(d))
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// llama.cpp's description of the CPU features it was built with (for `--verbose`).
pub fn system_info() -> String {
    init();
    // SAFETY: returns a pointer to a static, NUL-terminated string owned by llama.cpp.
    unsafe { std::ffi::CStr::from_ptr(sys::llama_print_system_info()) }
        .to_string_lossy()
        .into_owned()
}
