//! The interactive chat (`gearbx-run MODEL` with a terminal on stdin), as `ollama run` has it:
//! many turns in one session (its KV cache reused turn to turn), Ollama's slash commands, line
//! editing and history, Ctrl-C stops an answer and keeps the chat, Ctrl-D or /bye ends it; the
//! text coloured by gear and a one-line gear summary after each answer.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use gearbx::engine::{StopReason, Turn};
use gearbx::error::exit;
use gearbx::gearbox::Gear;
use gearbx::monitor::MonitorConfig;
use gearbx::session::{GearPolicy, Request, Session};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::{render, Failure};

const HELP: &str = "Available commands:
  /set parameter NAME VALUE   temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                              seed, num_predict (-1: no limit), stop (adds a stop string)
  /set system TEXT            the system prompt (the chat starts over)
  /set gear auto|low|mid|high the gear policy
  /show info                  the model, its context and the current parameters
  /clear                      forget the conversation
  /bye                        exit (also Ctrl-D)
  /?, /help                   this help
Ctrl-C stops an answer. Start a message with \"\"\" to write several lines; end with \"\"\".";

/// What a slash command leaves to do.
enum Next {
    Continue,
    Bye,
}

/// True while a chat runs: Ctrl-C then never exits the process.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);

pub fn run(
    sess: &mut Session,
    mut req: Request,
    colour: bool,
    abort: &AtomicBool,
) -> Result<u8, Failure> {
    ACTIVE.store(true, Ordering::SeqCst);
    let mut lines = Lines::new();
    req.reuse_cache = true;
    let mut turns: Vec<Turn> = Vec::new();
    say!("Send a message (/? for help, Ctrl-D or /bye to exit)");
    loop {
        let line = match lines.read(">>> ")? {
            Read::Line(l) => l,
            Read::Interrupted => {
                say!("Use Ctrl-D or /bye to exit.");
                continue;
            }
            Read::Eof => break,
        };
        let mut text = line.trim().to_string();
        if text.is_empty() {
            continue;
        }
        if let Some(first) = text.strip_prefix("\"\"\"") {
            text = multi_line(&mut lines, first)?;
            if text.is_empty() {
                continue;
            }
        } else if text.starts_with('/') {
            match command(&text, sess, &mut req, &mut turns) {
                Next::Continue => continue,
                Next::Bye => break,
            }
        }
        req.prompt.user = text.clone();
        req.prompt.history = turns.clone();
        let outcome = {
            let stdout = std::io::stdout();
            let mut stream = render::Stream::new(stdout.lock(), colour, true, None);
            let r = sess.generate(&req, |ev| stream.token(ev));
            match r {
                Ok(o) => {
                    let _ = stream.finish(&o, None);
                    o
                }
                Err(e) => {
                    say!("error: {}", e.cli_message());
                    if matches!(e, gearbx::Error::PromptTooLong { .. }) {
                        say!("the conversation no longer fits the context: /clear starts over");
                    }
                    continue;
                }
            }
        };
        abort.store(false, Ordering::SeqCst); // a Ctrl-C belonged to this answer
        render::turn_summary(&outcome);
        if outcome.stop_reason == StopReason::Interrupted {
            say!("(stopped)");
        }
        turns.push(Turn {
            role: "user".into(),
            content: text,
        });
        turns.push(Turn {
            role: "assistant".into(),
            content: outcome.text,
        });
    }
    lines.save();
    Ok(exit::OK)
}

/// What reading a line gave.
enum Read {
    Line(String),
    Interrupted,
    Eof,
}

/// Line editing with history. An editor exists only while a line is read: rustyline takes
/// SIGINT over for as long as its terminal lives, and during an answer Ctrl-C must reach
/// gearbx-run's handler (which stops the answer).
struct Lines {
    history: Vec<String>,
    file: Option<std::path::PathBuf>,
}

impl Lines {
    fn new() -> Self {
        let file = gearbx::store::default_model::cache_dir()
            .ok()
            .map(|d| d.join("chat_history"));
        let mut history = Vec::new();
        if let (Some(f), Ok(mut rl)) = (&file, DefaultEditor::new()) {
            if rl.load_history(f).is_ok() {
                history = rl.history().iter().cloned().collect();
            }
        }
        Self { history, file }
    }

    fn read(&mut self, prompt: &str) -> Result<Read, Failure> {
        let mut rl = DefaultEditor::new()
            .map_err(|e| Failure(exit::IO, format!("cannot use the terminal: {e}")))?;
        for h in &self.history {
            let _ = rl.add_history_entry(h.as_str());
        }
        match rl.readline(prompt) {
            Ok(l) => {
                if !l.trim().is_empty() {
                    self.history.push(l.clone());
                }
                Ok(Read::Line(l))
            }
            Err(ReadlineError::Interrupted) => Ok(Read::Interrupted),
            Err(ReadlineError::Eof) => Ok(Read::Eof),
            Err(e) => Err(Failure(exit::IO, format!("reading the terminal: {e}"))),
        }
    }

    /// Keeps the last 1,000 lines for the next chat (best effort).
    fn save(&self) {
        let (Some(f), Ok(mut rl)) = (&self.file, DefaultEditor::new()) else {
            return;
        };
        let skip = self.history.len().saturating_sub(1000);
        for h in &self.history[skip..] {
            let _ = rl.add_history_entry(h.as_str());
        }
        let _ = rl.save_history(f);
    }
}

/// Lines up to one that ends with `"""`, after the first (the text after the opening `"""`).
fn multi_line(lines: &mut Lines, first: &str) -> Result<String, Failure> {
    let mut text = first.to_string();
    if let Some(done) = text.strip_suffix("\"\"\"") {
        return Ok(done.to_string());
    }
    loop {
        match lines.read("... ")? {
            Read::Line(l) => {
                text.push('\n');
                if let Some(done) = l.strip_suffix("\"\"\"") {
                    text.push_str(done);
                    return Ok(text.trim().to_string());
                }
                text.push_str(&l);
            }
            Read::Interrupted => return Ok(String::new()),
            Read::Eof => return Ok(text.trim().to_string()),
        }
    }
}

fn command(line: &str, sess: &Session, req: &mut Request, turns: &mut Vec<Turn>) -> Next {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["/bye"] | ["/exit"] => return Next::Bye,
        ["/?"] | ["/help"] => say!("{HELP}"),
        ["/clear"] => {
            turns.clear();
            say!("Cleared the conversation.");
        }
        ["/set", "system", ..] => {
            let text = line.splitn(3, ' ').nth(2).unwrap_or("").trim();
            req.prompt.system = (!text.is_empty()).then(|| text.to_string());
            turns.clear();
            say!("Set the system prompt (the conversation starts over).");
        }
        ["/set", "parameter", name, value @ ..] if !value.is_empty() => {
            match set_parameter(req, name, &value.join(" ")) {
                Ok(()) => say!("Set parameter '{name}' to '{}'", value.join(" ")),
                Err(e) => say!("error: {e}"),
            }
        }
        ["/set", "gear", g] => match g.to_ascii_lowercase().as_str() {
            "auto" => {
                req.gear = GearPolicy::Auto(MonitorConfig::default());
                say!("Gear: auto");
            }
            other => match other.parse::<Gear>() {
                Ok(g) => {
                    req.gear = GearPolicy::Fixed(g);
                    say!("Gear: {g}");
                }
                Err(e) => say!("error: {e}"),
            },
        },
        ["/show", "info"] => {
            let s = &req.sampling;
            say!(
                "model: {} ({})\ncontext: {} tokens, {} turns held\nparameters: temperature {} top_k {} top_p {} min_p {} repeat_penalty {} repeat_last_n {} seed {} num_predict {}\nsystem: {}",
                sess.model().description(),
                sess.resolved().path.display(),
                sess.n_ctx(),
                turns.len() / 2,
                s.temperature, s.top_k, s.top_p, s.min_p, s.repeat_penalty, s.repeat_last_n, s.seed,
                req.n_predict.map_or("-1".to_string(), |n| n.to_string()),
                req.prompt.system.as_deref().unwrap_or("(the model's)")
            );
        }
        _ => say!("Unknown command '{line}'. Type /? for help."),
    }
    let _ = std::io::stderr().flush();
    Next::Continue
}

/// `/set parameter NAME VALUE`, by Ollama's names; the request is unchanged on error.
fn set_parameter(req: &mut Request, name: &str, value: &str) -> Result<(), String> {
    let bad = |e: &dyn std::fmt::Display| format!("{name}: {e}");
    let mut r = req.clone();
    let s = &mut r.sampling;
    match name {
        "temperature" => s.temperature = value.parse().map_err(|e| bad(&e))?,
        "top_k" => s.top_k = value.parse().map_err(|e| bad(&e))?,
        "top_p" => s.top_p = value.parse().map_err(|e| bad(&e))?,
        "min_p" => s.min_p = value.parse().map_err(|e| bad(&e))?,
        "repeat_penalty" => s.repeat_penalty = value.parse().map_err(|e| bad(&e))?,
        "repeat_last_n" => s.repeat_last_n = value.parse().map_err(|e| bad(&e))?,
        "seed" => s.seed = value.parse().map_err(|e| bad(&e))?,
        "num_predict" => {
            let n: i64 = value.parse().map_err(|e| bad(&e))?;
            r.n_predict = usize::try_from(n).ok().filter(|&n| n > 0);
        }
        "stop" => r.stop.push(value.to_string()),
        _ => return Err(format!("unknown parameter '{name}'")),
    }
    r.sampling.validate().map_err(|e| e.to_string())?;
    *req = r;
    Ok(())
}
