//! Ollama model names as users type them: parsed, never a panic; a parsed name never leaves
//! the store (no "..", no absolute path) and renders back to a name that parses the same.
#![no_main]

use gearbx::store::name::ModelName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(n) = ModelName::parse(s) {
        let rel = n.manifest_rel_path();
        assert!(!rel.is_absolute(), "{s:?} -> {rel:?}");
        assert!(
            rel.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{s:?} -> {rel:?}"
        );
    }
});
