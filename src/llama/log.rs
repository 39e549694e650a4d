//! Routes llama.cpp's log: silent by default, everything on stderr with `--verbose`; the last
//! error line is kept so a failed call can say why.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::sys;

static VERBOSE: AtomicBool = AtomicBool::new(false);
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

/// Show llama.cpp's own log on stderr.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// The last error llama.cpp logged since the previous call, trimmed.
pub fn take_last_error() -> Option<String> {
    let mut e = LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner());
    let s = std::mem::take(&mut *e);
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

unsafe extern "C" fn callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if level == sys::GGML_LOG_LEVEL_ERROR {
        if let Ok(mut e) = LAST_ERROR.lock() {
            e.clear();
            e.push_str(&s);
        }
    }
    if VERBOSE.load(Ordering::Relaxed) {
        eprint!("{s}");
    }
}

pub(super) fn install() {
    // SAFETY: `callback` is a plain function valid for the whole program and ignores user data.
    unsafe {
        sys::llama_log_set(Some(callback), std::ptr::null_mut());
        sys::ggml_log_set(Some(callback), std::ptr::null_mut());
    }
}
