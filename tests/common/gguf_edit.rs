//! Rewrites a GGUF's metadata (keys changed, added or removed; the tensor table and data kept
//! byte for byte): structurally valid files with bad values, for the semantic checks.

use std::path::Path;

/// A metadata value: its GGUF type id and its encoded bytes.
pub type Raw = (u32, Vec<u8>);

pub fn u32v(v: u32) -> Raw {
    (4, v.to_le_bytes().to_vec())
}

pub fn f32v(v: f32) -> Raw {
    (6, v.to_le_bytes().to_vec())
}

pub fn strv(s: &str) -> Raw {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    (8, b)
}

fn rd_u32(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(b[p..p + 4].try_into().unwrap())
}

fn rd_u64(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().unwrap())
}

/// Length of the encoded value of type `t` at `p`.
fn value_len(b: &[u8], p: usize, t: u32) -> usize {
    match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8 + rd_u64(b, p) as usize,
        9 => {
            let (et, n) = (rd_u32(b, p), rd_u64(b, p + 4) as usize);
            let mut q = p + 12;
            for _ in 0..n {
                q += value_len(b, q, et);
            }
            q - p
        }
        t => panic!("value type {t}"),
    }
}

/// The strings of an encoded string array.
pub fn strings(raw: &Raw) -> Vec<String> {
    let b = &raw.1;
    let n = rd_u64(b, 4) as usize;
    let mut q = 12;
    (0..n)
        .map(|_| {
            let l = rd_u64(b, q) as usize;
            let s = String::from_utf8_lossy(&b[q + 8..q + 8 + l]).into_owned();
            q += 8 + l;
            s
        })
        .collect()
}

/// A string array of `items`.
pub fn string_array(items: &[String]) -> Raw {
    let mut b = 8u32.to_le_bytes().to_vec();
    b.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for s in items {
        b.extend_from_slice(&strv(s).1);
    }
    (9, b)
}

/// Copies `src` to `dst` with every key passed through `edit` (None drops it) and `add`
/// appended.
pub fn rewrite(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(&str, Raw) -> Option<Raw>,
    add: Vec<(&str, Raw)>,
) {
    let b = std::fs::read(src).unwrap();
    assert_eq!(&b[..4], b"GGUF");
    let n_tensors = rd_u64(&b, 8);
    let n_kv = rd_u64(&b, 16) as usize;
    let mut p = 24;
    let mut kvs: Vec<(String, Raw)> = Vec::new();
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let kl = rd_u64(&b, p) as usize;
        let key = String::from_utf8(b[p + 8..p + 8 + kl].to_vec()).unwrap();
        p += 8 + kl;
        let t = rd_u32(&b, p);
        p += 4;
        let l = value_len(&b, p, t);
        let raw = (t, b[p..p + l].to_vec());
        p += l;
        if key == "general.alignment" {
            alignment = rd_u32(&raw.1, 0) as u64;
        }
        if let Some(v) = edit(&key, raw) {
            kvs.push((key, v));
        }
    }
    for (k, v) in add {
        kvs.push((k.to_string(), v));
    }
    let tensors_start = p;
    for _ in 0..n_tensors {
        let nl = rd_u64(&b, p) as usize;
        p += 8 + nl;
        let nd = rd_u32(&b, p) as usize;
        p += 4 + 8 * nd + 4 + 8;
    }
    let data_start = (p as u64).div_ceil(alignment) * alignment;
    let mut out = b[..16].to_vec();
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, (t, v)) in &kvs {
        out.extend_from_slice(&strv(k).1);
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&b[tensors_start..p]);
    let padded = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(padded as usize, 0);
    out.extend_from_slice(&b[data_start as usize..]);
    std::fs::write(dst, out).unwrap();
}
