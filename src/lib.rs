//! gearbx: LLM inference on llama.cpp that shifts weight precision per generated token.
//!
//! Start at [`session`]: a [`session::Session`] opens a model (with its tiers) and generates
//! on it, as gearbx-run and the C engine do.
//!
//! Layers: [`store`] resolves a model (Ollama store, GGUF path, default model), [`llama`] owns
//! the llama.cpp handles, [`engine`] runs the decode loop, [`gearbox`] builds and shifts the
//! tiers, [`kernels`] are our own C kernels, [`capi`] the C ABI of include/gearbx.h. The
//! measurement harness is the separate crate `gearbx-bench` (crates/gearbx-bench).

pub mod args;
pub mod capi;
pub mod engine;
pub mod error;
pub mod gearbox;
pub mod kernels;
pub mod llama;
pub mod monitor;
pub mod session;
pub mod store;

pub use error::{Error, Result};
