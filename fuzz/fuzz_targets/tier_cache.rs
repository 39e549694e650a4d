//! The tier cache reader on damaged files: a valid cache file (written by the real writer)
//! with the input applied as edits — (offset, byte) pairs, then a cut — is read back as
//! valid, or refused as damaged; never a panic, never a read of an entry that fails its CRC.
#![no_main]

use std::sync::OnceLock;

use gearbx::gearbox::cache::{Entry, Reader, Writer};
use libfuzzer_sys::fuzz_target;

fn entries() -> Vec<Entry> {
    (0..3)
        .map(|i| Entry {
            tensor: format!("blk.{i}.ffn_up.weight"),
            index: i,
            set: i % 2,
            ggml_type: 8,
            len: 34 * (i as u64 + 1),
            offset: 0,
            crc32: 0,
        })
        .collect()
}

fn dir() -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("gearbx-fuzz-tiers-{}", std::process::id()))
}

/// The valid file's bytes.
fn valid() -> &'static [u8] {
    static V: OnceLock<Vec<u8>> = OnceLock::new();
    V.get_or_init(|| {
        let p = dir().join("valid.tiers");
        let w = Writer::create(&p, "key", "sha", &entries()).unwrap();
        for (k, e) in entries().iter().enumerate() {
            w.write(k, &vec![k as u8 + 1; e.len as usize]).unwrap();
        }
        w.finish().unwrap();
        std::fs::read(&p).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = valid().to_vec();
    let (edits, cut) = data.split_at(data.len() - data.len() % 3);
    for e in edits.chunks_exact(3) {
        let at = u16::from_le_bytes([e[0], e[1]]) as usize;
        if at < bytes.len() {
            bytes[at] = e[2];
        }
    }
    if let [n, ..] = cut {
        bytes.truncate(bytes.len().saturating_sub(*n as usize));
    }
    let p = dir().join("fuzzed.tiers");
    std::fs::write(&p, &bytes).unwrap();
    if let Ok(Some(r)) = Reader::open(&p, "key", &entries()) {
        for k in 0..entries().len() {
            if let Ok(b) = r.read(k) {
                assert_eq!(b.len() as u64, entries()[k].len);
            }
        }
    }
});
