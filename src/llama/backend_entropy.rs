//! Entropy of the next-token distribution computed inside llama.cpp's graph through the
//! backend-sampling interface, so that on a GPU one float (and the sampled token) crosses to
//! the host per token instead of the whole logit vector.
//!
//! Two samplers share one probe: the *head* goes first in the chain and builds
//! `-Σ softmax(l)·log2 softmax(l)` from the raw logits (before penalties or truncation touch
//! them); the *tail* goes last and publishes that 1-element tensor as the chain's `probs`
//! output, dropping the logits output when a token was sampled on the backend. If the backend
//! cannot run the ops, the chain runs on the CPU and the head computes the same number from the
//! host logits instead.

use std::cell::Cell;
use std::ffi::c_char;
use std::rc::Rc;

use super::sys;
use crate::kernels;

/// State shared by the head and the tail of one chain.
#[derive(Default)]
pub struct Probe {
    /// The entropy tensor the head built for the graph being constructed.
    stash: Cell<*mut sys::ggml_tensor>,
    /// Set by the head when it ran on the host (CPU fallback): bits of the last distribution.
    host_bits: Cell<f32>,
    /// Whether the head's `backend_init` accepted the backend.
    on_backend: Cell<bool>,
}

impl Probe {
    /// Whether the entropy is computed in the graph (true) or by the host fallback.
    pub fn on_backend(&self) -> bool {
        self.on_backend.get()
    }

    /// The entropy the host fallback computed for the last sampled distribution.
    pub fn host_bits(&self) -> f32 {
        self.host_bits.get()
    }
}

const LN2: f32 = std::f32::consts::LN_2;

/// The probe behind a head or tail sampler.
///
/// # Safety
/// `smpl` must be a sampler created by [`head`] or [`tail`] and not yet freed.
unsafe fn probe<'a>(smpl: *const sys::llama_sampler) -> &'a Probe {
    // SAFETY: ctx is the pointer from Rc::into_raw in `make`, alive until `free`.
    unsafe { &*((*smpl).ctx as *const Probe) }
}

unsafe extern "C" fn name_head(_: *const sys::llama_sampler) -> *const c_char {
    c"gearbx-entropy".as_ptr()
}

unsafe extern "C" fn name_tail(_: *const sys::llama_sampler) -> *const c_char {
    c"gearbx-entropy-out".as_ptr()
}

unsafe extern "C" fn apply_head(
    smpl: *mut sys::llama_sampler,
    cur_p: *mut sys::llama_token_data_array,
) {
    // SAFETY: llama.cpp passes its live candidate array; as the chain's first sampler it holds
    // the raw logits of the full vocabulary.
    let cur = unsafe { std::slice::from_raw_parts((*cur_p).data, (*cur_p).size) };
    let logits: Vec<f32> = cur.iter().map(|c| c.logit).collect();
    let (bits, n_bad) = kernels::entropy_bits(&logits);
    // SAFETY: smpl is one of ours.
    unsafe { probe(smpl) }
        .host_bits
        .set(if n_bad > 0 { f32::NAN } else { bits });
}

unsafe extern "C" fn apply_tail(_: *mut sys::llama_sampler, _: *mut sys::llama_token_data_array) {}

unsafe extern "C" fn free(smpl: *mut sys::llama_sampler) {
    // SAFETY: drops the reference `make` leaked into ctx; the sampler struct itself is freed
    // by llama_sampler_free after this returns.
    drop(unsafe { Rc::from_raw((*smpl).ctx as *const Probe) });
}

unsafe extern "C" fn clone_head(smpl: *const sys::llama_sampler) -> *mut sys::llama_sampler {
    // SAFETY: smpl is one of ours; the clone shares its probe.
    make(&HEAD, unsafe { shared(smpl) })
}

unsafe extern "C" fn clone_tail(smpl: *const sys::llama_sampler) -> *mut sys::llama_sampler {
    // SAFETY: as in clone_head.
    make(&TAIL, unsafe { shared(smpl) })
}

/// A new strong reference to a sampler's probe.
///
/// # Safety
/// As for [`probe`].
unsafe fn shared(smpl: *const sys::llama_sampler) -> Rc<Probe> {
    // SAFETY: ctx came from Rc::into_raw and is still owned by smpl.
    unsafe {
        let p = (*smpl).ctx as *const Probe;
        Rc::increment_strong_count(p);
        Rc::from_raw(p)
    }
}

/// True when the device behind `buft` can run every op of the entropy graph.
fn device_supports(buft: sys::ggml_backend_buffer_type_t) -> bool {
    // SAFETY: buft comes from llama.cpp; a null device means the CPU, which runs every op.
    let dev = unsafe { sys::ggml_backend_buft_get_device(buft) };
    if dev.is_null() {
        return true;
    }
    // SAFETY: a no-alloc context holding a few tensor headers, freed below.
    unsafe {
        let ctx = sys::ggml_init(sys::ggml_init_params {
            mem_size: 16 * sys::ggml_tensor_overhead(),
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        });
        if ctx.is_null() {
            return false;
        }
        let logits = sys::ggml_new_tensor_1d(ctx, sys::GGML_TYPE_F32, 128 * 1024);
        let ops = entropy_ops(ctx, logits);
        let ok = ops
            .iter()
            .all(|&op| sys::ggml_backend_dev_supports_op(dev, op));
        sys::ggml_free(ctx);
        ok
    }
}

/// Builds the entropy graph over `logits`; returns every op node, the result last.
///
/// # Safety
/// `ctx` must be a live ggml context with room for six tensors; `logits` an F32 vector in it.
unsafe fn entropy_ops(
    ctx: *mut sys::ggml_context,
    logits: *mut sys::ggml_tensor,
) -> [*mut sys::ggml_tensor; 6] {
    // SAFETY: plain graph construction in ctx (see the function's contract).
    unsafe {
        let p = sys::ggml_soft_max(ctx, logits);
        // log(0) would be -inf and 0·-inf NaN: clamp first; p·log(tiny) is still 0 for p = 0.
        let pc = sys::ggml_clamp(ctx, p, 1e-30, 1.0);
        let lp = sys::ggml_log(ctx, pc);
        let plp = sys::ggml_mul(ctx, p, lp);
        let s = sys::ggml_sum(ctx, plp);
        let bits = sys::ggml_scale(ctx, s, -1.0 / LN2);
        [p, pc, lp, plp, s, bits]
    }
}

unsafe extern "C" fn backend_init_head(
    smpl: *mut sys::llama_sampler,
    buft: sys::ggml_backend_buffer_type_t,
    _n_outputs_max_per_seq: u32,
) -> bool {
    let ok = device_supports(buft);
    // SAFETY: smpl is one of ours.
    unsafe { probe(smpl) }.on_backend.set(ok);
    ok
}

unsafe extern "C" fn backend_init_tail(
    _: *mut sys::llama_sampler,
    _: sys::ggml_backend_buffer_type_t,
    _: u32,
) -> bool {
    true
}

unsafe extern "C" fn backend_apply_head(
    smpl: *mut sys::llama_sampler,
    ctx: *mut sys::ggml_context,
    gf: *mut sys::ggml_cgraph,
    data: *mut sys::llama_sampler_data,
) {
    // SAFETY: llama.cpp passes its graph context and this row's sampler data; the logits are a
    // contiguous F32 row of the full vocabulary (this sampler runs first).
    unsafe {
        let logits = sys::ggml_reshape_1d(ctx, (*data).logits, sys::ggml_nelements((*data).logits));
        let bits = entropy_ops(ctx, logits)[5];
        sys::ggml_set_name(bits, c"gearbx_entropy_bits".as_ptr());
        // Put the entropy nodes into the graph now: later samplers (penalties) scatter into
        // the logits in place, and graph order is execution order, so this reads them first.
        sys::ggml_build_forward_expand(gf, bits);
        probe(smpl).stash.set(bits);
    }
}

unsafe extern "C" fn backend_apply_tail(
    smpl: *mut sys::llama_sampler,
    _ctx: *mut sys::ggml_context,
    _gf: *mut sys::ggml_cgraph,
    data: *mut sys::llama_sampler_data,
) {
    // SAFETY: as in backend_apply_head; the stash was built for this same graph just before.
    unsafe {
        let p = probe(smpl);
        let bits = p.stash.replace(std::ptr::null_mut());
        if bits.is_null() {
            return;
        }
        (*data).probs = bits;
        if !(*data).sampled.is_null() {
            // The token is already chosen on the backend: nothing else needs to cross.
            (*data).logits = std::ptr::null_mut();
            (*data).candidates = std::ptr::null_mut();
        }
    }
}

static HEAD: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(name_head),
    accept: None,
    apply: Some(apply_head),
    reset: None,
    clone: Some(clone_head),
    free: Some(free),
    backend_init: Some(backend_init_head),
    backend_accept: None,
    backend_apply: Some(backend_apply_head),
    backend_set_input: None,
    backend_reset: None,
    copy_state: None,
};

static TAIL: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(name_tail),
    accept: None,
    apply: Some(apply_tail),
    reset: None,
    clone: Some(clone_tail),
    free: Some(free),
    backend_init: Some(backend_init_tail),
    backend_accept: None,
    backend_apply: Some(backend_apply_tail),
    backend_set_input: None,
    backend_reset: None,
    copy_state: None,
};

fn make(iface: &'static sys::llama_sampler_i, probe: Rc<Probe>) -> *mut sys::llama_sampler {
    // SAFETY: llama.cpp only reads the interface table, which is 'static; ctx owns one strong
    // reference, released by `free`.
    unsafe {
        sys::llama_sampler_init(
            iface as *const _ as *mut sys::llama_sampler_i,
            Rc::into_raw(probe) as *mut std::ffi::c_void,
        )
    }
}

/// The head sampler (first in the chain) for `probe`.
pub fn head(probe: &Rc<Probe>) -> *mut sys::llama_sampler {
    make(&HEAD, Rc::clone(probe))
}

/// The tail sampler (last in the chain) for `probe`.
pub fn tail(probe: &Rc<Probe>) -> *mut sys::llama_sampler {
    make(&TAIL, Rc::clone(probe))
}
