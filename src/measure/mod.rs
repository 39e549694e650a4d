//! The measurement harness: static llama.cpp baselines, interleaved speed ratios, quality
//! against the high tier on real text, prompt-class entropy, and the report built from them.

pub mod baseline;
pub mod markdown;
pub mod quality;
pub mod report;
pub mod speed;
pub mod svg;
