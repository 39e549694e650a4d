//! gearbx-serve: one model on a local server that speaks Ollama's API (`/api/*`) and OpenAI's
//! (`/v1/*`), so the tools people already point at Ollama or an OpenAI endpoint work with
//! gearbx's gears, and see the gear telemetry in an extra `gearbx` field they can ignore.
//!
//! A binary of its own, not a `gearbx-run serve` subcommand: gearbx-run's first word is a
//! model name or a prompt, and `serve` could be either.

mod ollama;
mod openai;
mod pool;
mod request;
mod route;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use gearbx::error::exit;
use gearbx::gearbox::Gear;
use gearbx::monitor::MonitorConfig;
use gearbx::session::{GearPolicy, SessionOptions, TierCache, TierOptions};
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_http::timeout::RequestBodyTimeoutLayer;

use pool::Pool;

/// Serve one model over Ollama's and OpenAI's HTTP APIs, shifting gears per token.
#[derive(Parser, Debug)]
#[command(name = "gearbx-serve", version)]
struct Cli {
    /// Model: an Ollama name (llama3.2:1b), a .gguf path, or nothing for the default model.
    model: Option<String>,
    /// Address to listen on; loopback unless told otherwise.
    #[arg(long, env = "GEARBX_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 11435)]
    port: u16,
    /// Sessions generating at once (each holds its own context and KV cache).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Requests waiting beyond the running ones; more get 503.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=4096))]
    queue: u32,
    /// Require `Authorization: Bearer KEY` on every endpoint.
    #[arg(long, env = "GEARBX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body: usize,
    /// Context size per session in tokens (default: the store's num_ctx, else 4096).
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<u32>,
    /// CPU threads per session (default: all cores).
    #[arg(short = 't', long, env = "GEARBX_THREADS")]
    threads: Option<usize>,
    /// Layers to offload to a GPU (-1 = all), as llama.cpp's -ngl.
    #[arg(long = "n-gpu-layers", default_value_t = -1, allow_negative_numbers = true)]
    n_gpu_layers: i32,
    #[command(flatten)]
    kv: gearbx::args::KvArgs,

    #[command(flatten)]
    rpc: gearbx::args::RpcArgs,

    #[command(flatten)]
    split: gearbx::args::SplitArgs,

    #[command(flatten)]
    kernels: gearbx::args::KernelArgs,

    /// Gear: auto, a fixed low|mid|high, or off (the plain model, no tiers).
    #[arg(long, default_value = "auto")]
    gear: String,
    /// Tier types per gear, as gearbx-run's --tiers.
    #[arg(long)]
    tiers: Option<String>,
    /// Ollama store root (default: $OLLAMA_MODELS or ~/.ollama/models).
    #[arg(long = "models", env = "OLLAMA_MODELS")]
    models_dir: Option<std::path::PathBuf>,
    /// Show llama.cpp's log.
    #[arg(short, long)]
    verbose: bool,
    /// Router mode: no model here; each request goes to --low, --mid or --high on this
    /// OpenAI-compatible server (Ollama: http://127.0.0.1:11434), picked by the prompt
    /// classifier (or the one the request names).
    #[arg(long, value_name = "URL", requires_all = ["low", "mid", "high"])]
    route: Option<String>,
    /// Router mode: the upstream model for easy prompts.
    #[arg(long, value_name = "MODEL")]
    low: Option<String>,
    /// Router mode: the upstream model for ordinary prompts.
    #[arg(long, value_name = "MODEL")]
    mid: Option<String>,
    /// Router mode: the upstream model for hard prompts (code, math, long questions).
    #[arg(long, value_name = "MODEL")]
    high: Option<String>,
    /// Router mode: the upstream's API key (sent as Authorization: Bearer).
    #[arg(long, env = "GEARBX_UPSTREAM_KEY", hide_env_values = true)]
    upstream_key: Option<String>,
}

/// Where generations run: sessions here, or models on an upstream server.
pub enum Backend {
    Local(Pool),
    Route(route::Router),
}

/// What every handler shares.
pub struct App {
    backend: Backend,
    /// The name clients use (`/api/tags`), and every name accepted in a request's `model`.
    name: String,
    aliases: Vec<String>,
    gear: GearPolicy,
    api_key: Option<String>,
}

fn main() -> ExitCode {
    for k in [
        "GEARBX_HOST",
        "GEARBX_API_KEY",
        "GEARBX_THREADS",
        "OLLAMA_MODELS",
    ] {
        if std::env::var_os(k).is_some_and(|v| v.is_empty()) {
            if k == "GEARBX_API_KEY" {
                say("warning: GEARBX_API_KEY is set but empty: no key is required");
            }
            std::env::remove_var(k); // set but empty is unset; no other thread exists yet
        }
    }
    let cli: Cli = match gearbx::args::parse() {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            say(&format!("error: {msg}"));
            ExitCode::from(code)
        }
    }
}

fn say(s: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "gearbx-serve: {s}");
}

fn run(cli: Cli) -> Result<(), (u8, String)> {
    let usage = |m: String| (exit::USAGE, m);
    let fail = |e: gearbx::Error| (e.exit_code(), e.to_string());
    gearbx::llama::set_verbose(cli.verbose);
    let (gear, tiers) = match cli.gear.to_ascii_lowercase().as_str() {
        "off" => (GearPolicy::Fixed(Gear::High), None),
        "auto" => (GearPolicy::Auto(MonitorConfig::default()), Some(())),
        g => (
            GearPolicy::Fixed(g.parse::<Gear>().map_err(usage)?),
            Some(()),
        ),
    };
    let tiers = match (tiers, &cli.tiers) {
        (None, _) => None,
        (Some(()), spec) => Some(TierOptions {
            overrides: match spec {
                Some(s) => gearbx::gearbox::plan::parse_overrides(s).map_err(fail)?,
                None => Default::default(),
            },
            cache: TierCache::Default,
            ..Default::default()
        }),
    };
    if cli.api_key.as_deref().is_some_and(|k| k.len() < 8) {
        return Err(usage("--api-key must be at least 8 characters".into()));
    }
    if let Some(url) = &cli.route {
        if cli.model.is_some() {
            return Err(usage(
                "--route serves the upstream's models: give no MODEL".into(),
            ));
        }
        if !url.starts_with("http://") {
            return Err(usage(format!("--route {url}: an http:// URL")));
        }
        let models = [&cli.low, &cli.mid, &cli.high].map(|m| m.clone().unwrap_or_default());
        let app = Arc::new(App {
            name: "gearbx-route".into(),
            aliases: models.to_vec(),
            backend: Backend::Route(route::Router::new(url, models, cli.upstream_key.clone())),
            gear,
            api_key: cli.api_key.clone(),
        });
        let rt = runtime()?;
        return rt.block_on(serve(app, &cli));
    }
    let opts = SessionOptions {
        model: cli.model.clone(),
        models_dir: cli.models_dir.clone(),
        n_ctx: cli.ctx_size,
        threads: cli.threads,
        n_gpu_layers: cli.n_gpu_layers,
        split: cli.split.split().map_err(fail)?,
        decode_kernels: cli.kernels.ours(),
        tiers,
        log: Some(say),
        kv: cli.kv.cache(),
        ..Default::default()
    };
    cli.rpc.connect("gearbx-serve").map_err(fail)?;
    let pool = Pool::open(&opts, cli.parallel as usize, cli.queue as usize).map_err(fail)?;
    let (name, aliases) = names(&pool, cli.model.as_deref());
    let app = Arc::new(App {
        backend: Backend::Local(pool),
        name,
        aliases,
        gear,
        api_key: cli.api_key.clone(),
    });
    let rt = runtime()?;
    let served = rt.block_on(serve(app.clone(), &cli));
    // Every connection is closed: wait for the workers to leave llama.cpp before exiting.
    drop(rt);
    if let Ok(App {
        backend: Backend::Local(pool),
        ..
    }) = Arc::try_unwrap(app)
    {
        pool.join();
    }
    served
}

fn runtime() -> Result<tokio::runtime::Runtime, (u8, String)> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| (exit::IO, format!("starting the runtime: {e}")))
}

/// The name the server reports and the names it accepts: the store's short and full names,
/// the argument as given, the file's path and stem.
fn names(pool: &Pool, arg: Option<&str>) -> (String, Vec<String>) {
    let m = &pool.model;
    let stem = m
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut aliases = vec![stem.clone(), m.path.display().to_string()];
    let name = match m.store_entry() {
        Some(s) => {
            aliases.push(s.name.to_string());
            s.name.short()
        }
        None => stem,
    };
    aliases.push(name.clone());
    aliases.extend(arg.map(String::from));
    (name, aliases)
}

async fn serve(app: Arc<App>, cli: &Cli) -> Result<(), (u8, String)> {
    let api = Router::new()
        .route("/", get(|| async { "gearbx is running" }))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such endpoint" })),
            )
        })
        .layer(DefaultBodyLimit::max(cli.max_body))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(30)))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app.clone());
    let addr: SocketAddr = format!("{}:{}", bracket(&cli.host), cli.port)
        .parse()
        .map_err(|e| (exit::USAGE, format!("--host {}: {e}", cli.host)))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| (exit::IO, format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| (exit::IO, e.to_string()))?;
    if !local.ip().is_loopback() {
        say(&format!(
            "warning: listening on {local}, reachable from other machines{}",
            if app.api_key.is_some() {
                ""
            } else {
                ", with no --api-key"
            }
        ));
    }
    say(&format!(
        "serving {} on http://{local} (Ollama API at /api, OpenAI API at /v1)",
        app.name
    ));
    let closing = app.clone();
    axum::serve(listener, api)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            say("shutting down: stopping running generations");
            if let Backend::Local(pool) = &closing.backend {
                pool.close();
            }
            // A client that never reads its stream does not hold the process: a second
            // signal, or 30 s, ends it at once.
            tokio::spawn(async {
                tokio::select! {
                    _ = shutdown_signal() => say("second signal: exiting now"),
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {
                        say("connections still open after 30 s: exiting now")
                    }
                }
                std::process::exit(0);
            });
        })
        .await
        .map_err(|e| (exit::IO, format!("serving: {e}")))
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// With an API key: every request carries `Authorization: Bearer KEY` (compared in constant
/// time), else 401.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "missing or wrong API key (Authorization: Bearer ...)" })),
            )
                .into_response();
        }
    }
    next.run(req).await
}
