//! The C API from C: the programs under tests/c, compiled with the system C compiler against
//! the installed libraries (scripts/install-lib.sh, found through pkg-config) and run on the
//! real model. engine.c uses the engine API through libgearbx.a; frontend.c is a llama.cpp
//! frontend with its own llama.cpp (the static libraries of the llama.cpp build gearbx was
//! built against, standing in for the host's) that attaches gearbx through libgearbx-host.a;
//! mmv_twin.c checks the scalar twin of the CUDA decode products against ggml's dequantization.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

struct Installed {
    prefix: PathBuf,
    /// The llama.cpp install (include/, lib/) the frontend links as "its own".
    llama: PathBuf,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmp() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi")
}

/// Builds and installs the libraries once per test binary.
fn installed() -> &'static Installed {
    static I: OnceLock<Installed> = OnceLock::new();
    I.get_or_init(|| {
        let prefix = tmp().join("prefix");
        let _ = std::fs::remove_dir_all(&prefix);
        let o = Command::new("bash")
            .arg(root().join("scripts/install-lib.sh"))
            .arg(&prefix)
            .output()
            .expect("running scripts/install-lib.sh");
        assert!(o.status.success(), "install-lib.sh failed: {}", stderr(&o));
        // Where cargo built llama.cpp (the same query install-lib.sh makes).
        let o = Command::new(env!("CARGO"))
            .args(["build", "--release", "--lib", "--message-format=json"])
            .current_dir(root())
            .output()
            .unwrap();
        let llama = stdout(&o)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|m| {
                m["reason"] == "build-script-executed"
                    && m["package_id"]
                        .as_str()
                        .is_some_and(|p| p.contains("gearbx-llama-sys"))
            })
            .and_then(|m| m["out_dir"].as_str().map(PathBuf::from))
            .expect("gearbx-llama-sys out_dir");
        Installed { prefix, llama }
    })
}

fn pkg_config(args: &[&str]) -> Vec<String> {
    let o = Command::new("pkg-config")
        .args(args)
        .env("PKG_CONFIG_PATH", installed().prefix.join("lib/pkgconfig"))
        .output()
        .expect("pkg-config (scripts/deps.sh installs it)");
    assert!(o.status.success(), "pkg-config {args:?}: {}", stderr(&o));
    stdout(&o).split_whitespace().map(String::from).collect()
}

/// Compiles tests/c/NAME.c with warnings as errors; `extra` goes after the pkg-config flags.
fn compile(name: &str, pkg: &str, pre: &[String], extra: &[String]) -> PathBuf {
    let out = tmp().join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = Command::new(&cc)
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-pthread",
        ])
        .args(pre)
        .arg(root().join(format!("tests/c/{name}.c")))
        .args(pkg_config(&["--cflags", "--libs", pkg]))
        .args(extra)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("running the C compiler");
    assert!(o.status.success(), "{cc} {name}.c failed:\n{}", stderr(&o));
    out
}

fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= missing in:\n{out}"))
}

fn between<'a>(out: &'a str, tag: &str) -> &'a str {
    let start = out.find(&format!("{tag}<<")).expect(tag) + tag.len() + 2;
    let end = out.find(&format!(">>{tag}")).expect(tag);
    &out[start..end]
}

fn run_checked(mut c: Command, what: &str) -> (Output, String) {
    let o = c.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\nstdout:\n{out}\nstderr:\n{}",
        o.status,
        stderr(&o)
    );
    (o, out)
}

const PROMPT: &str = "Write one sentence about the sea.";

#[test]
fn c_program_generates_through_the_engine_api_of_the_static_library() {
    let f = fixture();
    let exe = compile("engine", "gearbx", &[], &[]);
    // The model with a NaN norm epsilon, which llama.cpp asserts on (vendor patch 0004).
    let bad = tmp().join("nan-epsilon.gguf");
    common::gguf_edit::rewrite(
        &f.model,
        &bad,
        |k, v| {
            Some(if k == "llama.attention.layer_norm_rms_epsilon" {
                common::gguf_edit::f32v(f32::NAN)
            } else {
                v
            })
        },
        vec![],
    );
    let mut c = Command::new(&exe);
    c.args([
        f.store.path().to_str().unwrap(),
        "smollm2:135m",
        PROMPT,
        "24",
        bad.to_str().unwrap(),
    ])
    .env(
        "GEARBX_TIER_CACHE",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("tier-cache"),
    );
    let (_, out) = run_checked(c, "tests/c/engine.c");
    assert_eq!(out.lines().last(), Some("OK"));
    // The same generation through gearbx-run: same model, store defaults, greedy, auto gears.
    let cli = run_json(&[
        "smollm2:135m",
        "--temp",
        "0",
        "--seed",
        "1",
        "-n",
        "24",
        "-p",
        PROMPT,
    ]);
    let text = between(&out, "TEXT");
    assert_eq!(
        text,
        cli["text"].as_str().unwrap(),
        "engine API text != gearbx-run text"
    );
    assert!(!text.trim().is_empty());
    let n: usize = value(&out, "TOKENS").parse().unwrap();
    assert_eq!(n as u64, cli["generated_tokens"].as_u64().unwrap());
    let fractions = &cli["gears"]["token_fraction"];
    for k in ["LOW", "MID", "HIGH"] {
        let got: f64 = value(&out, k).parse().unwrap();
        let want = fractions[k.to_lowercase()].as_f64().unwrap() * n as f64;
        assert!((got - want).abs() < 0.5, "{k}: C {got}, CLI {want}");
    }
    assert!(value(&out, "CANCELLED_AFTER").parse::<u32>().unwrap() >= 5);
}

#[test]
fn c_frontend_attaches_to_its_own_llama_cpp_and_gears_shift() {
    let f = fixture();
    let inst = installed();
    let llama_lib = inst.llama.join("lib");
    let exe = compile(
        "frontend",
        "gearbx-host",
        &[format!("-I{}", inst.llama.join("include").display())],
        // The frontend's own llama.cpp, after gearbx-host (static link order).
        &[
            format!("-L{}", llama_lib.display()),
            "-lllama".into(),
            "-lggml".into(),
            "-lggml-cpu".into(),
            "-lggml-rpc".into(),
            "-lggml-base".into(),
            "-lstdc++".into(),
            "-lm".into(),
        ],
    );
    // One copy of llama.cpp in the program: gearbx-host defines no llama_/ggml_ symbols.
    let nm = Command::new("nm")
        .args(["--defined-only", "-g"])
        .arg(inst.prefix.join("lib/libgearbx-host.a"))
        .output()
        .unwrap();
    let defined = stdout(&nm);
    assert!(
        !defined
            .lines()
            .any(|l| l.contains(" T llama_") || l.contains(" T ggml_")),
        "libgearbx-host.a still holds llama.cpp"
    );
    let mut c = Command::new(&exe);
    c.args([f.model.to_str().unwrap(), "The capital of France is", "48"])
        .env(
            "GEARBX_TIER_CACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("tier-cache"),
        );
    let (o, out) = run_checked(c, "tests/c/frontend.c");
    assert_eq!(
        value(&out, "RESTORED"),
        "1",
        "detach did not restore the model"
    );
    assert!(value(&out, "MISMATCH_ERROR").contains("sizeof(llama_context_params)"));
    let (low, mid, high): (u32, u32, u32) = (
        value(&out, "LOW").parse().unwrap(),
        value(&out, "MID").parse().unwrap(),
        value(&out, "HIGH").parse().unwrap(),
    );
    let shifts: u32 = value(&out, "SHIFTS").parse().unwrap();
    let tokens: u32 = value(&out, "TOKENS").parse().unwrap();
    assert!(
        shifts >= 1 && low + mid > 0,
        "no shifting: {out}\n{}",
        stderr(&o)
    );
    assert_eq!(
        low + mid + high,
        value(&out, "OBSERVED").parse::<u32>().unwrap()
    );
    assert!(tokens >= 8, "{out}");
    // The first token comes from the prompt's decode at the high gear: the plain model's.
    assert_eq!(value(&out, "FIRST_TOKEN_EQUAL"), "1");
    // Coherent text: words, not byte soup.
    let text = between(&out, "GEARS");
    let words: Vec<&str> = text.split_whitespace().collect();
    let ok_chars = text
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace() || ".,;:'\"!?()-".contains(*c))
        .count();
    assert!(words.len() >= 5, "{text:?}");
    assert!(ok_chars * 10 >= text.chars().count() * 9, "{text:?}");
    assert_eq!(between(&out, "PLAIN"), between(&out, "AFTER"));
}

#[test]
fn shared_library_exports_exactly_the_functions_of_the_header() {
    let inst = installed();
    let header = std::fs::read_to_string(root().join("include/gearbx.h")).unwrap();
    // Declared functions: "gearbx_xxx(" at the start of a declaration line.
    let mut declared: Vec<String> = header
        .lines()
        .filter(|l| !l.starts_with("//") && !l.starts_with(' ') && !l.starts_with("static"))
        .filter_map(|l| {
            // The identifier directly followed by "(" is the function's name.
            let open = l.find('(')?;
            let name = l[..open]
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()?;
            name.starts_with("gearbx_").then(|| name.to_string())
        })
        .collect();
    declared.sort();
    declared.dedup();
    let o = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(inst.prefix.join("lib/libgearbx.so"))
        .output()
        .unwrap();
    let mut exported: Vec<String> = stdout(&o)
        .lines()
        .filter(|l| l.contains(" T "))
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    exported.sort();
    assert!(declared.len() >= 20, "{declared:?}");
    assert_eq!(
        exported, declared,
        "libgearbx.so exports != gearbx.h declares"
    );
}

#[test]
fn c_twin_of_the_cuda_decode_products_dequantizes_as_ggml() {
    // The CUDA kernels are checked against this twin on the GPU machine (tests/gpu/mmv_test.cu);
    // here the twin itself against ggml's CPU dequantization, Q4_K's 6-bit scales included.
    let inst = installed();
    let exe = compile(
        "mmv_twin",
        "gearbx-host",
        &[
            format!("-I{}", inst.llama.join("include").display()),
            format!("-I{}", root().join("csrc/generic").display()),
        ],
        &[
            format!("-L{}", inst.llama.join("lib").display()),
            "-lggml-base".into(),
            "-lstdc++".into(),
            "-lm".into(),
        ],
    );
    let (_, out) = run_checked(Command::new(&exe), "tests/c/mmv_twin.c");
    assert!(out.ends_with("PASS\n"), "{out}");
    for t in ["2:", "8:", "12:"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{t} 0 of 4096"))),
            "type {t} missing or off: {out}"
        );
    }
}
