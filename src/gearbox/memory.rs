//! Memory the tiers need on each device, computed from the tier plan before anything is
//! allocated, and the check that refuses a plan that does not fit.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::llama::weights::{device_memory, TensorTiers};
use crate::llama::GgmlType;

/// What is held back on every device for what comes after the tiers: the KV cache and the
/// compute buffers of the contexts (a few hundred MB at 8B with a 4k context).
pub const RESERVE_BYTES: u64 = 1 << 30;

/// One device's share of a tier plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceMemory {
    /// ggml's device name ("CUDA0", "CPU").
    pub device: String,
    /// Bytes all the tiers need there (a tensor shared by two gears counted once).
    pub need: u64,
    /// Free and total bytes there before the tiers were allocated.
    pub free: u64,
    pub total: u64,
}

/// The bytes each device needs for the tier sets `sets` (per set, per managed tensor: the type
/// it gets, None = the loaded tensor), in first-seen device order.
pub fn plan(tiers: &TensorTiers<'_>, sets: &[Vec<Option<GgmlType>>]) -> Vec<DeviceMemory> {
    let mut out: Vec<DeviceMemory> = Vec::new();
    for i in 0..tiers.weights().len() {
        let mut types: Vec<GgmlType> = sets.iter().filter_map(|s| s[i]).collect();
        types.sort_unstable();
        types.dedup();
        if types.is_empty() {
            continue;
        }
        let need: u64 = types.iter().map(|&t| tiers.bytes_in_type(i, t)).sum();
        let device = tiers.weight_device(i);
        match out.iter_mut().find(|d| d.device == device) {
            Some(d) => d.need += need,
            None => {
                let (free, total) = device_memory(&device);
                out.push(DeviceMemory {
                    device,
                    need,
                    free,
                    total,
                })
            }
        }
    }
    out
}

/// Refuses a plan that leaves less than [`RESERVE_BYTES`] free on some device (a device that
/// reports no memory figures is not checked), naming the device, the figures and what to do.
pub fn check(plan: &[DeviceMemory]) -> Result<()> {
    for d in plan {
        if d.total == 0 {
            continue;
        }
        if d.need.saturating_add(RESERVE_BYTES) > d.free {
            return Err(Error::TiersDoNotFit(format!(
                "the tiers need {:.2} GB on {} but {:.2} GB of its {:.2} GB are free ({:.2} GB \
                 are kept for the KV cache and compute buffers): manage fewer tensors \
                 (--manage/--layers), choose smaller tier types (--tiers), run without gears \
                 (--gear off), or offload fewer layers (-ngl)",
                d.need as f64 / 1e9,
                d.device,
                d.free as f64 / 1e9,
                d.total as f64 / 1e9,
                RESERVE_BYTES as f64 / 1e9
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(need: u64, free: u64) -> DeviceMemory {
        DeviceMemory {
            device: "CUDA0".into(),
            need,
            free,
            total: 80 << 30,
        }
    }

    #[test]
    fn a_plan_that_fits_passes_and_one_that_does_not_is_refused() {
        const GB: u64 = 1 << 30;
        assert!(check(&[dev(10 * GB, 12 * GB)]).is_ok());
        // Fits the free memory but not with the reserve kept for the contexts.
        let e = check(&[dev(10 * GB, 10 * GB + GB / 2)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("need 10.74 GB on CUDA0 but 11.27 GB"), "{e}");
        assert!(e.contains("-ngl"), "{e}");
        // The first device that does not fit is named.
        let mut cpu = dev(GB, 64 * GB);
        cpu.device = "CPU".into();
        let e = check(&[cpu, dev(30 * GB, 20 * GB)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("on CUDA0"), "{e}");
        // No figures: not checked.
        let mut unknown = dev(30 * GB, 0);
        unknown.total = 0;
        assert!(check(&[unknown]).is_ok());
    }
}
