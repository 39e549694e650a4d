//! The model's weight tensors as ggml objects: finding the matrices a forward pass multiplies
//! by (via `cb_eval`), allocating shadow copies in other types, converting bytes between types,
//! and swapping a live tensor's storage in place (type, strides, data, buffer, extra).
//!
//! Everything here is raw ggml; `TensorTiers` is the safe owner that keeps the invariants.

use std::collections::HashSet;
use std::ffi::{c_void, CStr};
use std::ptr::NonNull;

use super::{sys, Context, GgmlType, Model};
use crate::error::{Error, Result};

/// A weight matrix owned by a loaded model. Valid while the model lives.
#[derive(Clone, Copy)]
pub struct WeightTensor {
    ptr: NonNull<sys::ggml_tensor>,
}

// SAFETY: the pointer refers to a tensor object owned by the model; it is only read or written
// between decodes, under `&mut TensorTiers`.
unsafe impl Send for WeightTensor {}
// SAFETY: shared access only reads fields.
unsafe impl Sync for WeightTensor {}

/// The storage-describing fields of a tensor, swapped as one unit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fields {
    ty: sys::ggml_type,
    nb: [usize; 4],
    data: *mut c_void,
    buffer: *mut sys::ggml_backend_buffer,
    extra: *mut c_void,
}

impl Fields {
    fn of(t: &sys::ggml_tensor) -> Self {
        Fields {
            ty: t.type_,
            nb: t.nb,
            data: t.data,
            buffer: t.buffer,
            extra: t.extra,
        }
    }
}

// SAFETY: plain pointers copied between threads; dereferenced only by ggml.
unsafe impl Send for Fields {}
// SAFETY: as above.
unsafe impl Sync for Fields {}

impl WeightTensor {
    fn t(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor object lives as long as the model (see the type's invariant).
        unsafe { self.ptr.as_ref() }
    }

    pub fn name(&self) -> String {
        // SAFETY: ggml tensor names are NUL-terminated within their 64-byte array.
        unsafe { CStr::from_ptr(self.t().name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// The tensor's current ggml type.
    pub fn ggml_type(&self) -> GgmlType {
        GgmlType::from_ggml(self.t().type_)
    }

    pub fn ne(&self) -> [i64; 4] {
        self.t().ne
    }

    pub fn n_elements(&self) -> usize {
        self.ne().iter().product::<i64>() as usize
    }

    /// Bytes the tensor occupies in its current type.
    pub fn nbytes(&self) -> usize {
        // SAFETY: reads the tensor's own fields.
        unsafe { sys::ggml_nbytes(self.ptr.as_ptr()) }
    }

    /// True when the data is in a repacked (interleaved) layout that cannot be read back.
    pub fn is_repacked(&self) -> bool {
        !self.t().extra.is_null()
    }

    fn fields(&self) -> Fields {
        Fields::of(self.t())
    }

    /// Reads the tensor's bytes (in its current type) from whatever device holds them.
    pub fn read_bytes(&self) -> Result<Vec<u8>> {
        self.read_prefix(self.nbytes())
    }

    /// Reads the first `len` bytes (at most the whole tensor).
    pub fn read_prefix(&self, len: usize) -> Result<Vec<u8>> {
        if self.is_repacked() {
            return Err(Error::Llama(format!(
                "{} is repacked; read it from the GGUF file",
                self.name()
            )));
        }
        let mut out = vec![0u8; len.min(self.nbytes())];
        // SAFETY: out holds at most nbytes; the tensor has a buffer (it was used in a decode).
        unsafe {
            sys::ggml_backend_tensor_get(
                self.ptr.as_ptr(),
                out.as_mut_ptr() as *mut c_void,
                0,
                out.len(),
            )
        };
        Ok(out)
    }
}

struct Probe {
    seen: HashSet<usize>,
    found: Vec<WeightTensor>,
}

unsafe extern "C" fn probe_cb(t: *mut sys::ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    if !ask {
        return true;
    }
    // SAFETY: user is the &mut Probe passed at context creation, alive during the decode;
    // t is a graph node valid during the callback; its src[0] is a tensor or NULL.
    unsafe {
        let probe = &mut *(user as *mut Probe);
        if (*t).op == sys::GGML_OP_MUL_MAT {
            let w = (*t).src[0];
            if !w.is_null()
                && !(*w).buffer.is_null()
                && sys::ggml_backend_buffer_get_usage((*w).buffer)
                    == sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS
                && probe.seen.insert(w as usize)
            {
                probe.found.push(WeightTensor {
                    ptr: NonNull::new_unchecked(w),
                });
            }
        }
    }
    false
}

/// Runs one small decode with an eval callback and returns every weight matrix the graph
/// multiplies by (in graph order), e.g. `blk.N.attn_q.weight` … and the output matrix.
pub fn find_matmul_weights(model: &Model, n_threads: i32) -> Result<Vec<WeightTensor>> {
    let mut probe = Probe {
        seen: HashSet::new(),
        found: Vec::new(),
    };
    // SAFETY: plain struct of defaults.
    let mut p = unsafe { sys::llama_context_default_params() };
    p.n_ctx = 32;
    p.n_batch = 32;
    p.n_ubatch = 32;
    p.n_threads = n_threads;
    p.n_threads_batch = n_threads;
    p.cb_eval = Some(probe_cb);
    p.cb_eval_user_data = &mut probe as *mut Probe as *mut c_void;
    // SAFETY: the model is valid; probe outlives the context, which is freed below.
    let ctx = unsafe { sys::llama_init_from_model(model.as_ptr(), p) };
    if ctx.is_null() {
        return Err(Error::Llama("could not create the probe context".into()));
    }
    // A model without a tokenizer (a `crate::synth` benchmark model) cannot tokenize, and
    // any decode finds the same matrices: probe it, or an empty tokenization, with token 0.
    let mut toks = if model.has_tokenizer() {
        model.tokenize("Hello world", true, false)?
    } else {
        Vec::new()
    };
    if toks.is_empty() {
        toks.push(0);
    }
    // SAFETY: ctx is valid and toks is a live buffer for the call.
    let rc = unsafe {
        sys::llama_decode(
            ctx,
            sys::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32),
        )
    };
    // SAFETY: ctx came from llama_init_from_model; freed once.
    unsafe { sys::llama_free(ctx) };
    if rc != 0 {
        return Err(Error::Llama(format!("probe decode failed ({rc})")));
    }
    Ok(probe.found)
}

/// Converts a row-major tensor's bytes from `ty` to f32.
pub fn to_f32(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    to_f32_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Whether `bytes` hold exactly `n` values of `ty`.
fn check_values(ty: GgmlType, bytes: &[u8], n: usize) -> Result<()> {
    let (blck, per) = ty.layout();
    if !(n as u64).is_multiple_of(blck) || bytes.len() as u64 != n as u64 / blck * per {
        return Err(Error::Llama(format!(
            "{} bytes do not hold {n} values of type {ty}",
            bytes.len(),
        )));
    }
    Ok(())
}

/// Converts `bytes` (values of `ty`) to f32 into `out`, whose length says how many: F32, F16
/// and BF16 here (F16 through the SIMD converter), every other type by ggml's to_float.
pub fn to_f32_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_values(ty, bytes, out.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            Ok(())
        }
        GgmlType::F16 => {
            crate::kernels::f16_to_f32_into(bytes, out);
            Ok(())
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
            Ok(())
        }
        _ => to_f32_ggml_into(ty, bytes, out),
    }
}

/// Converts `bytes` (values of `ty`) to f32 into `out` with ggml's own to_float for the type
/// (the reference for [`to_f32_into`]).
pub fn to_f32_ggml_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_values(ty, bytes, out.len())?;
    // SAFETY: valid type id; the traits table is static.
    let traits = unsafe { &*sys::ggml_get_type_traits(ty.id() as sys::ggml_type) };
    let f = traits
        .to_float
        .ok_or_else(|| Error::Llama(format!("type {ty} cannot be dequantized")))?;
    // SAFETY: bytes holds exactly n values of `ty` (checked above); out holds n floats.
    unsafe {
        f(
            bytes.as_ptr() as *const c_void,
            out.as_mut_ptr(),
            out.len() as i64,
        )
    };
    Ok(())
}

/// Values per chunk of [`requantize`]: 256 KiB of f32, which stays in the L2 cache between
/// the conversion and the quantizers.
const REQUANT_CHUNK_VALUES: usize = 64 * 1024;

/// `rows` rows of `n_per_row` values of `src_type` (bytes) requantized into each of `types`,
/// a chunk of rows at a time: each chunk is converted to f32 once (in cache) and quantized
/// into every type, so no f32 copy of the whole tensor is made. Output bit-identical to
/// [`to_f32`] then [`quantize`] per type.
pub fn requantize(
    src_type: GgmlType,
    bytes: &[u8],
    rows: usize,
    n_per_row: usize,
    types: &[GgmlType],
) -> Result<Vec<Vec<u8>>> {
    let (blck, blck_bytes) = src_type.layout();
    if !(n_per_row as u64).is_multiple_of(blck)
        || bytes.len() as u64 != (rows * n_per_row) as u64 / blck * blck_bytes
    {
        return Err(Error::Llama(format!(
            "{} bytes do not hold {rows} rows of {n_per_row} values of type {src_type}",
            bytes.len()
        )));
    }
    let src_row = n_per_row / blck as usize * blck_bytes as usize;
    let mut outs = types
        .iter()
        .map(|&ty| {
            // SAFETY: valid type id; row_size only computes.
            let row = unsafe { sys::ggml_row_size(ty.id() as sys::ggml_type, n_per_row as i64) };
            Ok((row, vec![0u8; row * rows]))
        })
        .collect::<Result<Vec<_>>>()?;
    let chunk_rows = (REQUANT_CHUNK_VALUES / n_per_row.max(1)).max(1);
    let mut f32s = vec![0f32; chunk_rows.min(rows) * n_per_row];
    for r0 in (0..rows).step_by(chunk_rows) {
        let nr = chunk_rows.min(rows - r0);
        let x = &mut f32s[..nr * n_per_row];
        to_f32_into(src_type, &bytes[r0 * src_row..(r0 + nr) * src_row], x)?;
        for (&ty, (row, out)) in types.iter().zip(outs.iter_mut()) {
            quantize_into(ty, x, nr, n_per_row, &mut out[r0 * *row..(r0 + nr) * *row])?;
        }
    }
    Ok(outs.into_iter().map(|(_, o)| o).collect())
}

/// Quantizes `rows` rows of `n_per_row` floats into `ty`: through our SIMD twin where this CPU
/// has one for `ty` (bit-identical to ggml's reference, rows of whole blocks), else as
/// [`quantize_ggml`].
pub fn quantize(ty: GgmlType, data: &[f32], rows: usize, n_per_row: usize) -> Result<Vec<u8>> {
    quantize_with(quantize_into, ty, data, rows, n_per_row)
}

type QuantizeInto = fn(GgmlType, &[f32], usize, usize, &mut [u8]) -> Result<()>;

/// The output of `into` for `rows` rows of `n_per_row` floats, in a buffer of their size.
fn quantize_with(
    into: QuantizeInto,
    ty: GgmlType,
    data: &[f32],
    rows: usize,
    n_per_row: usize,
) -> Result<Vec<u8>> {
    check_rows(ty, data, rows, n_per_row)?;
    // SAFETY: valid type id (checked); row_size only computes.
    let row = unsafe { sys::ggml_row_size(ty.id() as sys::ggml_type, n_per_row as i64) };
    let mut out = vec![0u8; row * rows];
    into(ty, data, rows, n_per_row, &mut out)?;
    Ok(out)
}

fn quantize_into(
    ty: GgmlType,
    data: &[f32],
    rows: usize,
    n_per_row: usize,
    out: &mut [u8],
) -> Result<()> {
    check_rows(ty, data, rows, n_per_row)?;
    if crate::kernels::quantize_fast_into(ty, data, out) {
        return Ok(());
    }
    quantize_ggml_into(ty, data, rows, n_per_row, out)
}

/// Quantizes `rows` rows of `n_per_row` floats into `ty` with ggml's reference quantizers
/// (`ggml_quantize_chunk`, no importance matrix).
pub fn quantize_ggml(ty: GgmlType, data: &[f32], rows: usize, n_per_row: usize) -> Result<Vec<u8>> {
    quantize_with(quantize_ggml_into, ty, data, rows, n_per_row)
}

/// Whether `rows` rows of `n_per_row` values fit `ty`'s blocks, `data` holds them all, and
/// `ty` quantizes without an importance matrix.
fn check_rows(ty: GgmlType, data: &[f32], rows: usize, n_per_row: usize) -> Result<()> {
    let (blck, _) = ty.layout();
    if !(n_per_row as u64).is_multiple_of(blck) {
        return Err(Error::Llama(format!(
            "rows of {n_per_row} do not fit {ty} blocks of {blck}"
        )));
    }
    // SAFETY: valid type id.
    if unsafe { sys::ggml_quantize_requires_imatrix(ty.id() as sys::ggml_type) } {
        return Err(Error::InvalidParam(format!(
            "{ty} needs an importance matrix; pick another tier type"
        )));
    }
    if data.len() != rows * n_per_row {
        return Err(Error::Llama(format!(
            "{} values are not {rows} rows of {n_per_row}",
            data.len()
        )));
    }
    Ok(())
}

fn quantize_ggml_into(
    ty: GgmlType,
    data: &[f32],
    rows: usize,
    n_per_row: usize,
    out: &mut [u8],
) -> Result<()> {
    check_rows(ty, data, rows, n_per_row)?;
    let raw = ty.id() as sys::ggml_type;
    // SAFETY: valid type id; row_size only computes.
    let row = unsafe { sys::ggml_row_size(raw, n_per_row as i64) };
    if out.len() != row * rows {
        return Err(Error::Llama(format!(
            "{} bytes do not hold {rows} rows of {ty}",
            out.len()
        )));
    }
    // SAFETY: data holds rows*n_per_row floats, out holds rows*row bytes (both checked), no
    // imatrix (checked).
    let written = unsafe {
        sys::ggml_quantize_chunk(
            raw,
            data.as_ptr(),
            out.as_mut_ptr() as *mut c_void,
            0,
            rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    if written != out.len() {
        return Err(Error::Llama(format!(
            "quantizing to {ty} wrote {written} of {} bytes",
            out.len()
        )));
    }
    Ok(())
}

/// The CUDA device whose memory holds `buffer` (buffer types named `CUDA<n>`); None for host
/// memory (`CUDA_Host` included) and every other backend.
fn cuda_device_of(buffer: sys::ggml_backend_buffer_t) -> Option<i32> {
    if buffer.is_null() {
        return None;
    }
    // SAFETY: a live buffer; its type's name is a static string.
    let name = unsafe {
        CStr::from_ptr(sys::ggml_backend_buft_name(
            sys::ggml_backend_buffer_get_type(buffer),
        ))
    };
    name.to_str().ok()?.strip_prefix("CUDA")?.parse().ok()
}

/// Distinct names of the buffer types in `buffers` ("CUDA0", "CPU_REPACK", "CPU").
fn buffer_type_names(buffers: impl Iterator<Item = sys::ggml_backend_buffer_t>) -> Vec<String> {
    let mut names: Vec<String> = buffers
        .filter(|b| !b.is_null())
        // SAFETY: live buffers; type names are static strings.
        .map(|b| {
            unsafe {
                CStr::from_ptr(sys::ggml_backend_buft_name(
                    sys::ggml_backend_buffer_get_type(b),
                ))
            }
            .to_string_lossy()
            .into_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A ggml context plus the one backend buffer its tensors live in.
struct ShadowGroup {
    ctx: NonNull<sys::ggml_context>,
    buffer: sys::ggml_backend_buffer_t,
}

impl Drop for ShadowGroup {
    fn drop(&mut self) {
        // SAFETY: both came from ggml_init / alloc_ctx_tensors and are freed once; no live
        // model tensor points into them (TensorTiers restores originals before dropping).
        unsafe {
            if !self.buffer.is_null() {
                sys::ggml_backend_buffer_free(self.buffer);
            }
            sys::ggml_free(self.ctx.as_ptr());
        }
    }
}

/// CPU's repacking buffer type (interleaved layouts that decode faster), if this build has one.
fn cpu_repack_buft() -> Option<sys::ggml_backend_buffer_type_t> {
    // SAFETY: registry lookups; the proc address, when present, has the documented signature.
    unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        if dev.is_null() {
            return None;
        }
        let reg = sys::ggml_backend_dev_backend_reg(dev);
        let f = sys::ggml_backend_reg_get_proc_address(
            reg,
            c"ggml_backend_dev_get_extra_bufts".as_ptr(),
        );
        if f.is_null() {
            return None;
        }
        let f: sys::ggml_backend_dev_get_extra_bufts_t = std::mem::transmute(f);
        let mut p = f?(dev);
        while !p.is_null() && !(*p).is_null() {
            let name = CStr::from_ptr(sys::ggml_backend_buft_name(*p)).to_string_lossy();
            if name.contains("REPACK") {
                return Some(*p);
            }
            p = p.add(1);
        }
        None
    }
}

/// Whether the CPU can multiply by a weight of this type and shape from `buft` (llama.cpp's
/// own test: a dummy MUL_MAT whose weight sits in a zero-size buffer of that type).
fn cpu_supports_weight_in(buft: sys::ggml_backend_buffer_type_t, ty: u32, ne: [i64; 4]) -> bool {
    // SAFETY: a throwaway no-alloc context and a zero-size buffer, both freed here.
    unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        if dev.is_null() {
            return false;
        }
        let ctx = sys::ggml_init(sys::ggml_init_params {
            mem_size: sys::ggml_tensor_overhead() * 8,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        });
        if ctx.is_null() {
            return false;
        }
        let buf = sys::ggml_backend_buft_alloc_buffer(buft, 0);
        let w = sys::ggml_new_tensor_4d(ctx, ty as sys::ggml_type, ne[0], ne[1], ne[2], ne[3]);
        let b = sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_F32, ne[0], 512, ne[2], ne[3]);
        let op = sys::ggml_mul_mat(ctx, w, b);
        // Only the weight sits in the buffer under test, as in llama.cpp's loader.
        (*w).buffer = buf;
        let ok = !buf.is_null() && sys::ggml_backend_dev_supports_op(dev, op);
        if !buf.is_null() {
            sys::ggml_backend_buffer_free(buf);
        }
        sys::ggml_free(ctx);
        ok
    }
}

/// MemAvailable of /proc/meminfo, in bytes.
pub fn host_available_memory() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Free and total memory of device `name` in bytes, as its backend reports them; for the CPU,
/// the system's available and total memory. (0, 0) for an unknown device.
pub fn device_memory(name: &str) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(name) else {
        return (0, 0);
    };
    // SAFETY: the name is NUL-terminated; an unknown name gives null.
    let dev = unsafe { sys::ggml_backend_dev_by_name(c.as_ptr()) };
    if dev.is_null() {
        return (0, 0);
    }
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: dev is a registered device; both outputs are writable.
    let ty = unsafe {
        sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
        sys::ggml_backend_dev_type(dev)
    };
    let mut free = free as u64;
    if ty == sys::GGML_BACKEND_DEVICE_TYPE_CPU {
        // ggml calls all of the system's memory free; MemAvailable is what is.
        free = host_available_memory().unwrap_or(free).min(free);
    }
    (free, total as u64)
}

/// Owns shadow copies of a model's weight tensors and swaps the live tensors between their
/// loaded storage (set 0) and each shadow set. Dropping it restores the loaded storage.
pub struct TensorTiers<'m> {
    weights: Vec<WeightTensor>,
    original: Vec<Fields>,
    /// Per set: one shadow tensor per weight (None: that weight keeps its loaded storage).
    sets: Vec<Vec<Option<NonNull<sys::ggml_tensor>>>>,
    /// Per set and weight: the shadow is an earlier set's (same type), stored once.
    shared: Vec<Vec<bool>>,
    groups: Vec<ShadowGroup>,
    set_bytes: Vec<u64>,
    active: usize,
    model: &'m Model,
}

// SAFETY: all raw pointers are owned by this object or by the model it borrows; mutation needs
// &mut self.
unsafe impl Send for TensorTiers<'_> {}
// SAFETY: &self methods only read fields or write shadow tensors' data through
// ggml_backend_tensor_set, which is safe for distinct tensors from different threads.
unsafe impl Sync for TensorTiers<'_> {}

impl<'m> TensorTiers<'m> {
    /// The model whose tensors these tiers swap.
    pub(crate) fn model(&self) -> &'m Model {
        self.model
    }

    /// Takes charge of `weights` (from [`find_matmul_weights`] on `model`).
    pub fn new(model: &'m Model, weights: Vec<WeightTensor>) -> Self {
        let original = weights.iter().map(|w| w.fields()).collect();
        let bytes = weights.iter().map(|w| w.nbytes() as u64).sum();
        Self {
            weights,
            original,
            sets: Vec::new(),
            groups: Vec::new(),
            set_bytes: vec![bytes],
            shared: Vec::new(),
            active: 0,
            model,
        }
    }

    pub fn weights(&self) -> &[WeightTensor] {
        &self.weights
    }

    /// Number of sets including the loaded one (set 0).
    pub fn n_sets(&self) -> usize {
        1 + self.sets.len()
    }

    /// Bytes of the managed weights in each set (set 0 = as loaded).
    pub fn set_bytes(&self) -> &[u64] {
        &self.set_bytes
    }

    /// Allocates a shadow set: weight i gets type `types[i]` (None: keep the loaded tensor).
    /// A weight that an earlier set already holds in that type shares its shadow (stored
    /// once). On CPU, types the repacking buffer supports for that shape go there. Returns the
    /// set index; fill it with [`TensorTiers::fill`].
    pub fn add_set(&mut self, types: &[Option<GgmlType>]) -> Result<usize> {
        assert_eq!(types.len(), self.weights.len());
        let repack = if self.model.repacks() {
            cpu_repack_buft()
        } else {
            None
        };
        let mut set = vec![None; self.weights.len()];
        let mut shared = vec![false; self.weights.len()];
        let mut bytes = 0u64;
        // Group by destination buffer type.
        let mut by_buft: Vec<(sys::ggml_backend_buffer_type_t, Vec<usize>)> = Vec::new();
        for (i, (w, ty)) in self.weights.iter().zip(types).enumerate() {
            let Some(ty) = *ty else { continue };
            // SAFETY: shadow tensors live as long as self.
            let earlier = self
                .sets
                .iter()
                .filter_map(|s| s[i])
                .find(|t| unsafe { t.as_ref() }.type_ == ty.id());
            if let Some(t) = earlier {
                set[i] = Some(t);
                shared[i] = true;
                // SAFETY: as above; nbytes reads the tensor's own fields.
                bytes += unsafe { sys::ggml_nbytes(t.as_ptr()) } as u64;
                continue;
            }
            let f = self.original[i];
            // SAFETY: every weight has a buffer (it took part in a decode).
            let orig_buft = unsafe { sys::ggml_backend_buffer_get_type(f.buffer) };
            // SAFETY: querying a valid buffer type.
            let on_host_cpu =
                unsafe { sys::ggml_backend_buffer_is_host(f.buffer) } || !f.extra.is_null();
            let buft = if on_host_cpu {
                match repack {
                    Some(r) if cpu_supports_weight_in(r, ty.id(), w.ne()) => r,
                    // SAFETY: returns the static CPU buffer type.
                    _ => unsafe { sys::ggml_backend_cpu_buffer_type() },
                }
            } else {
                orig_buft
            };
            match by_buft.iter_mut().find(|(b, _)| *b == buft) {
                Some((_, v)) => v.push(i),
                None => by_buft.push((buft, vec![i])),
            }
        }
        for (i, t) in types.iter().enumerate() {
            if t.is_none() {
                bytes += self.weights[i].nbytes() as u64;
            }
        }
        for (buft, idx) in by_buft {
            // SAFETY: no-alloc context sized for idx.len() tensor headers.
            let ctx = unsafe {
                sys::ggml_init(sys::ggml_init_params {
                    mem_size: sys::ggml_tensor_overhead() * (idx.len() + 1),
                    mem_buffer: std::ptr::null_mut(),
                    no_alloc: true,
                })
            };
            let ctx = NonNull::new(ctx).ok_or_else(|| Error::Llama("ggml_init failed".into()))?;
            let mut group = ShadowGroup {
                ctx,
                buffer: std::ptr::null_mut(),
            };
            for &i in &idx {
                let w = self.weights[i];
                let ne = w.ne();
                let ty = types[i].expect("grouped");
                // SAFETY: ctx has room for this header; shape copied from the live tensor.
                let t = unsafe {
                    sys::ggml_new_tensor_4d(
                        ctx.as_ptr(),
                        ty.id() as sys::ggml_type,
                        ne[0],
                        ne[1],
                        ne[2],
                        ne[3],
                    )
                };
                set[i] = Some(
                    NonNull::new(t).ok_or_else(|| Error::Llama("ggml_new_tensor failed".into()))?,
                );
            }
            // SAFETY: allocates every tensor of ctx in one buffer of buft.
            let buffer =
                unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.as_ptr(), buft) };
            if buffer.is_null() {
                return Err(Error::Llama(
                    "out of memory allocating a weight tier".into(),
                ));
            }
            // SAFETY: buffer is valid; marking it as weights lets the scheduler treat it so.
            unsafe {
                sys::ggml_backend_buffer_set_usage(buffer, sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
            };
            // SAFETY: querying a valid buffer.
            bytes += unsafe { sys::ggml_backend_buffer_get_size(buffer) } as u64;
            group.buffer = buffer;
            self.groups.push(group);
        }
        self.sets.push(set);
        self.shared.push(shared);
        self.set_bytes.push(bytes);
        Ok(self.sets.len())
    }

    /// The type weight `i` has in set `s`.
    pub fn type_in_set(&self, s: usize, i: usize) -> GgmlType {
        GgmlType::from_ggml(match s {
            0 => self.original[i].ty,
            // SAFETY: shadow tensors live as long as self.
            _ => self.sets[s - 1][i].map_or(self.original[i].ty, |t| unsafe { t.as_ref() }.type_),
        })
    }

    /// Bytes of weight `i`'s own shadow in set `s` (None: nothing to build there: the weight
    /// keeps its loaded storage, or shares an earlier set's shadow).
    pub fn shadow_nbytes(&self, s: usize, i: usize) -> Option<usize> {
        if self.shared[s - 1][i] {
            return None;
        }
        // SAFETY: shadow tensors live as long as self; nbytes reads their own fields.
        self.sets[s - 1][i].map(|t| unsafe { sys::ggml_nbytes(t.as_ptr()) })
    }

    /// The name of the device that weight `i`'s shadows go to (that of its loaded storage).
    pub fn weight_device(&self, i: usize) -> String {
        let f = self.original[i];
        // SAFETY: every weight has a live buffer; its type and device are static objects. A
        // host buffer type (the mmap'd model, CPU_REPACK) may name no device: that is the CPU.
        let dev = unsafe {
            sys::ggml_backend_buft_get_device(sys::ggml_backend_buffer_get_type(f.buffer))
        };
        if dev.is_null() {
            return "CPU".into();
        }
        // SAFETY: dev is a registered device; its name is a static NUL-terminated string.
        unsafe { CStr::from_ptr(sys::ggml_backend_dev_name(dev)) }
            .to_string_lossy()
            .into_owned()
    }

    /// Bytes weight `i` takes in type `ty` (ggml's row size times its rows).
    pub fn bytes_in_type(&self, i: usize, ty: GgmlType) -> u64 {
        let ne = self.weights[i].ne();
        // SAFETY: a pure function of its arguments.
        let row = unsafe { sys::ggml_row_size(ty.id() as sys::ggml_type, ne[0]) } as u64;
        row * (ne[1] * ne[2] * ne[3]) as u64
    }

    /// Whether weight `i`'s shadow in set `s` is an earlier set's (the same type, stored once).
    pub fn shadow_is_shared(&self, s: usize, i: usize) -> bool {
        s > 0 && self.shared[s - 1][i]
    }

    /// Bytes of all shadow buffers together (shared shadows counted once).
    pub fn shadow_bytes(&self) -> u64 {
        self.groups
            .iter()
            // SAFETY: every group's buffer is live until self drops.
            .map(|g| unsafe { sys::ggml_backend_buffer_get_size(g.buffer) } as u64)
            .sum()
    }

    /// Where the loaded weight `i` lives when that is CUDA memory: (device, data pointer).
    pub fn source_on_cuda(&self, i: usize) -> Option<(i32, *const c_void)> {
        let f = self.original[i];
        cuda_device_of(f.buffer).map(|d| (d, f.data as *const c_void))
    }

    /// Where weight `i`'s shadow in set `s` lives when that is CUDA memory.
    pub fn shadow_on_cuda(&self, s: usize, i: usize) -> Option<(i32, *mut c_void)> {
        let t = self.sets[s - 1][i]?;
        // SAFETY: shadow tensors live as long as self.
        let t = unsafe { t.as_ref() };
        cuda_device_of(t.buffer).map(|d| (d, t.data))
    }

    /// The buffer types holding set `s` (set 0: the loaded weights), e.g. `["CUDA0"]`.
    pub fn set_placement(&self, s: usize) -> Vec<String> {
        if s == 0 {
            return buffer_type_names(self.original.iter().map(|f| f.buffer));
        }
        buffer_type_names(self.sets[s - 1].iter().enumerate().map(|(i, t)| match t {
            // SAFETY: shadow tensors live as long as self.
            Some(t) => unsafe { t.as_ref() }.buffer,
            None => self.original[i].buffer,
        }))
    }

    /// Reads weight `i`'s shadow in set `s` back to the host.
    pub fn read_shadow(&self, s: usize, i: usize) -> Result<Vec<u8>> {
        let t =
            self.sets[s - 1][i].ok_or_else(|| Error::Llama("no shadow for this weight".into()))?;
        // SAFETY: t is a shadow allocated by add_set; nbytes reads its own fields.
        let n = unsafe { sys::ggml_nbytes(t.as_ptr()) };
        let mut out = vec![0u8; n];
        // SAFETY: t has n bytes of backend storage; out holds n bytes.
        unsafe { sys::ggml_backend_tensor_get(t.as_ptr(), out.as_mut_ptr() as *mut c_void, 0, n) };
        Ok(out)
    }

    /// Writes `bytes` (already in the set's type) into weight `i`'s shadow in set `s`.
    /// Safe to call from several threads for different tensors.
    pub fn fill(&self, s: usize, i: usize, bytes: &[u8]) -> Result<()> {
        let t =
            self.sets[s - 1][i].ok_or_else(|| Error::Llama("no shadow for this weight".into()))?;
        // SAFETY: t is a shadow allocated by add_set; nbytes reads its own fields.
        let n = unsafe { sys::ggml_nbytes(t.as_ptr()) };
        if n != bytes.len() {
            return Err(Error::Llama(format!(
                "tier data is {} bytes, the tensor needs {n}",
                bytes.len()
            )));
        }
        // SAFETY: t has n bytes of backend storage; bytes holds n bytes.
        unsafe { sys::ggml_backend_tensor_set(t.as_ptr(), bytes.as_ptr() as *const c_void, 0, n) };
        Ok(())
    }

    /// Points every managed tensor at set `s` (0 = as loaded). The caller must have
    /// synchronized the context (no decode in flight); [`TensorTiers::activate_synced`] does.
    fn activate(&mut self, s: usize) {
        for (i, w) in self.weights.iter().enumerate() {
            let f = match s {
                0 => self.original[i],
                _ => match self.sets[s - 1][i] {
                    // SAFETY: shadow tensors live as long as self.
                    Some(t) => Fields::of(unsafe { t.as_ref() }),
                    None => self.original[i],
                },
            };
            // SAFETY: the live tensor keeps its shape (ne) and name; the new storage has the
            // same shape in type f.ty and outlives its use (owned by self, restored on drop);
            // no computation is running (the caller synchronized).
            unsafe {
                let t = &mut *w.ptr.as_ptr();
                t.type_ = f.ty;
                t.nb = f.nb;
                t.data = f.data;
                t.buffer = f.buffer;
                t.extra = f.extra;
            }
        }
        if s != self.active {
            // RPC servers hold the graphs they were sent with the old weights' addresses.
            super::rpc::invalidate_graphs();
        }
        self.active = s;
        // Decodes from now on run under set s's CUDA graph variant (Context::decode).
        self.model.set_weight_variant(s as u64);
    }

    /// Waits for the context's pending work, then switches to set `s`.
    pub fn activate_synced(&mut self, ctx: &Context<'_>, s: usize) {
        // SAFETY: a Context holds a live llama_context.
        unsafe { self.activate_synced_raw(ctx.as_ptr(), s) }
    }

    /// [`TensorTiers::activate_synced`] on a context a host program owns.
    ///
    /// # Safety
    /// `ctx` must be a live `llama_context` of this model.
    pub unsafe fn activate_synced_raw(&mut self, ctx: *mut sys::llama_context, s: usize) {
        if s != self.active {
            // SAFETY: the caller guarantees ctx is live; synchronize only waits.
            unsafe { sys::llama_synchronize(ctx) };
            self.activate(s);
        }
    }

    /// The active set.
    pub fn active(&self) -> usize {
        self.active
    }

    /// The type each managed tensor has right now (introspection for tests and telemetry).
    pub fn current_types(&self) -> Vec<(String, GgmlType)> {
        self.weights
            .iter()
            .map(|w| (w.name(), w.ggml_type()))
            .collect()
    }
}

impl Drop for TensorTiers<'_> {
    fn drop(&mut self) {
        // Leave the model exactly as loaded before the shadow buffers go away.
        self.activate(0);
    }
}
