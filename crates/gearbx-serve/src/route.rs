//! The router (`gearbx-serve --route URL --low M --mid M --high M`): no model of its own; each
//! request goes to one of three models on an upstream OpenAI-compatible server (Ollama's `/v1`,
//! llama.cpp's server, another gearbx-serve), picked by the prompt classifier, or the one the
//! request names. The upstream stream comes back as the same events a local session gives, with
//! each token's entropy estimated from the upstream's `top_logprobs`.
//!
//! That estimate sees only the k most likely tokens (the rest counts as one outcome), so it is
//! a lower bound of the true entropy and never above log2(k + 1) bits: compare it with other
//! top-k figures, not with the full-vocabulary entropy a local session reports.

use std::time::Instant;

use gearbx::engine::{EntropyPlace, EntropySource, Outcome, PromptSpec, StopReason};
use gearbx::gearbox::Gear;
use gearbx::llama::SamplingParams;
use gearbx::monitor::classifier;
use gearbx::session::{GearPolicy, Request};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::pool::Event;

/// How many alternatives the router asks the upstream for, per token.
pub const TOP_K: usize = 5;

pub struct Router {
    /// The upstream's base URL, without a trailing slash (`http://127.0.0.1:11434`).
    pub upstream: String,
    /// The upstream model for the low, mid and high class.
    pub models: [String; 3],
    pub api_key: Option<String>,
    client: reqwest::Client,
}

impl Router {
    pub fn new(upstream: &str, models: [String; 3], api_key: Option<String>) -> Self {
        Self {
            upstream: upstream.trim_end_matches('/').to_string(),
            models,
            api_key,
            client: reqwest::Client::new(),
        }
    }

    /// A request with the built-in defaults (the upstream applies its own model's where the
    /// request says nothing).
    pub fn base_request(prompt: PromptSpec) -> Request {
        Request {
            prompt,
            n_predict: None,
            stop: Vec::new(),
            sampling: SamplingParams::default(),
            entropy: EntropySource::default(),
            gear: GearPolicy::Fixed(Gear::High),
            calibrate: None,
            lossless: None,
            reuse_cache: false,
            top_logprobs: None,
        }
    }

    /// Sends `req` upstream to the model `named` (one of the three), else to the class of its
    /// prompt; the events arrive on the returned channel (dropping it closes the upstream
    /// connection, which stops the upstream's generation).
    pub fn submit(&self, req: Request, named: &str) -> UnboundedReceiver<Event> {
        let gear = match self.models.iter().position(|m| m == named) {
            Some(i) => [Gear::Low, Gear::Mid, Gear::High][i],
            None => classifier::classify(&req.prompt.user).gear,
        };
        let model = self.models[gear as usize].clone();
        let (tx, rx) = unbounded_channel();
        let (path, body) = upstream_body(&req, &model);
        let mut post = self
            .client
            .post(format!("{}{path}", self.upstream))
            .json(&body);
        if let Some(k) = &self.api_key {
            post = post.bearer_auth(k);
        }
        tokio::spawn(async move {
            if let Err(e) = relay(post, gear, &tx).await {
                let _ = tx.send(Event::Failed(e));
            }
        });
        rx
    }
}

/// The OpenAI request for `req` on `model`: chat completions, or completions for a raw prompt.
fn upstream_body(req: &Request, model: &str) -> (&'static str, Value) {
    let s = &req.sampling;
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": { "include_usage": true },
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
    });
    if let Some(n) = req.n_predict {
        body["max_tokens"] = json!(n);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    if req.prompt.raw {
        body["prompt"] = json!(req.prompt.user);
        body["logprobs"] = json!(TOP_K);
        return ("/v1/completions", body);
    }
    let mut messages = Vec::new();
    if let Some(sys) = &req.prompt.system {
        messages.push(json!({ "role": "system", "content": sys }));
    }
    for t in &req.prompt.history {
        messages.push(json!({ "role": t.role, "content": t.content }));
    }
    messages.push(json!({ "role": "user", "content": req.prompt.user }));
    body["messages"] = json!(messages);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(TOP_K);
    ("/v1/chat/completions", body)
}

/// Entropy (bits) of the distribution whose top entries have `logprobs` (natural log): the
/// mass outside them counts as one more outcome.
pub fn top_k_entropy_bits(logprobs: &[f64]) -> f64 {
    let p: Vec<f64> = logprobs.iter().map(|l| l.exp()).collect();
    let rest = (1.0 - p.iter().sum::<f64>()).max(0.0);
    p.iter()
        .chain(std::iter::once(&rest))
        .filter(|&&x| x > 0.0)
        .map(|x| -x * x.log2())
        .sum()
}

/// The top alternatives' log-probabilities in one streamed choice (chat or completions shape).
fn chunk_logprobs(choice: &Value) -> Option<Vec<f64>> {
    let lp = &choice["logprobs"];
    if let Some(content) = lp["content"].as_array() {
        let top = content.first()?["top_logprobs"].as_array()?;
        return Some(top.iter().filter_map(|t| t["logprob"].as_f64()).collect());
    }
    let top = lp["top_logprobs"].as_array()?.first()?.as_object()?;
    Some(top.values().filter_map(Value::as_f64).collect())
}

fn upstream_error(e: impl std::fmt::Display) -> gearbx::Error {
    gearbx::Error::Llama(format!("upstream: {e}"))
}

/// Reads the upstream's SSE stream into events.
async fn relay(
    post: reqwest::RequestBuilder,
    gear: Gear,
    tx: &UnboundedSender<Event>,
) -> Result<(), gearbx::Error> {
    let t0 = Instant::now();
    let mut resp = post.send().await.map_err(upstream_error)?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let msg = format!(
            "upstream answered {status}: {}",
            text.chars().take(300).collect::<String>()
        );
        return Err(if status.is_client_error() {
            gearbx::Error::InvalidParam(msg)
        } else {
            upstream_error(msg)
        });
    }
    let (mut text, mut n, mut h_sum) = (String::new(), 0usize, 0f64);
    let (mut finish, mut prompt_tokens) = (None::<String>, 0usize);
    let mut pending = Vec::<u8>::new();
    'read: while let Some(bytes) = resp.chunk().await.map_err(upstream_error)? {
        pending.extend_from_slice(&bytes);
        if pending.len() > 16 << 20 {
            return Err(upstream_error("an SSE event over 16 MiB"));
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                break 'read;
            }
            let v: Value = serde_json::from_str(data).map_err(upstream_error)?;
            if let Some(e) = v.get("error") {
                return Err(upstream_error(e));
            }
            if let Some(u) = v["usage"]["prompt_tokens"].as_u64() {
                prompt_tokens = u as usize;
            }
            let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else {
                continue;
            };
            if let Some(r) = choice["finish_reason"].as_str() {
                finish = Some(r.to_string());
            }
            let piece = choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str())
                .unwrap_or("");
            if piece.is_empty() {
                continue;
            }
            let h = chunk_logprobs(choice).map(|l| top_k_entropy_bits(&l));
            n += 1;
            h_sum += h.unwrap_or(0.0);
            text.push_str(piece);
            let ev = Event::Token {
                text: piece.to_string(),
                gear: Some(gear),
                entropy_bits: h.map(|h| h as f32),
                logprobs: None,
            };
            if tx.send(ev).is_err() {
                return Ok(()); // the client left: dropping the response closes upstream
            }
        }
    }
    let eval_ms = t0.elapsed().as_secs_f64() * 1e3;
    let outcome = Outcome {
        text,
        prompt_tokens,
        prompt_cached: 0,
        generated_tokens: n,
        prompt_ms: 0.0,
        prompt_tokens_per_s: 0.0,
        eval_count: n,
        eval_ms,
        decode_tokens_per_s: if eval_ms > 0.0 {
            n as f64 * 1e3 / eval_ms
        } else {
            0.0
        },
        mean_entropy_bits: if n > 0 { h_sum / n as f64 } else { 0.0 },
        stop_reason: match finish.as_deref() {
            Some("length") => StopReason::Length,
            _ => StopReason::Eos,
        },
        entropy_on: EntropyPlace::Host,
        gears: None,
        lossless: None,
    };
    let _ = tx.send(Event::Done(Box::new(outcome)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_entropy_counts_the_rest_as_one_outcome() {
        // Four equal tokens hold all the mass: 2 bits.
        let l = [0.25f64.ln(); 4];
        assert!((top_k_entropy_bits(&l) - 2.0).abs() < 1e-9);
        // Two tokens of 0.25 and a rest of 0.5: 1.5 bits.
        let l = [0.25f64.ln(); 2];
        assert!((top_k_entropy_bits(&l) - 1.5).abs() < 1e-9);
        // A certain token: 0 bits.
        assert_eq!(top_k_entropy_bits(&[0.0]), 0.0);
    }

    #[test]
    fn both_streamed_shapes_give_their_alternatives() {
        let chat = json!({ "logprobs": { "content": [
            { "token": "a", "logprob": -0.1, "top_logprobs": [
                { "token": "a", "logprob": -0.1 }, { "token": "b", "logprob": -2.5 } ] } ] } });
        assert_eq!(chunk_logprobs(&chat), Some(vec![-0.1, -2.5]));
        let legacy = json!({ "logprobs": { "top_logprobs": [ { "a": -0.1, "b": -2.5 } ] } });
        let mut v = chunk_logprobs(&legacy).unwrap();
        v.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(v, vec![-0.1, -2.5]);
        assert_eq!(chunk_logprobs(&json!({ "text": "x" })), None);
    }
}
