//! GGUF headers: `gguf::inspect` (the structural checks and the block-count check) on any
//! bytes: a result or a clean error, never a panic, never an allocation the file cannot back.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // inspect reads a path: a file in memory-backed /dev/shm where there is one.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let p = dir.join(format!("gearbx-fuzz-gguf-{}", std::process::id()));
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(data))
        .expect("writing the input");
    if let Ok(info) = gearbx::store::gguf::inspect(&p) {
        // Every tensor lies inside the file.
        let len = data.len() as u64;
        for t in &info.tensors {
            assert!(t.file_offset + t.size <= len, "{} outside the file", t.name);
        }
    }
});
