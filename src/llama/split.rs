//! How a model's layers spread over several GPUs, local or remote (`--rpc`): llama.cpp's
//! `--split-mode`, `--tensor-split` and `--main-gpu`, parsed and checked against the devices
//! llama.cpp knows before a model is loaded.

use std::ffi::CStr;

use super::sys;
use crate::error::{Error, Result};

/// llama.cpp's `--split-mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SplitMode {
    /// The whole model on one GPU (`--main-gpu`).
    None,
    /// Whole layers per GPU, in proportion to `--tensor-split` or free memory (the default).
    #[default]
    Layer,
    /// Each matrix's rows across the GPUs (CUDA only).
    Row,
}

impl std::str::FromStr for SplitMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(SplitMode::None),
            "layer" => Ok(SplitMode::Layer),
            "row" => Ok(SplitMode::Row),
            _ => Err(format!("{s:?} is not a split mode (none, layer or row)")),
        }
    }
}

/// Where the offloaded layers go when there are several GPUs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSplit {
    pub mode: SplitMode,
    /// Proportions per GPU, in llama.cpp's device order (empty: by free memory).
    pub tensor_split: Vec<f32>,
    /// The GPU of `SplitMode::None` (and of row mode's small tensors).
    pub main_gpu: i32,
}

/// Parses `--tensor-split`: proportions separated by commas or slashes, as llama.cpp's.
pub fn parse_tensor_split(s: &str) -> Result<Vec<f32>> {
    let bad = |m: String| Error::InvalidParam(format!("--tensor-split {s:?}: {m}"));
    let v = s
        .split([',', '/'])
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad(format!("{p:?} is not a proportion (a number >= 0)")))
        })
        .collect::<Result<Vec<f32>>>()?;
    // SAFETY: a constant of the build.
    let max = unsafe { sys::llama_max_devices() };
    if v.len() > max {
        return Err(bad(format!(
            "{} values, llama.cpp takes at most {max}",
            v.len()
        )));
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(bad("every proportion is 0".into()));
    }
    Ok(v)
}

/// The GPU devices llama.cpp splits a model over, in its order (local, then remote ones).
pub fn gpu_devices() -> Vec<String> {
    // SAFETY: reads the device registry; indices below its count are valid.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .filter_map(|i| {
            // SAFETY: as above; device names are NUL-terminated strings owned by the backend.
            unsafe {
                let d = sys::ggml_backend_dev_get(i);
                let ty = sys::ggml_backend_dev_type(d);
                (ty == sys::GGML_BACKEND_DEVICE_TYPE_GPU
                    || ty == sys::GGML_BACKEND_DEVICE_TYPE_IGPU)
                    .then(|| {
                        CStr::from_ptr(sys::ggml_backend_dev_name(d))
                            .to_string_lossy()
                            .into_owned()
                    })
            }
        })
        .collect()
}

impl GpuSplit {
    /// Refuses a split the devices cannot take: a main GPU or proportions beyond the GPUs
    /// there are, rows on devices that cannot split them.
    pub fn check(&self, n_gpu_layers: i32) -> Result<()> {
        if *self == GpuSplit::default() || n_gpu_layers == 0 {
            return Ok(());
        }
        let gpus = gpu_devices();
        let have = || {
            if gpus.is_empty() {
                "there is no GPU (add remote ones with --rpc)".to_string()
            } else {
                format!("the GPUs are {} (0 to {})", gpus.join(", "), gpus.len() - 1)
            }
        };
        if self.main_gpu < 0 || self.main_gpu as usize >= gpus.len().max(1) {
            return Err(Error::InvalidParam(format!(
                "--main-gpu {}: {}",
                self.main_gpu,
                have()
            )));
        }
        if self.tensor_split.len() > gpus.len() {
            return Err(Error::InvalidParam(format!(
                "--tensor-split has {} proportions but {}",
                self.tensor_split.len(),
                have()
            )));
        }
        if self.mode == SplitMode::Row && !gpus.iter().all(|g| g.starts_with("CUDA")) {
            return Err(Error::InvalidParam(format!(
                "--split-mode row needs CUDA GPUs (llama.cpp splits rows only there), but {}",
                have()
            )));
        }
        Ok(())
    }

    /// llama.cpp's split mode for its model parameters.
    pub(super) fn llama_mode(&self) -> sys::llama_split_mode {
        match self.mode {
            SplitMode::None => sys::LLAMA_SPLIT_MODE_NONE,
            SplitMode::Layer => sys::LLAMA_SPLIT_MODE_LAYER,
            SplitMode::Row => sys::LLAMA_SPLIT_MODE_ROW,
        }
    }

    /// The proportions padded to llama.cpp's `llama_max_devices()` entries (None: by memory).
    pub(super) fn llama_tensor_split(&self) -> Option<Vec<f32>> {
        if self.tensor_split.is_empty() {
            return None;
        }
        // SAFETY: a constant of the build.
        let mut v = vec![0.0; unsafe { sys::llama_max_devices() }];
        v[..self.tensor_split.len()].copy_from_slice(&self.tensor_split);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_split_parses_as_llama_cpp_spells_it() {
        super::super::init();
        assert_eq!(parse_tensor_split("3,1").unwrap(), [3.0, 1.0]);
        assert_eq!(parse_tensor_split("0.5/0.5").unwrap(), [0.5, 0.5]);
        for bad in ["", "a", "-1,2", "0,0", "1,,2", "inf"] {
            assert!(parse_tensor_split(bad).is_err(), "{bad:?}");
        }
        assert!(parse_tensor_split(&vec!["1"; 200].join(",")).is_err());
        assert_eq!("row".parse::<SplitMode>(), Ok(SplitMode::Row));
        assert!("rows".parse::<SplitMode>().is_err());
    }

    #[test]
    fn a_split_beyond_the_gpus_there_are_is_refused() {
        super::super::init();
        let n = gpu_devices().len() as i32;
        let s = GpuSplit {
            main_gpu: n + 1,
            ..Default::default()
        };
        assert!(s.check(-1).unwrap_err().to_string().contains("--main-gpu"));
        assert!(s.check(0).is_ok(), "nothing offloaded: nothing to split");
        let s = GpuSplit {
            tensor_split: vec![1.0; n as usize + 1],
            ..Default::default()
        };
        assert!(s
            .check(-1)
            .unwrap_err()
            .to_string()
            .contains("--tensor-split"));
        assert!(GpuSplit::default().check(-1).is_ok());
    }
}
