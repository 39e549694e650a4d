//! Compiles gearbx's own kernels in csrc/ into static libraries linked into the crate: the
//! scalar C kernels always, the CUDA kernels (csrc/cuda, with nvcc) under `--features cuda`.
//! Backend features (cuda, metal, vulkan) reach llama.cpp through Cargo features forwarded to
//! llama-cpp-sys-2 (see Cargo.toml); nothing of llama.cpp is built here.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    let mut kernels = cc::Build::new();
    kernels
        .file("csrc/generic/entropy.c")
        .file("csrc/generic/requant.c")
        .include("csrc/generic")
        .flag_if_supported("-std=c11")
        // The quantizers must round exactly as written (requant_block.h says why).
        .flag_if_supported("-ffp-contract=off")
        .warnings(true)
        .extra_warnings(true)
        .opt_level(3);
    // The x86 twins carry their own target attributes and are picked at run time.
    match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => {
            kernels
                .file("csrc/x86/entropy_avx2.c")
                .file("csrc/x86/requant_avx2.c");
        }
        Ok("aarch64") => {
            kernels
                .file("csrc/neon/entropy_neon.c")
                .file("csrc/neon/requant_neon.c");
        }
        _ => {}
    }
    kernels.compile("gearbx_kernels");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build_cuda();
    }
}

/// nvcc: `$NVCC`, else the compiler llama.cpp's CMake build is told to use, else the
/// toolkit's, else `nvcc` on PATH.
fn nvcc() -> PathBuf {
    for var in ["NVCC", "CMAKE_CUDA_COMPILER"] {
        println!("cargo:rerun-if-env-changed={var}");
        if let Some(p) = std::env::var_os(var) {
            return p.into();
        }
    }
    for var in ["CUDAToolkit_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        println!("cargo:rerun-if-env-changed={var}");
        if let Some(p) = std::env::var_os(var) {
            let p = PathBuf::from(p).join("bin/nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if p.exists() {
        p
    } else {
        "nvcc".into()
    }
}

/// `-gencode` flags from CMAKE_CUDA_ARCHITECTURES (as llama.cpp's build reads it: `90a`,
/// `86-real`, `89-virtual`, separated by `;` or `,`); default: Ampere to Hopper plus PTX.
fn gencode() -> Vec<String> {
    println!("cargo:rerun-if-env-changed=CMAKE_CUDA_ARCHITECTURES");
    let archs = std::env::var("CMAKE_CUDA_ARCHITECTURES")
        .unwrap_or_else(|_| "80-real;86-real;89-real;90".into());
    let mut flags = Vec::new();
    for a in archs
        .split([';', ','])
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let (num, real, virt) = match a.split_once('-') {
            Some((n, "real")) => (n, true, false),
            Some((n, "virtual")) => (n, false, true),
            _ => (a, true, true),
        };
        if real {
            flags.push(format!("-gencode=arch=compute_{num},code=sm_{num}"));
        }
        if virt {
            flags.push(format!("-gencode=arch=compute_{num},code=compute_{num}"));
        }
    }
    flags
}

fn build_cuda() {
    let mut b = cc::Build::new();
    b.cuda(true)
        // llama.cpp's CUDA build already links the CUDA runtime.
        .cudart("none")
        .file("csrc/cuda/requant.cu")
        // Our decode products, reached through patch 0005's hook in ggml-cuda's mul_mat.
        .file("csrc/cuda/mmv.cu")
        .include("csrc/generic")
        .include("csrc/cuda")
        // Bit-identical to the CPU: no fused multiply-adds but the ones written as fmaf.
        .flag("-fmad=false")
        .opt_level(3);
    for f in gencode() {
        b.flag(&f);
    }
    // cc reads the compiler from $NVCC.
    std::env::set_var("NVCC", nvcc());
    b.compile("gearbx_cuda");
}
