//! Gears across processes through llama.cpp's RPC backend: two real gearbx-rpc-server processes
//! on 127.0.0.1 (CPU backends) take SmolLM2's layers; gearbx-run --rpc must give the tokens of
//! a single-process run at every fixed gear, shift in auto mode, report the tier bytes sent to
//! each server, and stop with one line and exit code 9 when a server is unreachable, killed or
//! stops answering mid-generation.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{gbx, run, run_json, stderr};

const PROMPT: &str = "Write one sentence about the sea.";

/// A gearbx-rpc-server child on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_gearbx-rpc-server"))
            .args(["-p", &port.to_string(), "-t", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting gearbx-rpc-server");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "server never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, port }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn endpoints(servers: &[&Server]) -> String {
    servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// 24 greedy tokens at `gear` with `extra` flags (`--rpc …`, or `-nr`: one process, no
/// repacked weights).
fn generate(gear: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "24",
        "--gear",
        gear,
        "-p",
        PROMPT,
    ];
    args.extend(extra);
    run_json(&args)
}

/// Bytes of tiers placed on each remote device, from `gears.tiers.memory`.
fn remote_tier_bytes(v: &serde_json::Value) -> Vec<(String, u64)> {
    v["gears"]["tiers"]["memory"]
        .as_array()
        .unwrap_or_else(|| panic!("no gears.tiers.memory: {v}"))
        .iter()
        .filter(|d| d["device"].as_str().unwrap().starts_with("RPC"))
        .map(|d| {
            (
                d["device"].as_str().unwrap().to_string(),
                d["need"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn fixed_gears_over_two_servers_give_the_single_process_tokens() {
    let (a, b) = (Server::start(), Server::start());
    let rpc = endpoints(&[&a, &b]);
    for gear in ["low", "mid", "high"] {
        // a CPU server never repacks weights: the single process computes the same way
        let local = generate(gear, &["-nr"]);
        let remote = generate(gear, &["--rpc", &rpc]);
        assert!(
            remote["generated_tokens"].as_u64().unwrap() >= 10,
            "{remote}"
        );
        assert_eq!(
            remote["text"], local["text"],
            "gear {gear}: remote and local differ"
        );
        // the tiers of the remote layers were built here and sent to both servers
        let sent = remote_tier_bytes(&remote);
        assert_eq!(sent.len(), 2, "tiers on both servers: {sent:?}");
        assert!(sent.iter().all(|(_, b)| *b > 1_000_000), "{sent:?}");
    }
}

#[test]
fn auto_mode_shifts_across_servers_as_in_one_process() {
    let (a, b) = (Server::start(), Server::start());
    let rpc = endpoints(&[&a, &b]);
    let local = generate("auto", &["-nr"]);
    let remote = generate("auto", &["--rpc", &rpc]);
    let shifts = remote["gears"]["shifts"].as_u64().unwrap();
    assert!(shifts > 0, "auto mode never shifted: {}", remote["gears"]);
    assert_eq!(remote["gears"]["shifts"], local["gears"]["shifts"]);
    assert_eq!(remote["text"], local["text"]);
}

/// Runs a long generation over `servers`, does `act` once text is streaming, and returns the
/// exit code and stderr, failing if the run does not end within `limit`.
fn interrupted_run(
    rpc: &str,
    extra: &[&str],
    act: impl FnOnce(),
    limit: Duration,
) -> (i32, String) {
    let mut c = gbx()
        .args([
            "smollm2:135m",
            "--temp",
            "0",
            "-n",
            "4000",
            "--gear",
            "auto",
            "-p",
            PROMPT,
        ])
        .args(["--rpc", rpc])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut first = [0u8; 16];
    out.read_exact(&mut first).expect("generation started");
    act();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            panic!("gearbx-run still running {limit:?} after the server went away");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn a_server_killed_mid_generation_ends_the_run_with_one_line_and_exit_9() {
    let (a, mut b) = (Server::start(), Server::start());
    let rpc = endpoints(&[&a, &b]);
    let (code, err) = interrupted_run(
        &rpc,
        &[],
        || {
            b.child.kill().unwrap();
            b.child.wait().unwrap();
        },
        Duration::from_secs(30),
    );
    assert_eq!(code, 9, "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("gearbx-run: error:") && last.contains("RPC server"),
        "{err}"
    );
}

#[test]
fn a_server_that_stops_answering_times_out() {
    let (a, b) = (Server::start(), Server::start());
    let rpc = endpoints(&[&a, &b]);
    let (code, err) = interrupted_run(
        &rpc,
        &["--rpc-timeout", "2"],
        || b.signal("-STOP"),
        Duration::from_secs(30),
    );
    b.signal("-CONT");
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("RPC server"), "{err}");
}

#[test]
fn unreachable_and_malformed_servers_are_refused_before_loading() {
    // a port nobody listens on
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = run(&[
        "smollm2:135m",
        "-n",
        "4",
        "--rpc",
        &format!("127.0.0.1:{port}"),
        "-p",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.contains(&format!("cannot reach the RPC server 127.0.0.1:{port}")),
        "{e}"
    );
    for bad in ["127.0.0.1", "127.0.0.1:0", "a:1,a:1", ""] {
        let o = run(&["smollm2:135m", "-n", "4", "--rpc", bad, "-p", "x"]);
        assert_eq!(o.status.code(), Some(2), "--rpc {bad:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--rpc"), "{}", stderr(&o));
    }
}

#[test]
fn the_server_refuses_a_taken_port_and_warns_off_loopback() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_gearbx-rpc-server"))
        .args(["-p", &port])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot listen on 127.0.0.1:"));
    drop(taken);
    let o = Command::new(env!("CARGO_BIN_EXE_gearbx-rpc-server"))
        .args(["-H", "0.0.0.0", "-p", &port, "-d", "NOPE0"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("warning: listening on 0.0.0.0") && e.contains("no authentication"),
        "{e}"
    );
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("no local device \"NOPE0\""), "{e}");
    let o = Command::new(env!("CARGO_BIN_EXE_gearbx-rpc-server"))
        .args(["-H", "localhost"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// Bytes of tiers on each remote device for a 4-token run with these extra flags.
fn tiers_by_device(rpc: &str, extra: &[&str]) -> Vec<(String, u64)> {
    let mut args = vec![
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "4",
        "--gear",
        "low",
        "-p",
        PROMPT,
    ];
    args.extend(["--rpc", rpc]);
    args.extend(extra);
    remote_tier_bytes(&run_json(&args))
}

#[test]
fn tensor_split_and_main_gpu_place_the_layers_as_llama_cpp_does() {
    let (a, b) = (Server::start(), Server::start());
    let rpc = endpoints(&[&a, &b]);
    // 3:1 puts about three times the layers (and their tiers) on RPC0
    let t = tiers_by_device(&rpc, &["-ts", "3,1"]);
    let (r0, r1) = (t[0].1 as f64, t[1].1 as f64);
    assert!(r0 / r1 > 2.0 && r0 / r1 < 4.5, "{t:?}");
    let t = tiers_by_device(&rpc, &["-ts", "1,3"]);
    assert!(t[1].1 > 2 * t[0].1, "{t:?}");
    // everything on the second GPU
    let t = tiers_by_device(&rpc, &["-sm", "none", "-mg", "1"]);
    assert!(
        t.iter().any(|(d, b)| d == "RPC1" && *b > 1_000_000),
        "{t:?}"
    );
    assert!(t.iter().all(|(d, b)| d == "RPC1" || *b == 0), "{t:?}");
    for (flags, says) in [
        (
            &["-mg", "2", "-sm", "none"][..],
            "--main-gpu 2: the GPUs are RPC0, RPC1",
        ),
        (&["-ts", "1,1,1"][..], "--tensor-split has 3 proportions"),
        (&["-sm", "row"][..], "--split-mode row needs CUDA"),
        (&["-ts", "1,-1"][..], "--tensor-split"),
    ] {
        let mut args = vec!["smollm2:135m", "-n", "2", "-p", "x", "--rpc", &rpc];
        args.extend(flags);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{flags:?}: {}", stderr(&o));
    }
}
