//! Ollama's on-disk model store: name → manifest → GGUF blob, plus listing. Read-only: resolving
//! or listing never creates a directory or writes a file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::store::gguf::{self, GgufInfo};
use crate::store::manifest::{self, Manifest, OllamaConfig, OllamaParams};
use crate::store::name::ModelName;

/// Text layers (system prompt, template, params) larger than this are refused.
const MAX_TEXT_LAYER: u64 = 1 << 20;

/// A model store rooted at a directory holding `manifests/` and `blobs/`.
#[derive(Debug, Clone)]
pub struct OllamaStore {
    root: PathBuf,
}

/// A model found in a store, with the layers gearbx uses.
#[derive(Debug, Clone)]
pub struct StoreModel {
    pub name: ModelName,
    pub manifest_path: PathBuf,
    pub gguf: PathBuf,
    /// `sha256:<hex>` of the GGUF blob.
    pub digest: String,
    /// The size the manifest records for the GGUF layer.
    pub size: u64,
    pub system: Option<String>,
    pub template: Option<String>,
    pub params: OllamaParams,
}

/// One line of `--list`.
#[derive(Debug, Clone)]
pub struct ListedModel {
    pub name: String,
    pub size: u64,
    pub quantization: String,
    pub family: String,
    pub problem: Option<String>,
}

impl OllamaStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$OLLAMA_MODELS`, else `~/.ollama/models`.
    pub fn from_env() -> Result<Self> {
        if let Some(dir) = std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
            return Ok(Self::new(dir));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                Error::InvalidParam(
                    "neither OLLAMA_MODELS nor HOME is set, so there is no model store to read"
                        .into(),
                )
            })?;
        Ok(Self::new(Path::new(&home).join(".ollama").join("models")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    /// Path of the blob named by a `sha256:<hex>` digest.
    pub fn blob_path(&self, digest: &str) -> std::result::Result<PathBuf, String> {
        let hex = manifest::parse_digest(digest)?;
        Ok(self.root.join("blobs").join(format!("sha256-{hex}")))
    }

    /// Resolves a name to its manifest and GGUF blob, checking the blob's header.
    pub fn resolve(&self, name: &str) -> Result<StoreModel> {
        let parsed = ModelName::parse(name)?;
        let rel = parsed.manifest_rel_path();
        let exact = self.manifests_dir().join(&rel);
        // Ollama treats names case-insensitively and newer versions store them lowercased.
        let lower = self
            .manifests_dir()
            .join(rel.to_string_lossy().to_lowercase());
        let manifest_path = [exact.clone(), lower]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| Error::ModelNotFound {
                name: name.to_string(),
                manifest: exact.clone(),
                close: self.close_names(&parsed),
            })?;
        let m = Manifest::read(&manifest_path)?;
        let layer = m
            .layer(manifest::MEDIA_MODEL)
            .ok_or_else(|| Error::NoGgufLayer {
                name: name.to_string(),
                media_types: m.media_types(),
            })?;
        let bad_manifest = |reason: String| Error::BadManifest {
            path: manifest_path.clone(),
            reason,
        };
        let gguf = self.blob_path(&layer.digest).map_err(bad_manifest)?;
        if !gguf.is_file() {
            return Err(Error::BlobMissing {
                name: name.to_string(),
                digest: layer.digest.clone(),
                path: gguf,
            });
        }
        let actual = std::fs::metadata(&gguf)
            .map_err(|e| Error::io(format!("reading {}", gguf.display()), e))?
            .len();
        if layer.size != 0 && actual != layer.size {
            return Err(Error::BadGguf {
                path: gguf,
                reason: format!(
                    "the blob is {actual} bytes but the manifest says {} (truncated or replaced?)",
                    layer.size
                ),
            });
        }
        let text = |media: &str| -> Result<Option<String>> {
            let Some(l) = m.layer(media) else {
                return Ok(None);
            };
            let p = self.blob_path(&l.digest).map_err(bad_manifest)?;
            read_small(&p, name, &l.digest).map(Some)
        };
        let params = match text(manifest::MEDIA_PARAMS)? {
            Some(s) => OllamaParams::parse(s.as_bytes()).map_err(bad_manifest)?,
            None => OllamaParams::default(),
        };
        Ok(StoreModel {
            name: parsed,
            gguf,
            digest: layer.digest.clone(),
            size: layer.size,
            system: text(manifest::MEDIA_SYSTEM)?,
            template: text(manifest::MEDIA_TEMPLATE)?,
            params,
            manifest_path,
        })
    }

    /// All manifests in the store as fully qualified names (host/namespace/model/tag).
    pub fn names(&self) -> Vec<ModelName> {
        let mut out = Vec::new();
        let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
            let Ok(rd) = std::fs::read_dir(p) else {
                return Vec::new();
            };
            rd.filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        };
        for (host, hp) in dirs(&self.manifests_dir()) {
            for (ns, np) in dirs(&hp) {
                for (model, mp) in dirs(&np) {
                    for (tag, tp) in dirs(&mp) {
                        if tp.is_file() {
                            out.push(ModelName {
                                host: host.clone(),
                                namespace: ns.clone(),
                                model: model.clone(),
                                tag,
                            });
                        }
                    }
                }
            }
        }
        out.sort_by_key(|n| n.short());
        out
    }

    /// Up to three names in the store that look like `wanted`.
    fn close_names(&self, wanted: &ModelName) -> Vec<String> {
        let want = wanted.short().to_lowercase();
        let mut scored: Vec<(f64, String)> = self
            .names()
            .into_iter()
            .map(|n| {
                let s = n.short();
                let same_model = n.model.eq_ignore_ascii_case(&wanted.model);
                let score = strsim::jaro_winkler(&want, &s.to_lowercase())
                    + if same_model { 1.0 } else { 0.0 };
                (score, s)
            })
            .filter(|(score, _)| *score > 0.8)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(3).map(|(_, s)| s).collect()
    }

    /// Every model in the store with its size, quantization and family; broken entries are
    /// listed with the reason instead of being skipped.
    pub fn list(&self) -> Vec<ListedModel> {
        self.names()
            .into_iter()
            .map(|n| {
                let name = n.short();
                match self.describe(&n) {
                    Ok((size, quantization, family)) => ListedModel {
                        name,
                        size,
                        quantization,
                        family,
                        problem: None,
                    },
                    Err(e) => ListedModel {
                        name,
                        size: 0,
                        quantization: "?".into(),
                        family: "?".into(),
                        problem: Some(e.to_string()),
                    },
                }
            })
            .collect()
    }

    fn describe(&self, n: &ModelName) -> Result<(u64, String, String)> {
        let m = Manifest::read(&self.manifests_dir().join(n.manifest_rel_path()))?;
        let size = m.layers.iter().map(|l| l.size).sum();
        let config: OllamaConfig = m
            .config
            .as_ref()
            .and_then(|c| self.blob_path(&c.digest).ok())
            .and_then(|p| read_small(&p, "", "").ok())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let header: Option<GgufInfo> = m
            .layer(manifest::MEDIA_MODEL)
            .and_then(|l| self.blob_path(&l.digest).ok())
            .and_then(|p| gguf::inspect(&p).ok());
        let quant = config
            .file_type
            .or_else(|| {
                header
                    .as_ref()
                    .and_then(|h| h.file_type_name())
                    .map(String::from)
            })
            .unwrap_or_else(|| {
                if m.layer(manifest::MEDIA_MODEL).is_none() {
                    "no GGUF".into()
                } else {
                    "?".into()
                }
            });
        let family = config
            .model_family
            .or_else(|| header.and_then(|h| h.architecture))
            .unwrap_or_else(|| "?".into());
        Ok((size, quant, family))
    }
}

fn read_small(path: &Path, name: &str, digest: &str) -> Result<String> {
    let meta = super::regular_file(path).map_err(|e| match e {
        Error::FileNotFound(_) => Error::BlobMissing {
            name: name.to_string(),
            digest: digest.to_string(),
            path: path.to_path_buf(),
        },
        e => e,
    })?;
    if meta.len() > MAX_TEXT_LAYER {
        return Err(Error::BadManifest {
            path: path.to_path_buf(),
            reason: format!("a text layer of {} bytes is too large", meta.len()),
        });
    }
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
