//! Tier building on the GPU: a shadow whose source weight and storage both sit in the same
//! CUDA device's memory is requantized there by our kernels (csrc/cuda), without a round trip
//! through the host. Without `--features cuda` nothing qualifies and the CPU path builds all.

use crate::error::Result;
use crate::llama::weights::TensorTiers;
use crate::llama::GgmlType;

/// Whether weight `i`'s shadow in set `s` (of type `dst_type`) can be built on its GPU.
pub fn can_build(tiers: &TensorTiers<'_>, s: usize, i: usize, dst_type: GgmlType) -> bool {
    target(tiers, s, i, dst_type).is_some()
}

fn target(tiers: &TensorTiers<'_>, s: usize, i: usize, dst_type: GgmlType) -> Option<i32> {
    if !cfg!(feature = "cuda") {
        return None;
    }
    let src_type = tiers.weights()[i].ggml_type();
    if !crate::kernels::requant_supported(src_type, dst_type) {
        return None;
    }
    let (src_dev, _) = tiers.source_on_cuda(i)?;
    let (dst_dev, _) = tiers.shadow_on_cuda(s, i)?;
    (src_dev == dst_dev).then_some(src_dev)
}

/// Queues the requantization of weight `i` into its shadow in set `s` on the GPU; returns the
/// device, to [`synchronize`] before the shadow is read or used. None: not buildable there.
pub fn build(
    tiers: &TensorTiers<'_>,
    s: usize,
    i: usize,
    dst_type: GgmlType,
) -> Result<Option<i32>> {
    let Some(dev) = target(tiers, s, i, dst_type) else {
        return Ok(None);
    };
    #[cfg(feature = "cuda")]
    {
        let w = tiers.weights()[i];
        let (_, src) = tiers.source_on_cuda(i).expect("checked by target");
        let (_, dst) = tiers.shadow_on_cuda(s, i).expect("checked by target");
        // SAFETY: both pointers are device allocations on `dev` (checked by target) holding
        // the weight's values in its type and in dst_type; the model and the tiers outlive
        // the synchronize that the caller runs before using either.
        unsafe {
            crate::kernels::cuda::requant_device(
                dev,
                w.ggml_type(),
                src,
                dst_type,
                dst,
                w.n_elements(),
            )
        }?;
    }
    Ok(Some(dev))
}

/// Waits for the kernels queued on `devices`.
pub fn synchronize(devices: &[i32]) -> Result<()> {
    #[cfg(feature = "cuda")]
    for &d in devices {
        crate::kernels::cuda::synchronize(d)?;
    }
    let _ = devices;
    Ok(())
}
