//! A bounded reader of GGUF headers: checks a file is a complete GGUF before llama.cpp sees it,
//! and reads the metadata `--list` shows (architecture, file type, name).
//!
//! Every length in the file is untrusted: strings, arrays and counts are checked against
//! the bytes that remain, and every tensor's data must lie inside the file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::llama::ggml_type_layout;

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

/// What the header says about a model.
#[derive(Debug, Clone, Default)]
pub struct GgufInfo {
    pub version: u32,
    pub n_tensors: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub file_type: Option<u32>,
    pub size_label: Option<String>,
    pub has_chat_template: bool,
    /// `<architecture>.context_length`: the context the model was trained with.
    pub context_length: Option<u32>,
    /// Bytes of tensor data the tensors occupy (sum of their sizes).
    pub tensor_bytes: u64,
    /// Every tensor, with where its data lies in the file.
    pub tensors: Vec<TensorInfo>,
}

/// One tensor of the file's tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml type id.
    pub ggml_type: u32,
    pub ne: [u64; 4],
    /// Absolute byte offset of the data in the file.
    pub file_offset: u64,
    pub size: u64,
}

impl GgufInfo {
    /// The quantization name of `general.file_type`, as llama.cpp prints it.
    pub fn file_type_name(&self) -> Option<&'static str> {
        self.file_type.map(ftype_name)
    }
}

/// llama.cpp's `llama_ftype` values, named as `llama-quantize` names them.
pub fn ftype_name(ftype: u32) -> &'static str {
    match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => "unknown",
    }
}

struct Reader {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    path: PathBuf,
}

impl Reader {
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadGguf {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.remaining() {
            return Err(self.bad(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file is {} bytes",
                self.pos, self.len
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        self.pos += n;
        Ok(buf)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.bad(format!("truncated inside {what} at offset {}", self.pos)));
        }
        self.inner
            .seek_relative(n as i64)
            .map_err(|e| Error::io("seeking", e))?;
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.bytes(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }
}

/// Byte size of a scalar GGUF value type, `None` for strings and arrays.
fn scalar_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

enum Value {
    Str(String),
    U32(u32),
    Other,
}

fn read_value(r: &mut Reader, t: u32, key: &str, depth: u32) -> Result<Value> {
    match t {
        4 => Ok(Value::U32(r.u32(key)?)),
        8 => Ok(Value::Str(r.string(key)?)),
        9 => {
            if depth > 2 {
                return Err(r.bad(format!("arrays nested too deeply in {key}")));
            }
            let et = r.u32(key)?;
            let n = r.u64(key)?;
            if n > r.remaining() {
                return Err(r.bad(format!(
                    "array {key} claims {n} elements, more than the file holds"
                )));
            }
            match scalar_size(et) {
                Some(sz) => r.skip(
                    n.checked_mul(sz)
                        .ok_or_else(|| r.bad("array size overflows"))?,
                    key,
                )?,
                None => {
                    for _ in 0..n {
                        read_value(r, et, key, depth + 1)?;
                    }
                }
            }
            Ok(Value::Other)
        }
        t => match scalar_size(t) {
            Some(sz) => {
                r.skip(sz, key)?;
                Ok(Value::Other)
            }
            None => Err(r.bad(format!("unknown value type {t} for key {key}"))),
        },
    }
}

/// Reads and checks a GGUF file's header and tensor table.
pub fn inspect(path: &Path) -> Result<GgufInfo> {
    // Asked before opening: opening a FIFO blocks until someone writes to it.
    crate::store::regular_file(path)?;
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::FileNotFound(path.to_path_buf()),
        _ => Error::io(format!("opening {}", path.display()), e),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        len: meta.len(),
        path: path.into(),
    };
    if r.len < 24 {
        return Err(r.bad(format!("{} bytes is too short for a GGUF header", r.len)));
    }
    let magic = r.bytes(4, "magic")?;
    if magic != MAGIC {
        return Err(r.bad(format!(
            "it does not start with the GGUF magic (found {:02x?})",
            magic
        )));
    }
    let mut info = GgufInfo {
        version: r.u32("version")?,
        ..Default::default()
    };
    if !(2..=3).contains(&info.version) {
        return Err(r.bad(format!(
            "GGUF version {} is not supported (2 or 3)",
            info.version
        )));
    }
    info.n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("key-value count")?;
    if info.n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
        return Err(r.bad(format!(
            "implausible counts: {} tensors, {n_kv} keys",
            info.n_tensors
        )));
    }
    let mut alignment = 32u64;
    let mut context_lengths: Vec<(String, u32)> = Vec::new();
    let mut block_counts: Vec<(String, u32)> = Vec::new();
    for _ in 0..n_kv {
        let key = r.string("key")?;
        let t = r.u32(&key)?;
        match (key.as_str(), read_value(&mut r, t, &key, 0)?) {
            ("general.architecture", Value::Str(s)) => info.architecture = Some(s),
            ("general.name", Value::Str(s)) => info.name = Some(s),
            ("general.size_label", Value::Str(s)) => info.size_label = Some(s),
            ("general.file_type", Value::U32(v)) => info.file_type = Some(v),
            ("general.alignment", Value::U32(v)) => alignment = v as u64,
            ("tokenizer.chat_template", _) => info.has_chat_template = true,
            (k, Value::U32(v)) if k.ends_with(".context_length") => {
                context_lengths.push((k.to_string(), v))
            }
            (k, Value::U32(v)) if k.ends_with(".block_count") => {
                block_counts.push((k.to_string(), v))
            }
            _ => {}
        }
    }
    info.context_length = info.architecture.as_ref().and_then(|a| {
        let key = format!("{a}.context_length");
        context_lengths
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    });
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(r.bad(format!(
            "general.alignment {alignment} is not a power of two"
        )));
    }
    let mut tensors = Vec::with_capacity(info.n_tensors.min(65536) as usize);
    for _ in 0..info.n_tensors {
        let name = r.string("tensor name")?;
        let n_dims = r.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.bad(format!("tensor {name} has {n_dims} dimensions")));
        }
        let mut ne = [1u64; 4];
        for d in ne.iter_mut().take(n_dims as usize) {
            *d = r.u64(&name)?;
        }
        let ty = r.u32(&name)?;
        let offset = r.u64(&name)?;
        tensors.push((name, ne, ty, offset));
    }
    let data_start = r.pos.div_ceil(alignment) * alignment;
    if data_start > r.len && !tensors.is_empty() {
        // Even an empty tensor would start past the end (found by fuzzing).
        return Err(r.bad(format!(
            "truncated: the tensor data would start at byte {data_start} of a {}-byte file",
            r.len
        )));
    }
    let data_len = r.len - data_start.min(r.len);
    for (name, ne, ty, offset) in tensors {
        let (blck, tsize) = ggml_type_layout(ty)
            .ok_or_else(|| r.bad(format!("tensor {name} has unknown type {ty}")))?;
        if ne[0] % blck != 0 {
            return Err(r.bad(format!(
                "tensor {name}: row of {} is not a multiple of the block size {blck}",
                ne[0]
            )));
        }
        let size = ne
            .iter()
            .skip(1)
            .try_fold((ne[0] / blck).checked_mul(tsize), |acc, &d| {
                acc.map(|a| a.checked_mul(d))
            })
            .flatten()
            .ok_or_else(|| r.bad(format!("tensor {name}: size overflows")))?;
        if offset.checked_add(size).is_none_or(|end| end > data_len) {
            return Err(r.bad(format!(
                "truncated: tensor {name} ends at byte {} of the data section, which has {data_len} bytes (file {} bytes)",
                offset.saturating_add(size),
                r.len
            )));
        }
        info.tensor_bytes += size;
        info.tensors.push(TensorInfo {
            name,
            ggml_type: ty,
            ne,
            file_offset: data_start + offset,
            size,
        });
    }
    check_block_count(&r, &info, &block_counts)?;
    Ok(info)
}

/// `<arch>.block_count` must name as many layers as the file has `blk.N` tensor groups
/// (llama.cpp asserts on 0 and on more than its maximum, and loads a wrong count into
/// confusing errors).
fn check_block_count(r: &Reader, info: &GgufInfo, counts: &[(String, u32)]) -> Result<()> {
    let Some(arch) = &info.architecture else {
        return Ok(());
    };
    let key = format!("{arch}.block_count");
    let Some(&(_, n)) = counts.iter().find(|(k, _)| *k == key) else {
        return Ok(());
    };
    let last = info
        .tensors
        .iter()
        .filter_map(|t| {
            t.name
                .strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max();
    match last {
        Some(last) if last.checked_add(1) != Some(n as u64) => Err(r.bad(format!(
            "{key} is {n} but the tensors are those of {} layers (blk.0 to blk.{last})",
            last as u128 + 1
        ))),
        None if n == 0 => Err(r.bad(format!("{key} is 0"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs the fuzz target `gguf` found (fuzz/regressions/gguf-*), kept as regressions:
    /// each is refused cleanly.
    #[test]
    fn fuzz_regressions_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("gguf-") {
                let err = inspect(&e.path()).unwrap_err();
                assert!(matches!(err, Error::BadGguf { .. }), "{name}: {err}");
                n += 1;
            }
        }
        assert!(n > 0, "no regression inputs in {}", dir.display());
    }
}
