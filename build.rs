//! Compiles gearbx's own C kernels in csrc/ into a static library linked into the crate.
//! Backend features (cuda, metal, vulkan) reach llama.cpp through Cargo features forwarded to
//! llama-cpp-sys-2 (see Cargo.toml); nothing of llama.cpp is built here.

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    cc::Build::new()
        .file("csrc/generic/entropy.c")
        .include("csrc/generic")
        .flag_if_supported("-std=c11")
        .warnings(true)
        .extra_warnings(true)
        .opt_level(3)
        .compile("gearbx_kernels");
}
