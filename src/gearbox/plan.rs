//! Which tensors are managed and which type each gear gives them: derived from the source
//! type (never a fake upcast of a quantized source), or from `--tiers` overrides.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::llama::GgmlType;

/// A precision gear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gear {
    Low = 0,
    Mid = 1,
    High = 2,
}

impl Gear {
    pub const ALL: [Gear; 3] = [Gear::Low, Gear::Mid, Gear::High];

    pub fn name(self) -> &'static str {
        match self {
            Gear::Low => "low",
            Gear::Mid => "mid",
            Gear::High => "high",
        }
    }
}

impl fmt::Display for Gear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Gear {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Ok(Gear::Low),
            "mid" => Ok(Gear::Mid),
            "high" => Ok(Gear::High),
            _ => Err(format!("unknown gear {s:?} (low, mid, high)")),
        }
    }
}

/// One value per gear, indexed by position (low 0, mid 1, high 2, i.e. `gear as usize`) and
/// serialized keyed by gear name: `{"low": …, "mid": …, "high": …}`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerGear<T>(pub [T; 3]);

impl<T> std::ops::Deref for PerGear<T> {
    type Target = [T; 3];
    fn deref(&self) -> &[T; 3] {
        &self.0
    }
}

impl<T> std::ops::DerefMut for PerGear<T> {
    fn deref_mut(&mut self) -> &mut [T; 3] {
        &mut self.0
    }
}

impl<T> From<[T; 3]> for PerGear<T> {
    fn from(a: [T; 3]) -> Self {
        Self(a)
    }
}

impl<T: Serialize> Serialize for PerGear<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        for g in Gear::ALL {
            m.serialize_entry(g.name(), &self.0[g as usize])?;
        }
        m.end()
    }
}

/// Which gears get tiers of their own (`--gears low,high`): the high gear always exists (the
/// loaded weights); a lower gear left out runs on the next built gear above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GearSet(pub [bool; 3]);

impl Default for GearSet {
    fn default() -> Self {
        Self([true; 3])
    }
}

impl FromStr for GearSet {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut built = [false, false, true];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            built[part.parse::<Gear>()? as usize] = true;
        }
        Ok(Self(built))
    }
}

impl GearSet {
    /// Makes every left-out gear of `types` (per gear) use the next built gear's types.
    pub fn apply<T: Copy>(&self, types: [T; 3]) -> [T; 3] {
        let mut out = types;
        for g in (0..2).rev() {
            if !self.0[g] {
                out[g] = out[g + 1];
            }
        }
        out
    }
}

/// Which weight matrices the gearbox manages.
#[derive(Debug, Clone, PartialEq)]
pub struct Manage {
    pub attn: bool,
    pub ffn: bool,
    /// The output head (`output.weight`, or `token_embd.weight` where the embedding is tied
    /// to it: then the input embedding shifts with it on the CPU, where one tensor serves both).
    pub output: bool,
    /// Inclusive layer range of the attn/ffn matrices; None = every layer.
    pub layers: Option<(u32, u32)>,
}

impl Default for Manage {
    fn default() -> Self {
        Self {
            attn: true,
            ffn: true,
            output: false,
            layers: None,
        }
    }
}

impl Manage {
    /// A comma-separated list of `attn`, `ffn`, `output` and `all` (= attn,ffn).
    pub fn parse_kind(s: &str) -> std::result::Result<Self, String> {
        let mut m = Self {
            attn: false,
            ffn: false,
            output: false,
            layers: None,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "attn" => m.attn = true,
                "ffn" => m.ffn = true,
                "output" => m.output = true,
                "all" => (m.attn, m.ffn) = (true, true),
                _ => {
                    return Err(format!(
                        "manage takes a list of attn, ffn, output and all, not {part:?}"
                    ))
                }
            }
        }
        Ok(m)
    }

    /// `A-B` or `N` (inclusive).
    pub fn parse_layers(s: &str) -> std::result::Result<(u32, u32), String> {
        let bad = || format!("layers takes N or A-B, not {s:?}");
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let n = s.trim().parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if a > b {
            return Err(bad());
        }
        Ok((a, b))
    }

    /// True for `blk.N.attn_*.weight` / `blk.N.ffn_*.weight` within the layer range, and for
    /// the output head's matrix (found as a matmul weight: `token_embd.weight` only when tied).
    pub fn matches(&self, name: &str) -> bool {
        if name == "output.weight" || name == "token_embd.weight" {
            return self.output;
        }
        let Some(rest) = name.strip_prefix("blk.") else {
            return false;
        };
        let Some((layer, kind)) = rest.split_once('.') else {
            return false;
        };
        let Ok(layer) = layer.parse::<u32>() else {
            return false;
        };
        if self.layers.is_some_and(|(a, b)| layer < a || layer > b) || !kind.ends_with(".weight") {
            return false;
        }
        (self.attn && kind.starts_with("attn_") && !kind.contains("norm"))
            || (self.ffn && kind.starts_with("ffn_") && !kind.contains("norm"))
    }
}

/// A tier choice: a concrete ggml type, or the tensor's own source type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TierType {
    Source,
    Type(GgmlType),
}

/// `--tiers low=Q4_0,mid=Q8_0,high=F16` (any subset; `source` keeps the loaded type).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierOverrides(pub [Option<TierType>; 3]);

impl FromStr for TierOverrides {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut o = TierOverrides::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (g, t) = part
                .split_once('=')
                .ok_or_else(|| format!("entry {part:?} is not gear=TYPE"))?;
            let gear: Gear = g.trim().parse()?;
            let t = t.trim();
            let tier = if t.eq_ignore_ascii_case("source") {
                TierType::Source
            } else {
                let ty = GgmlType::from_name(t)
                    .ok_or_else(|| format!("names an unknown tensor type {t:?}"))?;
                if !TIER_TYPES.contains(&ty) {
                    let ok: Vec<String> = TIER_TYPES.iter().map(|t| t.name()).collect();
                    return Err(format!(
                        "names {ty}, which is not a tier type (one of {}, or source)",
                        ok.join(", ")
                    ));
                }
                TierType::Type(ty)
            };
            o.0[gear as usize] = Some(tier);
        }
        Ok(o)
    }
}

/// A K-quant needs rows that are a multiple of 256; otherwise use the nearest 32-block type.
pub fn fit_row(ty: GgmlType, ne0: i64) -> GgmlType {
    if !ty.is_k_quant() || ne0 % 256 == 0 {
        return ty;
    }
    match ty {
        GgmlType::Q6_K => GgmlType::Q5_1,
        GgmlType::Q5_K => GgmlType::Q5_0,
        _ => GgmlType::Q4_0,
    }
}

/// The per-gear types for one tensor of source type `src` with rows of `ne0`. `None` means
/// the gear uses the loaded tensor itself.
pub fn tensor_types(src: GgmlType, ne0: i64, overrides: &TierOverrides) -> [Option<GgmlType>; 3] {
    let default = default_tiers(src);
    let mut out = [None; 3];
    for g in Gear::ALL {
        let choice = overrides.0[g as usize].unwrap_or(default[g as usize]);
        out[g as usize] = match choice {
            TierType::Source => None,
            TierType::Type(t) => {
                let t = fit_row(t, ne0);
                (t != src).then_some(t)
            }
        };
    }
    // Rows that fit no K-quant can send low and mid to the same 32-block type (Q3_K and Q4_K
    // both become Q4_0): give mid the next 32-block type above low, still below high, unless
    // the user chose mid's type.
    if let (Some(lo), Some(mid), None) = (out[0], out[1], overrides.0[1]) {
        let ceiling = out[2].unwrap_or(src).bits_per_weight();
        let above = BLOCK32.iter().rev().copied().find(|&t| {
            t.bits_per_weight() > lo.bits_per_weight() && t.bits_per_weight() < ceiling - 1e-9
        });
        if let (true, Some(t)) = (lo == mid, above) {
            out[1] = Some(t);
        }
    }
    out
}

/// The types a tier can have: those ggml quantizes to without an importance matrix (Q8_1,
/// the integer types and F64 are not among them).
pub const TIER_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::Q5_K,
    GgmlType::Q5_1,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
    GgmlType::Q3_K,
    GgmlType::Q2_K,
];

/// Types of 32-value blocks (any row that is a multiple of 32 takes them), largest first.
const BLOCK32: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q5_1,
    GgmlType::Q5_0,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
];

/// A warning when some tensors have the same type at low and mid (their rows fit no smaller
/// type): on those, the two gears do not differ.
pub fn same_type_warning(per_tensor: &[[Option<GgmlType>; 3]], ne0: &[i64]) -> Option<String> {
    let same: Vec<usize> = (0..per_tensor.len())
        .filter(|&i| per_tensor[i][0] == per_tensor[i][1])
        .collect();
    if same.is_empty() {
        return None;
    }
    let mut rows: Vec<i64> = same.iter().map(|&i| ne0[i]).collect();
    rows.sort_unstable();
    rows.dedup();
    let rows: Vec<String> = rows.iter().map(i64::to_string).collect();
    Some(format!(
        "{} of {} managed tensors have the same type at low and mid (rows of {} fit no smaller \
         type): the two gears do not differ there",
        same.len(),
        per_tensor.len(),
        rows.join(", ")
    ))
}

/// The default ladder. Float source: F16 (BF16 kept) / Q8_0 / Q4_K. Quantized source: the
/// source itself / the next two standard types below its bits per weight.
pub fn default_tiers(src: GgmlType) -> [TierType; 3] {
    if src.is_float() {
        let high = if src == GgmlType::BF16 {
            GgmlType::BF16
        } else {
            GgmlType::F16
        };
        return [
            TierType::Type(GgmlType::Q4_K),
            TierType::Type(GgmlType::Q8_0),
            TierType::Type(high),
        ];
    }
    let ladder = [
        GgmlType::Q8_0,
        GgmlType::Q6_K,
        GgmlType::Q5_K,
        GgmlType::Q4_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
    ];
    let b = src.bits_per_weight();
    let below: Vec<GgmlType> = ladder
        .iter()
        .copied()
        .filter(|&t| t.bits_per_weight() < b - 1e-9)
        .collect();
    let mid = below.first().copied().unwrap_or(src);
    let low = below.get(1).copied().unwrap_or(mid);
    [TierType::Type(low), TierType::Type(mid), TierType::Source]
}

/// Warnings a user should see about a plan: upcasts and double quantization.
pub fn plan_warnings(src_types: &[GgmlType], overrides: &TierOverrides) -> Vec<String> {
    let mut w = Vec::new();
    let quantized: Vec<GgmlType> = src_types
        .iter()
        .copied()
        .filter(|&t| !t.is_float())
        .collect();
    if !quantized.is_empty() {
        let mut names: Vec<String> = quantized.iter().map(|&t| t.name()).collect();
        names.sort();
        names.dedup();
        w.push(format!(
            "the source weights are already quantized ({}): lower tiers are double quantization and lose more than a static quantization from full precision would",
            names.join(", ")
        ));
    }
    for g in Gear::ALL {
        if let Some(TierType::Type(t)) = overrides.0[g as usize] {
            if let Some(&src) = src_types
                .iter()
                .find(|&&s| t.bits_per_weight() > s.bits_per_weight() + 1e-9)
            {
                w.push(format!(
                    "--tiers {g}={} is an upcast of {} weights: more bytes, no added precision",
                    t.name(),
                    src.name()
                ));
            }
        }
    }
    w
}

pub fn parse_overrides(s: &str) -> Result<TierOverrides> {
    s.parse()
        .map_err(|e| Error::bad_param(crate::error::param::TIERS, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_source_ladder() {
        let t = tensor_types(GgmlType::F16, 4096, &TierOverrides::default());
        assert_eq!(t, [Some(GgmlType::Q4_K), Some(GgmlType::Q8_0), None]);
        let t = tensor_types(GgmlType::F16, 576, &TierOverrides::default());
        assert_eq!(t[0], Some(GgmlType::Q4_0), "576 is not a multiple of 256");
        let t = tensor_types(GgmlType::BF16, 4096, &TierOverrides::default());
        assert_eq!(t[2], None, "BF16 stays BF16");
        let t = tensor_types(GgmlType::F32, 4096, &TierOverrides::default());
        assert_eq!(t[2], Some(GgmlType::F16));
    }

    #[test]
    fn left_out_gears_run_on_the_next_built_gear_above() {
        let g: GearSet = "low,high".parse().unwrap();
        assert_eq!(g.0, [true, false, true]);
        assert_eq!(g.apply([1, 2, 3]), [1, 3, 3]);
        let g: GearSet = "mid".parse().unwrap();
        assert_eq!(g.0, [false, true, true], "high always exists");
        assert_eq!(g.apply([1, 2, 3]), [2, 2, 3]);
        let g: GearSet = "high".parse().unwrap();
        assert_eq!(g.apply([1, 2, 3]), [3, 3, 3]);
        assert_eq!(GearSet::default().apply([1, 2, 3]), [1, 2, 3]);
        assert!("low,fast"
            .parse::<GearSet>()
            .unwrap_err()
            .contains("unknown gear"));
    }

    #[test]
    fn rows_that_fit_no_k_quant_still_get_distinct_gears() {
        // Q5_0 matrices with rows of 896 (Qwen2-0.5B's hidden size): Q4_K and Q3_K both fall
        // back to Q4_0; mid moves up to Q4_1.
        let t = tensor_types(GgmlType::Q5_0, 896, &TierOverrides::default());
        assert_eq!(t, [Some(GgmlType::Q4_0), Some(GgmlType::Q4_1), None]);
        assert_eq!(same_type_warning(&[t], &[896]), None);
        // Q4_0 at 896: nothing smaller fits, every gear is the source: said so.
        let q4 = tensor_types(GgmlType::Q4_0, 896, &TierOverrides::default());
        assert_eq!(q4, [None, None, None]);
        let w = same_type_warning(&[t, q4], &[896, 896]).unwrap();
        assert!(w.starts_with("1 of 2 managed tensors"), "{w}");
        // A mid the user chose is kept even when it equals low.
        let o: TierOverrides = "low=Q4_0,mid=Q4_0".parse().unwrap();
        let t = tensor_types(GgmlType::F16, 896, &o);
        assert_eq!(t[0], t[1]);
    }

    #[test]
    fn quantized_source_is_never_upcast_by_default() {
        let t = tensor_types(GgmlType::Q4_1, 1536, &TierOverrides::default());
        assert_eq!(t, [Some(GgmlType::Q3_K), Some(GgmlType::Q4_K), None]);
        let t = tensor_types(GgmlType::Q8_0, 4096, &TierOverrides::default());
        assert_eq!(t, [Some(GgmlType::Q5_K), Some(GgmlType::Q6_K), None]);
        for src in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0] {
            for ty in tensor_types(src, 4096, &TierOverrides::default())
                .into_iter()
                .flatten()
            {
                assert!(ty.bits_per_weight() < src.bits_per_weight());
            }
        }
    }

    #[test]
    fn overrides_parse_and_warn_on_upcast() {
        let o: TierOverrides = "low=Q4_0,mid=q8_0,high=source".parse().unwrap();
        assert_eq!(o.0[0], Some(TierType::Type(GgmlType::Q4_0)));
        assert_eq!(o.0[2], Some(TierType::Source));
        let w = plan_warnings(&[GgmlType::Q4_1], &o);
        assert!(w.iter().any(|s| s.contains("upcast")), "{w:?}");
        assert!(w.iter().any(|s| s.contains("double quantization")));
        assert!("low=Q9_9".parse::<TierOverrides>().is_err());
        assert!("fast=Q4_0".parse::<TierOverrides>().is_err());
    }

    #[test]
    fn manage_selects_layer_matrices() {
        let all = Manage::default();
        assert!(all.matches("blk.3.attn_q.weight"));
        assert!(all.matches("blk.3.ffn_down.weight"));
        assert!(!all.matches("blk.3.attn_norm.weight"));
        assert!(!all.matches("output.weight"));
        assert!(!all.matches("token_embd.weight"));
        let head = Manage::parse_kind("all,output").unwrap();
        assert!(head.matches("output.weight") && head.matches("token_embd.weight"));
        assert!(head.matches("blk.0.ffn_up.weight"));
        let only = Manage::parse_kind("output").unwrap();
        assert!(only.matches("output.weight") && !only.matches("blk.0.ffn_up.weight"));
        assert!(Manage::parse_kind("attn,head").is_err());
        let attn = Manage {
            layers: Some((2, 4)),
            ..Manage::parse_kind("attn").unwrap()
        };
        assert!(attn.matches("blk.4.attn_output.weight"));
        assert!(!attn.matches("blk.5.attn_output.weight"));
        assert!(!attn.matches("blk.3.ffn_up.weight"));
        assert_eq!(Manage::parse_layers("0-9"), Ok((0, 9)));
        assert!(Manage::parse_layers("9-0").is_err());
    }
}
