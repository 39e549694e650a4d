//! gearbx-serve end to end on the real SmolLM2 in a real Ollama-layout store: the real `ollama`
//! and `openai` Python packages (pinned in tests/requirements.txt, installed into
//! target/tmp/pyclients), curl for the raw NDJSON and SSE framing, bad input, a bounded load
//! test, client disconnects and shutdown.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::fixture;
use gearbx::store::default_model;

const MODEL: &str = "smollm2:135m";

fn tmp() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf()
}

/// A running gearbx-serve on a free port; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut args = vec![MODEL, "--port", "0"];
        args.extend_from_slice(extra);
        Self::launch(&args)
    }

    fn launch(args: &[&str]) -> Self {
        let f = fixture();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gearbx-serve"))
            .env("OLLAMA_MODELS", f.store.path())
            .env("GEARBX_CACHE_DIR", default_model::cache_dir().unwrap())
            .env("GEARBX_TIER_CACHE", tmp().join("tier-cache"))
            .env("GEARBX_THREADS", "1")
            .env_remove("GEARBX_API_KEY")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gearbx-serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("http://") {
                    let url = line[i..].split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(url);
                }
                eprintln!("[server] {line}");
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("gearbx-serve did not start listening");
        Self { child, url }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pinned client packages, installed once.
fn pyclients() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let req = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/requirements.txt");
        let dir = tmp().join("pyclients");
        let marker = dir.join(".installed");
        let want = std::fs::read_to_string(&req).unwrap();
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
            let st = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("--target")
                .arg(&dir)
                .arg("-r")
                .arg(&req)
                .status()
                .expect("python3 -m pip");
            assert!(st.success(), "installing the client packages");
            std::fs::write(&marker, want).unwrap();
        }
        dir
    })
}

fn python(script: &str, args: &[&str]) -> Output {
    Command::new("python3")
        .env("PYTHONPATH", pyclients())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .arg(script)
        .args(args)
        .output()
        .expect("python3")
}

fn curl(args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// The JSON objects of an NDJSON body, one per line.
fn ndjson(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn the_real_ollama_and_openai_clients_work() {
    let s = Server::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py");
    let o = python(script.to_str().unwrap(), &[&s.url, MODEL]);
    assert!(
        o.status.success(),
        "clients.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k}: {v}"))
            .to_string()
    };
    assert!(
        v["tags"].as_array().unwrap().iter().any(|t| t == MODEL),
        "{v}"
    );
    assert_eq!(v["show_family"], "llama");
    // Greedy with a seed: the same text twice, streamed or not.
    let g = &v["generate"];
    assert!(!g[0].as_str().unwrap().is_empty());
    assert_eq!(g[0], g[1], "reproducible");
    assert_eq!(text("generate_stream"), g[0].as_str().unwrap());
    assert!(v["generate_eval_count"].as_u64().unwrap() > 0);
    assert!(["stop", "length"].contains(&text("generate_done_reason").as_str()));
    assert!(!text("chat").is_empty());
    assert_eq!(text("chat_role"), "assistant");
    assert_eq!(text("chat_stream"), text("chat"));
    assert!(!text("chat_turn2").is_empty());
    // Stop strings cut the text before them.
    assert!(text("stop").contains(" 4, 5,"), "{}", text("stop"));
    assert!(!text("stop").contains(" 6"), "{}", text("stop"));
    assert_eq!(v["unknown_model"], 404);
    // OpenAI's API gives the same greedy reply as Ollama's chat.
    assert!(v["models"].as_array().unwrap().iter().any(|m| m == MODEL));
    assert_eq!(text("oa_chat"), text("chat"));
    assert_eq!(text("oa_chat_stream"), text("oa_chat"));
    assert!(v["oa_usage"].as_u64().unwrap() > 0);
    let tele = v["oa_telemetry"].as_array().unwrap();
    assert!(tele
        .iter()
        .any(|t| t["gear"].is_string() && t["entropy_bits"].is_number()));
    assert!(
        tele.iter().any(|t| t["token_fraction"].is_object()),
        "a summary chunk"
    );
    assert!(!text("oa_completion").is_empty());
    assert_eq!(v["oa_bad_top_p"], 400);
    // Log-probabilities (of the model's distribution, before the repeat penalty that shapes
    // the draw): one entry per token, three alternatives each, most likely first, the drawn
    // token's value where it is among them.
    let lps = v["oa_logprobs"].as_array().unwrap();
    assert_eq!(lps.len() as u64, v["oa_logprobs_tokens"].as_u64().unwrap());
    let mut first_is_top = 0;
    for e in lps {
        let top = e["top"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        let lp = e["logprob"].as_f64().unwrap();
        let tops: Vec<f64> = top.iter().map(|t| t[1].as_f64().unwrap()).collect();
        assert!(
            tops.windows(2).all(|w| w[0] >= w[1]) && tops[0] <= 0.0,
            "{e}"
        );
        assert!(lp <= tops[0] + 1e-6, "{e}");
        if let Some(t) = top.iter().find(|t| t[0] == e["token"]) {
            assert!((t[1].as_f64().unwrap() - lp).abs() < 1e-6, "{e}");
        }
        first_is_top += usize::from(top[0][0] == e["token"]);
    }
    assert!(
        first_is_top * 2 >= lps.len(),
        "greedy mostly draws the top token: {lps:?}"
    );
}

#[test]
fn curl_sees_ndjson_and_sse_framing() {
    let s = Server::start(&[]);
    let body = format!(
        r#"{{"model":"{MODEL}","prompt":"Name a colour.","options":{{"temperature":0,"num_predict":6}}}}"#
    );
    let (code, out) = curl(&[&format!("{}/api/generate", s.url), "-d", &body]);
    assert_eq!(code, 200);
    let lines = ndjson(&out);
    let (last, pieces) = lines.split_last().unwrap();
    assert!(!pieces.is_empty());
    assert!(pieces
        .iter()
        .all(|p| p["done"] == false && p["gearbx"]["gear"].is_string()));
    assert_eq!(last["done"], true);
    assert!(last["eval_duration"].as_u64().unwrap() > 0);
    assert!(last["gearbx"]["token_fraction"].is_object());

    let body = format!(
        r#"{{"model":"{MODEL}","stream":true,"max_tokens":6,"temperature":0,"messages":[{{"role":"user","content":"Hi"}}]}}"#
    );
    let (code, out) = curl(&[
        &format!("{}/v1/chat/completions", s.url),
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
    ]);
    assert_eq!(code, 200);
    let events: Vec<&str> = out
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{out}");
    for e in &events[..events.len() - 1] {
        let json = e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
    }
}

#[test]
fn bad_input_gets_a_json_error_and_the_key_is_required() {
    let s = Server::start(&["--api-key", "sekrit-key-123", "--max-body", "4096"]);
    let gen = format!("{}/api/generate", s.url);
    let auth = "Authorization: Bearer sekrit-key-123";
    let (code, out) = curl(&[&gen, "-d", "{}"]);
    assert_eq!(code, 401, "{out}");
    assert!(out.contains("\"error\""));
    let (code, _) = curl(&[
        &format!("{}/api/tags", s.url),
        "-H",
        "Authorization: Bearer wrong-key-1",
    ]);
    assert_eq!(code, 401);
    let cases = [
        ("{not json", 400),
        (r#"{"model": 5, "prompt": "hi"}"#, 400),
        (r#"{"model": "nope:1b", "prompt": "hi"}"#, 404),
        (
            r#"{"model": "smollm2:135m", "prompt": "hi", "options": {"top_p": 7}}"#,
            400,
        ),
        (
            r#"{"model": "smollm2:135m", "prompt": "hi", "options": {"seed": 99999999999}}"#,
            400,
        ),
        (
            r#"{"model": "smollm2:135m", "prompt": "hi", "options": {"repeat_last_n": -9}}"#,
            400,
        ),
    ];
    for (body, want) in cases {
        let (code, out) = curl(&[&gen, "-H", auth, "-d", body]);
        assert_eq!(code, want, "{body}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
        assert!(v["error"].is_string(), "{body}: {out}");
    }
    // Too long a prompt for the context: 400, in OpenAI's shape on /v1.
    let long = "word ".repeat(5000);
    let body = format!(r#"{{"model":"{MODEL}","prompt":"{long}"}}"#);
    let (code, out) = curl(&[
        &format!("{}/v1/completions", s.url),
        "-H",
        auth,
        "-d",
        &body,
    ]);
    assert_eq!(code, 413, "over --max-body: {out}");
    let long = "word ".repeat(700);
    let body = format!(r#"{{"model":"{MODEL}","prompt":"{long}"}}"#);
    let s2 = Server::start(&["-c", "256"]);
    let (code, out) = curl(&[&format!("{}/v1/completions", s2.url), "-d", &body]);
    assert_eq!(code, 400, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("context"),
        "{out}"
    );
    // Also when streamed (Ollama's default): refused before the stream starts.
    let body = format!(r#"{{"model":"{MODEL}","prompt":"{long}"}}"#);
    let (code, out) = curl(&[&format!("{}/api/generate", s2.url), "-d", &body]);
    assert_eq!(code, 400, "{out}");
    let body = format!(
        r#"{{"model":"{MODEL}","stream":true,"logprobs":true,"top_logprobs":50,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let (code, out) = curl(&[&format!("{}/v1/chat/completions", s2.url), "-d", &body]);
    assert_eq!(code, 400, "{out}");
    // Ollama's names: "smollm2:135m" is also "library/smollm2:135m"; an empty chat loads.
    let body = r#"{"model":"library/smollm2:135m","messages":[]}"#;
    let (code, out) = curl(&[&format!("{}/api/chat", s2.url), "-d", body]);
    assert_eq!(code, 200, "{out}");
    assert!(out.contains(r#""done_reason":"load""#), "{out}");
    // With the key, a good request works.
    let (code, _) = curl(&[&format!("{}/api/version", s.url), "-H", auth]);
    assert_eq!(code, 200);
}

/// 32 clients x 4 requests against one session and a queue of 8: every request is answered
/// in full or refused with 503, none hangs, memory stays flat, the server lives on.
#[test]
fn load_of_32_clients_gets_answers_or_503_and_nothing_hangs() {
    let s = Server::start(&["--queue", "8"]);
    let warm = curl(&[
        &format!("{}/api/generate", s.url),
        "-d",
        &format!(r#"{{"model":"{MODEL}","prompt":"hi","options":{{"num_predict":4}}}}"#),
    ]);
    assert_eq!(warm.0, 200);
    let rss0 = s.rss_kb();
    let script = r#"
import json, sys, threading, urllib.request, urllib.error
url, model = sys.argv[1], sys.argv[2]
codes, lock = [], threading.Lock()
def client(i):
    for j in range(4):
        body = json.dumps({"model": model, "prompt": f"Say {i} {j}.", "stream": False,
                           "options": {"num_predict": 8, "seed": i}}).encode()
        req = urllib.request.Request(url + "/api/generate", data=body)
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                v = json.load(r)
                code = 200 if v.get("done") else -1
        except urllib.error.HTTPError as e:
            json.load(e)
            code = e.code
        with lock:
            codes.append(code)
ts = [threading.Thread(target=client, args=(i,)) for i in range(32)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(codes))
"#;
    let path = tmp().join("load.py");
    std::fs::write(&path, script).unwrap();
    let t = Instant::now();
    let o = python(path.to_str().unwrap(), &[&s.url, MODEL]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let codes: Vec<i64> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(codes.len(), 128);
    assert!(codes.iter().all(|&c| c == 200 || c == 503), "{codes:?}");
    assert!(codes.contains(&200) && codes.contains(&503), "{codes:?}");
    assert!(t.elapsed() < Duration::from_secs(600));
    let rss1 = s.rss_kb();
    assert!(rss1 < rss0 + 64 * 1024, "RSS {rss0} kB -> {rss1} kB");
    let (code, _) = curl(&[&format!("{}/api/version", s.url)]);
    assert_eq!(code, 200, "alive after the load");
}

/// A client that goes away cancels its generation (the one session is free again at once),
/// and SIGTERM stops the server with exit 0.
#[test]
fn a_disconnect_cancels_and_sigterm_exits_cleanly() {
    let mut s = Server::start(&["--queue", "0", "-c", "4096"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let body = format!(
        r#"{{"model":"{MODEL}","prompt":"Count to ten thousand: 1, 2, 3,","raw":true,"options":{{"num_predict":3500,"temperature":0}}}}"#
    );
    write!(
        conn,
        "POST /api/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = conn.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));
    drop(conn);
    // Cancelled: the session takes a new request within a few seconds (3,500 tokens would
    // take far longer), where --queue 0 would answer 503 while it is busy.
    let t = Instant::now();
    let ok = loop {
        let (code, _) = curl(&[
            &format!("{}/api/generate", s.url),
            "-d",
            &format!(
                r#"{{"model":"{MODEL}","prompt":"hi","stream":false,"options":{{"num_predict":2}}}}"#
            ),
        ]);
        if code == 200 {
            break true;
        }
        assert_eq!(code, 503);
        if t.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ok, "the disconnected generation kept the session busy");
    s.signal("-TERM");
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
}

/// The router in front of a second gearbx-serve: each prompt goes to its class's model (the
/// three names are the one upstream model, spelt three ways Ollama's names allow), tokens come
/// back in both APIs with the routed gear and a top-5 entropy (at most log2(6) bits).
#[test]
fn the_router_sends_each_prompt_to_its_class_upstream() {
    let up = Server::start(&[]);
    let low = "smollm2:135m";
    let mid = "library/smollm2:135m";
    let high = "registry.ollama.ai/library/smollm2:135m";
    let r = Server::launch(&[
        "--port", "0", "--route", &up.url, "--low", low, "--mid", mid, "--high", high,
    ]);
    let ask = |prompt: &str| {
        let body = format!(
            r#"{{"model":"any","prompt":"{prompt}","options":{{"temperature":0,"num_predict":12}}}}"#
        );
        let (code, out) = curl(&[&format!("{}/api/generate", r.url), "-d", &body]);
        assert_eq!(code, 200, "{out}");
        let lines = ndjson(&out);
        let (last, pieces) = lines.split_last().unwrap();
        assert_eq!(last["done"], true, "{out}");
        assert!(!pieces.is_empty(), "{out}");
        for p in pieces {
            let h = p["gearbx"]["entropy_bits"].as_f64().unwrap();
            assert!((0.0..=6f64.log2() + 1e-6).contains(&h), "{p}");
        }
        pieces[0]["gearbx"]["gear"].as_str().unwrap().to_string()
    };
    assert_eq!(ask("hi"), "low");
    assert_eq!(
        ask("Write a Python function that parses a JSON file, then explain its complexity."),
        "high"
    );
    // OpenAI's API through the router, naming one of the three models: that one is used.
    let body = format!(
        r#"{{"model":"{mid}","stream":false,"max_tokens":8,"temperature":0,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let (code, out) = curl(&[&format!("{}/v1/chat/completions", r.url), "-d", &body]);
    assert_eq!(code, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    let (code, out) = curl(&[&format!("{}/api/tags", r.url)]);
    assert_eq!(code, 200);
    assert!(out.contains(high), "{out}");
    // An upstream that refuses (no such model there) is an error, not a hang.
    let bad = Server::launch(&[
        "--port", "0", "--route", &up.url, "--low", "nope:1b", "--mid", "nope:1b", "--high",
        "nope:1b",
    ]);
    let body = r#"{"model":"x","prompt":"hi","stream":false}"#;
    let (code, out) = curl(&[&format!("{}/api/generate", bad.url), "-d", body]);
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("upstream"), "{out}");
}
