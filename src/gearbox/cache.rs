//! On-disk tier cache: built tiers saved under the cache directory, keyed by the source
//! model's sha256 and every managed tensor's tier types, so a later start skips requantizing.
//!
//! File layout: a 64-byte preamble (magic, format, offset and length of the header), the tier
//! data (each blob 64-byte aligned, in ggml's standard layout), then a JSON header listing
//! every blob with its tensor, set, type, offset, length and CRC-32. The file is written under
//! a temporary name and renamed into place, so a reader never sees a partial file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::verify::hex;

const MAGIC: &[u8; 8] = b"GBXTIERS";
/// Bump when the layout or the meaning of a key changes.
pub const FORMAT: u32 = 1;
const PREAMBLE: u64 = 64;
const ALIGN: u64 = 64;

/// One blob: the bytes of managed tensor `index` in tier set `set`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub tensor: String,
    pub index: usize,
    pub set: usize,
    pub ggml_type: u32,
    pub len: u64,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub crc32: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    key: String,
    source_sha256: String,
    entries: Vec<Entry>,
}

/// What identifies a tier build: the source file and, per managed tensor, its name, source
/// type, shape and the type it gets in each set.
pub struct TensorPlan<'a> {
    pub name: &'a str,
    pub source_type: u32,
    pub ne: [i64; 4],
    pub set_types: Vec<Option<u32>>,
}

/// The cache key (hex sha256) of a tier build.
pub fn key(source_sha256: &str, tensors: &[TensorPlan<'_>]) -> String {
    let mut h = Sha256::new();
    h.update(format!("gearbx-tiers/{FORMAT}/{source_sha256}\n"));
    for t in tensors {
        h.update(format!(
            "{}:{}:{:?}:{:?}\n",
            t.name, t.source_type, t.ne, t.set_types
        ));
    }
    hex(&h.finalize())
}

/// The cache file for a key: `<dir>/<source sha256, 12>-<key, 16>.tiers`.
pub fn path_for(dir: &Path, source_sha256: &str, key: &str) -> PathBuf {
    dir.join(format!("{}-{}.tiers", &source_sha256[..12], &key[..16]))
}

fn damaged(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::TierCache {
        path: path.to_path_buf(),
        reason: format!("damaged: {what}"),
    }
}

/// An opened cache file whose header matched the expected key and entries.
pub struct Reader {
    file: File,
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Reader {
    /// Opens `path`; `Ok(None)` when there is no such file. Errors when the file exists but
    /// does not hold exactly `expected` entries under `key` (the caller rebuilds).
    pub fn open(path: &Path, key: &str, expected: &[Entry]) -> Result<Option<Self>> {
        if let Some(dir) = path.parent() {
            remove_stale_temps(dir);
        }
        // Asked before opening: opening a FIFO blocks until someone writes to it.
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => return Err(damaged(path, "not a regular file")),
            _ => {}
        }
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        let mut pre = [0u8; PREAMBLE as usize];
        file.read_exact(&mut pre)
            .map_err(|_| damaged(path, "shorter than its preamble"))?;
        if &pre[..8] != MAGIC {
            return Err(damaged(path, "not a gearbx tier file"));
        }
        let format = u32::from_le_bytes(pre[8..12].try_into().expect("4 bytes"));
        if format != FORMAT {
            return Err(damaged(path, format!("format {format}, expected {FORMAT}")));
        }
        let h_off = u64::from_le_bytes(pre[16..24].try_into().expect("8 bytes"));
        let h_len = u64::from_le_bytes(pre[24..32].try_into().expect("8 bytes"));
        if h_off < PREAMBLE || h_len > 64 << 20 || h_off.checked_add(h_len) != Some(len) {
            return Err(damaged(path, "header out of bounds (truncated?)"));
        }
        let mut hb = vec![0u8; h_len as usize];
        file.read_exact_at(&mut hb, h_off)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let header: Header =
            serde_json::from_slice(&hb).map_err(|e| damaged(path, format!("header: {e}")))?;
        if header.key != key || header.entries.len() != expected.len() {
            return Err(damaged(
                path,
                "its key or tensor list does not match this build",
            ));
        }
        for (got, want) in header.entries.iter().zip(expected) {
            let same = got.tensor == want.tensor
                && got.index == want.index
                && got.set == want.set
                && got.ggml_type == want.ggml_type
                && got.len == want.len;
            let inside = got.offset >= PREAMBLE
                && got.offset.checked_add(got.len).is_some_and(|e| e <= h_off);
            if !same || !inside {
                return Err(damaged(
                    path,
                    format!("entry for {} does not match", want.tensor),
                ));
            }
        }
        Ok(Some(Self {
            file,
            path: path.to_path_buf(),
            entries: header.entries,
        }))
    }

    /// The bytes of entry `k`, checked against its CRC-32. Thread-safe.
    pub fn read(&self, k: usize) -> Result<Vec<u8>> {
        let e = &self.entries[k];
        let mut buf = vec![0u8; e.len as usize];
        self.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(|err| Error::io(format!("reading {}", self.path.display()), err))?;
        if crc32fast::hash(&buf) != e.crc32 {
            return Err(damaged(
                &self.path,
                format!("checksum of {} differs", e.tensor),
            ));
        }
        Ok(buf)
    }
}

/// A cache file being written; it appears under its final name only after [`Writer::finish`].
pub struct Writer {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    key: String,
    source_sha256: String,
    entries: Vec<Entry>,
    crcs: Mutex<Vec<Option<u32>>>,
    data_end: u64,
    finished: bool,
}

impl Writer {
    /// Creates a temporary file beside `path` laid out for `entries` (offsets assigned here).
    pub fn create(path: &Path, key: &str, source_sha256: &str, entries: &[Entry]) -> Result<Self> {
        let dir = path.parent().expect("cache file has a directory");
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let file =
            File::create(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let mut off = PREAMBLE;
        let entries: Vec<Entry> = entries
            .iter()
            .map(|e| {
                let placed = Entry {
                    offset: off,
                    ..e.clone()
                };
                off = (off + e.len).div_ceil(ALIGN) * ALIGN;
                placed
            })
            .collect();
        Ok(Self {
            file,
            tmp,
            path: path.to_path_buf(),
            key: key.into(),
            source_sha256: source_sha256.into(),
            crcs: Mutex::new(vec![None; entries.len()]),
            entries,
            data_end: off,
            finished: false,
        })
    }

    /// Writes entry `k`'s bytes. Thread-safe for distinct `k`.
    pub fn write(&self, k: usize, bytes: &[u8]) -> Result<()> {
        let e = &self.entries[k];
        if bytes.len() as u64 != e.len {
            return Err(Error::TierCache {
                path: self.path.clone(),
                reason: format!(
                    "entry {} is {} bytes, expected {}",
                    e.tensor,
                    bytes.len(),
                    e.len
                ),
            });
        }
        self.file
            .write_all_at(bytes, e.offset)
            .map_err(|err| Error::io(format!("writing {}", self.tmp.display()), err))?;
        self.crcs.lock().unwrap_or_else(|p| p.into_inner())[k] = Some(crc32fast::hash(bytes));
        Ok(())
    }

    /// Writes the header, syncs and renames the file into place; returns its size.
    pub fn finish(mut self) -> Result<u64> {
        let crcs = std::mem::take(&mut *self.crcs.lock().unwrap_or_else(|p| p.into_inner()));
        let mut entries = std::mem::take(&mut self.entries);
        for (e, c) in entries.iter_mut().zip(crcs) {
            e.crc32 = c.ok_or_else(|| Error::TierCache {
                path: self.path.clone(),
                reason: format!("entry {} was never written", e.tensor),
            })?;
        }
        let header = serde_json::to_vec(&Header {
            format: FORMAT,
            key: self.key.clone(),
            source_sha256: self.source_sha256.clone(),
            entries,
        })
        .map_err(|e| Error::TierCache {
            path: self.path.clone(),
            reason: format!("encoding its header: {e}"),
        })?;
        let mut pre = [0u8; PREAMBLE as usize];
        pre[..8].copy_from_slice(MAGIC);
        pre[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        pre[16..24].copy_from_slice(&self.data_end.to_le_bytes());
        pre[24..32].copy_from_slice(&(header.len() as u64).to_le_bytes());
        let io = |e| Error::io(format!("writing {}", self.tmp.display()), e);
        self.file.write_all_at(&header, self.data_end).map_err(io)?;
        self.file.write_all_at(&pre, 0).map_err(io)?;
        self.file.flush().map_err(io)?;
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::io(format!("renaming into {}", self.path.display()), e))?;
        self.finished = true;
        Ok(self.data_end + header.len() as u64)
    }
}

/// A temporary file untouched for this long, whose writer is gone, is stale.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes what writers killed before they finished left in `dir`: gearbx's own temporary
/// names (`<hex digest>-<key>.tmp<pid>`, as [`Writer`] and the quantized top name theirs)
/// whose process is gone and which nobody has written for ten minutes. A live writer's file
/// is left alone, also one of another machine or container sharing the folder (its pid is not
/// visible here, but it keeps writing).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return; // no way to tell a live writer
    }
    for e in rd.flatten() {
        let name = e.file_name();
        let Some((stem, pid)) = name.to_str().and_then(|n| n.rsplit_once(".tmp")) else {
            continue;
        };
        let ours = stem
            .split('-')
            .next()
            .is_some_and(|h| h.len() >= 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            && stem.contains('-');
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        let idle = e
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if ours && !alive && idle {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                tensor: n.to_string(),
                index: i,
                set: 1,
                ggml_type: 8,
                len: 100 + i as u64,
                offset: 0,
                crc32: 0,
            })
            .collect()
    }

    fn write_file(dir: &Path) -> PathBuf {
        let p = dir.join("x.tiers");
        let w = Writer::create(&p, "k", "s", &entries()).unwrap();
        w.write(1, &[2u8; 101]).unwrap();
        w.write(0, &[1u8; 100]).unwrap();
        w.finish().unwrap();
        p
    }

    #[test]
    fn round_trip_and_every_kind_of_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path());
        let r = Reader::open(&p, "k", &entries()).unwrap().unwrap();
        assert_eq!(r.read(0).unwrap(), vec![1u8; 100]);
        assert_eq!(r.read(1).unwrap(), vec![2u8; 101]);
        // Missing: None, not an error.
        assert!(Reader::open(&dir.path().join("none"), "k", &entries())
            .unwrap()
            .is_none());
        // Another key or another tensor list: refused.
        assert!(Reader::open(&p, "other", &entries()).is_err());
        let mut e2 = entries();
        e2[1].ggml_type = 2;
        assert!(Reader::open(&p, "k", &e2).is_err());
        // A flipped data byte: caught by the checksum when read.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[PREAMBLE as usize + 3] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let r = Reader::open(&p, "k", &entries()).unwrap().unwrap();
        assert!(r.read(0).unwrap_err().to_string().contains("damaged"));
        // Truncated: refused at open.
        let p = write_file(dir.path());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        assert!(Reader::open(&p, "k", &entries()).is_err());
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.tiers");
        {
            let w = Writer::create(&p, "k", "s", &entries()).unwrap();
            w.write(0, &[1u8; 100]).unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // And finish refuses when an entry was never written.
        let w = Writer::create(&p, "k", "s", &entries()).unwrap();
        w.write(0, &[1u8; 100]).unwrap();
        assert!(w.finish().is_err());
        assert!(!p.exists());
    }

    #[test]
    fn key_depends_on_source_and_types() {
        let t = |ty| TensorPlan {
            name: "blk.0.attn_q.weight",
            source_type: 3,
            ne: [576, 576, 1, 1],
            set_types: vec![Some(ty), None],
        };
        let a = key("aa", &[t(2)]);
        assert_eq!(a, key("aa", &[t(2)]));
        assert_ne!(a, key("bb", &[t(2)]));
        assert_ne!(a, key("aa", &[t(8)]));
    }

    #[test]
    fn temps_of_dead_writers_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // Above Linux's largest pid (2^22): no such process.
        let dead = dir.path().join("0123456789ab-0123456789abcdef.tmp4194305");
        let fresh = dir.path().join("0123456789ab-fedcba9876543210.tmp4194305");
        let live = dir
            .path()
            .join(format!("0123456789ab-aa.tmp{}", std::process::id()));
        let other = dir.path().join("report.tmp4194305");
        let kept = dir.path().join("0123456789ab-0123456789abcdef.tiers");
        let old = std::time::SystemTime::now() - STALE_AFTER * 2;
        for p in [&dead, &fresh, &live, &other, &kept] {
            std::fs::write(p, b"x").unwrap();
            if p != &fresh {
                let f = std::fs::File::options().write(true).open(p).unwrap();
                f.set_modified(old).unwrap();
            }
        }
        remove_stale_temps(dir.path());
        assert!(!dead.exists(), "a dead writer's old file goes");
        assert!(
            fresh.exists(),
            "a file written recently stays (a writer elsewhere)"
        );
        assert!(live.exists(), "a live writer's file stays");
        assert!(other.exists(), "a name that is not gearbx's stays");
        assert!(kept.exists());
    }
}
