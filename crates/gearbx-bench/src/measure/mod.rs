//! The measurement harness: static llama.cpp baselines, interleaved speed ratios, quality
//! against the high tier on real text, prompt-class entropy, lossless mode against the high
//! gear, and the report built from them.

pub mod gpu;
pub mod kv;
pub mod kv_sim;
pub mod lossless;
pub mod lossless_replay;
pub mod markdown;
pub mod quality;
pub mod report;
pub mod speed;
pub mod svg;
