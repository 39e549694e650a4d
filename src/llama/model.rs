//! A loaded llama.cpp model and its vocabulary: tokenization, pieces, chat templates.

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{sys, Token};
use crate::error::{Error, Result};

/// How llama.cpp's load errors about values in the file begin (vendor patch 0004).
const INVALID_FILE: &str = "invalid model file: ";
/// llama.cpp's own load errors that say the file is wrong (not the machine): a model that
/// fails with one is unusable (exit 4), like one our header check refuses.
const FILE_FAULTS: [&str; 7] = [
    "has wrong shape",
    "missing tensor",
    "wrong number of tensors",
    "key not found in model",
    "has wrong type",
    "unknown model architecture",
    "unsupported model architecture",
];

/// How to load a model.
#[derive(Debug, Clone)]
pub struct ModelParams {
    /// Layers to offload to a GPU (-1 = all); ignored on a CPU-only build.
    pub n_gpu_layers: i32,
    /// Weights (and tiers) on the CPU in llama.cpp's repacked layouts where it has them (its
    /// `use_extra_bufts`; false is llama.cpp's `--no-repack`).
    pub repack: bool,
    /// How the offloaded layers spread over several GPUs.
    pub split: super::split::GpuSplit,
    /// Our CUDA decode products (csrc/cuda/mmv.cu) for this model's Q4_0/Q8_0 products where
    /// they are faster than llama.cpp's (CUDA builds; ignored elsewhere).
    pub decode_kernels: bool,
}

/// Whether gearbx's own CUDA decode products are used by default (`--decode-kernels`).
pub const DEFAULT_DECODE_KERNELS: bool = true;

impl Default for ModelParams {
    fn default() -> Self {
        Self {
            n_gpu_layers: -1,
            repack: true,
            split: Default::default(),
            decode_kernels: DEFAULT_DECODE_KERNELS,
        }
    }
}

/// A `llama_model`: loaded and owned (freed on drop), or borrowed from a host program.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    vocab: *const sys::llama_vocab,
    offloaded: bool,
    /// Loaded with llama.cpp's repacked CPU layouts allowed ([`ModelParams::repack`]).
    repack: bool,
    /// Its contexts' products go to our decode kernels ([`ModelParams::decode_kernels`] on a
    /// CUDA build with the model offloaded).
    decode_kernels: bool,
    /// False for a host's model ([`Model::from_host`]): the host frees it.
    owned: bool,
    /// Which weight set the model's tensors point at (0 = as loaded; a gearbox sets it on every
    /// shift): the CUDA graph variant its contexts decode with.
    weight_variant: AtomicU64,
}

// SAFETY: a llama_model is immutable after loading and llama.cpp allows using one model from
// several threads (each with its own context).
unsafe impl Send for Model {}
// SAFETY: as above; all methods taking &self only read the model.
unsafe impl Sync for Model {}

/// One chat message for [`Model::apply_chat_template`].
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl Model {
    /// Loads a GGUF file (memory-mapped).
    pub fn load(path: &Path, params: &ModelParams) -> Result<Self> {
        Self::load_with(path, params, false)
    }

    /// Loads only a GGUF's hyperparameters, vocabulary and chat template, no weights: for
    /// tokenizing before the weights are worth loading.
    pub fn load_vocab(path: &Path) -> Result<Self> {
        Self::load_with(
            path,
            &ModelParams {
                n_gpu_layers: 0,
                ..Default::default()
            },
            true,
        )
    }

    fn load_with(path: &Path, params: &ModelParams, vocab_only: bool) -> Result<Self> {
        super::init();
        let c_path = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| {
            Error::InvalidParam(format!("path {} contains a NUL byte", path.display()))
        })?;
        // SAFETY: returns a plain struct of defaults.
        let mut p = unsafe { sys::llama_model_default_params() };
        p.n_gpu_layers = params.n_gpu_layers;
        p.use_extra_bufts = params.repack;
        if !vocab_only {
            params.split.check(params.n_gpu_layers)?;
        }
        let tensor_split = params.split.llama_tensor_split();
        p.split_mode = params.split.llama_mode();
        p.main_gpu = params.split.main_gpu;
        if let Some(ts) = &tensor_split {
            p.tensor_split = ts.as_ptr(); // read during the load below; ts outlives it
        }
        p.vocab_only = vocab_only;
        super::take_last_error(); // what earlier calls left behind
                                  // SAFETY: c_path is a valid NUL-terminated string; p is a valid params struct.
        let raw = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), p) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            let why = super::take_last_error()
                .unwrap_or_else(|| "unknown reason (run with --verbose)".into());
            // Our patch 0004 turns llama.cpp's asserts on file values into these errors.
            let reason = why.split("; ").next().unwrap_or(&why);
            if let Some((_, r)) = why.split_once(INVALID_FILE) {
                Error::BadGguf {
                    path: path.to_path_buf(),
                    reason: r.split("; ").next().unwrap_or(r).to_string(),
                }
            } else if FILE_FAULTS.iter().any(|f| reason.contains(f)) {
                Error::BadGguf {
                    path: path.to_path_buf(),
                    reason: reason
                        .trim_start_matches("error loading model: ")
                        .to_string(),
                }
            } else {
                Error::Llama(format!("could not load {}: {why}", path.display()))
            }
        })?;
        // SAFETY: ptr is a valid model; the vocab it returns lives as long as the model.
        let vocab = unsafe { sys::llama_model_get_vocab(ptr.as_ptr()) };
        // Any GPU llama.cpp knows, local or added by --rpc (llama_supports_gpu_offload says
        // yes for every build with the RPC backend, even with no server added).
        let offloaded = params.n_gpu_layers != 0 && !super::split::gpu_devices().is_empty();
        // Our kernels exist in CUDA builds only.
        let decode_kernels = params.decode_kernels && offloaded && cfg!(feature = "cuda");
        #[cfg(feature = "cuda")]
        if decode_kernels {
            crate::kernels::cuda::install_decode_kernels();
        }
        Ok(Self {
            ptr,
            vocab,
            offloaded,
            repack: params.repack,
            decode_kernels,
            owned: true,
            weight_variant: AtomicU64::new(0),
        })
    }

    /// Wraps a model a host program loaded through llama.h; dropping the wrapper leaves it
    /// alone.
    ///
    /// # Safety
    /// `ptr` must be a live `llama_model` that outlives the returned value and everything
    /// built on it.
    pub unsafe fn from_host(ptr: *mut sys::llama_model) -> Option<Self> {
        let ptr = NonNull::new(ptr)?;
        // SAFETY: the caller guarantees ptr is a live model.
        let vocab = unsafe { sys::llama_model_get_vocab(ptr.as_ptr()) };
        Some(Self {
            ptr,
            vocab,
            // The host decides placement; entropy is read from the host's logits anyway.
            offloaded: false,
            repack: true,
            decode_kernels: false,
            owned: false,
            weight_variant: AtomicU64::new(0),
        })
    }

    /// Whether llama.cpp may keep CPU weights in its repacked layouts (tiers follow it).
    pub fn repacks(&self) -> bool {
        self.repack
    }

    /// Whether layers were offloaded to a GPU (the build supports it and it was asked for).
    pub fn offloaded(&self) -> bool {
        self.offloaded
    }

    /// Records which weight set the tensors now point at (see [`Model::weight_variant`]).
    pub(crate) fn set_weight_variant(&self, v: u64) {
        self.weight_variant.store(v, Ordering::Relaxed);
    }

    /// The weight set the tensors point at: every decode of this model's contexts runs under
    /// that CUDA graph variant, so each set keeps its own captured graph.
    pub fn weight_variant(&self) -> u64 {
        self.weight_variant.load(Ordering::Relaxed)
    }

    /// Whether this model's contexts decode with our CUDA decode products.
    pub fn decode_kernels(&self) -> bool {
        self.decode_kernels
    }

    /// The CUDA graph variant this model's decodes run under: the weight set, and whether our
    /// decode kernels take its products (their graphs are captured apart from llama.cpp's).
    pub fn graph_variant(&self) -> u64 {
        let kernels = if self.decode_kernels {
            super::cuda_graphs::DECODE_KERNELS
        } else {
            0
        };
        self.weight_variant() | kernels
    }

    /// Whether a gearbox on this model needs its contexts to rebuild llama.cpp's graph for every
    /// decode: on a GPU whose backend cannot keep a captured graph per weight set (not CUDA,
    /// or a llama.cpp without our patch 0001), a reused graph would replay the old weights.
    /// Remote devices (`--rpc`) keep reused graphs where our patch 0007 lets a shift make the
    /// next compute resend them (ggml-rpc otherwise replays the server's copy, old weights).
    pub fn shifts_need_graph_rebuild(&self) -> bool {
        self.offloaded
            && super::split::gpu_devices().iter().any(|d| {
                if super::rpc::is_remote(d) {
                    !super::rpc::graphs_follow_shifts()
                } else {
                    !(d.starts_with("CUDA") && super::cuda_graphs::variants_available())
                }
            })
    }

    pub(super) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        // SAFETY: vocab is valid for the model's lifetime.
        unsafe { sys::llama_vocab_n_tokens(self.vocab) as usize }
    }

    /// The context length the model was trained with.
    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: ptr is a valid model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()).max(0) as u32 }
    }

    /// Layers, attention heads and KV heads (llama.cpp's hparams).
    pub fn n_layer(&self) -> u32 {
        // SAFETY: ptr is a valid model.
        unsafe { sys::llama_model_n_layer(self.ptr.as_ptr()).max(0) as u32 }
    }

    pub fn n_head(&self) -> u32 {
        // SAFETY: ptr is a valid model.
        unsafe { sys::llama_model_n_head(self.ptr.as_ptr()).max(0) as u32 }
    }

    pub fn n_head_kv(&self) -> u32 {
        // SAFETY: ptr is a valid model.
        unsafe { sys::llama_model_n_head_kv(self.ptr.as_ptr()).max(0) as u32 }
    }

    /// The width of the residual stream.
    pub fn n_embd(&self) -> u32 {
        // SAFETY: ptr is a valid model.
        unsafe { sys::llama_model_n_embd(self.ptr.as_ptr()).max(0) as u32 }
    }

    /// A GGUF metadata value as text ("general.architecture"), None when the key is absent.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = std::ffi::CString::new(key).ok()?;
        let mut buf = [0u8; 256];
        // SAFETY: key is NUL-terminated; buf is writable for buf.len() bytes and llama.cpp
        // NUL-terminates within it (returning the full length, or -1 for a missing key).
        let n = unsafe {
            sys::llama_model_meta_val_str(
                self.ptr.as_ptr(),
                key.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        };
        (n >= 0).then(|| String::from_utf8_lossy(&buf[..(n as usize).min(255)]).into_owned())
    }

    /// llama.cpp's one-line description ("llama 135M Q4_1").
    pub fn description(&self) -> String {
        let mut buf = [0u8; 256];
        // SAFETY: buf is writable for buf.len() bytes; llama.cpp NUL-terminates within it.
        let n = unsafe {
            sys::llama_model_desc(
                self.ptr.as_ptr(),
                buf.as_mut_ptr() as *mut c_char,
                buf.len(),
            )
        };
        String::from_utf8_lossy(&buf[..n.clamp(0, 255) as usize]).into_owned()
    }

    /// Total bytes of the weights.
    pub fn size_bytes(&self) -> u64 {
        // SAFETY: ptr is a valid model.
        unsafe { sys::llama_model_size(self.ptr.as_ptr()) }
    }

    /// True for end-of-generation tokens (EOS, EOT, …).
    pub fn is_eog(&self, t: Token) -> bool {
        // SAFETY: vocab is valid; out-of-range ids are handled by llama.cpp.
        unsafe { sys::llama_vocab_is_eog(self.vocab, t) }
    }

    /// False for a model without a tokenizer (vocab type NONE, e.g. the random-weight
    /// benchmark models of `gearbx-bench synth`): llama.cpp aborts on tokenizing or rendering
    /// tokens of such a model, so both are refused here first.
    pub fn has_tokenizer(&self) -> bool {
        // SAFETY: vocab is valid for the model's lifetime.
        unsafe { sys::llama_vocab_type(self.vocab) != sys::LLAMA_VOCAB_TYPE_NONE }
    }

    /// Tokenizes `text`; `add_special` adds BOS where the model wants it, `parse_special`
    /// turns control-token text (`<|im_start|>`) into control tokens.
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<Token>> {
        if !self.has_tokenizer() {
            return Err(Error::InvalidParam(
                "this model has no tokenizer (tokenizer.ggml.model = none, e.g. a synthetic \
                 benchmark model): it can only be driven with token ids (gearbx-bench gpu)"
                    .into(),
            ));
        }
        let len = i32::try_from(text.len())
            .map_err(|_| Error::InvalidParam("prompt is larger than 2 GiB".into()))?;
        let mut out: Vec<Token> = vec![0; text.len() + 2];
        for _ in 0..2 {
            // SAFETY: text is valid for len bytes; out is writable for out.len() tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab,
                    text.as_ptr() as *const c_char,
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            if n == i32::MIN {
                break;
            }
            out.resize((-n) as usize, 0);
        }
        Err(Error::Llama("tokenization failed".into()))
    }

    /// The bytes a token stands for (control tokens render as nothing unless `special`;
    /// every token of a model without a tokenizer renders as nothing).
    pub fn token_bytes(&self, t: Token, special: bool) -> Vec<u8> {
        if !self.has_tokenizer() {
            return Vec::new();
        }
        let mut buf = vec![0u8; 64];
        for _ in 0..2 {
            // SAFETY: buf is writable for buf.len() bytes.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab,
                    t,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
        Vec::new()
    }

    /// The text of the BOS token, if the model adds one automatically.
    pub fn auto_bos_text(&self) -> Option<String> {
        // SAFETY: vocab is valid for the model's lifetime.
        unsafe {
            if !sys::llama_vocab_get_add_bos(self.vocab) {
                return None;
            }
            let bos = sys::llama_vocab_bos(self.vocab);
            if bos < 0 {
                return None;
            }
            let p = sys::llama_vocab_get_text(self.vocab, bos);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }

    /// The GGUF's default chat template, if it has one.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: returns NULL or a NUL-terminated string owned by the model.
        let p = unsafe { sys::llama_model_chat_template(self.ptr.as_ptr(), std::ptr::null()) };
        // SAFETY: non-null p points to a NUL-terminated string valid while the model lives.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Formats a conversation with the model's chat template (llama.cpp's built-in template
    /// list; ChatML when the model has none), ending with the assistant's turn.
    pub fn apply_chat_template(&self, messages: &[ChatMessage<'_>]) -> Result<String> {
        let tmpl = self
            .chat_template()
            .map(|t| CString::new(t).unwrap_or_default());
        let owned: Vec<(CString, CString)> = messages
            .iter()
            .map(|m| {
                let nul = |s: &str| {
                    CString::new(s)
                        .map_err(|_| Error::InvalidParam("the prompt contains a NUL byte".into()))
                };
                Ok((nul(m.role)?, nul(m.content)?))
            })
            .collect::<Result<_>>()?;
        let msgs: Vec<sys::llama_chat_message> = owned
            .iter()
            .map(|(r, c)| sys::llama_chat_message {
                role: r.as_ptr(),
                content: c.as_ptr(),
            })
            .collect();
        let total: usize = messages
            .iter()
            .map(|m| m.content.len() + m.role.len())
            .sum();
        let mut buf = vec![0u8; 2 * total + 1024];
        for _ in 0..2 {
            // SAFETY: msgs points to valid C strings that outlive the call; buf is writable.
            let n = unsafe {
                sys::llama_chat_apply_template(
                    tmpl.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                    msgs.as_ptr(),
                    msgs.len(),
                    true,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as i32,
                )
            };
            if n < 0 {
                return Err(Error::Llama(
                    "the model's chat template is not one llama.cpp recognizes; format the prompt yourself and send it raw (gearbx-run --raw; C: params.raw)".into(),
                ));
            }
            if (n as usize) <= buf.len() {
                buf.truncate(n as usize);
                return String::from_utf8(buf)
                    .map_err(|_| Error::Llama("chat template produced invalid UTF-8".into()));
            }
            buf.resize(n as usize, 0);
        }
        Err(Error::Llama("chat template output kept growing".into()))
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: ptr came from llama_model_load_from_file and is freed exactly once;
            // contexts borrow the model, so none is alive here.
            unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
        }
    }
}
