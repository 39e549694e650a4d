//! OpenAI's API: `/v1/chat/completions` and `/v1/completions` (JSON, or SSE chunks ending
//! with `data: [DONE]` when `stream` is true), `/v1/models`, with OpenAI's field names and
//! error shape, and gear telemetry under `gearbx` in every chunk.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gearbx::engine::logprobs::{Logprobs, TokenLogprob, MAX_TOP_LOGPROBS};
use gearbx::engine::{Outcome, PromptSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::pool::{first_event, Event};
use crate::request::{
    chat_prompt, finish_reason, parse, summary_telemetry, token_telemetry, HttpError, Message,
    Options,
};
use crate::App;

/// An error in OpenAI's shape.
pub struct OpenAiError(pub HttpError);

impl<E: Into<HttpError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let kind = if self.0.status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let code =
            (self.0.status == axum::http::StatusCode::NOT_FOUND).then_some("model_not_found");
        let body = json!({ "error": {
            "message": self.0.message, "type": kind, "param": null, "code": code,
        }});
        (self.0.status, Json(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, OpenAiError>;

/// The sampling fields both endpoints take.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Sampling {
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stop: Option<Stop>,
    seed: Option<i64>,
    n: Option<u32>,
    stream: bool,
    stream_options: Option<StreamOptions>,
    /// Chat: true or false; completions: how many alternatives.
    logprobs: Option<Value>,
    top_logprobs: Option<u32>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Sampling {
    /// How many alternatives to report per token (None: no log-probabilities).
    fn top_logprobs(&self, kind: Kind) -> std::result::Result<Option<usize>, HttpError> {
        let n = match (kind, &self.logprobs) {
            (_, None | Some(Value::Null) | Some(Value::Bool(false))) => {
                if self.top_logprobs.is_some() {
                    return Err(HttpError::bad("top_logprobs needs logprobs: true"));
                }
                return Ok(None);
            }
            (Kind::Chat, Some(Value::Bool(true))) => self.top_logprobs.unwrap_or(0),
            (Kind::Completion, Some(Value::Number(n))) if n.as_u64().is_some_and(|n| n > 20) => {
                return Err(HttpError::bad("logprobs must be at most 20"));
            }
            (Kind::Completion, Some(Value::Number(n))) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| HttpError::bad("logprobs must be a small non-negative integer"))?,
            (_, Some(v)) => return Err(HttpError::bad(format!("logprobs cannot be {v}"))),
        };
        if n as usize > MAX_TOP_LOGPROBS {
            return Err(HttpError::bad(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {n}"
            )));
        }
        Ok(Some(n as usize))
    }

    fn options(&self) -> std::result::Result<Options, HttpError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(HttpError::bad("n must be 1"));
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        Ok(Options {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            num_predict: max
                .map(i32::try_from)
                .transpose()
                .map_err(|_| HttpError::bad("max_tokens is out of range"))?,
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            ..Default::default()
        })
    }
}

/// A stop string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<Message>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionBody {
    model: String,
    prompt: PromptField,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

fn created() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn next_id(kind: Kind) -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    format!("{prefix}-gearbx-{}", N.fetch_add(1, Ordering::Relaxed))
}

pub async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Result<Response> {
    let b: ChatBody = parse(&body)?;
    app.check_model(&b.model)?;
    let prompt = chat_prompt(&b.messages)?;
    complete(&app, Kind::Chat, b.model, prompt, &b.sampling).await
}

pub async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Result<Response> {
    let b: CompletionBody = parse(&body)?;
    app.check_model(&b.model)?;
    let user = match b.prompt {
        PromptField::One(s) => s,
        PromptField::Many(v) if v.len() == 1 => v.into_iter().next().expect("one"),
        PromptField::Many(_) => return Err(HttpError::bad("prompt must be one string").into()),
    };
    let prompt = PromptSpec {
        user,
        raw: true,
        ..Default::default()
    };
    complete(&app, Kind::Completion, b.model, prompt, &b.sampling).await
}

async fn complete(
    app: &App,
    kind: Kind,
    model: String,
    prompt: PromptSpec,
    s: &Sampling,
) -> Result<Response> {
    let mut req = app.request(prompt, &s.options()?)?;
    req.top_logprobs = s.top_logprobs(kind)?;
    let req_logprobs = req.top_logprobs.is_some();
    let mut events = app.submit(req, &model)?;
    let (id, created) = (next_id(kind), created());
    if !s.stream {
        let mut text = String::new();
        let mut lps: Vec<(usize, Logprobs)> = Vec::new();
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Token {
                    text: t, logprobs, ..
                } => {
                    if let Some(l) = logprobs {
                        lps.push((text.len(), l));
                    }
                    text.push_str(&t);
                }
                Event::Done(o) => {
                    let logprobs = (req_logprobs).then(|| logprobs_json(kind, &lps));
                    let choice = match kind {
                        Kind::Chat => json!({
                            "index": 0, "finish_reason": finish_reason(&o), "logprobs": logprobs,
                            "message": { "role": "assistant", "content": text },
                        }),
                        Kind::Completion => json!({
                            "index": 0, "finish_reason": finish_reason(&o), "logprobs": logprobs,
                            "text": text,
                        }),
                    };
                    return Ok(Json(json!({
                        "id": id, "object": object(kind, false), "created": created,
                        "model": model, "choices": [choice], "usage": usage(&o),
                        "gearbx": summary_telemetry(&o),
                    }))
                    .into_response());
                }
                Event::Failed(e) => return Err(HttpError::from(e).into()),
            }
        }
        return Err(HttpError::from(gearbx::Error::Interrupted).into());
    }
    let include_usage = s.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (id2, model2) = (id.clone(), model.clone());
    let chunk = move |choice: Value, extra: Option<(&str, Value)>| {
        let mut v = json!({
            "id": id, "object": object(kind, true), "created": created, "model": model,
            "choices": [choice],
        });
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        Sse::default().data(v.to_string())
    };
    // A task turns events into SSE chunks (the end can be two: the finish and the usage);
    // when the client goes, its channel closes, the task drops `events`, and the worker's
    // next send fails, which stops the generation.
    let head = first_event(&mut events).await?;
    let (out, chunks) = tokio::sync::mpsc::unbounded_channel::<Sse>();
    tokio::spawn(async move {
        let mut first = true;
        let mut offset = 0;
        let mut head = Some(head);
        loop {
            let ev = match head.take() {
                Some(ev) => ev,
                None => match events.recv().await {
                    Some(ev) => ev,
                    None => break,
                },
            };
            let batch: Vec<Sse> = match ev {
                Event::Token {
                    text,
                    gear,
                    entropy_bits,
                    logprobs,
                } => {
                    let lp = logprobs.map(|l| logprobs_json(kind, &[(offset, l)]));
                    offset += text.len();
                    let mut delta = json!({ "content": text });
                    if first {
                        delta["role"] = json!("assistant");
                        first = false;
                    }
                    let mut choice = match kind {
                        Kind::Chat => json!({ "index": 0, "delta": delta, "finish_reason": null }),
                        Kind::Completion => {
                            json!({ "index": 0, "text": delta["content"], "finish_reason": null })
                        }
                    };
                    if let Some(lp) = lp {
                        choice["logprobs"] = lp;
                    }
                    vec![chunk(
                        choice,
                        Some(("gearbx", token_telemetry(gear, entropy_bits))),
                    )]
                }
                Event::Done(o) => {
                    let r = finish_reason(&o);
                    let choice = match kind {
                        Kind::Chat => json!({ "index": 0, "delta": {}, "finish_reason": r }),
                        Kind::Completion => json!({ "index": 0, "text": "", "finish_reason": r }),
                    };
                    let mut v = vec![chunk(choice, Some(("gearbx", summary_telemetry(&o))))];
                    if include_usage {
                        // OpenAI's usage chunk has no choices.
                        v.push(
                            Sse::default().data(
                                json!({
                                    "id": id2, "object": object(kind, true), "created": created,
                                    "model": model2, "choices": [], "usage": usage(&o),
                                })
                                .to_string(),
                            ),
                        );
                    }
                    v
                }
                Event::Failed(e) => vec![Sse::default().data(
                    json!({ "error": { "message": e.to_string(), "type": "server_error" } })
                        .to_string(),
                )],
            };
            for e in batch {
                if out.send(e).is_err() {
                    return;
                }
            }
        }
    });
    let chunks = UnboundedReceiverStream::new(chunks);
    let done = tokio_stream::once(Sse::default().data("[DONE]"));
    let stream = chunks.chain(done).map(Ok::<_, Infallible>);
    Ok(axum::response::Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn object(kind: Kind, chunk: bool) -> &'static str {
    match (kind, chunk) {
        (Kind::Chat, false) => "chat.completion",
        (Kind::Chat, true) => "chat.completion.chunk",
        (Kind::Completion, _) => "text_completion",
    }
}

/// Log-probabilities in the API's shape: chat's `{"content": [...]}` entries, or the legacy
/// completions' parallel arrays. `lps` holds each token's text offset and log-probabilities.
fn logprobs_json(kind: Kind, lps: &[(usize, Logprobs)]) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match kind {
        Kind::Chat => {
            let entry = |t: &TokenLogprob| json!({ "token": text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes });
            let content: Vec<Value> = lps
                .iter()
                .map(|(_, l)| {
                    let mut e = entry(&l.chosen);
                    e["top_logprobs"] = l.top.iter().map(entry).collect();
                    e
                })
                .collect();
            json!({ "content": content })
        }
        Kind::Completion => json!({
            "tokens": lps.iter().map(|(_, l)| text(&l.chosen.bytes)).collect::<Vec<_>>(),
            "token_logprobs": lps.iter().map(|(_, l)| l.chosen.logprob).collect::<Vec<_>>(),
            "top_logprobs": lps
                .iter()
                .map(|(_, l)| {
                    l.top
                        .iter()
                        .map(|t| (text(&t.bytes), json!(t.logprob)))
                        .collect::<serde_json::Map<_, _>>()
                })
                .collect::<Vec<_>>(),
            "text_offset": lps.iter().map(|(o, _)| o).collect::<Vec<_>>(),
        }),
    }
}

fn usage(o: &Outcome) -> Value {
    json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.generated_tokens,
        "total_tokens": o.prompt_tokens + o.generated_tokens,
    })
}

pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [{
        "id": app.name, "object": "model", "created": created(), "owned_by": "gearbx",
    }]}))
}
