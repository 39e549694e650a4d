//! A llama.cpp context (KV cache + compute state) borrowing its model: decode and logits.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::kv::{parse_cache_name, FlashAttn, KvCache, KvRowHook};
use super::{sys, GgmlType, Model, Sampler, Token};
use crate::error::{Error, Result};

/// Context settings (llama.cpp's names).
#[derive(Debug, Clone)]
pub struct ContextParams {
    /// Context window in tokens.
    pub n_ctx: u32,
    /// Largest batch handed to one decode call (prompt chunks).
    pub n_batch: u32,
    /// Threads for generation and for prompt processing.
    pub n_threads: i32,
    /// Rebuild llama.cpp's graph for every decode (LLAMA_GRAPH_REUSE_DISABLE). Needed only
    /// where a gearbox shifts weights on a GPU that cannot keep a captured graph per weight set
    /// ([`Model::shifts_need_graph_rebuild`]): there a reused graph would replay the old
    /// weights. With our ggml-cuda patch every gear keeps its own CUDA graph instead.
    pub rebuild_graphs: bool,
    /// The KV cache's types, flash attention and rotation (llama.cpp's defaults: F16, auto,
    /// on). [`KvCache::check`] refuses what the context would.
    pub kv: KvCache,
}

/// An owned `llama_context`, freed on drop; it cannot outlive the model it borrows.
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
    n_ctx: u32,
    n_batch: u32,
    n_past: u32,
    /// Set from another thread (Ctrl-C) to abort a running decode; kept alive by this Arc
    /// because llama.cpp holds a raw pointer to it.
    abort: Arc<AtomicBool>,
    /// A sampler chain attached for backend sampling (llama.cpp keeps a pointer to it).
    attached: Option<Sampler>,
    rebuilds_graphs: bool,
    /// Batches of up to 8 tokens compute each row as single-token decoding would (CUDA,
    /// our patch 0003; see [`Context::set_width_invariant`]).
    width_invariant: bool,
    /// The row hook of [`Context::with_kv_hook`]; boxed so that llama.cpp's pointer to it
    /// stays valid when the context moves.
    kv_hook: Option<Box<HookSlot>>,
    _not_sync: PhantomData<*mut ()>,
}

/// A [`KvRowHook`] as llama.cpp's eval callback sees it.
struct HookSlot {
    hook: Box<dyn KvRowHook>,
    /// Set when the hook panicked (caught at the FFI boundary); the next decode fails.
    panicked: bool,
}

unsafe extern "C" fn abort_callback(data: *mut c_void) -> bool {
    // SAFETY: data is the AtomicBool inside the context's Arc, alive as long as the context.
    unsafe { (*(data as *const AtomicBool)).load(Ordering::Relaxed) }
}

impl<'m> Context<'m> {
    /// Creates a context; `abort` becomes llama.cpp's abort flag for every decode.
    pub fn new(model: &'m Model, params: &ContextParams, abort: Arc<AtomicBool>) -> Result<Self> {
        Self::create(model, params, abort, None)
    }

    /// A context whose KV cache rows pass through `hook` as llama.cpp writes them (see
    /// [`KvRowHook`]). The cache must be F32 with flash attention on (so that V is stored by
    /// rows) and the model on the CPU.
    pub fn with_kv_hook(
        model: &'m Model,
        params: &ContextParams,
        abort: Arc<AtomicBool>,
        hook: Box<dyn KvRowHook>,
    ) -> Result<Self> {
        let kv = &params.kv;
        if kv.type_k.0 != GgmlType::F32
            || kv.type_v.0 != GgmlType::F32
            || kv.flash_attn != FlashAttn::On
        {
            return Err(Error::InvalidParam(format!(
                "a KV row hook needs an f32 cache with flash attention on, not K {} V {} -fa {}",
                kv.type_k, kv.type_v, kv.flash_attn
            )));
        }
        if model.offloaded() {
            return Err(Error::InvalidParam(
                "a KV row hook edits the cache in host memory: load the model with -ngl 0".into(),
            ));
        }
        Self::create(
            model,
            params,
            abort,
            Some(Box::new(HookSlot {
                hook,
                panicked: false,
            })),
        )
    }

    fn create(
        model: &'m Model,
        params: &ContextParams,
        abort: Arc<AtomicBool>,
        mut kv_hook: Option<Box<HookSlot>>,
    ) -> Result<Self> {
        // SAFETY: returns a plain struct of defaults.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = params.n_ctx;
        p.n_batch = params.n_batch.min(params.n_ctx);
        p.n_ubatch = p.n_batch.min(512);
        p.n_threads = params.n_threads;
        p.n_threads_batch = params.n_threads;
        p.type_k = params.kv.type_k.0.id() as sys::ggml_type;
        p.type_v = params.kv.type_v.0.id() as sys::ggml_type;
        p.flash_attn_type = params.kv.flash_attn.llama_type() as sys::llama_flash_attn_type;
        p.abort_callback = Some(abort_callback);
        p.abort_callback_data = Arc::as_ptr(&abort) as *mut c_void;
        if let Some(slot) = kv_hook.as_mut() {
            p.cb_eval = Some(kv_hook_callback);
            p.cb_eval_user_data = &mut **slot as *mut HookSlot as *mut c_void;
        }
        // llama.cpp reads these switches once, when the context is made.
        const REUSE_OFF: &str = "LLAMA_GRAPH_REUSE_DISABLE";
        const ROT_OFF: &str = "LLAMA_ATTN_ROT_DISABLE";
        let switches = [
            (REUSE_OFF, params.rebuild_graphs),
            (ROT_OFF, !params.kv.rotation),
        ];
        let before: Vec<_> = switches.iter().map(|(k, _)| std::env::var_os(k)).collect();
        for (k, on) in switches {
            if on {
                std::env::set_var(k, "1");
            }
        }
        // SAFETY: the model pointer is valid for 'm, which outlives the context.
        let raw = unsafe { sys::llama_init_from_model(model.as_ptr(), p) };
        for ((k, on), was) in switches.into_iter().zip(before) {
            if on {
                match was {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
        }
        let ptr = NonNull::new(raw).ok_or_else(|| {
            Error::Llama(format!(
                "could not create a context of {} tokens: {}",
                params.n_ctx,
                super::take_last_error().unwrap_or_else(|| "out of memory?".into())
            ))
        })?;
        // SAFETY: ptr is a valid context.
        let n_ctx = unsafe { sys::llama_n_ctx(ptr.as_ptr()) };
        // llama.cpp pads the cache to a multiple of 256 cells; the context is what was asked.
        let n_ctx = if params.n_ctx > 0 {
            n_ctx.min(params.n_ctx)
        } else {
            n_ctx
        };
        Ok(Self {
            ptr,
            model,
            n_ctx,
            n_batch: p.n_batch,
            n_past: 0,
            abort,
            attached: None,
            rebuilds_graphs: params.rebuild_graphs,
            width_invariant: false,
            kv_hook,
            _not_sync: PhantomData,
        })
    }

    /// Whether llama.cpp rebuilds this context's graph for every decode.
    pub fn rebuilds_graphs(&self) -> bool {
        self.rebuilds_graphs
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The context window in tokens.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// The most tokens one decode call takes.
    pub fn n_batch(&self) -> u32 {
        self.n_batch
    }

    /// Bytes the KV cache of this context's sequence holds now, as llama.cpp serializes it
    /// (the cached tokens' K and V in the cache types, for every layer).
    pub fn kv_state_bytes(&self) -> usize {
        // SAFETY: ptr is a valid context; sequence 0 is the one every decode uses; this only
        // measures (a counting writer).
        unsafe { sys::llama_state_seq_get_size(self.ptr.as_ptr(), 0) }
    }

    /// Tokens already in the KV cache.
    pub fn n_past(&self) -> u32 {
        self.n_past
    }

    /// Appends tokens to the sequence, in chunks of `n_batch`; afterwards the logits of the
    /// last token are available from [`Context::logits`].
    pub fn decode(&mut self, tokens: &[Token]) -> Result<()> {
        if self.n_past as usize + tokens.len() > self.n_ctx as usize {
            return Err(Error::Llama(format!(
                "{} tokens do not fit: {} of {} context positions are used",
                tokens.len(),
                self.n_past,
                self.n_ctx
            )));
        }
        self.select_graph_variant();
        let mut buf = tokens.to_vec();
        for chunk in buf.chunks_mut(self.n_batch as usize) {
            // SAFETY: chunk is a live, writable token buffer for the duration of the call;
            // batch_get_one only records its pointer and length.
            let rc = unsafe {
                sys::llama_decode(
                    self.ptr.as_ptr(),
                    sys::llama_batch_get_one(chunk.as_mut_ptr(), chunk.len() as i32),
                )
            };
            decode_status(rc)?;
            self.hook_status()?;
            self.n_past += chunk.len() as u32;
        }
        Ok(())
    }

    /// Fails once a [`KvRowHook`] has panicked (its edits, and so the cache, are incomplete).
    fn hook_status(&self) -> Result<()> {
        match &self.kv_hook {
            Some(slot) if slot.panicked => Err(Error::Llama(
                "the KV row hook panicked during a decode".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Runs this thread's next decodes under the CUDA graph variant of the model's current
    /// weights (a no-op without our ggml-cuda patch).
    fn select_graph_variant(&self) {
        let strict = if self.width_invariant {
            super::cuda_graphs::WIDTH_INVARIANT
        } else {
            0
        };
        super::cuda_graphs::set_variant(self.model.graph_variant() | strict);
    }

    /// On CUDA with our patch 0003: batches of up to 8 tokens use the kernels and reduction
    /// orders of single-token decoding, so each row's logits equal decoding that token alone
    /// (slower batches; single tokens unchanged). These batches keep CUDA graphs of their own.
    /// Without a GPU (the CPU kernels are checked by probing instead) it changes nothing.
    pub fn set_width_invariant(&mut self, on: bool) {
        self.width_invariant = on;
    }

    /// Like [`Context::decode`], but computes logits at every position and returns the
    /// entropy (bits) of each one (used to calibrate the monitor from the prompt).
    pub fn decode_with_entropies(&mut self, tokens: &[Token]) -> Result<Vec<f32>> {
        if self.n_past as usize + tokens.len() > self.n_ctx as usize {
            return self.decode(tokens).map(|_| Vec::new());
        }
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(self.n_batch as usize) {
            self.decode_all_logits(chunk)?;
            for i in 0..chunk.len() {
                out.push(crate::kernels::entropy_bits(self.logits_at(i)?).0);
            }
        }
        Ok(out)
    }

    /// Appends `tokens` as one batch with logits at every position (for verifying a draft);
    /// [`Context::logits_at`] reads them.
    pub fn decode_all_logits(&mut self, tokens: &[Token]) -> Result<()> {
        if tokens.len() > self.n_batch as usize
            || self.n_past as usize + tokens.len() > self.n_ctx as usize
        {
            return Err(Error::Llama(format!(
                "a batch of {} tokens does not fit ({} of {} positions used, batch {})",
                tokens.len(),
                self.n_past,
                self.n_ctx,
                self.n_batch
            )));
        }
        self.select_graph_variant();
        // SAFETY: a batch for tokens.len() tokens with one sequence id each, freed below.
        let rc = unsafe {
            let mut b = sys::llama_batch_init(tokens.len() as i32, 0, 1);
            for (i, &t) in tokens.iter().enumerate() {
                *b.token.add(i) = t;
                *b.pos.add(i) = (self.n_past as usize + i) as i32;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)) = 0;
                *b.logits.add(i) = 1;
            }
            b.n_tokens = tokens.len() as i32;
            let rc = sys::llama_decode(self.ptr.as_ptr(), b);
            sys::llama_batch_free(b);
            rc
        };
        decode_status(rc)?;
        self.hook_status()?;
        self.n_past += tokens.len() as u32;
        Ok(())
    }

    /// The logits of output `i` of the last decode.
    pub fn logits_at(&self, i: usize) -> Result<&[f32]> {
        // SAFETY: ptr is valid; llama.cpp returns NULL for an output that does not exist.
        let p = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), i as i32) };
        if p.is_null() {
            return Err(Error::Llama(format!("no logits at output {i}")));
        }
        // SAFETY: a row of n_vocab floats, valid until the next decode (needs &mut self).
        Ok(unsafe { std::slice::from_raw_parts(p, self.model.n_vocab()) })
    }

    /// Drops every cached position from `n` on (rejected draft tokens); the next decode
    /// continues at position `n`.
    pub fn truncate(&mut self, n: u32) -> Result<()> {
        if n >= self.n_past {
            return Ok(());
        }
        // SAFETY: ptr is valid; the memory handle belongs to it.
        let ok = unsafe {
            sys::llama_memory_seq_rm(sys::llama_get_memory(self.ptr.as_ptr()), 0, n as i32, -1)
        };
        if !ok {
            return Err(Error::Llama(format!(
                "the KV cache cannot drop positions from {n} on (a recurrent model?)"
            )));
        }
        self.n_past = n;
        Ok(())
    }

    /// True when the abort flag is set (decode returns an "aborted" error then).
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Empties the KV cache: the next decode starts at position 0.
    pub fn clear(&mut self) {
        // SAFETY: ptr is valid; the memory handle belongs to it; clearing data too is allowed.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) };
        self.n_past = 0;
    }

    /// Attaches `sampler` to sequence 0 for backend sampling: from the next decode on, the
    /// backend-capable prefix of the chain runs inside the graph. Replaces (and frees) any
    /// sampler attached before. While attached, [`Context::logits`] is unavailable.
    pub fn attach_sampler(&mut self, sampler: Sampler) -> Result<()> {
        // SAFETY: both pointers are valid; the context keeps the sampler pointer, so the
        // Sampler is stored in self and outlives the attachment (detach or drop).
        let ok = unsafe { sys::llama_set_sampler(self.ptr.as_ptr(), 0, sampler.as_ptr()) };
        if !ok {
            return Err(Error::Llama(
                "this context cannot run samplers on the backend".into(),
            ));
        }
        self.attached = Some(sampler);
        Ok(())
    }

    /// Detaches the backend sampler, if any; decodes produce host logits again.
    pub fn detach_sampler(&mut self) {
        if self.attached.take().is_some() {
            // SAFETY: ptr is valid; a null sampler removes the attachment.
            unsafe { sys::llama_set_sampler(self.ptr.as_ptr(), 0, std::ptr::null_mut()) };
        }
    }

    /// Samples from the last decode with the attached chain (the token the backend drew, or
    /// the chain's host part over the backend's output) and records it in the chain.
    pub fn sample_attached(&mut self) -> Result<Token> {
        let s = self
            .attached
            .as_mut()
            .ok_or_else(|| Error::Llama("no sampler is attached".into()))?;
        Ok(s.sample_ptr(self.ptr.as_ptr()))
    }

    /// The backend's `probs` output of the last decode's last token (None when the backend
    /// produced none).
    pub fn sampled_probs(&self) -> Option<&[f32]> {
        // SAFETY: ptr is valid; -1 is the last output; the row stays valid until the next
        // decode, which needs &mut self.
        unsafe {
            let p = sys::llama_get_sampled_probs_ith(self.ptr.as_ptr(), -1);
            let n = sys::llama_get_sampled_probs_count_ith(self.ptr.as_ptr(), -1);
            (!p.is_null() && n > 0).then(|| std::slice::from_raw_parts(p, n as usize))
        }
    }

    /// The logits of the last decoded token (one per vocabulary entry).
    pub fn logits(&self) -> Result<&[f32]> {
        if self.attached.is_some() {
            return Err(Error::Llama(
                "host logits are not produced while a backend sampler is attached".into(),
            ));
        }
        // SAFETY: ptr is valid; -1 means the last output of the last decode.
        let p = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), -1) };
        if p.is_null() {
            return Err(Error::Llama("no logits: nothing was decoded yet".into()));
        }
        // SAFETY: llama.cpp returns a row of n_vocab floats that stays valid until the next
        // decode, which needs &mut self and so cannot happen while this borrow lives.
        Ok(unsafe { std::slice::from_raw_parts(p, self.model.n_vocab()) })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }
}

/// llama.cpp's eval callback for [`Context::with_kv_hook`]: asks for every write into an F32
/// cache tensor (a SET_ROWS node) and, once it ran, hands each written row to the hook.
unsafe extern "C" fn kv_hook_callback(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user: *mut c_void,
) -> bool {
    // SAFETY: t is a graph node valid during the callback, its sources are tensors or NULL;
    // user is the context's boxed HookSlot, alive as long as the context that computes.
    unsafe {
        let node = &*t;
        // ggml_set_rows(a, b, c): the node is a view of the cache a, src[0] = b the rows
        // written, src[1] = c their indices.
        let dst = node.view_src;
        let idx = node.src[1];
        if node.op != sys::GGML_OP_SET_ROWS || dst.is_null() || idx.is_null() {
            return !ask;
        }
        let name = std::ffi::CStr::from_ptr((*dst).name.as_ptr()).to_string_lossy();
        let Some((part, layer)) = parse_cache_name(&name) else {
            return !ask;
        };
        if ask {
            return true;
        }
        let slot = &mut *(user as *mut HookSlot);
        let idx = &*idx;
        let host =
            |b: sys::ggml_backend_buffer_t| !b.is_null() && sys::ggml_backend_buffer_is_host(b);
        let index_bytes = match idx.type_ {
            sys::GGML_TYPE_I64 => 8,
            sys::GGML_TYPE_I32 => 4,
            _ => return true,
        };
        if slot.panicked
            || node.type_ != sys::GGML_TYPE_F32
            || !host(node.buffer)
            || !host(idx.buffer)
            || node.nb[0] != 4
            || idx.ne[1] * idx.ne[2] * idx.ne[3] != 1
        {
            return true;
        }
        let n = node.ne[0] as usize;
        for i in 0..idx.ne[0] as usize {
            let at = (idx.data as *const u8).add(i * idx.nb[0]);
            let r = if index_bytes == 8 {
                (at as *const i64).read_unaligned()
            } else {
                (at as *const i32).read_unaligned() as i64
            };
            if r < 0 || r >= node.ne[1] {
                continue;
            }
            let row = std::slice::from_raw_parts_mut(
                (node.data as *mut u8).add(r as usize * node.nb[1]) as *mut f32,
                n,
            );
            let edit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                slot.hook.edit_row(part, layer, row)
            }));
            if edit.is_err() {
                slot.panicked = true;
                break;
            }
        }
        true
    }
}

/// Maps `llama_decode`'s return code (llama.h's table) to a result.
fn decode_status(rc: i32) -> Result<()> {
    match rc {
        0 => Ok(()),
        1 => Err(Error::Llama(
            "no KV-cache slot for the batch (context full)".into(),
        )),
        2 => Err(Error::Llama("decode aborted".into())),
        rc => Err(Error::Llama(format!(
            "llama_decode returned {rc}: {}",
            super::take_last_error().unwrap_or_default()
        ))),
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_init_from_model and is freed exactly once.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}
