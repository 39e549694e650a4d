//! The CUDA kernels of csrc/cuda (built with `--features cuda`): requantization on weights
//! already on the device and a host round trip for the parity tests and benchmarks, and the
//! switch that puts our decode products (csrc/cuda/mmv.cu) into ggml-cuda's mul_mat.

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::error::{Error, Result};
use crate::llama::GgmlType;

mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    unsafe extern "C" {
        pub fn gearbx_cuda_requant(
            device: c_int,
            src_type: c_int,
            src: *const c_void,
            dst_type: c_int,
            dst: *mut c_void,
            n: i64,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn gearbx_cuda_synchronize(device: c_int, err: *mut c_char, err_len: usize) -> c_int;
        pub fn gearbx_cuda_device_count() -> c_int;
        pub fn gearbx_mmv_install(on: c_int) -> c_int;
        pub fn gearbx_cuda_requant_host(
            device: c_int,
            src_type: c_int,
            src: *const c_void,
            src_bytes: usize,
            dst_type: c_int,
            dst: *mut c_void,
            dst_bytes: usize,
            n: i64,
            kernel_ms: *mut f32,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }
}

fn check(rc: c_int, err: &[c_char; 256]) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the C side writes a NUL-terminated message into err (zeroed beforehand).
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
    Err(Error::Llama(format!("CUDA: {msg}")))
}

/// Number of CUDA devices the driver reports (0 without a driver or GPU).
pub fn device_count() -> usize {
    // SAFETY: no arguments; returns 0 on any CUDA error.
    unsafe { ffi::gearbx_cuda_device_count() }.max(0) as usize
}

/// Queues the requantization of `n` values at device pointer `src` into `dst` on `device`.
///
/// # Safety
/// `src` and `dst` must be device allocations on `device` holding `n` values of `src_type`
/// and of `dst_type`, alive until [`synchronize`] returns.
pub unsafe fn requant_device(
    device: i32,
    src_type: GgmlType,
    src: *const c_void,
    dst_type: GgmlType,
    dst: *mut c_void,
    n: usize,
) -> Result<()> {
    let mut err = [0 as c_char; 256];
    // SAFETY: forwarded from the caller; err is a writable buffer of its stated length.
    let rc = unsafe {
        ffi::gearbx_cuda_requant(
            device,
            src_type.id() as c_int,
            src,
            dst_type.id() as c_int,
            dst,
            n as i64,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    check(rc, &err)
}

/// Waits for every queued kernel on `device`.
pub fn synchronize(device: i32) -> Result<()> {
    let mut err = [0 as c_char; 256];
    // SAFETY: err is a writable buffer of its stated length.
    let rc = unsafe { ffi::gearbx_cuda_synchronize(device, err.as_mut_ptr(), err.len()) };
    check(rc, &err)
}

/// Uploads `src` (values of `src_type`), requantizes it on device 0 into `dst_type` and
/// returns the bytes and the kernel's time in milliseconds.
pub fn requant_host(src_type: GgmlType, src: &[u8], dst_type: GgmlType) -> Result<(Vec<u8>, f32)> {
    let elem = super::source_elem_bytes(src_type)
        .ok_or_else(|| Error::InvalidParam(format!("source type {src_type} not supported")))?;
    let n = src.len() / elem;
    let bytes = super::requant_bytes(dst_type, n)
        .ok_or_else(|| Error::InvalidParam(format!("{n} values of type {dst_type}")))?;
    let mut out = vec![0u8; bytes];
    let mut ms = 0f32;
    let mut err = [0 as c_char; 256];
    // SAFETY: src and out are host buffers of the stated sizes; err as above.
    let rc = unsafe {
        ffi::gearbx_cuda_requant_host(
            0,
            src_type.id() as c_int,
            src.as_ptr() as *const c_void,
            src.len(),
            dst_type.id() as c_int,
            out.as_mut_ptr() as *mut c_void,
            out.len(),
            n as i64,
            &mut ms,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    check(rc, &err)?;
    Ok((out, ms))
}

/// Offers ggml-cuda's mul_mat our decode products (Q4_0/Q8_0/Q4_K weights times 1-8 columns,
/// csrc/cuda/mmv.cu), its fused gate/up and residual products included. Process-wide but
/// inert until a thread decodes under the [`DECODE_KERNELS`](crate::llama::cuda_graphs::DECODE_KERNELS)
/// graph variant bit (patch 0005), as the contexts of a model loaded with them do.
pub fn install_decode_kernels() {
    // SAFETY: stores two function pointers in ggml-cuda's atomics (patch 0005).
    unsafe { ffi::gearbx_mmv_install(1) };
}
