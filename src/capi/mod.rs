//! The C ABI (`include/gearbx.h`): result codes, the per-thread last error, and the guard that
//! every exported function runs in so that no panic or Rust error crosses the boundary.
//!
//! Names follow C (`gearbx_*`), hence the lint exceptions. Integers stand in for enums on the
//! way in: a C caller can pass any value, and an out-of-range Rust enum would be undefined
//! behaviour, so every mode and code is an `int32_t` checked on entry.
#![allow(non_camel_case_types)]

pub mod abi;
pub mod attach;
pub mod engine;
pub mod types;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{exit, Error};

/// What every gearbx function returns: `GEARBX_OK` or an error code; the message is in
/// `gearbx_last_error()`. The codes equal gearbx-run's exit codes where both have one.
pub type gearbx_status = i32;
/// Success.
pub const GEARBX_OK: gearbx_status = 0;
/// A bug in gearbx (a panic was caught at the boundary).
pub const GEARBX_ERR_INTERNAL: gearbx_status = 1;
/// A NULL pointer, a bad value in a params struct, or misuse of a handle.
pub const GEARBX_ERR_INVALID_ARGUMENT: gearbx_status = 2;
/// The model is not in the store, or the file does not exist.
pub const GEARBX_ERR_NOT_FOUND: gearbx_status = 3;
/// A corrupt or truncated GGUF, or a bad Ollama manifest.
pub const GEARBX_ERR_BAD_MODEL: gearbx_status = 4;
/// A blob's sha256 does not match its name.
pub const GEARBX_ERR_DIGEST: gearbx_status = 5;
/// The prompt does not fit in the context.
pub const GEARBX_ERR_PROMPT_TOO_LONG: gearbx_status = 6;
/// llama.cpp failed at run time, or the logits are NaN/inf.
pub const GEARBX_ERR_RUNTIME: gearbx_status = 7;
/// Obtaining the default model failed.
pub const GEARBX_ERR_FETCH: gearbx_status = 8;
/// The llama.cpp the host links or compiled against is not the one gearbx was built with.
pub const GEARBX_ERR_VERSION_MISMATCH: gearbx_status = 9;
/// The handle is in use by another call (two threads, or a call from inside a callback).
pub const GEARBX_ERR_BUSY: gearbx_status = 10;
/// A file could not be read or written (permissions, a full disk).
pub const GEARBX_ERR_IO: gearbx_status = 11;
/// `gearbx_engine_cancel` stopped the generation; what was generated was delivered.
pub const GEARBX_ERR_CANCELLED: gearbx_status = 130;

/// An error on its way to C: a code and a message.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: gearbx_status,
    message: String,
}

pub(crate) type ApiResult<T = ()> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(code: gearbx_status, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(GEARBX_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = match e.exit_code() {
            exit::USAGE => GEARBX_ERR_INVALID_ARGUMENT,
            exit::NOT_FOUND => GEARBX_ERR_NOT_FOUND,
            exit::BAD_MODEL => GEARBX_ERR_BAD_MODEL,
            exit::DIGEST_MISMATCH => GEARBX_ERR_DIGEST,
            exit::PROMPT_TOO_LONG => GEARBX_ERR_PROMPT_TOO_LONG,
            exit::RUNTIME => GEARBX_ERR_RUNTIME,
            exit::FETCH => GEARBX_ERR_FETCH,
            exit::IO => GEARBX_ERR_IO,
            exit::INTERRUPTED => GEARBX_ERR_CANCELLED,
            _ => GEARBX_ERR_INTERNAL,
        };
        Self::new(code, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs an entry point's body: catches panics, stores the message of a failure in this
/// thread's last error and turns the outcome into a status code.
pub(crate) fn guard(body: impl FnOnce() -> ApiResult) -> gearbx_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => GEARBX_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error in gearbx (please report): {what}"));
            GEARBX_ERR_INTERNAL
        }
    }
}

/// A C `n_threads`: 0 for all cores (`session::threads_or_all`), negative refused.
pub(crate) fn n_threads(n: i32) -> ApiResult<usize> {
    match n {
        0 => Ok(crate::session::threads_or_all(None)),
        n if n < 0 => Err(ApiError::invalid(format!(
            "n_threads must be >= 0, got {n}"
        ))),
        n => Ok(n as usize),
    }
}

/// Runs a constructor entry point: `*out` is NULL unless `make` succeeds, and then owns the
/// boxed value (the caller frees it with the matching close/detach).
///
/// # Safety
/// `out` is NULL (refused) or writable storage for one pointer.
pub(crate) unsafe fn construct<T>(
    out: *mut *mut T,
    make: impl FnOnce() -> ApiResult<T>,
) -> gearbx_status {
    guard(|| {
        if out.is_null() {
            return Err(ApiError::invalid("out is NULL"));
        }
        // SAFETY: out is non-null and writable (the caller's contract).
        unsafe { *out = std::ptr::null_mut() };
        let value = make()?;
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(Box::new(value)) };
        Ok(())
    })
}

/// Runs `body` for an entry point that cannot report a status (a `void` or value-returning
/// function): a panic is swallowed and `fallback` returned.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Locks a handle's state for one call: another thread (or a callback calling back) gets
/// `GEARBX_ERR_BUSY`; a handle whose call panicked is reported unusable.
pub(crate) fn lock_handle<'a, T>(
    m: &'a std::sync::Mutex<T>,
    what: &str,
    close: &str,
) -> ApiResult<std::sync::MutexGuard<'a, T>> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(std::sync::TryLockError::WouldBlock) => Err(ApiError::new(
            GEARBX_ERR_BUSY,
            format!(
                "the {what} is in use by another call (another thread, or a callback calling back)"
            ),
        )),
        Err(std::sync::TryLockError::Poisoned(_)) => Err(ApiError::new(
            GEARBX_ERR_INTERNAL,
            format!("the {what} is unusable after an internal error; {close} it"),
        )),
    }
}

/// A reference from a pointer the caller passed, or an error naming the argument.
///
/// # Safety
/// A non-null `p` must point to a valid, initialized `T` for `'a`.
pub(crate) unsafe fn arg<'a, T>(p: *const T, name: &str) -> ApiResult<&'a T> {
    // SAFETY: forwarded from the caller.
    unsafe { p.as_ref() }.ok_or_else(|| ApiError::invalid(format!("{name} is NULL")))
}

/// An optional UTF-8 string argument (`NULL` → `None`).
///
/// # Safety
/// A non-null `p` must point to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> ApiResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| ApiError::invalid(format!("{name} is not valid UTF-8")))
}

/// A required UTF-8 string argument.
///
/// # Safety
/// As [`opt_str`].
pub(crate) unsafe fn req_str<'a>(p: *const c_char, name: &str) -> ApiResult<&'a str> {
    // SAFETY: forwarded from the caller.
    unsafe { opt_str(p, name) }?.ok_or_else(|| ApiError::invalid(format!("{name} is NULL")))
}

/// The message of the last failed gearbx call on the calling thread ("" if none failed).
///
/// Each thread has its own message; a successful call does not clear it (like `errno`). The
/// pointer stays valid until the next failing gearbx call on the same thread; copy it to keep
/// it. Never NULL.
#[no_mangle]
pub extern "C" fn gearbx_last_error() -> *const c_char {
    guard_value(c"internal error".as_ptr(), || {
        LAST_ERROR.with(|e| e.borrow().as_ptr())
    })
}

/// gearbx's version, e.g. "0.1.0". A static string; never NULL.
#[no_mangle]
pub extern "C" fn gearbx_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}
