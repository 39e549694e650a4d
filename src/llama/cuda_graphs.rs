//! gearbx's ggml-cuda patches (vendor/patches/0001-0003) from Rust: one captured CUDA graph per
//! weight variant (whose top bit selects width-invariant kernels), and an invalidation call. Found at run time in the CUDA backend's
//! proc-address table, so they are simply absent in CPU builds and in a host program whose
//! llama.cpp lacks the patches.

use std::sync::OnceLock;

use super::sys;

/// The variant bit that makes batches of up to 8 tokens compute each row as a single token
/// would (patch 0003); weight variants never use it.
pub const WIDTH_INVARIANT: u64 = 1 << 63;

/// The variant bit that offers this thread's quantized products to our decode kernels
/// (patch 0005's hook, csrc/cuda/mmv.cu); weight variants never use it.
pub const DECODE_KERNELS: u64 = 1 << 62;

type SetVariant = unsafe extern "C" fn(u64);
type Invalidate = unsafe extern "C" fn();

struct Entries {
    set_variant: Option<SetVariant>,
    invalidate: Option<Invalidate>,
}

fn entries() -> &'static Entries {
    static E: OnceLock<Entries> = OnceLock::new();
    E.get_or_init(|| {
        // SAFETY: the name is NUL-terminated; the registry is initialized on first use and
        // returns null when no CUDA backend was built in or loaded.
        let reg = unsafe { sys::ggml_backend_reg_by_name(c"CUDA".as_ptr()) };
        if reg.is_null() {
            return Entries {
                set_variant: None,
                invalidate: None,
            };
        }
        let find = |name: &std::ffi::CStr| {
            // SAFETY: reg is a live registry entry; an unknown name gives null.
            let p = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        Entries {
            // SAFETY: the patches export these names with exactly these signatures
            // (ggml-cuda.h as patched: void f(uint64_t), void f(void)).
            set_variant: find(c"ggml_backend_cuda_set_graph_variant")
                .map(|p| unsafe { std::mem::transmute::<*mut std::ffi::c_void, SetVariant>(p) }),
            // SAFETY: as above.
            invalidate: find(c"ggml_backend_cuda_invalidate_graphs")
                .map(|p| unsafe { std::mem::transmute::<*mut std::ffi::c_void, Invalidate>(p) }),
        }
    })
}

/// Whether this process's ggml-cuda keeps a CUDA graph per variant (our patch 0001 is in the
/// llama.cpp it runs with). False without a CUDA backend.
pub fn variants_available() -> bool {
    entries().set_variant.is_some()
}

/// Tells ggml-cuda which weight variant the calling thread's next decodes run with (each keeps
/// its own captured graph). Returns false, doing nothing, where the patch is absent.
pub fn set_variant(variant: u64) -> bool {
    match entries().set_variant {
        // SAFETY: the function only stores the number in a thread-local.
        Some(f) => unsafe { f(variant) },
        None => return false,
    }
    true
}

/// Makes every captured CUDA graph check its nodes before its next replay (weights moved by
/// other means than a variant). Returns false, doing nothing, where the patch is absent.
pub fn invalidate() -> bool {
    match entries().invalidate {
        // SAFETY: the function only increments an atomic counter.
        Some(f) => unsafe { f() },
        None => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_match_the_build() {
        super::super::init();
        // A CUDA build carries the patches; a CPU build has no CUDA backend to ask.
        assert_eq!(super::variants_available(), cfg!(feature = "cuda"));
        assert_eq!(super::invalidate(), cfg!(feature = "cuda"));
        assert_eq!(super::set_variant(0), cfg!(feature = "cuda"));
    }
}
