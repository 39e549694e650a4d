//! The sha256 of a model file, taken from the store where it is known and otherwise computed
//! once and remembered per (path, size, modification time), so only the first start pays.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::verify::{hex, sha256_file};
use super::ResolvedModel;
use crate::error::{Error, Result};

#[derive(Debug, Serialize, Deserialize)]
struct Memo {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    inode: u64,
    sha256: String,
}

fn memo_for(path: &Path) -> Result<Memo> {
    let md = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading metadata of {}", path.display()), e))?;
    Ok(Memo {
        path: path.to_path_buf(),
        size: md.len(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        inode: md.ino(),
        sha256: String::new(),
    })
}

/// The model's sha256: the store's digest for store entries and the default model, else the
/// file's own, hashed at most once per version of the file (memo under `memo_dir`).
pub fn source_sha256(m: &ResolvedModel, memo_dir: &Path, progress: bool) -> Result<String> {
    if let Some(known) = m.expected_sha256() {
        return Ok(known);
    }
    file_sha256(&m.path, memo_dir, progress)
}

/// A file's sha256, remembered in `memo_dir` until its size, mtime or inode change.
pub fn file_sha256(path: &Path, memo_dir: &Path, progress: bool) -> Result<String> {
    let path = path
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
    let mut now = memo_for(&path)?;
    let memo_path = memo_dir.join(format!(
        "{}.json",
        &hex(&Sha256::digest(path.as_os_str().as_encoded_bytes()))[..32]
    ));
    if let Some(old) = std::fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
    {
        let same_version = old.path == now.path
            && old.size == now.size
            && old.mtime_ns == now.mtime_ns
            && old.inode == now.inode;
        if same_version && old.sha256.len() == 64 {
            return Ok(old.sha256);
        }
    }
    now.sha256 = sha256_file(&path, progress)?;
    // The memo is an optimisation: failing to write it only costs a rehash next time.
    if std::fs::create_dir_all(memo_dir).is_ok() {
        if let Ok(json) = serde_json::to_vec_pretty(&now) {
            let tmp = memo_path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &memo_path);
            }
        }
    }
    Ok(now.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_is_reused_and_invalidated_by_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"first").unwrap();
        let memo = dir.path().join("memo");
        let a = file_sha256(&f, &memo, false).unwrap();
        assert_eq!(a, hex(&Sha256::digest(b"first")));
        assert_eq!(std::fs::read_dir(&memo).unwrap().count(), 1);
        // A forged memo for the same file version is believed (that is what makes it cheap)...
        let entry = std::fs::read_dir(&memo)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut m: Memo = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        m.sha256 = "ab".repeat(32);
        std::fs::write(&entry, serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(file_sha256(&f, &memo, false).unwrap(), "ab".repeat(32));
        // ...and a new version of the file (size changes) is hashed again.
        std::fs::write(&f, b"second version").unwrap();
        let b = file_sha256(&f, &memo, false).unwrap();
        assert_eq!(b, hex(&Sha256::digest(b"second version")));
    }
}
