//! What gearbx-run shows: the streamed text (coloured by gear on a terminal), the `--trace`
//! lines, the tier report and the statistics on stderr, the `--json` result.

use std::io::{StdoutLock, Write};

use gearbx::engine::{GearStats, Outcome, TokenEvent};
use gearbx::gearbox::{BuildReport, Gear, TierOrigin};
use gearbx::session::KvReport;
use serde_json::json;

/// The token stream's destinations.
pub struct Stream<'a> {
    pub out: StdoutLock<'a>,
    /// Colour the text by gear (a terminal, no --no-color, no NO_COLOR).
    pub colour: bool,
    /// Print the text (not under --json).
    pub text: bool,
    /// One JSON line per token (`--trace`).
    pub trace: Option<std::io::BufWriter<std::fs::File>>,
    /// The reader of stdout went away (`| head`): stop writing, finish quietly.
    broken_pipe: bool,
    /// The first write that failed otherwise (a full disk): the output is incomplete.
    lost: Option<String>,
}

impl<'a> Stream<'a> {
    pub fn new(
        out: StdoutLock<'a>,
        colour: bool,
        text: bool,
        trace: Option<std::io::BufWriter<std::fs::File>>,
    ) -> Self {
        Self {
            out,
            colour,
            text,
            trace,
            broken_pipe: false,
            lost: None,
        }
    }

    /// One token: its trace line and its text.
    pub fn token(&mut self, ev: &TokenEvent<'_>) {
        if let Some(t) = self.trace.as_mut() {
            if ev.token >= 0 {
                let line = json!({
                    "index": ev.index, "token": ev.token, "text": ev.text, "entropy_bits": ev.entropy_bits,
                    "gear": ev.gear, "next_gear": ev.next_gear.map(|g| g.0), "reason": ev.next_gear.map(|g| g.1),
                    "swap_us": ev.swap_us,
                });
                if let Err(e) = writeln!(t, "{line}") {
                    self.lose("the --trace file", e);
                }
            }
        }
        if self.text && !self.broken_pipe && self.lost.is_none() && !ev.text.is_empty() {
            // A closed pipe (`| head`) is not an error: stop writing, finish quietly.
            let r = match (self.colour, ev.gear) {
                (true, Some(g)) => {
                    let c = match g {
                        Gear::Low => "32",
                        Gear::Mid => "33",
                        Gear::High => "31",
                    };
                    write!(self.out, "\x1b[{c}m{}\x1b[0m", ev.text)
                }
                _ => self.out.write_all(ev.text.as_bytes()),
            };
            if let Err(e) = r.and_then(|_| self.out.flush()) {
                self.lose("stdout", e);
            }
        }
    }

    /// Records a failed write: a closed pipe quietly, anything else as lost output.
    fn lose(&mut self, what: &str, e: std::io::Error) {
        if e.kind() == std::io::ErrorKind::BrokenPipe && what == "stdout" {
            self.broken_pipe = true;
        } else if self.lost.is_none() {
            self.lost = Some(format!(
                "writing {what} failed, the output is incomplete: {e}"
            ));
        }
    }

    /// The end: the trace's summary line, then the `--json` result or a newline after the
    /// text. Err: a write failed (other than a closed pipe), with the message.
    pub fn finish(
        &mut self,
        outcome: &Outcome,
        result: Option<serde_json::Value>,
    ) -> Result<(), String> {
        if let Some(mut t) = self.trace.take() {
            let r = writeln!(t, "{}", json!({ "summary": outcome })).and_then(|_| t.flush());
            if let Err(e) = r {
                self.lose("the --trace file", e);
            }
        }
        if !self.broken_pipe {
            let r = match result {
                Some(v) => writeln!(self.out, "{v}"),
                None => writeln!(self.out),
            };
            if let Err(e) = r.and_then(|_| self.out.flush()) {
                self.lose("stdout", e);
            }
        }
        self.lost.take().map_or(Ok(()), Err)
    }
}

/// The tier report on stderr: where the tiers came from and what they hold.
pub fn tiers(r: &BuildReport) {
    let how = match r.origin {
        TierOrigin::Built => "built",
        TierOrigin::Cache => "read from the tier cache",
        TierOrigin::Gpu => "built on the GPU",
    };
    say!(
        "gearbx-run: tiers of {} tensors {how} in {:.0} ms; low {} ({:.1} MB, {}), mid {} ({:.1} MB, {}), high {} ({:.1} MB, {})",
        r.managed_tensors, r.build_ms, r.types[0], r.bytes[0] as f64 / 1e6, r.placement[0],
        r.types[1], r.bytes[1] as f64 / 1e6, r.placement[1],
        r.types[2], r.bytes[2] as f64 / 1e6, r.placement[2]
    );
    say!(
        "gearbx-run: tiers hold {:.1} MB beside the model ({} tensors shared between gears)",
        r.shadow_bytes as f64 / 1e6,
        r.shared_tensors
    );
}

/// The statistics on stderr after the text.
/// The KV cache line of the statistics: its types and what its tokens take.
pub fn kv_summary(kv: &KvReport) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    say!(
        "[gearbx] KV cache {}/{}: {} bytes/token, {:.2} MiB held, {:.1} MiB at full context",
        kv.type_k,
        kv.type_v,
        kv.bytes_per_token,
        mib(kv.bytes_used),
        mib(kv.bytes_full)
    );
}

pub fn summary(outcome: &Outcome) {
    say!(
        "[gearbx] prompt {} tok {:.1} tok/s | generated {} tok {:.1} tok/s | stop: {}",
        outcome.prompt_tokens,
        outcome.prompt_tokens_per_s,
        outcome.generated_tokens,
        outcome.decode_tokens_per_s,
        serde_json::to_value(outcome.stop_reason)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    );
    if let Some(l) = &outcome.lossless {
        say!(
            "[gearbx] lossless ({}): {} verifies, {} drafted, {} accepted ({:.0}%), {:.2} accepted per verify, {} plain steps, verify width {}, expected gain of drafting {:.2}",
            l.guarantee,
            l.verifies,
            l.drafted,
            l.accepted,
            l.acceptance_rate * 100.0,
            l.mean_accepted_len,
            l.plain_steps,
            l.verify_width,
            l.estimates.expected_gain
        );
    } else if let Some(g) = &outcome.gears {
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.1}"));
        say!(
            "[gearbx] gear {}: {} | {} shifts, {:.1} us mean | tok/s low {} mid {} high {}",
            g.mode,
            fractions(g),
            g.shifts,
            g.swap_us_mean,
            rate(g.tokens_per_s[0]),
            rate(g.tokens_per_s[1]),
            rate(g.tokens_per_s[2])
        );
    }
}

/// One line on stderr after a chat answer: tokens, speed, gears, how much of the prompt the
/// KV cache already held.
pub fn turn_summary(o: &Outcome) {
    let gears = o.gears.as_ref().map_or(String::new(), |g| {
        format!(" | {} {}, {} shifts", g.mode, fractions(g), g.shifts)
    });
    say!(
        "[gearbx] {} tok {:.1} tok/s{gears} | prompt {} tok, {} reused from the cache",
        o.generated_tokens,
        o.decode_tokens_per_s,
        o.prompt_tokens,
        o.prompt_cached
    );
}

/// "low 40% mid 35% high 25%": the share of tokens from each gear.
fn fractions(g: &GearStats) -> String {
    format!(
        "low {:.0}% mid {:.0}% high {:.0}%",
        g.token_fraction[0] * 100.0,
        g.token_fraction[1] * 100.0,
        g.token_fraction[2] * 100.0
    )
}
