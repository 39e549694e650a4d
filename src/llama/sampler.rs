//! A llama.cpp sampler chain built from Ollama/llama.cpp-style sampling parameters.

use std::ptr::NonNull;
use std::rc::Rc;

use super::backend_entropy::{self, Probe};
use super::{sys, Context, Model, Token};
use crate::error::{Error, Result};

/// Sampling settings; `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 or less: no top-k cut (as llama.cpp and Ollama read it).
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub seed: u32,
    /// Never sample an end-of-generation token (llama.cpp's --ignore-eos): generation runs
    /// to the token limit or a full context.
    pub ignore_eos: bool,
}

/// The defaults gearbx-run and the C API share (Ollama's): temperature 0.8, top-k 40, top-p
/// 0.9, min-p 0, repeat penalty 1.1 over the last 64 tokens, a fresh random seed.
impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: random_seed(),
            ignore_eos: false,
        }
    }
}

/// The longest penalty window: llama.cpp allocates a history ring of this many tokens.
pub const MAX_REPEAT_LAST_N: i32 = 1 << 20;

/// A seed from the clock, for runs that ask for none.
pub fn random_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

impl SamplingParams {
    /// Rejects values llama.cpp would misbehave on.
    pub fn validate(&self) -> Result<()> {
        use crate::error::param;
        let bad = |p, rule: String| Err(Error::bad_param(p, rule));
        if !self.temperature.is_finite() {
            return bad(
                param::TEMPERATURE,
                format!("must be a finite number, got {}", self.temperature),
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad(
                param::TOP_P,
                format!("must be in [0, 1], got {}", self.top_p),
            );
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(
                param::MIN_P,
                format!("must be in [0, 1], got {}", self.min_p),
            );
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad(
                param::REPEAT_PENALTY,
                format!("must be > 0, got {}", self.repeat_penalty),
            );
        }
        if !(-1..=MAX_REPEAT_LAST_N).contains(&self.repeat_last_n) {
            return bad(
                param::REPEAT_LAST_N,
                format!(
                    "must be in -1..={MAX_REPEAT_LAST_N} (-1: the whole context), got {}",
                    self.repeat_last_n
                ),
            );
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// An owned sampler chain, freed on drop.
pub struct Sampler {
    ptr: NonNull<sys::llama_sampler>,
}

impl Sampler {
    /// penalties → (greedy | top-k → top-p → min-p → temperature → seeded draw).
    pub fn new(p: &SamplingParams, model: &Model, n_ctx: u32) -> Result<Self> {
        Self::build(p, model, n_ctx, None, true)
    }

    /// The chain without its final draw (penalties, EOG bias, top-k, top-p, min-p,
    /// temperature): [`Sampler::distribution`] gives the distribution the draw would sample
    /// from (speculative sampling compares two of them).
    pub fn shaper(p: &SamplingParams, model: &Model, n_ctx: u32) -> Result<Self> {
        Self::build(p, model, n_ctx, None, false)
    }

    /// The same chain between the entropy probe's head and tail, for backend sampling
    /// ([`Context::attach_sampler`]); the probe says where the entropy was computed.
    pub fn with_entropy_probe(
        p: &SamplingParams,
        model: &Model,
        n_ctx: u32,
    ) -> Result<(Self, Rc<Probe>)> {
        let probe = Rc::new(Probe::default());
        Ok((Self::build(p, model, n_ctx, Some(&probe), true)?, probe))
    }

    fn build(
        p: &SamplingParams,
        model: &Model,
        n_ctx: u32,
        probe: Option<&Rc<Probe>>,
        draw: bool,
    ) -> Result<Self> {
        p.validate()?;
        let n_vocab = model.n_vocab();
        let eog_bias: Vec<sys::llama_logit_bias> = if p.ignore_eos {
            (0..n_vocab as Token)
                .filter(|&t| model.is_eog(t))
                .map(|token| sys::llama_logit_bias {
                    token,
                    bias: f32::NEG_INFINITY,
                })
                .collect()
        } else {
            Vec::new()
        };
        // SAFETY: plain constructors; the chain takes ownership of every sampler added to it.
        unsafe {
            let raw = sys::llama_sampler_chain_init(sys::llama_sampler_chain_default_params());
            let ptr = NonNull::new(raw)
                .ok_or_else(|| Error::Llama("could not create a sampler chain".into()))?;
            let add = |s: *mut sys::llama_sampler| sys::llama_sampler_chain_add(ptr.as_ptr(), s);
            if let Some(probe) = probe {
                add(backend_entropy::head(probe));
            }
            let last_n = if p.repeat_last_n < 0 {
                n_ctx as i32
            } else {
                p.repeat_last_n
            };
            add(sys::llama_sampler_init_penalties(
                n_vocab as i32,
                last_n,
                p.repeat_penalty,
                0.0,
                0.0,
            ));
            if !eog_bias.is_empty() {
                // The sampler copies the biases.
                add(sys::llama_sampler_init_logit_bias(
                    n_vocab as i32,
                    eog_bias.len() as i32,
                    eog_bias.as_ptr(),
                ));
            }
            if p.is_greedy() {
                if draw {
                    add(sys::llama_sampler_init_greedy());
                }
            } else {
                if p.top_k > 0 {
                    add(sys::llama_sampler_init_top_k(p.top_k));
                }
                add(sys::llama_sampler_init_top_p(p.top_p, 1));
                add(sys::llama_sampler_init_min_p(p.min_p, 1));
                add(sys::llama_sampler_init_temp(p.temperature));
                if draw {
                    add(sys::llama_sampler_init_dist(p.seed));
                }
            }
            if let Some(probe) = probe {
                add(backend_entropy::tail(probe));
            }
            Ok(Self { ptr })
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_sampler {
        self.ptr.as_ptr()
    }

    /// Samples the next token from the context's last logits and records it in the chain.
    pub fn sample(&mut self, ctx: &Context<'_>) -> Token {
        self.sample_ptr(ctx.as_ptr())
    }

    /// Samples from the logits of output `idx` of the last decode (a batch decoded with
    /// [`Context::decode_all_logits`]) and records the token in the chain.
    pub fn sample_at(&mut self, ctx: &Context<'_>, idx: usize) -> Token {
        // SAFETY: both pointers are valid; the caller decoded a batch with output idx.
        unsafe { sys::llama_sampler_sample(self.ptr.as_ptr(), ctx.as_ptr(), idx as i32) }
    }

    /// A copy of the chain with its state (penalty history, RNG) for a draft that may be
    /// thrown away.
    pub fn fork(&self) -> Result<Self> {
        // SAFETY: ptr is a valid chain; clone returns a new owned chain or NULL.
        let raw = unsafe { sys::llama_sampler_clone(self.ptr.as_ptr()) };
        NonNull::new(raw)
            .map(|ptr| Self { ptr })
            .ok_or_else(|| Error::Llama("could not clone the sampler chain".into()))
    }

    /// Applies the chain to `logits` and returns the softmax over the candidates it leaves:
    /// (token, probability) pairs, the distribution a draw after this chain samples from.
    pub fn distribution(&mut self, logits: &[f32]) -> Vec<(Token, f32)> {
        let mut data: Vec<sys::llama_token_data> = logits
            .iter()
            .enumerate()
            .map(|(i, &logit)| sys::llama_token_data {
                id: i as Token,
                logit,
                p: 0.0,
            })
            .collect();
        let mut arr = sys::llama_token_data_array {
            data: data.as_mut_ptr(),
            size: data.len(),
            selected: -1,
            sorted: false,
        };
        // SAFETY: arr describes `data`, alive and writable for the call; samplers reorder and
        // shrink the array in place.
        let cands = unsafe {
            sys::llama_sampler_apply(self.ptr.as_ptr(), &mut arr);
            std::slice::from_raw_parts(arr.data, arr.size)
        };
        let max = cands
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = cands
            .iter()
            .map(|c| ((c.logit - max) as f64).exp())
            .collect();
        let sum: f64 = exps.iter().sum();
        cands
            .iter()
            .zip(exps)
            .map(|(c, e)| (c.id, (e / sum) as f32))
            .collect()
    }

    /// Records `t` as generated (the penalty history).
    pub fn accept(&mut self, t: Token) {
        // SAFETY: ptr is a valid chain.
        unsafe { sys::llama_sampler_accept(self.ptr.as_ptr(), t) }
    }

    pub(super) fn sample_ptr(&mut self, ctx: *mut sys::llama_context) -> Token {
        // SAFETY: both pointers are valid; idx -1 is the last output of the last decode.
        unsafe { sys::llama_sampler_sample(self.ptr.as_ptr(), ctx, -1) }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_sampler_chain_init and is freed once, with its members.
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) }
    }
}
