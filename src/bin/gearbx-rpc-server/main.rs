//! gearbx-rpc-server: serves this machine's devices to gearbx-run/gearbx-serve `--rpc` (or
//! llama.cpp's `--rpc`) through llama.cpp's RPC backend, as llama.cpp's rpc-server does, with
//! its flags. Runs until killed.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use clap::Parser;
use gearbx::llama::rpc;

const AFTER: &str = "\
The RPC protocol has no authentication and no encryption: whoever reaches the port can use this
machine's devices and memory. Listen on 127.0.0.1 (the default) or a network you trust.

Exit codes:
  2    invalid command line
  9    could not listen on the address (taken, or not this machine's)";

/// Serve this machine's devices (every GPU, else the CPU) to gearbx-run --rpc.
#[derive(Parser, Debug)]
#[command(name = "gearbx-rpc-server", version, after_help = AFTER)]
struct Cli {
    /// IPv4 address to listen on.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    host: Ipv4Addr,

    /// Port to listen on.
    #[arg(short, long, default_value_t = rpc::DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,

    /// Devices to serve, comma-separated (names as `gearbx-run --version` lists backends,
    /// e.g. CUDA0,CUDA1 or CPU); default: every GPU, or the CPU when there is none.
    #[arg(short, long, value_delimiter = ',', value_name = "DEV")]
    device: Vec<String>,

    /// CPU threads for the CPU backend (default: all cores).
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,

    /// Folder where large tensors sent by clients are kept, so a client that sends the same
    /// weights again sends only their hashes (default: no cache).
    #[arg(short, long, value_name = "DIR")]
    cache: Option<std::path::PathBuf>,

    /// llama.cpp's log on stderr (with GGML_RPC_DEBUG=1 also every command served).
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli: Cli = match gearbx::args::parse() {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    gearbx::llama::set_verbose(cli.verbose);
    if !cli.host.is_loopback() {
        eprintln!(
            "gearbx-rpc-server: warning: listening on {}: the RPC protocol has no \
             authentication; anyone who reaches this port can use this machine's devices",
            cli.host
        );
    }
    let threads = cli.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t as usize,
    );
    eprintln!(
        "gearbx-rpc-server: serving {} on {}:{} ({threads} CPU threads{})",
        if cli.device.is_empty() {
            "every GPU, else the CPU".to_string()
        } else {
            cli.device.join(", ")
        },
        cli.host,
        cli.port,
        cli.cache
            .as_ref()
            .map_or(String::new(), |c| format!(", cache {}", c.display()))
    );
    match rpc::serve(
        cli.host,
        cli.port,
        &cli.device,
        threads,
        cli.cache.as_deref(),
    ) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("gearbx-rpc-server: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
