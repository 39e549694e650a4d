//! gearbx-bench: the measurement harness (speed against static llama.cpp models, quality on
//! real text, lossless fidelity, the GPU runs) and the synthetic-model writer, built on
//! gearbx's public API. Not part of the product's API.

pub mod measure;
pub mod synth;
