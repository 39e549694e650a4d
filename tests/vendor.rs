//! The vendored llama.cpp: the patch series in vendor/patches is what the built library was
//! made from, each patch's lines are in the compiled tree, and a patch that does not apply or
//! a source with the wrong checksum stops the build with a line that names the problem.

use std::path::{Path, PathBuf};
use std::process::Command;

use gearbx_llama_sys as sys;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn patch_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("vendor/patches"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".patch"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_patch_was_applied_in_order() {
    let names = patch_names();
    assert!(names.len() >= 2, "the series has the two ggml-cuda patches");
    assert_eq!(sys::PATCHES_APPLIED.split(';').collect::<Vec<_>>(), names);
    let pin = std::fs::read_to_string(root().join("vendor/llama.cpp.pin")).unwrap();
    let sha = sys::PRISTINE_SOURCE.split("sha256:").nth(1).unwrap();
    assert!(
        pin.contains(&format!("sha256 = {sha}")),
        "{}",
        sys::PRISTINE_SOURCE
    );
}

/// Every line a patch adds is in the file it patches, in the tree that was compiled.
#[test]
fn the_compiled_tree_holds_each_patch() {
    let tree = Path::new(sys::PATCHED_TREE);
    for name in patch_names() {
        let text = std::fs::read_to_string(root().join("vendor/patches").join(&name)).unwrap();
        let mut file = String::new();
        let mut added = 0;
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("+++ b/") {
                file = std::fs::read_to_string(tree.join(p))
                    .unwrap_or_else(|e| panic!("{name}: {p}: {e}"));
            } else if let Some(l) = line.strip_prefix('+') {
                if !l.trim().is_empty() {
                    assert!(file.contains(l), "{name}: line not in the tree: {l}");
                    added += 1;
                }
            }
        }
        assert!(added > 0, "{name} adds nothing");
    }
    // The entry points gearbx uses, exported by the patched header.
    let h = std::fs::read_to_string(tree.join("ggml/include/ggml-cuda.h")).unwrap();
    assert!(h.contains("void ggml_backend_cuda_set_graph_variant(uint64_t variant);"));
    assert!(h.contains("void ggml_backend_cuda_invalidate_graphs(void);"));
    assert!(h.contains("void ggml_backend_cuda_set_mmv_hook("));
    // The hook's graph variant bit is the one gearbx sets for its decode kernels, and
    // csrc/cuda/mmv.cu's copy of the scratch callback's type has the header's parameters.
    assert!(h.contains("#define GGML_CUDA_VARIANT_MMV_HOOK (1ull << 62)"));
    assert_eq!(gearbx::llama::cuda_graphs::DECODE_KERNELS, 1u64 << 62);
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(one_line(&h).contains(
        "typedef size_t (*ggml_cuda_mmv_hook_scratch_t)(int wtype, int64_t nrows, int64_t k, int64_t ncols, const struct ggml_cuda_mmv_hook_fusion * fusion);"
    ));
    let mmv =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/csrc/cuda/mmv.cu")).unwrap();
    assert!(one_line(&mmv).contains(
        "typedef size_t (*ggml_cuda_mmv_hook_scratch_t)(int, int64_t, int64_t, int64_t, const struct ggml_cuda_mmv_hook_fusion *);"
    ));
    // mmv.cu hands the hook's fusion struct on as gearbx_mmv.h's: the same members, in order.
    let members = |text: &str, open: &str, close: &str| -> Vec<String> {
        let start = text.find(open).unwrap_or_else(|| panic!("{open} missing")) + open.len();
        let body = &text[start..start + text[start..].find(close).unwrap()];
        body.lines()
            .map(|l| {
                l.split("//")
                    .next()
                    .unwrap()
                    .split("/*")
                    .next()
                    .unwrap()
                    .trim()
            })
            .filter(|l| l.ends_with(';'))
            .map(one_line)
            .map(|l| l.replace(" *", "*").replace("* ", "*"))
            .collect()
    };
    let hook = members(&h, "struct ggml_cuda_mmv_hook_fusion {", "};");
    let ours_h = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/csrc/cuda/gearbx_mmv.h"
    ))
    .unwrap();
    let ours = members(
        &ours_h,
        "typedef struct gearbx_mmv_fusion {",
        "} gearbx_mmv_fusion;",
    );
    assert_eq!(hook.len(), 4, "{hook:?}");
    assert_eq!(hook, ours);
}

/// Builds only llama-sys, in a target folder of its own, with a patch folder or pin file of the
/// test's making; both must fail before anything is compiled.
fn build_sys(env: &[(&str, &Path)]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO"));
    c.args([
        "build",
        "--release",
        "-p",
        "gearbx-llama-sys",
        "--target-dir",
    ])
    .arg(root().join("target/vendor-check"))
    .current_dir(root());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_bad_patch_or_checksum_stops_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let patches = tmp.path().join("patches");
    std::fs::create_dir(&patches).unwrap();
    for n in patch_names() {
        std::fs::copy(root().join("vendor/patches").join(&n), patches.join(&n)).unwrap();
    }
    // A patch written against a different llama.cpp: its context does not match.
    std::fs::write(
        patches.join("0099-stale.patch"),
        "--- a/include/llama.h\n+++ b/include/llama.h\n@@ -1,3 +1,4 @@\n not the first line\n \
         of llama.h\n+added\n at all\n",
    )
    .unwrap();
    let (ok, err) = build_sys(&[("GEARBX_PATCH_DIR", &patches)]);
    assert!(!ok);
    assert!(
        err.contains("patch 0099-stale.patch does not apply to llama-cpp-sys-2 0.1.161"),
        "{err}"
    );

    let pin = tmp.path().join("pin");
    let real = std::fs::read_to_string(root().join("vendor/llama.cpp.pin")).unwrap();
    let sha = real
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = "))
        .unwrap();
    std::fs::write(&pin, real.replace(sha, &"0".repeat(64))).unwrap();
    let (ok, err) = build_sys(&[("GEARBX_PIN_FILE", &pin)]);
    assert!(!ok);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(&"0".repeat(64)), "{err}");
}

/// `gearbx-run --version` names the pinned source and every patch of the build.
#[test]
fn version_names_the_source_and_patches() {
    let o = Command::new(env!("CARGO_BIN_EXE_gearbx-run"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with(&format!("gearbx-run {}\n", env!("CARGO_PKG_VERSION"))));
    assert!(
        out.contains("llama.cpp: llama-cpp-sys-2 0.1.161 (ggml 0.26.0"),
        "{out}"
    );
    for n in patch_names() {
        assert!(out.contains(&n), "{out}");
    }
    // the CPU, and the RPC backend that --rpc and gearbx-rpc-server use
    let backends = out
        .lines()
        .find_map(|l| l.strip_prefix("backends: "))
        .unwrap_or_default();
    let backends: Vec<&str> = backends.split(", ").collect();
    assert!(
        backends.contains(&"CPU") && backends.contains(&"RPC"),
        "{out}"
    );
}
