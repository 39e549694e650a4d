//! A quantized top gear for a float model (`--tiers high=Q8_0` on F16/BF16/F32 weights): the
//! model is loaded as that type instead of the float source, written once by llama.cpp's
//! quantizer into the tier cache folder, so the float weights take no memory at all and the
//! lower gears are built from the loaded top.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::plan::{self, Manage, TierOverrides, TierType};
use super::Gear;
use crate::error::{Error, Result};
use crate::llama::requantize;
use crate::llama::GgmlType;
use crate::store::{digest, gguf, ResolvedModel, Source};

/// Mid and low under a quantized top, unless the user names them: the next K-quants below
/// Q8_0 that keep three distinct gears (6.6 and 4.5 bits per weight).
const MID_UNDER_TOP: GgmlType = GgmlType::Q6_K;
const LOW_UNDER_TOP: GgmlType = GgmlType::Q4_K;

/// The model to load in place of a float source, and the tier plan to build on it.
#[derive(Debug, Clone)]
pub struct QuantizedTop {
    /// The copy to load and build tiers on (the store entry, if any, stays with the caller's
    /// model: its prompt and parameters still apply).
    pub model: ResolvedModel,
    /// The plan over the loaded model: high is the loaded type, mid and low as chosen.
    pub overrides: TierOverrides,
    /// The top gear's type, e.g. Q8_0.
    pub ggml_type: GgmlType,
    /// Whether the file was written by this call (false: reused from an earlier run).
    pub written: bool,
    /// Seconds llama.cpp took to write it (0 when reused).
    pub quantize_s: f64,
}

/// The float matrices of `m` that `manage` covers, with their types.
fn managed_float(m: &ResolvedModel, manage: &Manage) -> Vec<(String, Option<GgmlType>, i64)> {
    m.info
        .tensors
        .iter()
        .filter(|t| manage.matches(&t.name) && t.ne.iter().filter(|&&n| n > 1).count() >= 2)
        .map(|t| {
            (
                t.name.clone(),
                GgmlType::from_id(t.ggml_type),
                t.ne[0] as i64,
            )
        })
        .collect()
}

/// Where the requantized copy of `m` lives: named by the source's digest and the type list,
/// so another plan (or another source) never reads a stale file.
fn file_for(dir: &Path, source_sha: &str, top: GgmlType, types: &[(String, GgmlType)]) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (n, t) in types {
        h.update(format!("{n}:{}\n", t.id()));
    }
    let key = crate::store::verify::hex(&h.finalize());
    dir.join("top").join(format!(
        "{}-{}-{}.gguf",
        &source_sha[..source_sha.len().min(16)],
        top.name().to_lowercase(),
        &key[..12]
    ))
}

/// The quantized top for `m` when the plan asks for one: the source's managed matrices are
/// all float and `overrides` sets the high gear to a quantized type. Writes the copy into
/// `<dir()>/top/` when it is not there yet (`dir` is asked only then: the tier cache folder,
/// also with the tier cache off, since the copy is the model rather than a cache; `log` hears
/// what happens; `progress` shows the digest's progress). None: load `m` as it is.
pub fn prepare(
    m: &ResolvedModel,
    manage: &Manage,
    overrides: &TierOverrides,
    dir: impl FnOnce() -> Result<PathBuf>,
    threads: usize,
    progress: bool,
    mut log: impl FnMut(&str),
) -> Result<Option<QuantizedTop>> {
    let Some(TierType::Type(top)) = overrides.0[Gear::High as usize] else {
        return Ok(None);
    };
    let managed = managed_float(m, manage);
    if top.is_float()
        || managed.is_empty()
        || !managed
            .iter()
            .all(|(_, t, _)| t.is_some_and(GgmlType::is_float))
    {
        return Ok(None);
    }
    let types: Vec<(String, GgmlType)> = managed
        .iter()
        .map(|(n, _, ne0)| (n.clone(), plan::fit_row(top, *ne0)))
        .collect();
    let dir = dir()?;
    let source_sha = digest::source_sha256(m, &dir.join("digests"), progress)?;
    let file = file_for(&dir, &source_sha, top, &types);
    let (written, quantize_s) = if file.is_file() {
        log(&format!(
            "high gear {}: loading {} (written from the float model by an earlier run)",
            top.name(),
            file.display()
        ));
        (false, 0.0)
    } else {
        let parent = file.parent().expect("file_for names a file in a folder");
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        log(&format!(
            "high gear {}: writing {} tensors of {} as {} into {} (once; the float weights are \
             then not loaded)",
            top.name(),
            types.len(),
            m.path.display(),
            top.name(),
            file.display()
        ));
        let t = Instant::now();
        // Written under a temporary name and renamed: an interrupted write is never loaded.
        super::cache::remove_stale_temps(parent);
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let r = requantize::write_typed(&m.path, &m.info, &types, &tmp, threads);
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &file)
            .map_err(|e| Error::io(format!("renaming into {}", file.display()), e))?;
        (true, t.elapsed().as_secs_f64())
    };
    let info = gguf::inspect(&file)?;
    let mut o = TierOverrides::default();
    o.0[Gear::High as usize] = Some(TierType::Source);
    o.0[Gear::Mid as usize] =
        Some(overrides.0[Gear::Mid as usize].unwrap_or(TierType::Type(MID_UNDER_TOP)));
    o.0[Gear::Low as usize] =
        Some(overrides.0[Gear::Low as usize].unwrap_or(TierType::Type(LOW_UNDER_TOP)));
    Ok(Some(QuantizedTop {
        model: ResolvedModel {
            path: file,
            info,
            // Its own file: the tier cache hashes it (a store digest names the float blob).
            source: Source::File,
        },
        overrides: o,
        ggml_type: top,
        written,
        quantize_s,
    }))
}
