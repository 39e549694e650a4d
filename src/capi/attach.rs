//! The attach API: gears for a `llama_model`/`llama_context` that a host program owns. The host
//! keeps its loop and sampling; after each decode it calls `gearbx_attach_after_decode`, which
//! measures the entropy of the logits, lets the monitor pick a gear and shifts before the
//! host's next decode. Detaching leaves the model exactly as it was.

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Mutex;

use self_cell::self_cell;

use super::abi::{self, gearbx_llama_abi};
use super::types::*;
use super::{
    arg, construct, gearbx_status, guard, guard_value, lock_handle, n_threads, opt_str, req_str,
    ApiError, ApiResult, GEARBX_ERR_RUNTIME,
};
use crate::engine::driver::GearDriver;
use crate::gearbox::{CacheOptions, Gear, Gearbox};
use crate::kernels;
use crate::llama::sys::{self, llama_context, llama_model};
use crate::llama::Model;
use crate::monitor::{classifier, Monitor, MonitorConfig};
use crate::store::{gguf, ResolvedModel, Source};

/// How to attach. Get defaults from `gearbx_attach_default_params()`, then set `model_path`
/// and `llama_abi`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gearbx_attach_params {
    /// The GGUF file the host loaded the model from. Required: tiers are built from its
    /// bytes where llama.cpp repacked a weight in memory, and the tier cache is keyed by its
    /// sha256 (hashed once, then memoised). gearbx checks that the file holds the loaded
    /// weights.
    pub model_path: *const c_char,
    /// Gear policy and tiers (`GEARBX_GEAR_OFF` is not allowed here).
    pub gears: gearbx_gear_params,
    /// Threads for building tiers; 0: all cores.
    pub n_threads: i32,
    /// The host's llama.h: set it with `gearbx_host_llama_abi()`.
    pub llama_abi: gearbx_llama_abi,
}

self_cell!(
    struct Attached {
        owner: Model,
        #[not_covariant]
        dependent: Gearbox,
    }
);

struct State {
    attached: Attached,
    ctx: *mut llama_context,
    n_vocab: usize,
    policy: gearbx_gear,
    monitor_cfg: MonitorConfig,
    /// The policy and the tallies (tokens per gear, shifts).
    driver: GearDriver,
    /// The gear the host's last decode ran at.
    used: Gear,
    observed: usize,
    entropy_sum: f64,
}

/// Gears attached to a host's model and context. Opaque.
pub struct gearbx_attachment {
    state: Mutex<State>,
}

/// The built-in attach defaults (auto gears; `model_path` and `llama_abi` still to set).
#[no_mangle]
pub extern "C" fn gearbx_attach_default_params() -> gearbx_attach_params {
    gearbx_attach_params {
        model_path: std::ptr::null(),
        gears: gearbx_gear_default_params(),
        n_threads: 0,
        llama_abi: gearbx_llama_abi::default(),
    }
}

/// Attaches gears to the host's `model` and `ctx`: checks that the host's llama.cpp is the
/// one gearbx was built against (`GEARBX_ERR_VERSION_MISMATCH` otherwise), builds the tiers
/// (or reads them from the tier cache) and leaves the model at the high gear. Creates and
/// frees one small probe context of its own on `model`; does not touch the host's log
/// callback. On success `*out` owns the attachment: call `gearbx_detach` before freeing
/// `ctx` or `model`. Not thread-safe: call the attachment's functions from the thread that
/// runs the host's decodes, between decodes: each shift also selects the gear's CUDA graph
/// variant on the calling thread (and tells ggml-cuda to check every captured graph before
/// its next replay, so a decode from another thread is still correct, only slower). On a GPU
/// whose llama.cpp carries gearbx's ggml-cuda patches
/// (vendor/patches; `ggml_backend_cuda_set_graph_variant` is then found through
/// `ggml_backend_reg_get_proc_address`), every gear keeps its own captured CUDA graph and nothing
/// else is needed. With an unpatched llama.cpp, or another GPU backend, create `ctx` with
/// `LLAMA_GRAPH_REUSE_DISABLE=1` in the environment: a graph llama.cpp reuses keeps its CUDA
/// graph, which still holds the previous gear's weights, so shifts would not take effect.
///
/// # Safety
/// `model` and `ctx` are live llama.cpp handles, `ctx` created from `model`, both outliving
/// the attachment; `params` points to a params struct whose strings are NULL or
/// NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn gearbx_attach(
    model: *mut llama_model,
    ctx: *mut llama_context,
    params: *const gearbx_attach_params,
    out: *mut *mut gearbx_attachment,
) -> gearbx_status {
    // SAFETY: out is the caller's writable storage (this function's contract).
    unsafe { construct(out, || attach(model, ctx, params)) }
}

/// The body of [`gearbx_attach`].
///
/// # Safety
/// As for [`gearbx_attach`].
unsafe fn attach(
    model: *mut llama_model,
    ctx: *mut llama_context,
    params: *const gearbx_attach_params,
) -> ApiResult<gearbx_attachment> {
    // SAFETY: the caller's contract.
    let p = unsafe { arg(params, "params") }?;
    abi::check(&p.llama_abi, &abi::runtime_ggml_version())?;
    if ctx.is_null() {
        return Err(ApiError::invalid("ctx is NULL"));
    }
    // SAFETY: ctx is a live context (the caller's contract).
    let ctx_model = unsafe { sys::llama_get_model(ctx) };
    if !std::ptr::eq(ctx_model, model) {
        return Err(ApiError::invalid("ctx was not created from model"));
    }
    // SAFETY: model is NULL or a live model that outlives the attachment.
    let host_model =
        unsafe { Model::from_host(model) }.ok_or_else(|| ApiError::invalid("model is NULL"))?;
    let policy = check_mode(p.gears.mode, false)?;
    let threads = n_threads(p.n_threads)?;
    // SAFETY: the params' strings are NULL or NUL-terminated (the caller's contract).
    let (path, mut opts, cache_dir) = unsafe {
        (
            PathBuf::from(req_str(p.model_path, "params.model_path")?),
            p.gears.gearbox_options(threads)?,
            p.gears.cache_dir()?,
        )
    };
    let monitor_cfg = p.gears.monitor()?;
    if !path.exists() {
        return Err(crate::Error::FileNotFound(path).into());
    }
    let info = gguf::inspect(&path)?;
    let resolved = ResolvedModel {
        path: path.clone(),
        info,
        source: Source::File,
    };
    if !p.gears.no_tier_cache {
        opts.cache = Some(CacheOptions::for_model(
            cache_dir,
            &resolved,
            p.gears.progress,
        )?);
    }
    let n_vocab = host_model.n_vocab();
    let attached = Attached::try_new(host_model, |m| {
        Gearbox::build(m, &resolved.path, &resolved.info, &opts)
    })?;
    let state = State {
        attached,
        ctx,
        n_vocab,
        policy,
        driver: GearDriver::new(
            (policy == GEARBX_GEAR_AUTO)
                .then(|| Monitor::new(monitor_cfg.clone(), n_vocab, Gear::High)),
            gear_from_c(policy).unwrap_or(Gear::High),
        ),
        monitor_cfg,
        used: Gear::High,
        observed: 0,
        entropy_sum: 0.0,
    };
    Ok(gearbx_attachment {
        state: Mutex::new(state),
    })
}

fn lock(a: &gearbx_attachment) -> ApiResult<std::sync::MutexGuard<'_, State>> {
    lock_handle(&a.state, "attachment", "detach")
}

impl State {
    fn shift(&mut self, gear: Gear) -> f64 {
        let ctx = self.ctx;
        self.attached.with_dependent_mut(|_, gb| {
            if gb.gear() == gear {
                return 0.0;
            }
            // SAFETY: ctx is the host's live context of this model (gearbx_attach's contract).
            unsafe { gb.shift_host(ctx, gear) }.as_secs_f64() * 1e6
        })
    }
}

/// Starts a new sequence (a new prompt): shifts to the high gear, so the prompt's KV cache
/// is computed at full precision, and restarts the auto monitor with a cold-start gear chosen
/// from `prompt_text` (NULL: high) for the first generated tokens. Call it before decoding a
/// prompt; optional for the first one.
///
/// # Safety
/// `attachment` is live; `prompt_text` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn gearbx_attach_begin(
    attachment: *mut gearbx_attachment,
    prompt_text: *const c_char,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let (a, text) = unsafe {
            (
                arg(attachment, "attachment")?,
                opt_str(prompt_text, "prompt_text")?,
            )
        };
        let mut s = lock(a)?;
        let cold = text.map_or(Gear::High, |t| classifier::classify(t).gear);
        if s.policy == GEARBX_GEAR_AUTO {
            s.driver.monitor = Some(Monitor::new(s.monitor_cfg.clone(), s.n_vocab, cold));
        }
        s.shift(Gear::High);
        s.used = Gear::High;
        Ok(())
    })
}

/// Call after each of the host's decodes, with the index of the logits the host samples from
/// (as for `llama_get_logits_ith`; -1 is the last). Measures the entropy of that
/// distribution, lets the policy choose the gear of the next decode and shifts to it (waiting
/// for the context first). Fills `*info` (may be NULL) with the telemetry: `gear` is the gear
/// of the decode just finished, `next_gear` the one the next decode will use.
/// `GEARBX_ERR_RUNTIME` if the logits hold NaN/inf; `GEARBX_ERR_INVALID_ARGUMENT` if the
/// index has no logits.
///
/// # Safety
/// `attachment` is live and the host's context is not decoding on another thread; `info` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gearbx_attach_after_decode(
    attachment: *mut gearbx_attachment,
    logits_index: i32,
    info: *mut gearbx_token_info,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { arg(attachment, "attachment") }?;
        let mut s = lock(a)?;
        // SAFETY: ctx is the host's live context; the returned row holds n_vocab floats
        // until its next decode.
        let logits = unsafe { sys::llama_get_logits_ith(s.ctx, logits_index) };
        if logits.is_null() {
            return Err(ApiError::invalid(format!(
                "the host's context has no logits at index {logits_index}"
            )));
        }
        // SAFETY: as above.
        let row = unsafe { std::slice::from_raw_parts(logits, s.n_vocab) };
        let (bits, n_bad) = kernels::entropy_bits(row);
        if n_bad > 0 {
            return Err(ApiError::new(
                GEARBX_ERR_RUNTIME,
                format!("{n_bad} logits are NaN or infinite"),
            ));
        }
        let used = s.used;
        let (next, _) = s.driver.step(used, bits as f64);
        let swap_us = s.shift(next);
        if swap_us > 0.0 {
            s.driver.shifted(swap_us);
        }
        s.observed += 1;
        s.entropy_sum += bits as f64;
        let index = s.observed as i32 - 1;
        s.used = next;
        if !info.is_null() {
            // SAFETY: info is non-null and writable.
            unsafe {
                *info = gearbx_token_info {
                    index,
                    token: -1,
                    entropy_bits: bits,
                    gear: used as gearbx_gear,
                    next_gear: next as gearbx_gear,
                    swap_us,
                }
            };
        }
        Ok(())
    })
}

/// Sets the policy from the next `gearbx_attach_after_decode` on: `GEARBX_GEAR_AUTO`, `_LOW`,
/// `_MID` or `_HIGH` (a fixed gear is shifted to at once).
///
/// # Safety
/// `attachment` is live and the host's context is not decoding on another thread.
#[no_mangle]
pub unsafe extern "C" fn gearbx_attach_set_gear(
    attachment: *mut gearbx_attachment,
    mode: gearbx_gear,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { arg(attachment, "attachment") }?;
        let mode = check_mode(mode, false)?;
        let mut s = lock(a)?;
        s.policy = mode;
        match gear_from_c(mode) {
            Some(g) => {
                s.driver.monitor = None;
                s.driver.fixed = g;
                s.shift(g);
                s.used = g;
            }
            None => {
                let current = s.used;
                s.driver.monitor = Some(Monitor::new(s.monitor_cfg.clone(), s.n_vocab, current));
            }
        }
        Ok(())
    })
}

/// Totals since attaching: tokens observed per gear, shifts, mean entropy, tier bytes and
/// build time, thresholds (timings of the host's decodes are the host's to measure).
///
/// # Safety
/// `attachment` is live; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn gearbx_attach_stats(
    attachment: *mut gearbx_attachment,
    out: *mut gearbx_stats,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let a = unsafe { arg(attachment, "attachment") }?;
        if out.is_null() {
            return Err(ApiError::invalid("out is NULL"));
        }
        let s = lock(a)?;
        let report = s.attached.with_dependent(|_, gb| gb.report().clone());
        let (shifts, swap_us_mean, swap_us_max) = s.driver.shifts();
        let mut st = gearbx_stats {
            generated_tokens: s.observed as u32,
            mean_entropy_bits: if s.observed > 0 {
                s.entropy_sum / s.observed as f64
            } else {
                0.0
            },
            tokens_per_gear: s.driver.tokens().map(|n| n as u32),
            shifts: shifts as u32,
            swap_us_mean,
            swap_us_max,
            tier_bytes: report.bytes.0,
            tier_resident_bytes: report.shadow_bytes,
            tier_gpu_bytes: report.gpu_bytes(),
            tier_build_ms: report.build_ms,
            tiers_from_cache: report.origin == crate::gearbox::TierOrigin::Cache,
            ..Default::default()
        };
        if let Some((lo, hi)) = s.driver.thresholds() {
            st.low_bits = lo;
            st.high_bits = hi;
        }
        // SAFETY: out is non-null and writable.
        unsafe { *out = st };
        Ok(())
    })
}

/// Restores every managed tensor to the weights the model was loaded with (waiting for the
/// host's context first), frees the tiers and the attachment. NULL is ignored. Call it before
/// freeing the host's context or model.
///
/// # Safety
/// `attachment` is NULL or live, detached once; the host's context is still alive.
#[no_mangle]
pub unsafe extern "C" fn gearbx_detach(attachment: *mut gearbx_attachment) {
    guard_value((), || {
        if attachment.is_null() {
            return;
        }
        // SAFETY: attachment came from Box::into_raw in gearbx_attach; detached once.
        let a = unsafe { Box::from_raw(attachment) };
        let mut s = a.state.into_inner().unwrap_or_else(|p| p.into_inner());
        // Shift back through the synchronizing path; dropping the gearbox then finds the
        // source tensors already active.
        s.shift(Gear::High);
        drop(s);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_arguments_are_reported_not_crashed_on() {
        let p = gearbx_attach_default_params();
        let mut out = std::ptr::NonNull::<gearbx_attachment>::dangling().as_ptr();
        // SAFETY: all pointers are NULL or valid locals.
        let rc = unsafe { gearbx_attach(std::ptr::null_mut(), std::ptr::null_mut(), &p, &mut out) };
        // The ABI is checked first: an unset llama_abi is a version error, named.
        assert_eq!(rc, super::super::GEARBX_ERR_VERSION_MISMATCH);
        assert!(out.is_null());
        // SAFETY: gearbx_last_error returns a valid C string.
        let msg = unsafe { std::ffi::CStr::from_ptr(super::super::gearbx_last_error()) };
        assert!(
            msg.to_str().unwrap().contains("gearbx_host_llama_abi"),
            "{msg:?}"
        );
        let mut p = p;
        p.llama_abi = abi::built_abi();
        // SAFETY: as above.
        let rc = unsafe { gearbx_attach(std::ptr::null_mut(), std::ptr::null_mut(), &p, &mut out) };
        assert_eq!(rc, super::super::GEARBX_ERR_INVALID_ARGUMENT);
        // SAFETY: NULL is documented as accepted.
        unsafe { gearbx_detach(std::ptr::null_mut()) };
        // SAFETY: NULL handle: reported.
        let rc =
            unsafe { gearbx_attach_after_decode(std::ptr::null_mut(), -1, std::ptr::null_mut()) };
        assert_eq!(rc, super::super::GEARBX_ERR_INVALID_ARGUMENT);
    }
}
