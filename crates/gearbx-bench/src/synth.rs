//! Synthetic benchmark models: writes random-weight F16 GGUF files of real Llama shapes
//! (Llama-3.2-1B, Llama-3.1-8B, a tiny smoke-test shape) so hardware can be measured without
//! downloading a model.
//!
//! The files follow `mkmodel.py`: architecture `llama`, F16 matrices of normal(0, 0.02) values,
//! F32 norms and `rope_freqs` of ones, and no real tokenizer (`tokenizer.ggml.model = "none"`
//! plus `llama.vocab_size`, for which llama.cpp makes `n_vocab` dummy tokens). Such a model
//! decodes token ids but cannot tokenize text.
//!
//! Values come from a pool of 2^22 + 2^16 seeded normals (SplitMix64 + Box-Muller, converted to
//! F16 with round-to-nearest-even); every run of 2^16 elements of a tensor is a copy of the pool
//! from an offset hashed from (seed, tensor, run). The bytes at each file position therefore
//! depend only on the shape and the seed, so buffers are filled in parallel, whatever the number
//! of threads, and the output is the same for the same seed.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use serde::Serialize;

use gearbx::error::{Error, Result};
use gearbx_llama_sys as sys;

/// GGUF data alignment (`general.alignment`, also llama.cpp's default).
const ALIGNMENT: u64 = 32;
const GGUF_VERSION: u32 = 3;
// Type ids from ggml's and llama.cpp's headers (the bindings), as the file stores them.
const GGML_TYPE_F32: u32 = sys::GGML_TYPE_F32;
const GGML_TYPE_F16: u32 = sys::GGML_TYPE_F16;
const FTYPE_MOSTLY_F16: u32 = sys::LLAMA_FTYPE_MOSTLY_F16;
const GGUF_U32: u32 = sys::GGUF_TYPE_UINT32;
const GGUF_F32: u32 = sys::GGUF_TYPE_FLOAT32;
const GGUF_STRING: u32 = sys::GGUF_TYPE_STRING;
/// Standard deviation of the weights.
const WEIGHT_STD: f64 = 0.02;
/// Distinct offsets into the value pool.
const POOL_LEN: usize = 1 << 22;
/// Elements copied from one pool offset; the pool holds POOL_LEN + RUN values so a run never
/// wraps.
const RUN: usize = 1 << 16;
/// Normals generated from one seed when building the pool (independent of the thread count).
const POOL_BLOCK: usize = 1 << 16;
/// Bytes handed to one write call (a multiple of ALIGNMENT).
const BUF_BYTES: usize = 32 << 20;
/// Buffers in flight between the fillers and the writer thread.
const N_BUFS: usize = 3;

/// The hyperparameters of a Llama-architecture model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Short name; the file's `general.name` is `synthetic-<name>`.
    pub name: String,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_vocab: u32,
    /// Output matrix tied to the token embeddings (no `output.weight`).
    pub tied: bool,
    /// `llama.context_length` (the trained context).
    pub n_ctx: u32,
}

/// What [`write`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub tensors: usize,
    /// Size of the file.
    pub bytes: u64,
    /// Wall time of the whole write, including the final fsync.
    pub seconds: f64,
}

impl Shape {
    /// Names accepted by [`Shape::preset`] (`1b` and `8b`, mkmodel.py's names, also work).
    pub const PRESETS: &'static [&'static str] = &["llama-3.2-1b", "llama-3.1-8b", "tiny"];

    /// A preset shape by name (case-insensitive).
    pub fn preset(name: &str) -> Option<Shape> {
        #[allow(clippy::too_many_arguments)]
        fn s(
            name: &str,
            n_embd: u32,
            n_layer: u32,
            n_head: u32,
            n_head_kv: u32,
            n_ff: u32,
            n_vocab: u32,
            tied: bool,
            n_ctx: u32,
        ) -> Shape {
            Shape {
                name: name.into(),
                n_embd,
                n_layer,
                n_head,
                n_head_kv,
                n_ff,
                n_vocab,
                tied,
                n_ctx,
            }
        }
        match name.to_ascii_lowercase().as_str() {
            "llama-3.2-1b" | "1b" => Some(s(
                "llama-3.2-1b",
                2048,
                16,
                32,
                8,
                8192,
                128256,
                true,
                131072,
            )),
            "llama-3.1-8b" | "8b" => Some(s(
                "llama-3.1-8b",
                4096,
                32,
                32,
                8,
                14336,
                128256,
                false,
                131072,
            )),
            "tiny" => Some(s("tiny", 256, 2, 8, 2, 512, 1000, true, 4096)),
            _ => None,
        }
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head.max(1)
    }

    /// Checks the shape describes a model llama.cpp can build.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidParam(format!("shape {}: {why}", self.name)));
        for (v, what) in [
            (self.n_embd, "n_embd"),
            (self.n_layer, "n_layer"),
            (self.n_head, "n_head"),
            (self.n_head_kv, "n_head_kv"),
            (self.n_ff, "n_ff"),
            (self.n_vocab, "n_vocab"),
            (self.n_ctx, "n_ctx"),
        ] {
            if v == 0 {
                return bad(format!("{what} is 0"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "n_head {} is not a multiple of n_head_kv {}",
                self.n_head, self.n_head_kv
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head dimension {} is odd", self.head_dim()));
        }
        if self.n_vocab > i32::MAX as u32 {
            return bad(format!("n_vocab {} does not fit a token id", self.n_vocab));
        }
        Ok(())
    }

    /// Number of weights (every tensor's elements, norms included).
    pub fn n_params(&self) -> u64 {
        tensor_table(self).iter().map(|t| t.n_elements()).sum()
    }

    /// Size of the file [`write`] produces.
    pub fn file_bytes(&self) -> u64 {
        let tensors = tensor_table(self);
        header(self, &tensors).len() as u64 + data_len(&tensors)
    }
}

/// One tensor of the file: name, ggml dimensions (`ne[0]` is the row length), type, and its
/// byte offset from the start of the data section.
struct Tensor {
    name: String,
    ne: Vec<u64>,
    ty: u32,
    offset: u64,
}

impl Tensor {
    fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    fn size(&self) -> u64 {
        self.n_elements() * if self.ty == GGML_TYPE_F32 { 4 } else { 2 }
    }
}

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// The tensors in mkmodel.py's order, with their data offsets laid out.
fn tensor_table(s: &Shape) -> Vec<Tensor> {
    let (e, ff, v) = (s.n_embd as u64, s.n_ff as u64, s.n_vocab as u64);
    let hd = s.head_dim() as u64;
    let kv = s.n_head_kv as u64 * hd;
    // (name, ggml ne = numpy shape reversed, type)
    let mut specs: Vec<(String, Vec<u64>, u32)> = vec![
        ("token_embd.weight".into(), vec![e, v], GGML_TYPE_F16),
        ("rope_freqs.weight".into(), vec![hd / 2], GGML_TYPE_F32),
    ];
    for i in 0..s.n_layer {
        let p = format!("blk.{i}.");
        specs.extend([
            (format!("{p}attn_norm.weight"), vec![e], GGML_TYPE_F32),
            (format!("{p}attn_q.weight"), vec![e, e], GGML_TYPE_F16),
            (format!("{p}attn_k.weight"), vec![e, kv], GGML_TYPE_F16),
            (format!("{p}attn_v.weight"), vec![e, kv], GGML_TYPE_F16),
            (format!("{p}attn_output.weight"), vec![e, e], GGML_TYPE_F16),
            (format!("{p}ffn_norm.weight"), vec![e], GGML_TYPE_F32),
            (format!("{p}ffn_gate.weight"), vec![e, ff], GGML_TYPE_F16),
            (format!("{p}ffn_up.weight"), vec![e, ff], GGML_TYPE_F16),
            (format!("{p}ffn_down.weight"), vec![ff, e], GGML_TYPE_F16),
        ]);
    }
    specs.push(("output_norm.weight".into(), vec![e], GGML_TYPE_F32));
    if !s.tied {
        specs.push(("output.weight".into(), vec![e, v], GGML_TYPE_F16));
    }
    let mut offset = 0;
    specs
        .into_iter()
        .map(|(name, ne, ty)| {
            let t = Tensor {
                name,
                ne,
                ty,
                offset,
            };
            offset += align(t.size());
            t
        })
        .collect()
}

/// Bytes of the data section: every tensor padded to the alignment.
fn data_len(tensors: &[Tensor]) -> u64 {
    tensors.last().map_or(0, |t| t.offset + align(t.size()))
}

fn put_u32(h: &mut Vec<u8>, v: u32) {
    h.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(h: &mut Vec<u8>, v: u64) {
    h.extend_from_slice(&v.to_le_bytes());
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    put_u64(h, s.len() as u64);
    h.extend_from_slice(s.as_bytes());
}

/// The key-value section being built, and how many pairs it holds.
#[derive(Default)]
struct Kv {
    buf: Vec<u8>,
    n: u64,
}

impl Kv {
    fn key(&mut self, key: &str, ty: u32) {
        put_str(&mut self.buf, key);
        put_u32(&mut self.buf, ty);
        self.n += 1;
    }

    fn str(&mut self, key: &str, v: &str) {
        self.key(key, GGUF_STRING);
        put_str(&mut self.buf, v);
    }

    fn u32(&mut self, key: &str, v: u32) {
        self.key(key, GGUF_U32);
        put_u32(&mut self.buf, v);
    }

    fn f32(&mut self, key: &str, v: f32) {
        self.key(key, GGUF_F32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// `general.name` of a shape's file.
fn model_name(s: &Shape) -> String {
    if s.name.starts_with("llama") {
        format!("synthetic-{}", s.name)
    } else {
        format!("synthetic-llama-{}", s.name)
    }
}

/// The GGUF v3 header, key-values and tensor table, padded to the start of the data section.
fn header(s: &Shape, tensors: &[Tensor]) -> Vec<u8> {
    let mut kv = Kv::default();
    kv.str("general.architecture", "llama");
    kv.str("general.name", &model_name(s));
    kv.u32("llama.context_length", s.n_ctx);
    kv.u32("llama.embedding_length", s.n_embd);
    kv.u32("llama.block_count", s.n_layer);
    kv.u32("llama.feed_forward_length", s.n_ff);
    kv.u32("llama.attention.head_count", s.n_head);
    kv.u32("llama.attention.head_count_kv", s.n_head_kv);
    kv.u32("llama.rope.dimension_count", s.head_dim());
    kv.f32("llama.rope.freq_base", 500000.0);
    kv.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    kv.u32("llama.vocab_size", s.n_vocab);
    kv.u32("general.file_type", FTYPE_MOSTLY_F16);
    kv.u32("general.alignment", ALIGNMENT as u32);
    kv.str("tokenizer.ggml.model", "none");

    let mut h = Vec::with_capacity(kv.buf.len() + tensors.len() * 96 + 64);
    h.extend_from_slice(b"GGUF");
    put_u32(&mut h, GGUF_VERSION);
    put_u64(&mut h, tensors.len() as u64);
    put_u64(&mut h, kv.n);
    h.extend_from_slice(&kv.buf);
    for t in tensors {
        put_str(&mut h, &t.name);
        put_u32(&mut h, t.ne.len() as u32);
        for &d in &t.ne {
            put_u64(&mut h, d);
        }
        put_u32(&mut h, t.ty);
        put_u64(&mut h, t.offset);
    }
    h.resize(align(h.len() as u64) as usize, 0);
    h
}

/// SplitMix64's output function: a good 64-bit mix of `x`.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// SplitMix64, seeded.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0.wrapping_sub(0x9e37_79b9_7f4a_7c15))
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// POOL_LEN + RUN normal(0, WEIGHT_STD) values as little-endian F16 bytes, built in
/// independently seeded blocks on `threads` threads.
fn value_pool(seed: u64, threads: usize) -> Vec<u8> {
    let n = POOL_LEN + RUN;
    let mut pool = vec![0u8; n * 2];
    let blocks: Vec<(usize, &mut [u8])> = pool.chunks_mut(POOL_BLOCK * 2).enumerate().collect();
    let per = blocks.len().div_ceil(threads);
    let mut rest = blocks;
    std::thread::scope(|s| {
        while !rest.is_empty() {
            let mine: Vec<_> = rest.drain(..per.min(rest.len())).collect();
            s.spawn(move || {
                for (b, block) in mine {
                    let mut rng = SplitMix64(mix64(seed ^ 0x706f_6f6c) ^ mix64(b as u64));
                    for pair in block.chunks_mut(4) {
                        // Box-Muller: two independent normals from two uniforms.
                        let u1 = 1.0 - rng.unit(); // (0, 1]: ln is finite
                        let u2 = rng.unit();
                        let r = (-2.0 * u1.ln()).sqrt() * WEIGHT_STD;
                        let (sn, cs) = (std::f64::consts::TAU * u2).sin_cos();
                        for (k, z) in pair.chunks_mut(2).zip([r * cs, r * sn]) {
                            k.copy_from_slice(
                                &gearbx::kernels::fp32_to_fp16(z as f32).to_le_bytes(),
                            );
                        }
                    }
                }
            });
        }
    });
    pool
}

/// Everything a filler needs to produce any byte range of the data section.
struct Data<'a> {
    tensors: &'a [Tensor],
    pool: &'a [u8],
    seed: u64,
}

impl Data<'_> {
    /// Pool element where run `run` of tensor `t` starts.
    fn run_start(&self, t: usize, run: u64) -> usize {
        let h = mix64(mix64(self.seed ^ 0x7275_6e73).wrapping_add(t as u64) ^ mix64(!run));
        (h % POOL_LEN as u64) as usize
    }

    /// Fills `dst` with the data section's bytes from `start` on; `start` and `dst.len()` are
    /// multiples of 4 (so no F16 or F32 value is split).
    fn fill(&self, dst: &mut [u8], start: u64) {
        let end = start + dst.len() as u64;
        let mut i = self
            .tensors
            .partition_point(|t| t.offset + t.size() <= start);
        let mut cur = start;
        while cur < end {
            let Some(t) = self.tensors.get(i) else {
                dst[(cur - start) as usize..].fill(0);
                break;
            };
            if cur < t.offset {
                // Padding before the tensor.
                let gap_end = t.offset.min(end);
                dst[(cur - start) as usize..(gap_end - start) as usize].fill(0);
                cur = gap_end;
                continue;
            }
            let seg_end = (t.offset + t.size()).min(end);
            let out = &mut dst[(cur - start) as usize..(seg_end - start) as usize];
            self.fill_tensor(i, out, cur - t.offset);
            cur = seg_end;
            i += 1;
        }
    }

    /// Fills `out` with tensor `i`'s bytes from byte `off` of the tensor.
    fn fill_tensor(&self, i: usize, out: &mut [u8], off: u64) {
        let t = &self.tensors[i];
        if t.ty == GGML_TYPE_F32 {
            for v in out.chunks_exact_mut(4) {
                v.copy_from_slice(&1.0f32.to_le_bytes());
            }
            return;
        }
        let mut k = off / 2; // element index
        let mut pos = 0;
        while pos < out.len() {
            let run = k / RUN as u64;
            let j = (k % RUN as u64) as usize;
            let n = (RUN - j).min((out.len() - pos) / 2);
            let src = (self.run_start(i, run) + j) * 2;
            out[pos..pos + n * 2].copy_from_slice(&self.pool[src..src + n * 2]);
            pos += n * 2;
            k += n as u64;
        }
    }

    /// Fills `buf` (data bytes from `start`) on `threads` threads, split at aligned points.
    fn fill_parallel(&self, buf: &mut [u8], start: u64, threads: usize) {
        let per = align((buf.len() as u64).div_ceil(threads as u64)).max(ALIGNMENT) as usize;
        std::thread::scope(|s| {
            let mut parts = buf.chunks_mut(per).enumerate();
            let first = parts.next();
            for (k, part) in parts {
                s.spawn(move || self.fill(part, start + (k * per) as u64));
            }
            if let Some((_, part)) = first {
                self.fill(part, start);
            }
        });
    }
}

/// `<path>.tmp`: where the file is written before it is renamed into place.
fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes a synthetic F16 GGUF of `shape` to `path` (through `path.tmp`, renamed when complete
/// and synced; removed on error). The content depends only on `shape` and `seed`.
/// `progress(written, total)` is called on the calling thread as bytes reach the file.
pub fn write(
    shape: &Shape,
    path: &Path,
    seed: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<SynthReport> {
    shape.validate()?;
    let t0 = Instant::now();
    let tmp = temp_path(path);
    let result = write_file(shape, &tmp, seed, &mut progress).and_then(|r| {
        fs::rename(&tmp, path)
            .map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", tmp.display(), path.display()),
                    e,
                )
            })
            .map(|()| r)
    });
    match result {
        Ok((tensors, bytes)) => Ok(SynthReport {
            tensors,
            bytes,
            seconds: t0.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes the whole file at `tmp`; returns (tensors, bytes).
fn write_file(
    shape: &Shape,
    tmp: &Path,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(usize, u64)> {
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let tensors = tensor_table(shape);
    let head = header(shape, &tensors);
    let data_total = data_len(&tensors);
    let total = head.len() as u64 + data_total;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let mut file = File::create(tmp).map_err(|e| Error::io(ctx("creating"), e))?;
    file.write_all(&head)
        .map_err(|e| Error::io(ctx("writing"), e))?;
    let mut written = head.len() as u64;
    progress(written, total);

    let pool = value_pool(seed, threads);
    let data = Data {
        tensors: &tensors,
        pool: &pool,
        seed,
    };

    // The writer thread writes full buffers in order and hands each back once it is on its way
    // to disk, while this thread fills the next ones.
    let file = std::thread::scope(|s| -> Result<File> {
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(N_BUFS);
        let (empty_tx, empty_rx) = mpsc::channel::<(Vec<u8>, usize)>();
        let writer = s.spawn(move || -> std::io::Result<File> {
            for (buf, len) in full_rx {
                file.write_all(&buf[..len])?;
                if empty_tx.send((buf, len)).is_err() {
                    break;
                }
            }
            Ok(file)
        });
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut allocated = 0;
        let mut pos = 0u64;
        let mut writer_failed = false;
        while pos < data_total {
            let mut buf = if let Some(b) = spare.pop() {
                b
            } else if allocated < N_BUFS {
                allocated += 1;
                vec![0u8; BUF_BYTES]
            } else {
                match empty_rx.recv() {
                    Ok((b, len)) => {
                        written += len as u64;
                        progress(written, total);
                        b
                    }
                    Err(_) => {
                        writer_failed = true;
                        break;
                    }
                }
            };
            let len = (data_total - pos).min(BUF_BYTES as u64) as usize;
            data.fill_parallel(&mut buf[..len], pos, threads);
            if full_tx.send((buf, len)).is_err() {
                writer_failed = true;
                break;
            }
            pos += len as u64;
        }
        drop(full_tx);
        if !writer_failed {
            for (_, len) in empty_rx.iter() {
                written += len as u64;
                progress(written, total);
            }
        }
        match writer.join() {
            Ok(r) => r.map_err(|e| Error::io(ctx("writing"), e)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })?;
    file.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
    debug_assert_eq!(written, total);
    Ok((tensors.len(), total))
}
