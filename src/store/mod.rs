//! Turning what the user typed (an Ollama name, a `.gguf` path, or nothing) into a checked
//! GGUF file plus the store's system prompt, template and default parameters.

pub mod default_model;
pub mod digest;
pub mod gguf;
pub mod manifest;
pub mod name;
pub mod ollama;
pub mod verify;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use gguf::GgufInfo;
pub use manifest::OllamaParams;
pub use name::ModelName;
pub use ollama::{OllamaStore, StoreModel};

/// Where a model came from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An Ollama store entry.
    Store(Box<StoreModel>),
    /// A GGUF file named by path.
    File,
    /// The default model from the cache.
    Default,
}

/// A model ready to load: a GGUF whose header was checked, and what the store adds to it.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub path: PathBuf,
    pub info: GgufInfo,
    pub source: Source,
}

impl ResolvedModel {
    pub fn store_entry(&self) -> Option<&StoreModel> {
        match &self.source {
            Source::Store(m) => Some(m),
            _ => None,
        }
    }

    /// The sha256 the file should have, where one is known.
    pub fn expected_sha256(&self) -> Option<String> {
        match &self.source {
            Source::Store(m) => manifest::parse_digest(&m.digest).ok().map(String::from),
            Source::Default => Some(default_model::SHA256.to_string()),
            Source::File => None,
        }
    }
}

/// True when `arg` names a file rather than an Ollama model.
pub fn looks_like_path(arg: &str) -> bool {
    arg.to_ascii_lowercase().ends_with(".gguf")
        || arg.starts_with("./")
        || arg.starts_with('/')
        || Path::new(arg).is_file()
}

/// Resolves a model argument; `None` means the default model (fetched if missing).
pub fn resolve(
    arg: Option<&str>,
    store: &OllamaStore,
    show_progress: bool,
) -> Result<ResolvedModel> {
    match arg {
        None => {
            let path = default_model::ensure(show_progress)?;
            let info = gguf::inspect(&path)?;
            Ok(ResolvedModel {
                path,
                info,
                source: Source::Default,
            })
        }
        Some(a) if looks_like_path(a) => {
            let path = PathBuf::from(a);
            if !path.exists() {
                return Err(Error::FileNotFound(path));
            }
            let info = gguf::inspect(&path)?;
            Ok(ResolvedModel {
                path,
                info,
                source: Source::File,
            })
        }
        Some(name) => {
            let m = store.resolve(name)?;
            let info = gguf::inspect(&m.gguf)?;
            Ok(ResolvedModel {
                path: m.gguf.clone(),
                info,
                source: Source::Store(Box::new(m)),
            })
        }
    }
}

/// The metadata of `path` if it is a regular file (symlinks followed), asked before anything
/// opens it: opening a FIFO blocks until a writer comes, and a device never ends.
pub fn regular_file(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::FileNotFound(path.to_path_buf()),
        _ => Error::io(format!("reading {}", path.display()), e),
    })?;
    if !meta.is_file() {
        return Err(Error::NotAFile(path.to_path_buf()));
    }
    Ok(meta)
}
