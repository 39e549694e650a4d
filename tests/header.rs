//! include/gearbx.h is what cbindgen (pinned) generates from src/capi today. Fails when the
//! committed header is stale; `make header` (GEARBX_UPDATE_HEADER=1) rewrites it.

use std::path::Path;

#[test]
fn committed_header_matches_the_rust_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_src(root.join("src/capi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen could not read src/capi")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = root.join("include/gearbx.h");
    if std::env::var_os("GEARBX_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("writing include/gearbx.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/gearbx.h is stale: run `make header` and commit it"
    );
    for f in [
        "gearbx_engine_open",
        "gearbx_engine_generate",
        "gearbx_engine_cancel",
        "gearbx_attach",
        "gearbx_attach_after_decode",
        "gearbx_detach",
        "gearbx_last_error",
        "gearbx_host_llama_abi",
    ] {
        assert!(generated.contains(f), "{f} missing from the header");
    }
}
