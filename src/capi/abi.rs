//! Checking that a host program's llama.cpp is the one gearbx was built against: the llama.h
//! it was compiled with (struct sizes and enum counts, filled in by `gearbx_host_llama_abi()`,
//! an inline function of gearbx.h) and the ggml library it runs with (`ggml_version()`).

use std::ffi::CStr;

use super::{arg, gearbx_status, guard, ApiError, ApiResult, GEARBX_ERR_VERSION_MISMATCH};
use crate::llama::sys;

/// ggml's version string in the pinned llama.cpp (vendor/llama.cpp.pin; checked by a unit test,
/// so a new pin cannot leave it stale). llama.cpp exposes no finer build identifier at run time:
/// `ggml_commit()` is "unknown" in builds made outside a git checkout, as ours are.
pub const GGML_VERSION: &str = sys::GGML_VERSION;

/// The shape of a llama.h, as the compiler of one translation unit saw it. Hosts fill it with
/// `gearbx_host_llama_abi()` (defined in gearbx.h when llama.h is included before it).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct gearbx_llama_abi {
    /// `sizeof(struct llama_model_params)`.
    pub model_params_size: u32,
    /// `sizeof(struct llama_context_params)`.
    pub context_params_size: u32,
    /// `sizeof(struct llama_batch)`.
    pub batch_size: u32,
    /// `sizeof(struct llama_sampler_chain_params)`.
    pub sampler_chain_params_size: u32,
    /// `GGML_TYPE_COUNT`.
    pub ggml_type_count: u32,
    /// `GGML_OP_COUNT`.
    pub ggml_op_count: u32,
}

/// The llama.h gearbx was compiled with.
pub fn built_abi() -> gearbx_llama_abi {
    gearbx_llama_abi {
        model_params_size: size_of::<sys::llama_model_params>() as u32,
        context_params_size: size_of::<sys::llama_context_params>() as u32,
        batch_size: size_of::<sys::llama_batch>() as u32,
        sampler_chain_params_size: size_of::<sys::llama_sampler_chain_params>() as u32,
        ggml_type_count: sys::GGML_TYPE_COUNT,
        ggml_op_count: sys::GGML_OP_COUNT,
    }
}

/// The version of the ggml library this process runs with (the host's, when gearbx is linked
/// against the host's llama.cpp).
pub fn runtime_ggml_version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::ggml_version()) }
        .to_string_lossy()
        .into_owned()
}

/// Compares a host's llama.h and ggml library with gearbx's; the error names every difference.
pub(crate) fn check(host: &gearbx_llama_abi, host_ggml_version: &str) -> ApiResult {
    let built = built_abi();
    if *host == gearbx_llama_abi::default() {
        return Err(ApiError::new(
            GEARBX_ERR_VERSION_MISMATCH,
            "llama_abi is not filled in: set it with gearbx_host_llama_abi() (include llama.h \
             before gearbx.h)",
        ));
    }
    let mut diffs = Vec::new();
    let fields = [
        (
            "sizeof(llama_model_params)",
            host.model_params_size,
            built.model_params_size,
        ),
        (
            "sizeof(llama_context_params)",
            host.context_params_size,
            built.context_params_size,
        ),
        ("sizeof(llama_batch)", host.batch_size, built.batch_size),
        (
            "sizeof(llama_sampler_chain_params)",
            host.sampler_chain_params_size,
            built.sampler_chain_params_size,
        ),
        (
            "GGML_TYPE_COUNT",
            host.ggml_type_count,
            built.ggml_type_count,
        ),
        ("GGML_OP_COUNT", host.ggml_op_count, built.ggml_op_count),
    ];
    for (what, h, b) in fields {
        if h != b {
            diffs.push(format!(
                "{what} is {h} in the host's llama.h, {b} in gearbx's"
            ));
        }
    }
    if host_ggml_version != GGML_VERSION {
        diffs.push(format!(
            "the ggml library linked is version {host_ggml_version}, gearbx was built against \
             {GGML_VERSION}"
        ));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        GEARBX_ERR_VERSION_MISMATCH,
        format!(
            "the host's llama.cpp is not the one gearbx {} was built against ({}, ggml \
             {GGML_VERSION}): {}; rebuild gearbx against the host's llama.cpp version or the \
             host against gearbx's",
            env!("CARGO_PKG_VERSION"),
            sys::PRISTINE_SOURCE
                .split(" sha256:")
                .next()
                .unwrap_or_default(),
            diffs.join("; ")
        ),
    ))
}

/// Checks the llama.h a host was compiled with (`gearbx_host_llama_abi()`) and the ggml
/// library the process runs with against the ones gearbx was built with.
/// `GEARBX_ERR_VERSION_MISMATCH` names every difference. `gearbx_attach` runs the same check.
///
/// # Safety
/// `host_abi` must be NULL or point to a `gearbx_llama_abi`.
#[no_mangle]
pub unsafe extern "C" fn gearbx_check_llama_abi(
    host_abi: *const gearbx_llama_abi,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller passes NULL or a valid struct.
        let host = unsafe { arg(host_abi, "host_abi") }?;
        check(host, &runtime_ggml_version())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_ggml_version_is_the_linked_one() {
        assert_eq!(runtime_ggml_version(), GGML_VERSION);
    }

    #[test]
    fn the_built_abi_passes_and_each_difference_is_named() {
        assert!(check(&built_abi(), GGML_VERSION).is_ok());
        let e = check(&gearbx_llama_abi::default(), GGML_VERSION).unwrap_err();
        assert!(e.message.contains("not filled in"), "{}", e.message);
        let mut host = built_abi();
        host.context_params_size += 8;
        host.ggml_op_count -= 1;
        let e = check(&host, "0.25.9").unwrap_err();
        assert_eq!(e.code, GEARBX_ERR_VERSION_MISMATCH);
        for what in ["sizeof(llama_context_params)", "GGML_OP_COUNT", "0.25.9"] {
            assert!(e.message.contains(what), "{what}: {}", e.message);
        }
        assert!(!e.message.contains("llama_batch"), "{}", e.message);
    }
}
