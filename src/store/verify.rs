//! Streaming sha256 of model files, with a progress bar on stderr for long files.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A byte progress bar on stderr; hidden when stderr is not a terminal or `show` is false.
pub fn byte_bar(len: u64, msg: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Hex sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path, show_progress: bool) -> Result<String> {
    super::regular_file(path)?;
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = byte_bar(len, "sha256", show_progress);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `path` hashes to `expected_hex`.
pub fn verify(path: &Path, expected_hex: &str, show_progress: bool) -> Result<()> {
    let actual = sha256_file(path, show_progress)?;
    if actual != expected_hex {
        return Err(Error::DigestMismatch {
            path: path.to_path_buf(),
            expected: format!("sha256:{expected_hex}"),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(())
}
