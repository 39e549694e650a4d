//! Routes llama.cpp's log: silent by default, everything on stderr with `--verbose`; the error
//! lines since the last look are kept so a failed call can say why (llama.cpp logs the reason,
//! then a generic "failed to load model" after it).

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::sys;

static VERBOSE: AtomicBool = AtomicBool::new(false);
static LAST_ERRORS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Show llama.cpp's own log on stderr.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// The last this many error lines are kept, each up to MAX_LINE bytes.
const MAX_LINES: usize = 4;
const MAX_LINE: usize = 1024;

/// The last errors llama.cpp logged since the previous call, joined by "; ", without the
/// function names llama.cpp prefixes them with.
pub fn take_last_error() -> Option<String> {
    let mut e = LAST_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    let lines: Vec<String> = e.drain(..).collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// "llama_model_load: error loading model: X" → "error loading model: X".
fn strip_function(line: &str) -> &str {
    match line.split_once(": ") {
        Some((f, rest))
            if !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            rest
        }
        _ => line,
    }
}

unsafe extern "C" fn callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
    let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if level == sys::GGML_LOG_LEVEL_ERROR {
        let line = strip_function(s.trim());
        if let (Ok(mut e), false) = (LAST_ERRORS.lock(), line.is_empty()) {
            if e.len() == MAX_LINES {
                e.pop_front();
            }
            let mut end = line.len().min(MAX_LINE);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            e.push_back(line[..end].to_string());
        }
    }
    if VERBOSE.load(Ordering::Relaxed) {
        // Never a panic here (stderr on a full device): this runs inside llama.cpp.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), s.as_bytes());
    }
}

pub(super) fn install() {
    // SAFETY: `callback` is a plain function valid for the whole program and ignores user data.
    unsafe {
        sys::llama_log_set(Some(callback), std::ptr::null_mut());
        sys::ggml_log_set(Some(callback), std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::strip_function;

    #[test]
    fn function_prefixes_are_removed_and_other_colons_kept() {
        assert_eq!(
            strip_function("llama_model_load: error loading model: bad key: x"),
            "error loading model: bad key: x"
        );
        assert_eq!(strip_function("no prefix here"), "no prefix here");
        assert_eq!(
            strip_function("a phrase: with colon"),
            "a phrase: with colon"
        );
    }
}
