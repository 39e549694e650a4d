//! Builds the llama.cpp that gearbx links: the pinned pristine source (vendor/llama.cpp.pin),
//! taken from the crate registry through cargo and checked against its sha256, with the patch
//! series vendor/patches/*.patch applied in order, compiled by CMake; bindings by bindgen.
//!
//! The patched tree is assembled in a scratch folder and only then synced into
//! `$OUT_DIR/llama.cpp` (files whose bytes did not change keep their times, so CMake rebuilds
//! only what a new patch touches). A failure at any step leaves the previous tree and its stamp
//! as they were, so a half-patched tree is never compiled.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// Stops the build with one clear line (cargo prints it as an error).
macro_rules! fail {
    ($($arg:tt)*) => {{
        println!("cargo::error={}", format!($($arg)*));
        std::process::exit(1)
    }};
}

struct Pin {
    krate: String,
    version: String,
    sha256: String,
    ggml: String,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let vendor = manifest.parent().unwrap().join("vendor");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=wrapper.h");
    // Overrides for trying a patch series or a pin in progress (and for the tests that check
    // that a bad one stops the build): GEARBX_PATCH_DIR, GEARBX_PIN_FILE.
    let path_of = |var: &str, default: PathBuf| {
        println!("cargo::rerun-if-env-changed={var}");
        env::var_os(var).map_or(default, PathBuf::from)
    };
    let pin_file = path_of("GEARBX_PIN_FILE", vendor.join("llama.cpp.pin"));
    let patch_dir = path_of("GEARBX_PATCH_DIR", vendor.join("patches"));
    println!("cargo::rerun-if-changed={}", pin_file.display());
    println!("cargo::rerun-if-changed={}", patch_dir.display());

    let pin = read_pin(&pin_file);
    let patches = patch_files(&patch_dir);
    let tree = out.join("llama.cpp");
    let stamp = stamp(&pin, &patches);
    let stamp_file = out.join("llama.cpp.stamp");
    if fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str())
        || !tree.join("CMakeLists.txt").exists()
    {
        let crate_file = locate_crate(&manifest, &pin);
        verify(&crate_file, &pin);
        let scratch = out.join("llama.cpp.new");
        let _ = fs::remove_dir_all(&scratch);
        extract(&crate_file, &pin, &scratch);
        for p in &patches {
            apply(&scratch, p, &pin);
        }
        // The stamp goes first so that an interrupted sync is redone, never trusted.
        let _ = fs::remove_file(&stamp_file);
        sync(&scratch, &tree);
        fs::remove_dir_all(&scratch).ok();
        fs::write(&stamp_file, &stamp).unwrap();
    }
    let names: Vec<String> = patches
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    println!(
        "cargo::rustc-env=GEARBX_LLAMA_PRISTINE={} {} sha256:{}",
        pin.krate, pin.version, pin.sha256
    );
    println!("cargo::rustc-env=GEARBX_LLAMA_GGML={}", pin.ggml);
    println!("cargo::rustc-env=GEARBX_LLAMA_PATCHES={}", names.join(";"));
    println!("cargo::rustc-env=GEARBX_LLAMA_TREE={}", tree.display());

    bindings(&tree, &manifest, &out);
    compile(&tree, &out);
}

fn read_pin(path: &Path) -> Pin {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| fail!("cannot read {}: {e}", path.display()));
    let get = |key: &str| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| fail!("{} has no `{key} = …` line", path.display()))
    };
    Pin {
        krate: get("crate"),
        version: get("version"),
        sha256: get("sha256").to_ascii_lowercase(),
        ggml: get("ggml"),
    }
}

/// vendor/patches/*.patch in name order (the numbers give the order).
fn patch_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| fail!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .collect();
    v.sort();
    v
}

/// What the tree in OUT_DIR was made from: the pin and every patch's bytes.
fn stamp(pin: &Pin, patches: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    h.update(format!("{} {} {}\n", pin.krate, pin.version, pin.sha256));
    for p in patches {
        h.update(p.file_name().unwrap().as_encoded_bytes());
        h.update(fs::read(p).unwrap_or_else(|e| fail!("cannot read {}: {e}", p.display())));
    }
    format!("{:x}", h.finalize())
}

/// The pinned .crate in cargo's download cache, fetched through cargo when missing: cargo
/// metadata resolves with this workspace's Cargo.lock, which pins the crate and its checksum.
fn locate_crate(manifest: &Path, pin: &Pin) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |offline: bool| {
        let mut c = Command::new(&cargo);
        c.args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(manifest.join("Cargo.toml"));
        if offline {
            c.arg("--offline");
        }
        c.stdin(Stdio::null()).output()
    };
    let o =
        match run(true) {
            Ok(o) if o.status.success() => o,
            _ => match run(false) {
                Ok(o) if o.status.success() => o,
                Ok(o) => fail!(
                "the pristine llama.cpp ({} {}) is not in cargo's cache and cargo could not fetch \
                 it: {}; run `cargo fetch` on a machine with access to the crate registry",
                pin.krate,
                pin.version,
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").trim()
            ),
                Err(e) => fail!("cannot run cargo ({cargo}) to locate the pristine llama.cpp: {e}"),
            },
        };
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| fail!("cargo metadata printed something unreadable: {e}"));
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == pin.krate.as_str() && p["version"] == pin.version.as_str())
        .unwrap_or_else(|| {
            fail!(
                "{} {} (vendor/llama.cpp.pin) is not a dependency of llama-sys/Cargo.toml: \
                 change both together",
                pin.krate,
                pin.version
            )
        });
    // <cargo home>/registry/src/<index>/<name>-<version>/Cargo.toml → the .crate cargo downloaded
    // and checksummed: <cargo home>/registry/cache/<index>/<name>-<version>.crate.
    let src = PathBuf::from(pkg["manifest_path"].as_str().unwrap_or_default());
    let index = src.parent().and_then(Path::parent);
    let registry = index.and_then(Path::parent).and_then(Path::parent);
    match (registry, index.and_then(Path::file_name)) {
        (Some(reg), Some(idx)) => reg
            .join("cache")
            .join(idx)
            .join(format!("{}-{}.crate", pin.krate, pin.version)),
        _ => fail!("unexpected location of {}: {}", pin.krate, src.display()),
    }
}

fn verify(crate_file: &Path, pin: &Pin) {
    let bytes = fs::read(crate_file).unwrap_or_else(|e| {
        fail!(
            "cannot read the pristine llama.cpp {}: {e}; run `cargo fetch` while online",
            crate_file.display()
        )
    });
    let got = format!("{:x}", Sha256::digest(&bytes));
    if got != pin.sha256 {
        fail!(
            "checksum mismatch for {} (sha256 {got}, vendor/llama.cpp.pin expects {}): delete it \
             and run `cargo fetch` to download it again",
            crate_file.display(),
            pin.sha256
        );
    }
}

/// Unpacks `<name>-<version>/llama.cpp/**` of the .crate into `dest` (paths checked: no `..`,
/// no absolute names, regular files and folders only).
fn extract(crate_file: &Path, pin: &Pin, dest: &Path) {
    let prefix = Path::new(&format!("{}-{}", pin.krate, pin.version)).join("llama.cpp");
    let f = fs::File::open(crate_file).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut n = 0usize;
    for entry in ar
        .entries()
        .unwrap_or_else(|e| fail!("{}: {e}", crate_file.display()))
    {
        let mut entry = entry.unwrap_or_else(|e| fail!("{}: {e}", crate_file.display()));
        let path = entry.path().unwrap().into_owned();
        let Ok(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            fail!("{}: unsafe path {}", crate_file.display(), path.display());
        }
        let to = dest.join(rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => fs::create_dir_all(&to).unwrap(),
            tar::EntryType::Regular => {
                fs::create_dir_all(to.parent().unwrap()).unwrap();
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut buf).unwrap();
                fs::write(&to, buf).unwrap();
                n += 1;
            }
            _ => {}
        }
    }
    if n == 0 || !dest.join("CMakeLists.txt").exists() {
        fail!("{} holds no llama.cpp/ tree", crate_file.display());
    }
}

/// Applies one patch with GNU patch, exactly (no fuzz) or not at all.
fn apply(tree: &Path, patch: &Path, pin: &Pin) {
    let name = patch.file_name().unwrap().to_string_lossy();
    let o = Command::new("patch")
        .args(["-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch"])
        .args(["--reject-file=-", "-d"])
        .arg(tree)
        .arg("-i")
        .arg(patch)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            fail!("cannot run `patch` to apply {name}: {e} (install GNU patch: apt-get install patch)")
        });
    if !o.status.success() {
        let why = String::from_utf8_lossy(&o.stdout);
        let why = why
            .lines()
            .filter(|l| l.contains("FAILED") || l.contains("can't find") || l.contains("malformed"))
            .collect::<Vec<_>>()
            .join("; ");
        fail!(
            "patch {name} does not apply to {} {}: {why}; rebase it with `make patches-edit` \
             and `make patches` (README, \"Build notes\")",
            pin.krate,
            pin.version
        );
    }
}

/// Makes `dest` hold exactly the files of `src`, writing only those whose bytes differ.
fn sync(src: &Path, dest: &Path) {
    fn files(root: &Path, dir: &Path, acc: &mut BTreeSet<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                files(root, &p, acc);
            } else {
                acc.insert(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut want = BTreeSet::new();
    files(src, src, &mut want);
    let mut have = BTreeSet::new();
    files(dest, dest, &mut have);
    for rel in have.difference(&want) {
        let _ = fs::remove_file(dest.join(rel));
    }
    for rel in &want {
        let (from, to) = (src.join(rel), dest.join(rel));
        let new = fs::read(&from).unwrap();
        if fs::read(&to).ok().as_deref() != Some(new.as_slice()) {
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::write(&to, new).unwrap();
        }
    }
}

/// Bindings with llama-cpp-sys-2 0.1.161's options (without its `common` wrapper), so the Rust
/// API gearbx was written against is unchanged.
fn bindings(tree: &Path, manifest: &Path, out: &Path) {
    let b = bindgen::Builder::default()
        .header(manifest.join("wrapper.h").to_string_lossy())
        .clang_arg(format!("-I{}", tree.join("include").display()))
        .clang_arg(format!("-I{}", tree.join("ggml/include").display()))
        .derive_partialeq(true)
        .allowlist_item("ggml_.*")
        .allowlist_item("gguf_.*")
        .allowlist_item("llama_.*")
        .allowlist_recursively(false)
        .raw_line("type FILE = ::std::os::raw::c_void;")
        .prepend_enum_name(false)
        .generate()
        .unwrap_or_else(|e| fail!("bindgen could not read llama.h (is libclang installed?): {e}"));
    b.write_to_file(out.join("bindings.rs")).unwrap();
}

/// A digest of everything that decides the CMake options `compile` passes.
fn configure_stamp() -> String {
    let mut h = Sha256::new();
    h.update(
        fs::read(PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("build.rs")).unwrap(),
    );
    let mut vars: Vec<(String, String)> = env::vars()
        .filter(|(k, _)| {
            [
                "CMAKE_",
                "GGML_",
                "CARGO_FEATURE_",
                "CARGO_CFG_TARGET_FEATURE",
                "TARGET",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .collect();
    vars.sort();
    for (k, v) in vars {
        h.update(format!("{k}={v}\n"));
    }
    format!("{:x}", h.finalize())
}

fn compile(tree: &Path, out: &Path) {
    let mut cfg = cmake::Config::new(tree);
    for (k, v) in [
        ("LLAMA_BUILD_TESTS", "OFF"),
        ("LLAMA_BUILD_EXAMPLES", "OFF"),
        ("LLAMA_BUILD_SERVER", "OFF"),
        ("LLAMA_BUILD_TOOLS", "OFF"),
        ("LLAMA_BUILD_APP", "OFF"),
        ("LLAMA_BUILD_COMMON", "OFF"),
        ("LLAMA_CURL", "OFF"),
        ("LLAMA_OPENSSL", "OFF"),
        ("BUILD_SHARED_LIBS", "OFF"),
        ("GGML_OPENMP", "OFF"),
        // llama.cpp's RPC backend (a small library): remote devices for --rpc and the server of
        // gearbx-rpc-server. It registers no device until a server is added.
        ("GGML_RPC", "ON"),
    ] {
        cfg.define(k, v);
    }
    // The CUDA recipe (scripts/build-cuda.sh) passes CMAKE_CUDA_* and GGML_* this way.
    for (k, v) in env::vars() {
        if k.starts_with("CMAKE_") || k.starts_with("GGML_") {
            println!("cargo::rerun-if-env-changed={k}");
            cfg.define(&k, &v);
        }
    }
    cpu_baseline(&mut cfg);
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        cfg.define("GGML_CUDA", "ON");
        cfg.define("GGML_CUDA_NCCL", "OFF");
    }
    if env::var_os("CARGO_FEATURE_VULKAN").is_some() {
        cfg.define("GGML_VULKAN", "ON");
    }
    let target = env::var("TARGET").unwrap();
    let apple = target.contains("apple");
    if apple {
        cfg.define("GGML_BLAS", "OFF");
        cfg.define(
            "GGML_METAL",
            if env::var_os("CARGO_FEATURE_METAL").is_some() {
                "ON"
            } else {
                "OFF"
            },
        );
    }
    if env::var("CMAKE_BUILD_PARALLEL_LEVEL").is_err() {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        env::set_var("CMAKE_BUILD_PARALLEL_LEVEL", n.to_string());
    }
    // CMake is configured once per build folder; it is configured again when what decides its
    // options changed (this file, the CMAKE_*/GGML_* variables, the features, the target), so
    // a new option reaches an existing build instead of being ignored by its cache.
    let options = configure_stamp();
    let options_file = out.join("cmake-options.stamp");
    let changed = fs::read_to_string(&options_file).ok().as_deref() != Some(options.as_str());
    let dst = cfg.profile("Release").always_configure(changed).build();
    fs::write(&options_file, &options).unwrap();

    let mut libs = Vec::new();
    for dir in ["lib", "lib64"] {
        let d = dst.join(dir);
        println!("cargo::rustc-link-search=native={}", d.display());
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = n.strip_prefix("lib").and_then(|n| n.strip_suffix(".a")) {
                libs.push(stem.to_string());
            }
        }
    }
    if libs.is_empty() {
        fail!(
            "llama.cpp built no static libraries under {}",
            out.display()
        );
    }
    libs.sort();
    for l in libs {
        println!("cargo::rustc-link-lib=static={l}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        link_cuda();
    }
    if env::var_os("CARGO_FEATURE_VULKAN").is_some() {
        println!("cargo::rustc-link-lib=vulkan");
    }
    if apple {
        for f in ["Foundation", "Metal", "MetalKit", "Accelerate"] {
            println!("cargo::rustc-link-lib=framework={f}");
        }
        println!("cargo::rustc-link-lib=c++");
    } else {
        println!("cargo::rustc-link-lib=dylib=stdc++");
    }
}

/// The CPU baseline from rustc's target features (.cargo/config.toml sets x86-64-v3), as
/// llama-cpp-sys-2 mapped it: GGML_NATIVE only for `-C target-cpu=native`.
fn cpu_baseline(cfg: &mut cmake::Config) {
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let cpu = flags
        .split('\x1f')
        .find_map(|f| f.split("target-cpu=").nth(1).map(str::to_string));
    if cpu.as_deref() == Some("native") {
        cfg.define("GGML_NATIVE", "ON");
        return;
    }
    cfg.define("GGML_NATIVE", "OFF");
    if let Some(cpu) = cpu {
        cfg.cflag(format!("-march={cpu}"));
        cfg.cxxflag(format!("-march={cpu}"));
    }
    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    for f in features.split(',') {
        let def = match f {
            "avx" => "GGML_AVX",
            "avx2" => "GGML_AVX2",
            "avx512bf16" => "GGML_AVX512_BF16",
            "avx512vbmi" => "GGML_AVX512_VBMI",
            "avx512vnni" => "GGML_AVX512_VNNI",
            "avxvnni" => "GGML_AVX_VNNI",
            "bmi2" => "GGML_BMI2",
            "f16c" => "GGML_F16C",
            "fma" => "GGML_FMA",
            "sse4.2" => "GGML_SSE42",
            _ => continue,
        };
        cfg.define(def, "ON");
    }
    let target = env::var("TARGET").unwrap();
    if target.starts_with("aarch64") && target.contains("linux") {
        cfg.define("GGML_CPU_ARM_ARCH", "armv8-a");
    }
}

/// The CUDA runtime statically (as llama.cpp's own static build does), cuBLAS and the driver
/// dynamically: every CUDA install ships libcublas.so, NVIDIA's PyPI wheels ship no static
/// cuBLAS, and libcuda.so.1 always comes from the driver.
fn link_cuda() {
    let mut dirs = Vec::new();
    println!("cargo::rerun-if-env-changed=CUDA_LIBRARY_PATH");
    if let Ok(p) = env::var("CUDA_LIBRARY_PATH") {
        dirs.extend(env::split_paths(&p));
    }
    for var in ["CUDAToolkit_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
        if let Some(p) = env::var_os(var) {
            dirs.push(PathBuf::from(p));
        }
    }
    dirs.push("/usr/local/cuda".into());
    for d in dirs {
        for sub in [
            "lib64",
            "lib",
            "targets/x86_64-linux/lib",
            "lib64/stubs",
            "lib/stubs",
        ] {
            let p = d.join(sub);
            if p.is_dir() {
                println!("cargo::rustc-link-search=native={}", p.display());
            }
        }
    }
    println!("cargo::rustc-link-lib=static=cudart_static");
    for l in ["cublas", "cublasLt", "cuda", "dl", "rt", "pthread"] {
        println!("cargo::rustc-link-lib=dylib={l}");
    }
}
