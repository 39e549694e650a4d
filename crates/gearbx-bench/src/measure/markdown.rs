//! Writes the report: `results.md` (tables and findings), `results.json` (every number) and
//! the SVG charts (quality/speed frontier, speed ratios, an entropy-and-gear timeline).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::quality::LaneResult;
use super::report::{ModelReport, RouterControl};
use super::svg;
use gearbx::error::{Error, Result};

fn pct(f: [f64; 3]) -> String {
    format!(
        "{:.0} / {:.0} / {:.0}",
        f[0] * 100.0,
        f[1] * 100.0,
        f[2] * 100.0
    )
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join("-")
}

/// Lockstep speed of a lane relative to the reference lane (lane 0).
fn rel_speed(q: &[LaneResult], l: &LaneResult) -> f64 {
    l.decode_tokens_per_s / q[0].decode_tokens_per_s
}

/// Auto lanes that some fixed lane beats on both axes (at least as fast, lower KL).
fn dominated(q: &[LaneResult]) -> Vec<(&LaneResult, &LaneResult)> {
    let fixed: Vec<&LaneResult> = q.iter().filter(|l| l.policy != "auto").collect();
    q.iter()
        .filter(|l| l.policy == "auto")
        .filter_map(|a| {
            fixed
                .iter()
                .filter(|f| rel_speed(q, f) >= rel_speed(q, a) && f.kl_mean < a.kl_mean)
                .min_by(|x, y| x.kl_mean.total_cmp(&y.kl_mean))
                .map(|f| (a, *f))
        })
        .collect()
}

/// (speed of the auto lane, KL of a control router with its fractions) for each auto lane.
fn control_points(
    q: &[LaneResult],
    routers: &[RouterControl],
    kl: impl Fn(&RouterControl) -> f64,
) -> Vec<(f64, f64)> {
    routers
        .iter()
        .filter_map(|c| {
            q.iter()
                .find(|l| l.name == c.auto)
                .map(|a| (rel_speed(q, a), kl(c)))
        })
        .collect()
}

fn charts(r: &ModelReport) -> [(String, String); 3] {
    let q = &r.quality;
    let point = |l: &LaneResult| (rel_speed(q, l), l.kl_mean);
    let fixed: Vec<&LaneResult> = q.iter().skip(1).filter(|l| l.policy != "auto").collect();
    let auto: Vec<&LaneResult> = q.iter().filter(|l| l.policy == "auto").collect();
    let frontier = svg::xy_chart(
        &format!(
            "{}: quality vs speed ({} positions)",
            r.model, q[0].positions
        ),
        "decode speed relative to the source (lockstep, same run)",
        "mean KL vs source (nats, log)",
        true,
        &[
            svg::Series {
                name: "fixed tiers / static".into(),
                points: fixed.iter().map(|l| point(l)).collect(),
                line: false,
                color: "#1f5fa8",
                labels: fixed.iter().map(|l| l.name.clone()).collect(),
            },
            svg::Series {
                name: "auto (threshold sweep)".into(),
                points: auto.iter().map(|l| point(l)).collect(),
                line: true,
                color: "#c8501e",
                labels: auto.iter().map(|l| l.name.replace("auto ", "")).collect(),
            },
            // The control routers, each at its auto lane's speed (the same gear fractions).
            svg::Series {
                name: "random router, same fractions".into(),
                points: control_points(q, &r.routers, |c| c.random_kl),
                line: true,
                color: "#888888",
                labels: Vec::new(),
            },
            svg::Series {
                name: "oracle router, same fractions".into(),
                points: control_points(q, &r.routers, |c| c.oracle_kl),
                line: true,
                color: "#2a9d3a",
                labels: Vec::new(),
            },
        ],
    );
    let mut bars: Vec<(String, f64)> = r
        .speed
        .gears
        .iter()
        .map(|g| (format!("{} gear / static", g.gear), g.ratio.median))
        .collect();
    bars.push(("auto / harmonic mix".into(), r.speed.auto.ratio.median));
    bars.push((
        "prefill gearbox / plain".into(),
        r.speed.prefill.ratio.median,
    ));
    let speed = svg::bar_chart(
        &format!(
            "{}: speed ratios (median of {} interleaved rounds)",
            r.model, r.speed.rounds
        ),
        "ratio (1.0 = same speed)",
        &bars,
        1.0,
    );
    let t = &r.timeline;
    let timeline = svg::timeline(
        &format!("{}: entropy and gear per token (auto, greedy)", r.model),
        &t.entropy_bits,
        &t.gear,
        t.thresholds_bits,
    );
    let s = slug(&r.model);
    [
        (format!("frontier-{s}.svg"), frontier),
        (format!("speed-{s}.svg"), speed),
        (format!("timeline-{s}.svg"), timeline),
    ]
}

fn model_section(o: &mut String, r: &ModelReport, files: &[(String, String); 3]) {
    let _ = writeln!(
        o,
        "## {} ({}, vocabulary {})\n",
        r.model, r.description, r.n_vocab
    );
    let _ = writeln!(
        o,
        "| gear | tier types (managed matrices) | MB |\n|---|---|---|"
    );
    for (i, g) in ["low", "mid", "high"].iter().enumerate() {
        let _ = writeln!(
            o,
            "| {g} | {} | {:.1} |",
            r.tiers.types[i],
            r.tiers.bytes[i] as f64 / 1e6
        );
    }
    for b in &r.baselines {
        let _ = writeln!(
            o,
            "\nStatic baseline for {}: `llama_model_quantize` from the same source, {} tensors \
             requantized to exactly the tier's types ({}).",
            b.gear, b.tensors_requantized, b.types
        );
    }
    let s = &r.speed;
    let _ = writeln!(
        o,
        "\n### Speed ({} interleaved rounds of {} greedy tokens, ratios per round)\n",
        s.rounds, s.tokens_per_round
    );
    let _ = writeln!(
        o,
        "| | gearbox tok/s | static llama.cpp tok/s | ratio median (min-max) |\n|---|---|---|---|"
    );
    for g in &s.gears {
        let _ = writeln!(
            o,
            "| {} gear | {:.1} | {:.1} | **{:.3}** ({:.3}-{:.3}) |",
            g.gear,
            g.gear_tokens_per_s.median,
            g.static_tokens_per_s.median,
            g.ratio.median,
            g.ratio.min,
            g.ratio.max
        );
    }
    let a = &s.auto;
    let _ = writeln!(
        o,
        "| auto vs harmonic mix of its pass fractions ({}) | {:.1} | {:.1} (predicted) | **{:.3}** ({:.3}-{:.3}) |",
        pct(a.pass_fraction),
        a.auto_tokens_per_s.median,
        a.predicted_tokens_per_s.median,
        a.ratio.median,
        a.ratio.min,
        a.ratio.max
    );
    let p = &s.prefill;
    let _ = writeln!(
        o,
        "| prefill, {} tokens, gearbox at high vs plain | {:.1} | {:.1} | **{:.3}** ({:.3}-{:.3}) |",
        p.prompt_tokens,
        p.gearbox_tokens_per_s.median,
        p.plain_tokens_per_s.median,
        p.ratio.median,
        p.ratio.min,
        p.ratio.max
    );
    let _ = writeln!(
        o,
        "\nAuto mode shifted {:.1} times per round.\n\n![speed ratios]({})\n",
        a.shifts_per_round, files[1].0
    );
    let _ = writeln!(o, "{}", super::lossless::markdown(&r.lossless));
    let q = &r.quality;
    let _ = writeln!(
        o,
        "### Quality on {} ({} positions: windows of {} tokens, the first {} as a prompt at high)\n",
        Path::new(&r.text_file).file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        q[0].positions,
        r.window,
        r.window_prompt
    );
    let _ = writeln!(
        o,
        "| lane | mean KL (nats) | p99 KL | top-1 agreement | perplexity | mean entropy (bits) | low / mid / high % | lockstep speed vs source |\n|---|---|---|---|---|---|---|---|"
    );
    for l in q {
        let gears = if l.policy == "plain" {
            "-".into()
        } else {
            pct(l.gear_fraction)
        };
        let th = l
            .thresholds_bits
            .map_or(String::new(), |(a, b)| format!(" ({a:.2}/{b:.2} bits)"));
        let _ = writeln!(
            o,
            "| {}{th} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} | {gears} | {:.3} |",
            l.name,
            l.kl_mean,
            l.kl_p99,
            l.top1_agreement,
            l.perplexity,
            l.mean_entropy_bits,
            rel_speed(q, l)
        );
    }
    let _ = writeln!(o, "\n![frontier]({})\n", files[0].0);
    if !r.routers.is_empty() {
        let _ = writeln!(
            o,
            "**Does entropy pick the right positions?** Each auto lane against two routers with \
             its exact gear fractions, run in lockstep over the same text: *random* (positions \
             drawn at random, seeded) and *oracle* (low where the low tier's KL is smallest, \
             then mid where the mid tier's is, from the fixed lanes). Share of the oracle's gain \
             = (random − auto) / (random − oracle): 0 is no better than random, 1 as good as the \
             oracle.\n\n| auto lane | low / mid / high % | KL random | KL auto | KL oracle | share of the oracle's gain |\n|---|---|---|---|---|---|"
        );
        for c in &r.routers {
            let _ = writeln!(
                o,
                "| {} | {} | {:.4} | {:.4} | {:.4} | {} |",
                c.auto,
                pct(c.gear_fraction),
                c.random_kl,
                c.auto_kl,
                c.oracle_kl,
                c.share_of_oracle_gain
                    .map_or("-".into(), |g| format!("**{g:.2}**"))
            );
        }
        let _ = writeln!(o);
    }
    let dom = dominated(q);
    if dom.is_empty() {
        let _ = writeln!(
            o,
            "No auto setting is beaten on both speed and KL by a fixed tier.\n"
        );
    } else {
        for (a, f) in &dom {
            let _ = writeln!(
                o,
                "- **Negative:** {} (KL {:.4}, speed {:.3}) is dominated by {} (KL {:.4}, speed {:.3}).",
                a.name,
                a.kl_mean,
                rel_speed(q, a),
                f.name,
                f.kl_mean,
                rel_speed(q, f)
            );
        }
        let _ = writeln!(o);
    }
    let sep = &r.separation;
    let _ = writeln!(
        o,
        "### Prompt classes (auto, greedy, default thresholds)\n\n| class | mean entropy (bits) | low / mid / high % of tokens |\n|---|---|---|\n| trivial ({} prompts) | {:.3} | {} |\n| hard ({} prompts) | {:.3} | {} |\n\nHard / trivial entropy ratio: **{:.2}** (gearbx's target: > 2).\n",
        sep.trivial.len(),
        sep.trivial_mean_bits,
        pct(sep.trivial_token_fraction),
        sep.hard.len(),
        sep.hard_mean_bits,
        pct(sep.hard_token_fraction),
        sep.ratio
    );
    let _ = writeln!(
        o,
        "| prompt | tokens | mean entropy | low / mid / high % |\n|---|---|---|---|"
    );
    for p in sep.trivial.iter().chain(&sep.hard) {
        let _ = writeln!(
            o,
            "| {} | {} | {:.3} | {} |",
            p.prompt,
            p.tokens,
            p.mean_entropy_bits,
            pct(p.token_fraction)
        );
    }
    let _ = writeln!(
        o,
        "\n![timeline]({})\n\nTimeline prompt: \"{}\"\n",
        files[2].0, r.timeline.prompt
    );
}

/// Writes results.md, results.json and the charts into `out`; returns the files written.
pub fn write(
    reports: &[ModelReport],
    out: &Path,
    command: &str,
    machine: &str,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let mut written = Vec::new();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# gearbx measured: gears against static llama.cpp\n\nGenerated by `{command}` on {machine}. \
         Every speed figure is a ratio of runs interleaved in the same process; absolute tok/s \
         are from a noisy shared machine and only meaningful side by side. Quality lanes read the \
         same text token by token in lockstep; \"lockstep speed\" is each lane's single-token \
         decode rate in that run, relative to the source lane.\n"
    );
    for r in reports {
        let files = charts(r);
        for (name, body) in &files {
            let p = out.join(name);
            std::fs::write(&p, body)
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
            written.push(p);
        }
        model_section(&mut md, r, &files);
    }
    let p = out.join("results.md");
    std::fs::write(&p, md).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    written.push(p);
    let p = out.join("results.json");
    let json = serde_json::to_string_pretty(reports).expect("report serializes");
    std::fs::write(&p, json).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    written.push(p);
    Ok(written)
}
