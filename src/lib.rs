//! gearbx: LLM inference on llama.cpp that shifts weight precision per generated token.
//!
//! Start at [`session`]: a [`session::Session`] opens a model (with its tiers) and generates
//! on it, as gearbx-run and the C engine do.
//!
//! Layers: [`store`] resolves a model (Ollama store, GGUF path, default model), [`llama`] owns
//! the llama.cpp handles, [`engine`] runs the decode loop, [`kernels`] are our own C kernels,
//! [`measure`] is the benchmark and quality harness, [`capi`] the C ABI of include/gearbx.h.

pub mod capi;
pub mod engine;
pub mod error;
pub mod gearbox;
pub mod kernels;
pub mod llama;
pub mod measure;
pub mod monitor;
pub mod session;
pub mod store;
pub mod synth;

pub use error::{Error, Result};
