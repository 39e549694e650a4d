//! A multi-turn chat on the session API: one line of stdin per turn, the reply streamed to
//! stdout, earlier turns kept in the KV cache (only each new turn is decoded).
//!
//! `cargo run --release --example chat -- [MODEL]` (default: the default model).

use std::io::{BufRead, Write};

use gearbx::engine::Turn;
use gearbx::session::{Session, SessionOptions};

fn main() -> gearbx::Result<()> {
    let mut session = Session::open(&SessionOptions {
        model: std::env::args().nth(1),
        ..Default::default()
    })?;
    let mut history: Vec<Turn> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| gearbx::Error::io("reading stdin", e))?;
        let mut req = session.default_request(&line);
        req.prompt.history = history.clone();
        req.reuse_cache = true;
        req.sampling.temperature = 0.0;
        req.n_predict = Some(48);
        let out = session.generate(&req, |ev| {
            print!("{}", ev.text);
            let _ = std::io::stdout().flush();
        })?;
        println!();
        eprintln!(
            "[{} prompt tokens, {} from the cache; {} generated at {:.1} tok/s]",
            out.prompt_tokens, out.prompt_cached, out.generated_tokens, out.decode_tokens_per_s
        );
        history.push(Turn {
            role: "user".into(),
            content: line,
        });
        history.push(Turn {
            role: "assistant".into(),
            content: out.text,
        });
    }
    Ok(())
}
