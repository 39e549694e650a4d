//! What both APIs share: a request's options and messages mapped onto a gearbx request (one
//! mapping, with Ollama's meanings), the model-name check, errors with an HTTP status, and the
//! gear telemetry added to every chunk.

use axum::http::StatusCode;
use gearbx::engine::{Outcome, PromptSpec, StopReason, Turn};
use gearbx::error::exit;
use gearbx::session::{apply_ollama_params, default_request, Request};
use gearbx::store::name::ModelName;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::pool::{Event, Refused};
use crate::route::Router;
use crate::{App, Backend};
use tokio::sync::mpsc::UnboundedReceiver;

/// The sampling options of a request, by Ollama's names (the OpenAI handlers fill the same
/// struct from theirs): the store's params layer type, applied with the same mapping
/// ([`gearbx::session::apply_ollama_params`]).
pub use gearbx::store::manifest::OllamaParams as Options;

/// A message's content: a string, or OpenAI's list of parts of which the text ones count.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    pub fn text(&self) -> Result<String, HttpError> {
        match self {
            Content::Text(s) => Ok(s.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (k, _) => Err(HttpError::bad(format!(
                        "message parts of type {k:?} are not supported (text only)"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.concat()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
    /// Ollama's images: refused (text models only).
    #[serde(default)]
    pub images: Option<Vec<String>>,
}

/// An error with its HTTP status; each API renders it in its own shape.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("model {model:?} not found: this server serves one model"),
        }
    }
}

impl From<gearbx::Error> for HttpError {
    fn from(e: gearbx::Error) -> Self {
        let status = match e.exit_code() {
            exit::USAGE | exit::PROMPT_TOO_LONG => StatusCode::BAD_REQUEST,
            exit::NOT_FOUND => StatusCode::NOT_FOUND,
            exit::INTERRUPTED => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

impl From<Refused> for HttpError {
    fn from(r: Refused) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: match r {
                Refused::Busy(n) => {
                    format!("server busy: {n} requests are already waiting; retry later")
                }
                Refused::Closing => "server shutting down".into(),
            },
        }
    }
}

/// Parses a JSON body, refusing bad JSON and wrong types with a 400 naming the problem.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| HttpError::bad(format!("invalid request body: {e}")))
}

impl App {
    /// Refuses a request for another model than the one served (names compared as Ollama
    /// reads them: `llama3.2` is `llama3.2:latest`).
    pub fn check_model(&self, name: &str) -> Result<(), HttpError> {
        if matches!(self.backend, Backend::Route(_)) {
            return Ok(()); // the router picks (or takes one of its three by name)
        }
        let same_store_name = || {
            let full = |n: &str| ModelName::parse(n).ok().map(|m| m.to_string());
            full(name).is_some() && self.aliases.iter().any(|a| full(a) == full(name))
        };
        if self.aliases.iter().any(|a| a == name) || same_store_name() {
            Ok(())
        } else {
            Err(HttpError::not_found(name))
        }
    }

    /// The request `prompt` and `options` ask for: the store's defaults under the options.
    pub fn request(&self, prompt: PromptSpec, o: &Options) -> Result<Request, HttpError> {
        let mut r = match &self.backend {
            Backend::Local(pool) => default_request(&pool.model, ""),
            Backend::Route(_) => Router::base_request(PromptSpec::default()),
        };
        r.prompt = prompt;
        r.reuse_cache = true;
        r.gear = self.gear.clone();
        apply_ollama_params(&mut r, o)?;
        if r.stop.len() > 16 || r.stop.iter().any(|s| s.len() > 256) {
            return Err(HttpError::bad("at most 16 stop strings of up to 256 bytes"));
        }
        r.sampling.validate()?;
        r.prompt.validate()?;
        Ok(r)
    }
}

impl App {
    /// Starts `req` (asked for as model `named`) where generations run.
    pub fn submit(&self, req: Request, named: &str) -> Result<UnboundedReceiver<Event>, HttpError> {
        match &self.backend {
            Backend::Local(pool) => Ok(pool.submit(req)?),
            Backend::Route(router) => Ok(router.submit(req, named)),
        }
    }
}

/// A chat's messages as a prompt: the system messages, the earlier turns, the last (user)
/// message.
pub fn chat_prompt(messages: &[Message]) -> Result<PromptSpec, HttpError> {
    if messages
        .iter()
        .any(|m| m.images.as_ref().is_some_and(|i| !i.is_empty()))
    {
        return Err(HttpError::bad(
            "images are not supported (text models only)",
        ));
    }
    let Some((last, earlier)) = messages.split_last() else {
        return Err(HttpError::bad("messages is empty"));
    };
    if last.role != "user" {
        return Err(HttpError::bad(format!(
            "the last message must be the user's, not {:?}",
            last.role
        )));
    }
    let mut system = Vec::new();
    let mut history = Vec::new();
    for m in earlier {
        let text = m.content.text()?;
        match m.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" | "assistant" => history.push(Turn {
                role: m.role.clone(),
                content: text,
            }),
            r => return Err(HttpError::bad(format!("unknown message role {r:?}"))),
        }
    }
    Ok(PromptSpec {
        user: last.content.text()?,
        system: (!system.is_empty()).then(|| system.join("\n")),
        history,
        raw: false,
    })
}

/// Ollama's and OpenAI's name for why a generation ended.
pub fn finish_reason(o: &Outcome) -> &'static str {
    match o.stop_reason {
        StopReason::Length | StopReason::Context => "length",
        _ => "stop",
    }
}

/// The per-token telemetry extension.
pub fn token_telemetry(gear: Option<gearbx::gearbox::Gear>, entropy_bits: Option<f32>) -> Value {
    json!({ "gear": gear.map(|g| g.to_string()), "entropy_bits": entropy_bits })
}

/// The generation's gear summary extension.
pub fn summary_telemetry(o: &Outcome) -> Value {
    match &o.gears {
        Some(g) => json!({
            "mode": g.mode,
            "token_fraction": g.token_fraction,
            "tokens_per_s": g.tokens_per_s,
            "shifts": g.shifts,
            "swap_us_mean": g.swap_us_mean,
            "mean_entropy_bits": o.mean_entropy_bits,
            "prompt_cached": o.prompt_cached,
        }),
        None => json!({ "mode": "off", "mean_entropy_bits": o.mean_entropy_bits }),
    }
}

/// Nanoseconds of `ms` milliseconds (Ollama's durations).
pub fn ns(ms: f64) -> u64 {
    (ms * 1e6) as u64
}
