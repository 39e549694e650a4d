//! Log-probabilities of a drawn token and of the most likely tokens, from one row of logits:
//! the log-softmax over the whole vocabulary in double precision (what OpenAI's `logprobs` and
//! `top_logprobs` report, and what a router computes entropy from).

use serde::Serialize;

use crate::llama::{Model, Token};

/// The most alternatives a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One token with its log-probability (natural log) and its bytes.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: Token,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// The drawn token and the `n` most likely ones, most likely first.
#[derive(Debug, Clone, Serialize)]
pub struct Logprobs {
    pub chosen: TokenLogprob,
    pub top: Vec<TokenLogprob>,
}

/// Log-softmax of `logits` at `chosen` and at the `n` largest logits, as (token, logprob).
pub fn log_softmax_top(logits: &[f32], chosen: Token, n: usize) -> (f32, Vec<(Token, f32)>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    // The n largest by a small sorted buffer (n <= 20, one pass over the vocabulary).
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(n + 1);
    for (i, &x) in logits.iter().enumerate() {
        if best.len() < n || best.last().is_some_and(|&(b, _)| x > b) {
            let at = best.partition_point(|&(b, _)| b >= x);
            best.insert(at, (x, i));
            best.truncate(n);
        }
    }
    let top = best.iter().map(|&(_, i)| (i as Token, lp(i))).collect();
    let chosen = usize::try_from(chosen).ok().filter(|&c| c < logits.len());
    (chosen.map_or(f32::NEG_INFINITY, lp), top)
}

/// [`log_softmax_top`] with each token's bytes from `model`.
pub fn of(model: &Model, logits: &[f32], chosen: Token, n: usize) -> Logprobs {
    let (lp, top) = log_softmax_top(logits, chosen, n);
    let entry = |token: Token, logprob: f32| TokenLogprob {
        token,
        logprob,
        bytes: model.token_bytes(token, false),
    };
    Logprobs {
        chosen: entry(chosen, lp),
        top: top.into_iter().map(|(t, l)| entry(t, l)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_the_top_tokens_match_a_direct_computation() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5, 2.0];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let want = |i: usize| ((logits[i] as f64).exp() / z).ln() as f32;
        let (lp, top) = log_softmax_top(&logits, 4, 3);
        assert!((lp - want(4)).abs() < 1e-6);
        // Most likely first; ties keep the lower index first.
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 5]);
        for (t, l) in top {
            assert!((l - want(t as usize)).abs() < 1e-6);
        }
        let (_, none) = log_softmax_top(&logits, 0, 0);
        assert!(none.is_empty());
        let (all_lp, all) = log_softmax_top(&logits, 9, 10);
        assert_eq!(
            all.len(),
            logits.len(),
            "n above the vocabulary gives all of it"
        );
        assert_eq!(all_lp, f32::NEG_INFINITY, "a token outside the vocabulary");
        let p: f64 = all.iter().map(|t| (t.1 as f64).exp()).sum();
        assert!((p - 1.0).abs() < 1e-6, "probabilities sum to 1: {p}");
    }
}
