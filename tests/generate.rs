//! End-to-end generation through the real store code, the real llama.cpp and the real
//! SmolLM2-135M: determinism, sampling, chat template, stop conditions, JSON, Ctrl-C.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const Q: &str = "What is the capital of France?";

#[test]
fn greedy_output_is_identical_across_runs() {
    let a = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "24",
        "-p",
        "Write a sentence about the sea.",
    ]);
    let b = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "24",
        "-p",
        "Write a sentence about the sea.",
    ]);
    assert!(!a["text"].as_str().unwrap().trim().is_empty());
    assert_eq!(a["text"], b["text"]);
}

#[test]
fn seeded_sampling_is_reproducible_and_the_seed_matters() {
    let args = |seed: &'static str| {
        [
            "smollm2:135m",
            "--temp",
            "1.0",
            "--seed",
            seed,
            "-n",
            "32",
            "--raw",
            "-p",
            "Once upon a time",
        ]
    };
    let a = run_json(&args("42"));
    let b = run_json(&args("42"));
    let c = run_json(&args("7"));
    assert_eq!(a["text"], b["text"]);
    assert_eq!(a["seed"], 42);
    assert_ne!(
        a["text"], c["text"],
        "different seeds should give different samples"
    );
}

#[test]
fn chat_template_and_store_system_prompt_are_applied() {
    let o = run(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "1",
        "-v",
        "-p",
        "Hello there",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("<|im_start|>system\n{SYSTEM}<|im_end|>")),
        "system layer missing:\n{err}"
    );
    assert!(
        err.contains("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant"),
        "{err}"
    );

    let o = run(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "1",
        "-v",
        "--system",
        "Be brief.",
        "-p",
        "Hello",
    ]);
    assert!(stderr(&o).contains("<|im_start|>system\nBe brief.<|im_end|>"));
    assert!(
        !stderr(&o).contains(SYSTEM),
        "--system must replace the store's system prompt"
    );

    let o = run(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "1",
        "-v",
        "--raw",
        "-p",
        "Hello",
    ]);
    assert!(
        stderr(&o).contains("tokens):\nHello\n"),
        "--raw must not apply the template: {}",
        stderr(&o)
    );
}

#[test]
fn stops_at_end_of_generation() {
    let v = run_json(&["smollm2:135m", "--temp", "0", "-n", "300", "-p", Q]);
    assert_eq!(v["stop_reason"], "eos");
    assert!(v["generated_tokens"].as_u64().unwrap() < 300);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
}

#[test]
fn stop_word_from_the_store_params_cuts_the_text() {
    // smollm2:stop has {"stop":"Paris","temperature":0}; the greedy answer contains "Paris".
    let v = run_json(&["smollm2:stop", "-n", "60", "-p", Q]);
    assert_eq!(v["stop_reason"], "stop_word", "{v}");
    assert_eq!(v["temperature"], 0.0);
    let text = v["text"].as_str().unwrap();
    assert!(!text.contains("Paris") && !text.is_empty(), "{text:?}");
    // --stop on the command line works the same way on the other tag.
    let v = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "60",
        "--stop",
        "Paris",
        "-p",
        Q,
    ]);
    assert_eq!(v["stop_reason"], "stop_word");
}

#[test]
fn json_is_well_formed() {
    let v = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "5",
        "-t",
        "1",
        "--raw",
        "-p",
        "One, two, three,",
    ]);
    assert_eq!(v["generated_tokens"], 5);
    assert_eq!(v["stop_reason"], "length");
    assert_eq!(v["threads"], 1);
    assert_eq!(v["model_name"], "smollm2:135m");
    assert!(v["model"].as_str().unwrap().contains("blobs/sha256-"));
    for k in [
        "prompt_tokens_per_s",
        "decode_tokens_per_s",
        "prompt_ms",
        "eval_ms",
        "mean_entropy_bits",
    ] {
        assert!(
            v[k].as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
            "{k} in {v}"
        );
    }
    assert!(v["prompt_tokens"].as_u64().unwrap() >= 4);
    // Per-gear telemetry is keyed by gear name; a gear with no single-token pass has no rate.
    let g = &v["gears"];
    let total: f64 = ["low", "mid", "high"]
        .iter()
        .map(|k| g["token_fraction"][k].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "{g}");
    for k in ["low", "mid", "high"] {
        let passes = g["passes"][k].as_u64().unwrap();
        let rate = &g["tokens_per_s"][k];
        assert_eq!(
            passes == 0,
            rate.is_null(),
            "{k}: {passes} passes, rate {rate}"
        );
        assert!(g["tiers"]["bytes"][k].as_u64().unwrap() > 0, "{g}");
    }
    // The memory plan: the tiers' bytes per device, with that device's free memory.
    let mem = &g["tiers"]["memory"][0];
    assert_eq!(mem["device"], "CPU", "{g}");
    assert!(
        mem["need"].as_u64().unwrap() > 0 && mem["free"].as_u64().unwrap() > 0,
        "{g}"
    );
    assert_eq!(
        g["tiers"]["shared_tensors"], 180,
        "SmolLM2's Q4_0 shadows of low and mid"
    );
}

#[test]
fn gguf_path_default_model_and_store_agree() {
    let f = fixture();
    let args = ["--temp", "0", "-n", "12", "-p", "Name three colors."];
    let via_store = run_json(&[&["smollm2:135m", "--system", ""][..], &args].concat());
    let via_path = run_json(&[&[f.model.to_str().unwrap()][..], &args].concat());
    let via_default = run_json(&args);
    assert_eq!(via_store["text"], via_path["text"]);
    assert_eq!(via_path["text"], via_default["text"]);
    assert_eq!(
        via_default["model"].as_str().unwrap(),
        f.model.to_str().unwrap()
    );
}

#[test]
fn prompt_from_stdin_and_quoted_prompt_without_model() {
    let mut child = gbx()
        .args(["smollm2:135m", "--temp", "0", "-n", "10", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(Q.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let piped: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let direct = run_json(&["smollm2:135m", "--temp", "0", "-n", "10", Q]);
    assert_eq!(piped["text"], direct["text"]);
    // A quoted prompt in the model's place runs the default model.
    let default = run_json(&["--temp", "0", "-n", "10", "--system", "", Q]);
    assert!(default["model"]
        .as_str()
        .unwrap()
        .ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
}

#[test]
fn ctrl_c_stops_cleanly_and_prints_stats() {
    for (json, lossless) in [(false, false), (true, false), (false, true)] {
        let mut cmd = gbx();
        // --ignore-eos: generation runs until the context (2048) is full, long past the signal.
        cmd.args([
            "smollm2:135m",
            "--ignore-eos",
            "--temp",
            "0",
            "-n",
            "-1",
            "-c",
            "2048",
            "--raw",
            "-p",
            "1, 2, 3, 4, 5,",
        ]);
        if json {
            cmd.arg("--json");
        }
        if lossless {
            // Interrupted early: the first steps time drafting and probe exact widths.
            cmd.arg("--lossless");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if json {
            std::thread::sleep(Duration::from_millis(1500));
        } else {
            // Wait until text is streaming, then interrupt.
            let mut first = [0u8; 1];
            child
                .stdout
                .as_mut()
                .unwrap()
                .read_exact(&mut first)
                .unwrap();
        }
        let t = Instant::now();
        sigint(&child);
        let out = child.wait_with_output().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "did not stop promptly"
        );
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if json {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["stop_reason"], "interrupted");
        } else {
            assert!(String::from_utf8_lossy(&out.stderr).contains("stop: interrupted"));
        }
    }
}

#[test]
fn ignore_eos_generates_exactly_n_tokens() {
    // "Say hi." ends after a few tokens; with --ignore-eos it must run to -n.
    let short = run_json(&["smollm2:135m", "--temp", "0", "-n", "200", "Say hi."]);
    assert_eq!(short["stop_reason"], "eos");
    let n = short["generated_tokens"].as_u64().unwrap();
    assert!(n < 100, "{n}");
    for entropy in ["host", "backend"] {
        let v = run_json(&[
            "smollm2:135m",
            "--temp",
            "0",
            "-n",
            "120",
            "--ignore-eos",
            "--entropy",
            entropy,
            "Say hi.",
        ]);
        assert_eq!(v["stop_reason"], "length", "{entropy}");
        assert_eq!(v["generated_tokens"], 120, "{entropy}");
        assert!(v["mean_entropy_bits"].as_f64().unwrap().is_finite());
    }
}

/// Ctrl-C while the model loads or the tiers are built stops there: exit 130, no generation.
#[test]
fn ctrl_c_during_the_tier_build_stops_it() {
    let child = gbx()
        .args(["smollm2:135m", "--no-tier-cache", "-n", "4", "-p", "hi"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // After the handler is installed (the first thing gearbx-run does), before the tiers end.
    std::thread::sleep(Duration::from_millis(150));
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(out.stdout.is_empty(), "nothing generated");
}

/// Sends SIGINT (Ctrl-C) to `child`.
fn sigint(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The KV cache flags reach llama.cpp: the cache the sequence holds (llama.cpp's own
/// serialization) is of the types asked for, in the proportion their blocks say (q8_0 stores
/// 34 bytes per 32 values, f16 64), and `--json` reports it.
#[test]
fn kv_cache_types_as_llama_cpp_spells_them() {
    let q = "Name a colour.";
    let f16 = run_json(&["smollm2:135m", "--temp", "0", "-n", "12", q]);
    let q8 = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "12",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "-fa",
        "on",
        q,
    ]);
    let mixed = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "12",
        "--cache-type-k=q8_0",
        "-ctv=q4_0",
        q,
    ]);
    let kv = |v: &serde_json::Value| v["kv_cache"].clone();
    assert_eq!(kv(&f16)["type_k"], "f16");
    assert_eq!(kv(&q8)["type_v"], "q8_0");
    assert_eq!(kv(&mixed)["type_v"], "q4_0");
    assert_eq!(kv(&q8)["flash_attn"], "on");
    let per = |v: &serde_json::Value| kv(v)["bytes_per_token"].as_u64().unwrap();
    // SmolLM2: 30 layers, 3 KV heads of 64 for K and for V.
    assert_eq!(per(&f16), 30 * 2 * 3 * 64 * 2);
    assert_eq!(per(&q8) * 64, per(&f16) * 34);
    assert_eq!(per(&mixed), 30 * 3 * 64 / 32 * (34 + 18));
    for v in [&f16, &q8, &mixed] {
        let cells =
            v["prompt_tokens"].as_u64().unwrap() + v["generated_tokens"].as_u64().unwrap() - 1;
        let used = kv(v)["bytes_used"].as_u64().unwrap();
        assert!(
            used >= per(v) * cells && used <= per(v) * cells + (128 << 10),
            "{} bytes held for {cells} tokens of {} bytes: {v}",
            used,
            per(v)
        );
        assert_eq!(
            kv(v)["bytes_full"].as_u64().unwrap(),
            per(v) * v["n_ctx"].as_u64().unwrap()
        );
    }
}
