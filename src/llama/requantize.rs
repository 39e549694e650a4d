//! A copy of a GGUF whose matrices have the types we name, written by llama.cpp's own
//! quantizer (`llama_model_quantize`): the static baselines of the benchmarks and the
//! quantized top gear of a float model (`--tiers high=Q8_0`).

use std::ffi::CString;
use std::path::Path;

use super::{sys, GgmlType};
use crate::error::{Error, Result};
use crate::store::GgufInfo;

/// Writes `dest`: `source` with every tensor named in `types` quantized to the type given
/// there and every other matrix left in its source type. Returns how many tensors changed type.
///
/// Types are passed to llama.cpp as one exact-name override per tensor, with `pure` set, so its
/// own mixture rules and shape fallbacks pick nothing: the result has exactly these types.
pub fn write_typed(
    source: &Path,
    info: &GgufInfo,
    types: &[(String, GgmlType)],
    dest: &Path,
    threads: usize,
) -> Result<usize> {
    let mut overrides: Vec<(CString, u32)> = Vec::new();
    let mut changed = 0;
    for t in &info.tensors {
        let n_dims = t.ne.iter().rposition(|&n| n > 1).map_or(1, |i| i + 1);
        if n_dims < 2 {
            continue; // norms and biases: llama.cpp never quantizes them
        }
        let ty = types
            .iter()
            .find(|(n, _)| *n == t.name)
            .map_or(t.ggml_type, |(_, ty)| ty.id());
        changed += usize::from(ty != t.ggml_type);
        let pattern = format!("^{}$", regex_escape(&t.name));
        overrides.push((CString::new(pattern).expect("tensor names have no NUL"), ty));
    }
    let mut tt: Vec<sys::llama_model_tensor_override> = overrides
        .iter()
        .map(|(p, ty)| sys::llama_model_tensor_override {
            pattern: p.as_ptr(),
            type_: *ty as sys::ggml_type,
        })
        .collect();
    tt.push(sys::llama_model_tensor_override {
        pattern: std::ptr::null(),
        type_: 0,
    });
    // A type named in `types` wins; otherwise the tensor keeps its source type.
    let type_of = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ty)| ty.id())
            .or_else(|| {
                info.tensors
                    .iter()
                    .find(|t| t.name == name)
                    .map(|t| t.ggml_type)
            })
    };
    // SAFETY: returns a plain struct of defaults.
    let mut p = unsafe { sys::llama_model_quantize_default_params() };
    p.nthread = threads as i32;
    // Any quantized default makes llama.cpp consult the overrides; every matrix has one.
    p.ftype = sys::LLAMA_FTYPE_MOSTLY_Q8_0;
    p.allow_requantize = true;
    p.quantize_output_tensor = true;
    p.pure_ = true;
    // The embedding and output types are decided before the overrides (a managed head takes
    // its tier's type here; an unmanaged one stays as it is).
    p.token_embedding_type = type_of("token_embd.weight").unwrap_or(sys::GGML_TYPE_COUNT) as _;
    p.output_tensor_type = type_of("output.weight").unwrap_or(sys::GGML_TYPE_COUNT) as _;
    p.tt_overrides = tt.as_ptr();
    let c = |p: &Path| {
        CString::new(p.to_string_lossy().as_bytes())
            .map_err(|_| Error::InvalidParam(format!("path {} contains a NUL byte", p.display())))
    };
    let (src, dst) = (c(source)?, c(dest)?);
    crate::llama::init();
    // SAFETY: both paths are NUL-terminated; p and the override array (NULL-terminated, its
    // patterns owned by `overrides`) outlive the call.
    let rc = unsafe { sys::llama_model_quantize(src.as_ptr(), dst.as_ptr(), &p) };
    if rc != 0 {
        return Err(Error::Llama(format!(
            "llama_model_quantize failed ({rc}) writing {}: {}",
            dest.display(),
            crate::llama::take_last_error().unwrap_or_default()
        )));
    }
    Ok(changed)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn regex_escape_makes_names_literal() {
        assert_eq!(
            super::regex_escape("blk.0.attn_q.weight"),
            r"blk\.0\.attn_q\.weight"
        );
        assert_eq!(super::regex_escape("a+b(c)"), r"a\+b\(c\)");
    }
}
