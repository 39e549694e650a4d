//! Ollama manifests (`schemaVersion` 2): layers by media type, and the `params` layer's options.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

pub const MEDIA_MODEL: &str = "application/vnd.ollama.image.model";
pub const MEDIA_TEMPLATE: &str = "application/vnd.ollama.image.template";
pub const MEDIA_SYSTEM: &str = "application/vnd.ollama.image.system";
pub const MEDIA_PARAMS: &str = "application/vnd.ollama.image.params";
pub const MEDIA_TENSOR: &str = "application/vnd.ollama.image.tensor";

/// Manifests larger than this are not manifests (real ones are a few KiB).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
pub struct Layer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(default)]
    pub config: Option<Layer>,
    #[serde(default)]
    pub layers: Vec<Layer>,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadManifest {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{} bytes is too large for a manifest",
                meta.len()
            )));
        }
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::parse(&bytes).map_err(bad)
    }

    /// Parses manifest JSON; the error is a human-readable reason.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid manifest JSON ({e})"))?;
        if m.schema_version != 2 {
            return Err(format!(
                "schemaVersion {} is not supported (expected 2)",
                m.schema_version
            ));
        }
        for l in m.layers.iter().chain(m.config.iter()) {
            parse_digest(&l.digest)?;
        }
        Ok(m)
    }

    /// The first layer with the given media type.
    pub fn layer(&self, media_type: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.media_type == media_type)
    }

    /// All media types, for error messages.
    pub fn media_types(&self) -> String {
        let v: Vec<&str> = self.layers.iter().map(|l| l.media_type.as_str()).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

/// Checks `sha256:<64 lowercase hex>` and returns the hex part.
pub fn parse_digest(digest: &str) -> std::result::Result<&str, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .or_else(|| digest.strip_prefix("sha256-"))
        .ok_or_else(|| format!("digest {digest:?} is not sha256:<hex>"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("digest {digest:?} is not 64 lowercase hex digits"));
    }
    Ok(hex)
}

/// The options of a `params` layer that gearbx uses (Ollama's names). Others are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OllamaParams {
    #[serde(default, deserialize_with = "one_or_many")]
    pub stop: Vec<String>,
    pub temperature: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i32>,
    pub seed: Option<i64>,
    pub num_ctx: Option<u32>,
    pub num_predict: Option<i32>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl OllamaParams {
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("params layer is not valid JSON ({e})"))
    }
}

/// The config blob Ollama writes (`model_family`, `model_type`, `file_type`); all optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OllamaConfig {
    #[serde(default)]
    pub model_format: Option<String>,
    #[serde(default)]
    pub model_family: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub file_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    #[test]
    fn finds_the_model_layer() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D}","size":1}},
            "layers":[{{"mediaType":"{MEDIA_TEMPLATE}","digest":"{D}","size":3}},
                      {{"mediaType":"{MEDIA_MODEL}","digest":"{D}","size":98362432}}]}}"#
        );
        let m = Manifest::parse(json.as_bytes()).unwrap();
        assert_eq!(m.layer(MEDIA_MODEL).unwrap().size, 98362432);
        assert!(m.layer(MEDIA_SYSTEM).is_none());
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(Manifest::parse(b"not json").unwrap_err().contains("JSON"));
        assert!(Manifest::parse(br#"{"schemaVersion":1,"layers":[]}"#)
            .unwrap_err()
            .contains("schemaVersion"));
        let bad_digest = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"{MEDIA_MODEL}","digest":"sha256:../../x"}}]}}"#
        );
        assert!(Manifest::parse(bad_digest.as_bytes())
            .unwrap_err()
            .contains("digest"));
    }

    #[test]
    fn digest_must_be_sha256_hex() {
        assert_eq!(parse_digest(D).unwrap().len(), 64);
        assert!(parse_digest("md5:abc").is_err());
        assert!(parse_digest(&D.to_uppercase().replace("SHA256", "sha256")).is_err());
    }

    #[test]
    fn params_accept_ollama_shapes() {
        let p = OllamaParams::parse(
            br#"{"stop":["<|eot_id|>","<|end|>"],"temperature":0.6,"mirostat":0}"#,
        )
        .unwrap();
        assert_eq!(p.stop.len(), 2);
        assert_eq!(p.temperature, Some(0.6));
        let p = OllamaParams::parse(br#"{"stop":"</s>"}"#).unwrap();
        assert_eq!(p.stop, vec!["</s>".to_string()]);
    }
}
