//! `gearbx-bench`: the measurement harness. Runs speed (against static llama.cpp models) and
//! quality (against the high tier, on real text) for each model and writes the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use gearbx::measure::{markdown, report};
use gearbx::store::{self, default_model, OllamaStore};

#[derive(Parser, Debug)]
#[command(
    name = "gearbx-bench",
    version,
    about = "Measure gears against static llama.cpp models: speed ratios, KL/top-1/perplexity on \
             real text, prompt-class entropy; writes results.md, results.json and SVG charts.",
    after_help = "Prepare the text first: python3 scripts/fetch-austen.py DIR (make report does \
                  it). Exit codes as gearbx-run's (0 ok, 2 usage, 3 not found, 4 bad model, 7 \
                  runtime)."
)]
struct Cli {
    /// Models (Ollama names or .gguf paths); default: the default model.
    #[arg(short, long = "model", value_name = "MODEL")]
    models: Vec<String>,

    /// Plain-text file to score (e.g. a prepared Austen novel).
    #[arg(long, value_name = "FILE")]
    text: PathBuf,

    /// Directory for results.md, results.json and the charts.
    #[arg(long, default_value = "docs", value_name = "DIR")]
    out: PathBuf,

    /// Scored positions per lane.
    #[arg(long, default_value_t = 512)]
    positions: usize,

    /// Tokens per text window (each starts with an empty KV cache).
    #[arg(long, default_value_t = 128)]
    window: usize,

    /// Leading tokens of each window decoded as a prompt at the high gear.
    #[arg(long, default_value_t = 16)]
    prompt: usize,

    /// Interleaved speed rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,

    /// Generated tokens per speed run.
    #[arg(long, default_value_t = 128)]
    tokens: usize,

    /// Auto-mode threshold multiples of the defaults, comma-separated.
    #[arg(long, default_value = "0.5,0.75,1,1.5,2,3", value_delimiter = ',')]
    sweep: Vec<f64>,

    /// Tokens per prompt-class generation and for the timeline.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,

    /// Lossless mode vs the high gear: windows of the text (48 tokens each) continued...
    #[arg(long, default_value_t = 8)]
    lossless_prompts: usize,

    /// ... by this many greedy tokens each (both runs of a window interleaved).
    #[arg(long, default_value_t = 256)]
    lossless_tokens: usize,

    /// CPU threads (default: all cores).
    #[arg(short, long, env = "GEARBX_THREADS")]
    threads: Option<usize>,

    /// Ollama store root.
    #[arg(
        long,
        env = "OLLAMA_MODELS",
        value_name = "DIR",
        hide_env_values = true
    )]
    ollama_models: Option<PathBuf>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores, CPU backend")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gearbx-bench: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: &Cli) -> gearbx::Result<()> {
    if cli.positions == 0
        || cli.rounds == 0
        || cli.tokens == 0
        || cli.sweep.is_empty()
        || cli.lossless_prompts == 0
        || cli.lossless_tokens == 0
    {
        return Err(gearbx::Error::InvalidParam(
            "--positions, --rounds, --tokens, --sweep, --lossless-prompts and --lossless-tokens \
             must be non-empty"
                .into(),
        ));
    }
    if !cli.text.is_file() {
        return Err(gearbx::Error::FileNotFound(cli.text.clone()));
    }
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let store = match &cli.ollama_models {
        Some(d) => OllamaStore::new(d.clone()),
        None => OllamaStore::from_env()?,
    };
    let opts = report::ReportOptions {
        text: cli.text.clone(),
        positions: cli.positions,
        window: cli.window,
        prompt: cli.prompt,
        rounds: cli.rounds,
        speed_tokens: cli.tokens,
        sweep: cli.sweep.clone(),
        threads,
        cache_dir: default_model::cache_dir()?,
        separation_tokens: cli.gen_tokens,
        timeline_tokens: cli.gen_tokens * 2,
        lossless_prompts: cli.lossless_prompts,
        lossless_tokens: cli.lossless_tokens,
    };
    let names: Vec<Option<&str>> = if cli.models.is_empty() {
        vec![None]
    } else {
        cli.models.iter().map(|m| Some(m.as_str())).collect()
    };
    let t0 = Instant::now();
    let mut reports = Vec::new();
    for name in names {
        let m = store::resolve(name, &store, true)?;
        eprintln!("gearbx-bench: {}", m.path.display());
        let r = report::run(&m, &opts, |s| {
            eprintln!("  [{:>5.0} s] {s}", t0.elapsed().as_secs_f64())
        })?;
        reports.push(r);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let files = markdown::write(&reports, &cli.out, &command, &machine())?;
    for f in files {
        println!("{}", f.display());
    }
    eprintln!("gearbx-bench: done in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
