//! Ollama's API: `/api/generate` and `/api/chat` (NDJSON streams by default, one object with
//! `"stream": false`), `/api/tags`, `/api/show`, `/api/version`, with Ollama's field names and
//! error shape (`{"error": "..."}`), and gear telemetry under `gearbx` in every object.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gearbx::engine::{Outcome, PromptSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::pool::{first_event, Event};
use crate::request::{
    chat_prompt, finish_reason, ns, parse, summary_telemetry, token_telemetry, HttpError, Message,
    Options,
};
use crate::{App, Backend};

/// An error in Ollama's shape.
pub struct OllamaError(pub HttpError);

impl<E: Into<HttpError>> From<E> for OllamaError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.0.status, Json(json!({ "error": self.0.message }))).into_response()
    }
}

type Result<T> = std::result::Result<T, OllamaError>;

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

#[derive(Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default = "yes")]
    stream: bool,
    #[serde(default)]
    options: Options,
    #[serde(default)]
    images: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default = "yes")]
    stream: bool,
    #[serde(default)]
    options: Options,
}

fn yes() -> bool {
    true
}

/// How a reply's pieces are wrapped: `/api/generate`'s `response`, `/api/chat`'s `message`.
#[derive(Clone, Copy)]
enum Shape {
    Generate,
    Chat,
}

impl Shape {
    fn piece(self, model: &str, text: &str) -> Value {
        match self {
            Shape::Generate => json!({ "model": model, "created_at": now(), "response": text }),
            Shape::Chat => json!({
                "model": model, "created_at": now(),
                "message": { "role": "assistant", "content": text },
            }),
        }
    }
}

pub async fn generate(State(app): State<Arc<App>>, body: Bytes) -> Result<Response> {
    let b: GenerateBody = parse(&body)?;
    app.check_model(&b.model)?;
    if b.images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(HttpError::bad("images are not supported (text models only)").into());
    }
    if b.prompt.is_empty() {
        // Ollama's way to load a model: nothing to generate, done at once.
        let mut v = Shape::Generate.piece(&b.model, "");
        v["done"] = json!(true);
        v["done_reason"] = json!("load");
        return Ok(Json(v).into_response());
    }
    let prompt = PromptSpec {
        user: b.prompt,
        system: b.system,
        history: Vec::new(),
        raw: b.raw,
    };
    reply(&app, Shape::Generate, b.model, prompt, &b.options, b.stream).await
}

pub async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Result<Response> {
    let b: ChatBody = parse(&body)?;
    app.check_model(&b.model)?;
    if b.messages.is_empty() {
        // Ollama's way to load a model (`ollama run` sends it first).
        let mut v = Shape::Chat.piece(&b.model, "");
        v["done"] = json!(true);
        v["done_reason"] = json!("load");
        return Ok(Json(v).into_response());
    }
    let prompt = chat_prompt(&b.messages)?;
    reply(&app, Shape::Chat, b.model, prompt, &b.options, b.stream).await
}

async fn reply(
    app: &App,
    shape: Shape,
    model: String,
    prompt: PromptSpec,
    options: &Options,
    stream: bool,
) -> Result<Response> {
    let req = app.request(prompt, options)?;
    let mut events = app.submit(req, &model)?;
    if !stream {
        let mut text = String::new();
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Token { text: t, .. } => text.push_str(&t),
                Event::Done(o) => return Ok(Json(last(shape, &model, &text, &o)).into_response()),
                Event::Failed(e) => return Err(HttpError::from(e).into()),
            }
        }
        return Err(HttpError::from(gearbx::Error::Interrupted).into());
    }
    // One JSON object per line; the last has done: true and the totals. An error after the
    // stream began is a last line {"error": ...}, as Ollama sends it.
    let first = first_event(&mut events).await?;
    let events = tokio_stream::once(first).chain(UnboundedReceiverStream::new(events));
    let lines = events.map(move |ev| {
        let v = match ev {
            Event::Token {
                text,
                gear,
                entropy_bits,
                ..
            } => {
                let mut v = shape.piece(&model, &text);
                v["done"] = json!(false);
                v["gearbx"] = token_telemetry(gear, entropy_bits);
                v
            }
            Event::Done(o) => last(shape, &model, "", &o),
            Event::Failed(e) => json!({ "error": e.to_string() }),
        };
        let mut line = serde_json::to_vec(&v).expect("JSON");
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// The closing object: the text (all of it when not streaming), the totals, the gear summary.
fn last(shape: Shape, model: &str, text: &str, o: &Outcome) -> Value {
    let mut v = shape.piece(model, text);
    let m = v.as_object_mut().expect("object");
    for (k, x) in [
        ("done", json!(true)),
        ("done_reason", json!(finish_reason(o))),
        ("total_duration", json!(ns(o.prompt_ms + o.eval_ms))),
        ("load_duration", json!(0)),
        (
            "prompt_eval_count",
            json!(o.prompt_tokens - o.prompt_cached),
        ),
        ("prompt_eval_duration", json!(ns(o.prompt_ms))),
        ("eval_count", json!(o.generated_tokens)),
        ("eval_duration", json!(ns(o.eval_ms))),
        ("gearbx", summary_telemetry(o)),
    ] {
        m.insert(k.into(), x);
    }
    v
}

/// The served model as `/api/tags` and `/api/show` describe it.
fn details(info: &gearbx::store::gguf::GgufInfo) -> Value {
    let arch = info.architecture.clone().unwrap_or_default();
    json!({
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": info.size_label.clone().unwrap_or_default(),
        "quantization_level": info.file_type_name().unwrap_or("unknown"),
    })
}

pub async fn tags(State(app): State<Arc<App>>) -> Json<Value> {
    let m = match &app.backend {
        Backend::Local(pool) => &pool.model,
        Backend::Route(r) => {
            let models: Vec<Value> = r
                .models
                .iter()
                .map(|m| json!({ "name": m, "model": m, "details": { "format": "routed" } }))
                .collect();
            return Json(json!({ "models": models }));
        }
    };
    let meta = std::fs::metadata(&m.path).ok();
    let modified = meta
        .as_ref()
        .and_then(|x| x.modified().ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Json(json!({ "models": [{
        "name": app.name,
        "model": app.name,
        "modified_at": humantime::format_rfc3339_nanos(modified).to_string(),
        "size": meta.map_or(0, |x| x.len()),
        "digest": m.expected_sha256().unwrap_or_default(),
        "details": details(&m.info),
    }]}))
}

#[derive(Deserialize)]
struct ShowBody {
    #[serde(alias = "name")]
    model: String,
}

pub async fn show(State(app): State<Arc<App>>, body: Bytes) -> Result<Json<Value>> {
    let b: ShowBody = parse(&body)?;
    app.check_model(&b.model)?;
    let Backend::Local(pool) = &app.backend else {
        return Ok(Json(
            json!({ "details": { "format": "routed" }, "capabilities": ["completion"] }),
        ));
    };
    let m = &pool.model;
    let arch = m.info.architecture.clone().unwrap_or_default();
    let store = m.store_entry();
    Ok(Json(json!({
        "modelfile": "",
        "parameters": store.map(|s| format!("{:?}", s.params)).unwrap_or_default(),
        "template": store.and_then(|s| s.template.clone()).unwrap_or_default(),
        "system": store.and_then(|s| s.system.clone()).unwrap_or_default(),
        "details": details(&m.info),
        "model_info": {
            "general.architecture": arch,
            format!("{arch}.context_length"): m.info.context_length,
            "gearbx.n_ctx": pool.n_ctx,
        },
        "capabilities": ["completion"],
    })))
}

pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}
