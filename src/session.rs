//! A session: one model opened the way gearbx-run and the C engine open it (store resolution,
//! a quantized top gear, tiers, the context) and the generations made on it, with every rule
//! they share in one place: store defaults under the caller's settings, the store's system
//! prompt, the cold-start gear, plain or lossless decoding, and the KV cache kept between
//! requests when asked.
//!
//! ```no_run
//! use gearbx::session::{Session, SessionOptions};
//!
//! let mut session = Session::open(&SessionOptions {
//!     model: Some("smollm2:135m".into()),
//!     ..Default::default()
//! })?;
//! let mut request = session.default_request("Name three primary colours.");
//! request.sampling.temperature = 0.0;
//! request.n_predict = Some(32);
//! let outcome = session.generate(&request, |ev| print!("{}", ev.text))?;
//! eprintln!("{} tokens, {:.1} tok/s", outcome.generated_tokens, outcome.decode_tokens_per_s);
//! # Ok::<(), gearbx::Error>(())
//! ```

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use self_cell::self_cell;

use crate::engine::logprobs::MAX_TOP_LOGPROBS;
use crate::engine::lossless::LosslessParams;
use crate::engine::{
    self, decode, EntropySource, GearControl, GenerateParams, Outcome, PromptSpec,
};
use crate::engine::{Prompt, TokenEvent};
use crate::error::{param, Error, Result};
use crate::gearbox::{
    top, BuildReport, CacheOptions, Gear, GearSet, Gearbox, GearboxOptions, Manage, TierOverrides,
};
use crate::llama::kv::KvCache;
use crate::llama::{Context, ContextParams, Model, ModelParams, SamplingParams, Token};
use crate::monitor::{classifier, Monitor, MonitorConfig};
use crate::store::manifest::OllamaParams;
use crate::store::{self, OllamaStore, ResolvedModel};

/// Context window when neither the caller nor the store names one (capped at the model's
/// training context); a caller's 0 means the training context, as in llama.cpp.
pub const DEFAULT_N_CTX: u32 = 4096;
/// The largest context accepted (16M tokens, past every released model's training context).
pub const MAX_N_CTX: u32 = 1 << 24;
/// ggml's most threads per graph (GGML_MAX_N_THREADS).
pub const MAX_THREADS: usize = 512;
/// Largest prompt chunk per forward pass.
pub const DEFAULT_N_BATCH: u32 = 2048;

/// Where built tiers are kept between runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum TierCache {
    /// `$GEARBX_TIER_CACHE`, else `<cache>/tiers`.
    #[default]
    Default,
    Dir(PathBuf),
    /// Build every time; read and write nothing.
    Off,
}

/// Which tiers to build (a session without them runs the plain model).
#[derive(Debug, Clone, Default)]
pub struct TierOptions {
    pub manage: Manage,
    pub overrides: TierOverrides,
    pub gears: GearSet,
    pub cache: TierCache,
}

/// How to open a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// An Ollama name ("llama3.2:1b"), a .gguf path, or None for the default model (obtained
    /// into the gearbx cache if missing).
    pub model: Option<String>,
    /// The Ollama store's root; None: `$OLLAMA_MODELS` or `~/.ollama/models`.
    pub models_dir: Option<PathBuf>,
    /// Context window; None: the store's `num_ctx`, else [`DEFAULT_N_CTX`] capped at the
    /// model's training context.
    pub n_ctx: Option<u32>,
    pub n_batch: u32,
    /// Threads for decoding and building tiers; None: all cores.
    pub threads: Option<usize>,
    /// Layers offloaded to a GPU (-1: all).
    pub n_gpu_layers: i32,
    /// llama.cpp's repacked CPU weight layouts where it has them (false: its `--no-repack`).
    pub repack: bool,
    /// How the offloaded layers spread over several GPUs (local or `--rpc` ones).
    pub split: crate::llama::split::GpuSplit,
    /// Our CUDA decode products where they are faster (`--decode-kernels`; CUDA builds).
    pub decode_kernels: bool,
    /// The tiers; None: no gearbox (the plain model).
    pub tiers: Option<TierOptions>,
    /// Progress bars on stderr while hashing, requantizing and building.
    pub progress: bool,
    /// Hears what opening does that takes long or changes what is loaded (a quantized top
    /// being written or reused).
    pub log: Option<fn(&str)>,
    /// Set from any thread to stop the running generation within one forward pass.
    pub abort: Arc<AtomicBool>,
    /// The KV cache: types, flash attention, rotation (llama.cpp's defaults).
    pub kv: KvCache,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            model: None,
            models_dir: None,
            n_ctx: None,
            n_batch: DEFAULT_N_BATCH,
            threads: None,
            n_gpu_layers: ModelParams::default().n_gpu_layers,
            repack: ModelParams::default().repack,
            split: Default::default(),
            decode_kernels: ModelParams::default().decode_kernels,
            tiers: Some(TierOptions::default()),
            progress: false,
            log: None,
            abort: Arc::new(AtomicBool::new(false)),
            kv: KvCache::default(),
        }
    }
}

/// How a generation picks its gears (ignored by a session without tiers).
#[derive(Debug, Clone)]
pub enum GearPolicy {
    /// Entropy-routed; the prompt classifier picks the gear until the monitor's window fills.
    Auto(MonitorConfig),
    Fixed(Gear),
}

impl Default for GearPolicy {
    fn default() -> Self {
        Self::Auto(MonitorConfig::default())
    }
}

/// One generation.
#[derive(Debug, Clone)]
pub struct Request {
    /// The user's text, a system prompt (None: the store's, if any) and whether to skip the
    /// chat template.
    pub prompt: PromptSpec,
    /// Stop after this many tokens; None: at end of text or a full context.
    pub n_predict: Option<usize>,
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    pub entropy: EntropySource,
    pub gear: GearPolicy,
    /// Auto: calibrate the thresholds from the prompt's entropies, keeping the (low, high)
    /// thresholds marked true.
    pub calibrate: Option<(bool, bool)>,
    /// Lossless mode (needs tiers): drafts at the low gear, verification at the high gear.
    pub lossless: Option<LosslessParams>,
    /// Keep the KV cache of the previous generation and decode only the part of this prompt
    /// that differs from what it holds (a chat's earlier turns). The kept entries are what the
    /// previous generation wrote, at the gears it ran at (a fresh run would prefill them all at
    /// the high gear). False: start from an empty cache, as every one-shot run does.
    pub reuse_cache: bool,
    /// Report each token's log-probability and the n most likely alternatives (at most
    /// [`MAX_TOP_LOGPROBS`](crate::engine::logprobs::MAX_TOP_LOGPROBS); not in lossless mode).
    pub top_logprobs: Option<usize>,
}

/// The model and what borrows it.
struct Parts<'m> {
    ctx: Context<'m>,
    gearbox: Option<Gearbox<'m>>,
}

self_cell!(
    struct Loaded {
        owner: Model,
        #[not_covariant]
        dependent: Parts,
    }
);

/// An open model with its context and tiers.
pub struct Session {
    loaded: Loaded,
    resolved: ResolvedModel,
    loaded_file: ResolvedModel,
    n_ctx: u32,
    /// What the KV cache holds, position by position (for `reuse_cache`).
    cached: Vec<Token>,
    abort: Arc<AtomicBool>,
    kv: KvCache,
}

/// The KV cache of a session: its settings, what a token costs, what it holds now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KvReport {
    pub type_k: String,
    pub type_v: String,
    /// The setting asked for (auto lets llama.cpp decide per device).
    pub flash_attn: String,
    pub rotation: bool,
    /// Bytes one cached token takes across all layers, from the types.
    pub bytes_per_token: u64,
    /// The context's cache at full length (bytes_per_token x n_ctx: what llama.cpp allocates,
    /// sliding-window layers included, with its default swa_full).
    pub bytes_full: u64,
    /// What the cached tokens hold now, as llama.cpp serializes the sequence.
    pub bytes_used: u64,
}

/// All cores (at most [`MAX_THREADS`]), or `n`.
pub fn threads_or_all(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(4, |n| n.get().min(MAX_THREADS))
    })
}

impl Session {
    /// Resolves, (requantizes,) loads, builds the tiers and makes the context.
    pub fn open(o: &SessionOptions) -> Result<Self> {
        let store = match &o.models_dir {
            Some(d) => OllamaStore::new(d.clone()),
            None => OllamaStore::from_env()?,
        };
        let resolved = store::resolve(o.model.as_deref(), &store, o.progress)?;
        Self::open_resolved(resolved, o)
    }

    /// As [`Session::open`] for a model already resolved (`o.model` and `o.models_dir` are
    /// not read).
    pub fn open_resolved(resolved: ResolvedModel, o: &SessionOptions) -> Result<Self> {
        check_store_params(&resolved)?;
        let threads = threads_or_all(o.threads);
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(Error::bad_param(
                param::THREADS,
                format!("must be in 1..={MAX_THREADS} (ggml's maximum), got {threads}"),
            ));
        }
        if o.n_batch == 0 {
            return Err(Error::bad_param(param::N_BATCH, "must be at least 1"));
        }
        if let Some(n) = o.n_ctx.filter(|&n| n > MAX_N_CTX) {
            return Err(Error::bad_param(
                param::N_CTX,
                format!("must be at most {MAX_N_CTX}, got {n}"),
            ));
        }
        let log = |s: &str| {
            if let Some(f) = o.log {
                f(s)
            }
        };
        let mut tiers = o.tiers.clone();
        let top = match &tiers {
            None => None,
            Some(t) => top::prepare(
                &resolved,
                &t.manage,
                &t.overrides,
                || CacheOptions::dir(cache_dir(&t.cache)),
                threads,
                o.progress,
                log,
            )?,
        };
        if let (Some(q), Some(t)) = (&top, tiers.as_mut()) {
            t.overrides = q.overrides.clone();
        }
        let loaded_file = top.map_or_else(|| resolved.clone(), |q| q.model);
        let model = Model::load(
            &loaded_file.path,
            &ModelParams {
                n_gpu_layers: o.n_gpu_layers,
                repack: o.repack,
                split: o.split.clone(),
                decode_kernels: o.decode_kernels,
            },
        )?;
        let n_ctx = choose_n_ctx(o.n_ctx, &resolved, Some(model.n_ctx_train()))
            .expect("known with the model's training context");
        // The cache is refused here, before the tiers and the context are allocated.
        o.kv.check(&model)?;
        o.kv.check_fits(&model, n_ctx)?;
        if n_ctx > model.n_ctx_train() && model.n_ctx_train() > 0 {
            log(&format!(
                "warning: a context of {n_ctx} tokens is more than the {} the model was trained \
                 with; output past that length degrades",
                model.n_ctx_train()
            ));
        }
        let gb_opts = match &tiers {
            None => None,
            Some(t) => Some(GearboxOptions {
                manage: t.manage.clone(),
                overrides: t.overrides.clone(),
                gears: t.gears,
                threads,
                progress: o.progress,
                abort: Some(o.abort.clone()),
                cache: match t.cache {
                    TierCache::Off => None,
                    _ => Some(CacheOptions::for_model(
                        cache_dir(&t.cache),
                        &loaded_file,
                        o.progress,
                    )?),
                },
            }),
        };
        let loaded = Loaded::try_new(model, |model| -> Result<Parts<'_>> {
            let gearbox = match &gb_opts {
                None => None,
                Some(g) => Some(Gearbox::build(
                    model,
                    &loaded_file.path,
                    &loaded_file.info,
                    g,
                )?),
            };
            let ctx = Context::new(
                model,
                &ContextParams {
                    n_ctx,
                    n_batch: o.n_batch,
                    n_threads: threads as i32,
                    rebuild_graphs: gearbox.is_some() && model.shifts_need_graph_rebuild(),
                    kv: o.kv,
                },
                o.abort.clone(),
            )?;
            Ok(Parts { ctx, gearbox })
        })?;
        Ok(Self {
            loaded,
            resolved,
            loaded_file,
            n_ctx,
            kv: o.kv,
            cached: Vec::new(),
            abort: o.abort.clone(),
        })
    }

    pub fn model(&self) -> &Model {
        self.loaded.borrow_owner()
    }

    /// What the user named, with its store entry (system prompt, parameters) if any.
    pub fn resolved(&self) -> &ResolvedModel {
        &self.resolved
    }

    /// The file llama.cpp loaded: the model's own, or a quantized top's copy.
    pub fn loaded_file(&self) -> &ResolvedModel {
        &self.loaded_file
    }

    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// The KV cache: types, bytes per token, and what it holds now.
    pub fn kv_report(&self) -> KvReport {
        let per = self.kv.bytes_per_token(self.model());
        KvReport {
            type_k: self.kv.type_k.to_string(),
            type_v: self.kv.type_v.to_string(),
            flash_attn: self.kv.flash_attn.to_string(),
            rotation: self.kv.rotation && !crate::llama::kv::rotation_disabled_by_env(),
            bytes_per_token: per,
            bytes_full: per * self.n_ctx as u64,
            bytes_used: self.loaded.with_dependent(|_, p| p.ctx.kv_state_bytes()) as u64,
        }
    }

    /// The tiers' build report; None without tiers.
    pub fn tiers(&self) -> Option<BuildReport> {
        self.loaded
            .with_dependent(|_, p| p.gearbox.as_ref().map(|g| g.report().clone()))
    }

    /// [`default_request`] for this session's model.
    pub fn default_request(&self, user: &str) -> Request {
        default_request(&self.resolved, user)
    }

    /// The prompt `spec` becomes on this model: the store's system prompt where `spec` has
    /// none, the chat template unless raw.
    pub fn prompt(&self, spec: &PromptSpec) -> Result<Prompt> {
        build_prompt(self.model(), &self.resolved, spec)
    }

    /// Generates a reply to `req`, calling `on_token` for every token.
    pub fn generate(
        &mut self,
        req: &Request,
        mut on_token: impl FnMut(&TokenEvent<'_>),
    ) -> Result<Outcome> {
        req.prompt.validate()?;
        req.sampling.validate()?;
        if let Some(n) = req.top_logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::bad_param(
                param::TOP_LOGPROBS,
                format!("must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
        // An abort belongs to the generation it stopped; this one starts clear.
        self.abort.store(false, std::sync::atomic::Ordering::SeqCst);
        let prompt = self.prompt(&req.prompt)?;
        if prompt.tokens.len() >= self.n_ctx as usize {
            return Err(Error::PromptTooLong {
                n_prompt: prompt.tokens.len(),
                n_ctx: self.n_ctx,
                n_ctx_train: self.model().n_ctx_train(),
            });
        }
        if let GearPolicy::Auto(cfg) = &req.gear {
            cfg.validate()?;
        }
        let params = GenerateParams {
            n_predict: req.n_predict,
            stop: req.stop.clone(),
            sampling: req.sampling.clone(),
            entropy: req.entropy,
            top_logprobs: req.top_logprobs,
        };
        // Reuse: keep the cached prefix this prompt shares (at least one token is decoded, for
        // the logits of the next one).
        let keep = if req.reuse_cache {
            common_prefix(&self.cached, &prompt.tokens).min(prompt.tokens.len().saturating_sub(1))
        } else {
            0
        };
        let mut generated: Vec<Token> = Vec::new();
        let cold = classifier::classify(&req.prompt.user).gear;
        let result = self.loaded.with_dependent_mut(|model, parts| {
            if keep == 0 {
                parts.ctx.clear();
            } else {
                parts.ctx.truncate(keep as u32)?;
            }
            let on_token = |ev: &TokenEvent<'_>| {
                if ev.token >= 0 {
                    generated.push(ev.token);
                }
                on_token(ev)
            };
            if req.lossless.is_some() && parts.gearbox.is_none() {
                return Err(Error::InvalidParam(
                    "lossless mode needs tiers: this session was opened without them".into(),
                ));
            }
            let control = parts.gearbox.as_mut().map(|gb| {
                let (monitor, fixed) = match &req.gear {
                    GearPolicy::Auto(cfg) if req.lossless.is_none() => {
                        (Some(Monitor::new(cfg.clone(), model.n_vocab(), cold)), cold)
                    }
                    GearPolicy::Auto(_) => (None, Gear::High),
                    GearPolicy::Fixed(g) => (None, *g),
                };
                GearControl {
                    gearbox: gb,
                    monitor,
                    fixed,
                    calibrate: req.calibrate,
                }
            });
            let outcome = decode::run(
                &mut parts.ctx,
                &prompt.tokens[keep..],
                &params,
                control,
                req.lossless.as_ref(),
                on_token,
            );
            Ok::<_, Error>((outcome, parts.ctx.n_past() as usize))
        });
        let (outcome, n_past) = match result {
            Ok(r) => r,
            Err(e) => {
                self.cached.clear();
                return Err(e);
            }
        };
        // The cache now holds the prompt and the generated tokens up to n_past.
        let mut held = prompt.tokens;
        held.extend(generated);
        held.truncate(n_past);
        // After an interruption the cache may hold part of a batch past n_past: start afresh.
        let whole = outcome
            .as_ref()
            .is_ok_and(|o| o.stop_reason != engine::StopReason::Interrupted);
        self.cached = if whole { held } else { Vec::new() };
        outcome.map(|o| Outcome {
            prompt_tokens: keep + o.prompt_tokens,
            prompt_cached: keep,
            ..o
        })
    }
}

/// Checks with the vocabulary alone (no weights, no tiers) that `spec` fits the context a
/// session opened on `m` with `o` would have: what gearbx-run asks before the heavy work.
pub fn check_prompt_fits(m: &ResolvedModel, o: &SessionOptions, spec: &PromptSpec) -> Result<()> {
    // A vocabulary-only model has no hyperparameters: the training context is the header's.
    let Some(n_ctx) = choose_n_ctx(o.n_ctx, m, m.info.context_length) else {
        return Ok(()); // unknown here; the session checks it when it generates
    };
    let vocab = Model::load_vocab(&m.path)?;
    let prompt = build_prompt(&vocab, m, spec)?;
    if prompt.tokens.len() >= n_ctx as usize {
        return Err(Error::PromptTooLong {
            n_prompt: prompt.tokens.len(),
            n_ctx,
            n_ctx_train: m.info.context_length.unwrap_or(0),
        });
    }
    Ok(())
}

/// The context size: the caller's (0: the training context), else the store's `num_ctx`, else
/// [`DEFAULT_N_CTX`] capped at the model's training context (None: that is not known).
fn choose_n_ctx(explicit: Option<u32>, m: &ResolvedModel, n_ctx_train: Option<u32>) -> Option<u32> {
    match explicit {
        Some(0) => n_ctx_train.filter(|&t| t > 0),
        Some(n) => Some(n),
        None => m
            .store_entry()
            .and_then(|s| s.params.num_ctx)
            .filter(|&n| n > 0)
            .or_else(|| n_ctx_train.map(|t| DEFAULT_N_CTX.min(t.max(1)))),
    }
}

/// `spec` on `model`, with the store's system prompt where `spec` has none.
fn build_prompt(model: &Model, m: &ResolvedModel, spec: &PromptSpec) -> Result<Prompt> {
    let spec = PromptSpec {
        system: spec
            .system
            .clone()
            .or_else(|| m.store_entry().and_then(|s| s.system.clone())),
        ..spec.clone()
    };
    engine::prompt::build(model, &spec)
}

/// A request for `user` on model `m`: the store's sampling settings over the built-in
/// defaults ([`SamplingParams::default`]), the store's token budget and stop strings, auto
/// gears, plain decoding, a fresh cache. What a caller overlays its own settings on.
pub fn default_request(m: &ResolvedModel, user: &str) -> Request {
    let mut r = Request {
        prompt: PromptSpec {
            user: user.to_string(),
            ..Default::default()
        },
        n_predict: None,
        stop: Vec::new(),
        sampling: SamplingParams::default(),
        entropy: EntropySource::default(),
        gear: GearPolicy::default(),
        calibrate: None,
        lossless: None,
        reuse_cache: false,
        top_logprobs: None,
    };
    if let Some(s) = m.store_entry() {
        // A value out of range is refused by check_store_params; here it keeps the default.
        let _ = apply_ollama_params(&mut r, &s.params);
    }
    r
}

/// Lays Ollama's options over `r` — a store's params layer, or an API request's `options` —
/// with Ollama's meanings: what is absent keeps `r`'s value, num_predict 0 or less is no
/// limit, a negative seed keeps `r`'s (random) one, stop strings replace `r`'s when given,
/// num_ctx is the session's business (not a request's).
pub fn apply_ollama_params(r: &mut Request, p: &OllamaParams) -> Result<()> {
    let s = &mut r.sampling;
    s.temperature = p.temperature.unwrap_or(s.temperature);
    s.top_k = p.top_k.unwrap_or(s.top_k);
    s.top_p = p.top_p.unwrap_or(s.top_p);
    s.min_p = p.min_p.unwrap_or(s.min_p);
    s.repeat_penalty = p.repeat_penalty.unwrap_or(s.repeat_penalty);
    s.repeat_last_n = p.repeat_last_n.unwrap_or(s.repeat_last_n);
    if let Some(seed) = p.seed.filter(|&x| x >= 0) {
        s.seed = u32::try_from(seed).map_err(|_| {
            Error::bad_param(param::SEED, format!("must be below 2^32, got {seed}"))
        })?;
    }
    if let Some(n) = p.num_predict {
        r.n_predict = usize::try_from(n).ok().filter(|&n| n > 0);
    }
    if !p.stop.is_empty() {
        r.stop = p.stop.clone();
    }
    Ok(())
}

/// The store's parameters for `m` (its params layer) as the sampler reads them, with Ollama's
/// meanings (top_k 0 or less: no cut; num_predict 0 or less: no limit; num_ctx 0: the
/// default): a value outside them makes the model unusable as stored, said in the store's
/// own field names.
pub fn check_store_params(m: &ResolvedModel) -> Result<()> {
    let Some(s) = m.store_entry() else {
        return Ok(());
    };
    let mut r = default_request(m, "");
    match apply_ollama_params(&mut r, &s.params).and_then(|_| r.sampling.validate()) {
        Err(Error::BadParam { param, rule }) => Err(Error::BadManifest {
            path: s.manifest_path.clone(),
            reason: format!("its params layer sets {} out of range: {rule}", param.name),
        }),
        r => r,
    }
}

fn cache_dir(c: &TierCache) -> Option<PathBuf> {
    match c {
        TierCache::Dir(d) => Some(d.clone()),
        _ => None,
    }
}

fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
