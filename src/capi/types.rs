//! The C API's plain structs and enums-as-integers, their defaults, and their checked
//! conversion into the library's own parameter types.

use std::ffi::c_char;
use std::path::PathBuf;

use super::{opt_str, ApiError, ApiResult};
use crate::engine::lossless::Guarantee;
use crate::engine::{GearStats, Outcome, StopReason};
use crate::gearbox::{plan, Gear, GearSet, GearboxOptions, Manage};
use crate::llama::SamplingParams;
use crate::monitor::MonitorConfig;

/// A gear, or a gear policy where a policy is asked for.
pub type gearbx_gear = i32;
/// No gearbox / no gear (telemetry of a model running without tiers).
pub const GEARBX_GEAR_NONE: gearbx_gear = -1;
/// The low gear: 4-bit tiers (fewest bytes per token).
pub const GEARBX_GEAR_LOW: gearbx_gear = 0;
/// The mid gear: 8-bit tiers (or the type below the source's).
pub const GEARBX_GEAR_MID: gearbx_gear = 1;
/// The high gear: the source weights exactly as loaded.
pub const GEARBX_GEAR_HIGH: gearbx_gear = 2;
/// Policy: choose the gear per token from the entropy of the next-token distribution.
pub const GEARBX_GEAR_AUTO: gearbx_gear = 3;
/// Policy (engine only): build no tiers; plain llama.cpp decoding.
pub const GEARBX_GEAR_OFF: gearbx_gear = 4;

/// When llama.cpp uses flash attention (`gearbx_engine_params.flash_attn`), as its `-fa`.
pub type gearbx_flash_attn = i32;
/// llama.cpp decides per device (and turns it on for a quantized V cache).
pub const GEARBX_FLASH_ATTN_AUTO: gearbx_flash_attn = -1;
pub const GEARBX_FLASH_ATTN_OFF: gearbx_flash_attn = 0;
pub const GEARBX_FLASH_ATTN_ON: gearbx_flash_attn = 1;

/// Why a generation ended (`gearbx_stats.stop_reason`).
pub type gearbx_stop_reason = i32;
/// The model produced an end-of-generation token.
pub const GEARBX_STOP_EOS: gearbx_stop_reason = 0;
/// A stop string appeared (the text ends before it).
pub const GEARBX_STOP_STOP_STRING: gearbx_stop_reason = 1;
/// `n_predict` tokens were generated.
pub const GEARBX_STOP_LENGTH: gearbx_stop_reason = 2;
/// The context window is full.
pub const GEARBX_STOP_CONTEXT: gearbx_stop_reason = 3;
/// `gearbx_engine_cancel` was called.
pub const GEARBX_STOP_CANCELLED: gearbx_stop_reason = 4;
/// The token callback returned false.
pub const GEARBX_STOP_CALLBACK: gearbx_stop_reason = 5;

/// What lossless mode promises about its tokens (`gearbx_generate_params.guarantee`).
pub type gearbx_guarantee = i32;
/// Strict on the CPU, verified when layers run on a GPU (the faster one that holds there).
pub const GEARBX_GUARANTEE_DEFAULT: gearbx_guarantee = 0;
/// Greedy: every token is what single-token decoding at the high gear emits.
pub const GEARBX_GUARANTEE_STRICT: gearbx_guarantee = 1;
/// Every token is the high gear's choice from a verification pass of width draft_max + 1.
pub const GEARBX_GUARANTEE_VERIFIED: gearbx_guarantee = 2;

/// How gears are chosen and which tiers exist. Get defaults from
/// `gearbx_gear_default_params()` and change what you need.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gearbx_gear_params {
    /// `GEARBX_GEAR_AUTO` (default), `_LOW`, `_MID`, `_HIGH`, or `_OFF` (engine only).
    pub mode: gearbx_gear,
    /// Auto: below this mean entropy (bits, at a 32768 vocabulary, scaled to the model's)
    /// shift to low. Default 1.8.
    pub low_bits: f64,
    /// Auto: above this, shift to high. Default 3.5.
    pub high_bits: f64,
    /// Auto: tokens in the rolling entropy mean. Default 5.
    pub window: u32,
    /// Auto: margin in bits the mean must cross a boundary by. Default 0.1.
    pub hysteresis: f64,
    /// Auto: tokens a gear is kept at least (the NaN/uniform fallback ignores it). Default 2.
    pub min_duration: u32,
    /// Tier types per gear, e.g. "low=Q4_0,mid=Q8_0,high=source"; NULL: derived from the
    /// source type. On a float model a quantized high ("high=Q8_0") makes
    /// gearbx_engine_open load a copy of the model in that type (written once into the tier
    /// cache folder) instead of the float weights, with mid Q6_K and low Q4_K unless given;
    /// attached to a host's model, the top is a tier beside it.
    pub tiers: *const c_char,
    /// Which weight matrices shift: a list of "attn", "ffn", "output" (the output head) and
    /// "all" (= "attn,ffn"); NULL: "all".
    pub manage: *const c_char,
    /// Layers that shift: "N" or "A-B"; NULL: every layer.
    pub layers: *const c_char,
    /// Gears that get tiers of their own, e.g. "low,high" (high always exists: the loaded
    /// weights; a gear left out runs on the next one above, costing no memory); NULL: all.
    pub gears: *const c_char,
    /// Where built tiers are kept between runs; NULL: `$GEARBX_TIER_CACHE`, else
    /// `$GEARBX_CACHE_DIR/tiers` or `~/.cache/gearbx/tiers`.
    pub tier_cache_dir: *const c_char,
    /// Build the tiers every time; neither read nor write the tier cache. Default false.
    pub no_tier_cache: bool,
    /// Draw a progress bar on stderr while tiers are built. Default false.
    pub progress: bool,
}

/// Sampling settings (llama.cpp's names and defaults). `temperature <= 0` is greedy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gearbx_sampling_params {
    /// Default 0.8.
    pub temperature: f32,
    /// 0 or less disables. Default 40.
    pub top_k: i32,
    /// 1 disables. Default 0.9.
    pub top_p: f32,
    /// 0 disables. Default 0.
    pub min_p: f32,
    /// 1 disables. Default 1.1.
    pub repeat_penalty: f32,
    /// Tokens the penalty looks back over; -1: the whole context. Default 64.
    pub repeat_last_n: i32,
    /// `GEARBX_SEED_RANDOM` draws a seed from the clock. Default `GEARBX_SEED_RANDOM`.
    pub seed: u32,
    /// Keep generating past end-of-generation tokens (fixed-length runs). Default false.
    pub ignore_eos: bool,
}

/// `gearbx_sampling_params.seed`: a different seed each generation.
pub const GEARBX_SEED_RANDOM: u32 = 0xFFFF_FFFF;

/// Per-token telemetry, handed to the token callback and returned by
/// `gearbx_attach_after_decode`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct gearbx_token_info {
    /// 0-based index among generated tokens.
    pub index: i32,
    /// The token id; -1 for the final flush of text held back (split UTF-8, stop-string
    /// prefix), which has no token.
    pub token: i32,
    /// Entropy in bits of the distribution the token was drawn from (NaN for the flush).
    pub entropy_bits: f32,
    /// The gear of the forward pass that produced that distribution (`GEARBX_GEAR_NONE`
    /// without tiers).
    pub gear: gearbx_gear,
    /// The gear the next forward pass will use.
    pub next_gear: gearbx_gear,
    /// Microseconds the shift to `next_gear` took (0 when the gear stayed).
    pub swap_us: f64,
}

/// Totals of one generation (engine) or of everything observed so far (attach).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct gearbx_stats {
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// Prompt processing time and speed.
    pub prompt_ms: f64,
    pub prompt_tokens_per_s: f64,
    /// Generation loop time (sampling, entropy, single-token forward passes) and speed.
    pub decode_ms: f64,
    pub decode_tokens_per_s: f64,
    pub mean_entropy_bits: f64,
    /// A `GEARBX_STOP_*` value (engine generations only; 0 for attach).
    pub stop_reason: gearbx_stop_reason,
    /// Tokens whose distribution came from the low, mid and high gear.
    pub tokens_per_gear: [u32; 3],
    /// Gear changes.
    pub shifts: u32,
    /// Mean and largest time of one shift, in microseconds.
    pub swap_us_mean: f64,
    pub swap_us_max: f64,
    /// Auto thresholds in effect (bits, already scaled to the vocabulary); 0 when fixed.
    pub low_bits: f64,
    pub high_bits: f64,
    /// Bytes of the managed weights at each gear (low, mid, high); 0 without tiers.
    pub tier_bytes: [u64; 3],
    /// Bytes all tiers hold beside the loaded model (a tensor with the same type at two gears
    /// stored once), and the part of them in GPU memory.
    pub tier_resident_bytes: u64,
    pub tier_gpu_bytes: u64,
    /// Milliseconds it took to make the tiers ready (build or cache read).
    pub tier_build_ms: f64,
    /// The tiers were read from the tier cache instead of being built.
    pub tiers_from_cache: bool,
    /// Lossless: batched high-gear verifications, draft tokens proposed and accepted, plain
    /// high-gear steps (drafting gated off or not paying), and the guarantee the tokens were
    /// generated under (`GEARBX_GUARANTEE_STRICT` or `_VERIFIED`; `_DEFAULT` without lossless).
    pub verifies: u32,
    pub drafted: u32,
    pub accepted: u32,
    pub plain_steps: u32,
    pub guarantee: gearbx_guarantee,
}

/// The built-in gear defaults (auto, gearbx's thresholds, tier cache on).
#[no_mangle]
pub extern "C" fn gearbx_gear_default_params() -> gearbx_gear_params {
    let m = MonitorConfig::default();
    gearbx_gear_params {
        mode: GEARBX_GEAR_AUTO,
        low_bits: m.low_bits,
        high_bits: m.high_bits,
        window: m.window as u32,
        hysteresis: m.hysteresis,
        min_duration: m.min_duration as u32,
        tiers: std::ptr::null(),
        manage: std::ptr::null(),
        layers: std::ptr::null(),
        gears: std::ptr::null(),
        tier_cache_dir: std::ptr::null(),
        no_tier_cache: false,
        progress: false,
    }
}

/// The built-in sampling defaults (those of gearbx-run and llama.cpp).
#[no_mangle]
pub extern "C" fn gearbx_sampling_default_params() -> gearbx_sampling_params {
    gearbx_sampling_params {
        seed: GEARBX_SEED_RANDOM,
        ..gearbx_sampling_params::from_params(&SamplingParams::default())
    }
}

/// A gear from a C value (`GEARBX_GEAR_LOW..HIGH`).
pub(crate) fn gear_from_c(g: gearbx_gear) -> Option<Gear> {
    match g {
        GEARBX_GEAR_LOW => Some(Gear::Low),
        GEARBX_GEAR_MID => Some(Gear::Mid),
        GEARBX_GEAR_HIGH => Some(Gear::High),
        _ => None,
    }
}

pub(crate) fn gear_to_c(g: Option<Gear>) -> gearbx_gear {
    match g {
        None => GEARBX_GEAR_NONE,
        Some(g) => g as gearbx_gear,
    }
}

/// Checks a policy value; `allow_off` for the engine (attach always builds tiers).
pub(crate) fn check_mode(mode: gearbx_gear, allow_off: bool) -> ApiResult<gearbx_gear> {
    match mode {
        GEARBX_GEAR_LOW | GEARBX_GEAR_MID | GEARBX_GEAR_HIGH | GEARBX_GEAR_AUTO => Ok(mode),
        GEARBX_GEAR_OFF if allow_off => Ok(mode),
        _ => Err(ApiError::invalid(format!(
            "gear mode {mode} is not one of GEARBX_GEAR_LOW/MID/HIGH/AUTO{}",
            if allow_off { "/OFF" } else { "" }
        ))),
    }
}

impl gearbx_gear_params {
    /// The monitor settings (thresholds scaled to the vocabulary, as on the command line).
    pub(crate) fn monitor(&self) -> ApiResult<MonitorConfig> {
        let cfg = MonitorConfig {
            window: self.window as usize,
            low_bits: self.low_bits,
            high_bits: self.high_bits,
            hysteresis: self.hysteresis,
            min_duration: self.min_duration as usize,
            ..Default::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The gearbox options, without the cache (which needs the model's digest).
    ///
    /// # Safety
    /// The string fields must be NULL or NUL-terminated strings.
    pub(crate) unsafe fn gearbox_options(&self, threads: usize) -> ApiResult<GearboxOptions> {
        // SAFETY: forwarded from the caller.
        let (tiers, manage, layers, gears) = unsafe {
            (
                opt_str(self.tiers, "gears.tiers")?,
                opt_str(self.manage, "gears.manage")?,
                opt_str(self.layers, "gears.layers")?,
                opt_str(self.gears, "gears.gears")?,
            )
        };
        let gears: GearSet = match gears {
            Some(g) => g
                .parse()
                .map_err(|e| ApiError::invalid(format!("gears.gears: {e}")))?,
            None => Default::default(),
        };
        let manage = Manage {
            layers: layers
                .map(Manage::parse_layers)
                .transpose()
                .map_err(ApiError::invalid)?,
            ..Manage::parse_kind(manage.unwrap_or("all")).map_err(ApiError::invalid)?
        };
        let overrides = match tiers {
            Some(t) => plan::parse_overrides(t)?,
            None => Default::default(),
        };
        Ok(GearboxOptions {
            manage,
            overrides,
            gears,
            threads,
            progress: self.progress,
            cache: None,
            abort: None,
        })
    }

    /// The tier cache directory the caller chose, if any.
    ///
    /// # Safety
    /// `tier_cache_dir` must be NULL or a NUL-terminated string.
    pub(crate) unsafe fn cache_dir(&self) -> ApiResult<Option<PathBuf>> {
        // SAFETY: forwarded from the caller.
        Ok(unsafe { opt_str(self.tier_cache_dir, "gears.tier_cache_dir") }?.map(PathBuf::from))
    }
}

impl gearbx_sampling_params {
    /// The C form of `p` (its seed as it is).
    pub(crate) fn from_params(p: &SamplingParams) -> Self {
        Self {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n,
            seed: p.seed,
            ignore_eos: p.ignore_eos,
        }
    }

    pub(crate) fn to_params(self) -> ApiResult<SamplingParams> {
        let seed = if self.seed == GEARBX_SEED_RANDOM {
            crate::llama::random_seed()
        } else {
            self.seed
        };
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
            ignore_eos: self.ignore_eos,
        };
        p.validate()?;
        Ok(p)
    }
}

/// Gear counters shared by the engine's and the attach API's statistics.
pub(crate) fn fill_gear_stats(out: &mut gearbx_stats, g: &GearStats) {
    out.tokens_per_gear = g.tokens.map(|n| n as u32);
    out.shifts = g.shifts as u32;
    out.swap_us_mean = g.swap_us_mean;
    out.swap_us_max = g.swap_us_max;
    if let Some((lo, hi)) = g.thresholds_bits {
        out.low_bits = lo;
        out.high_bits = hi;
    }
    out.tier_bytes = g.tiers.bytes.0;
    out.tier_resident_bytes = g.tiers.shadow_bytes;
    out.tier_gpu_bytes = g.tiers.gpu_bytes();
    out.tier_build_ms = g.tiers.build_ms;
    out.tiers_from_cache = g.tiers.origin == crate::gearbox::TierOrigin::Cache;
}

/// Statistics of one engine generation.
pub(crate) fn stats_of(o: &Outcome, by_callback: bool) -> gearbx_stats {
    let mut s = gearbx_stats {
        prompt_tokens: o.prompt_tokens as u32,
        generated_tokens: o.generated_tokens as u32,
        prompt_ms: o.prompt_ms,
        prompt_tokens_per_s: o.prompt_tokens_per_s,
        decode_ms: o.eval_ms,
        decode_tokens_per_s: o.decode_tokens_per_s,
        mean_entropy_bits: o.mean_entropy_bits,
        stop_reason: match o.stop_reason {
            StopReason::Eos => GEARBX_STOP_EOS,
            StopReason::StopWord => GEARBX_STOP_STOP_STRING,
            StopReason::Length => GEARBX_STOP_LENGTH,
            StopReason::Context => GEARBX_STOP_CONTEXT,
            StopReason::Interrupted if by_callback => GEARBX_STOP_CALLBACK,
            StopReason::Interrupted => GEARBX_STOP_CANCELLED,
        },
        ..Default::default()
    };
    if let Some(g) = &o.gears {
        fill_gear_stats(&mut s, g);
    }
    if let Some(l) = &o.lossless {
        s.verifies = l.verifies as u32;
        s.drafted = l.drafted as u32;
        s.accepted = l.accepted as u32;
        s.plain_steps = l.plain_steps as u32;
        s.guarantee = match l.guarantee {
            Guarantee::Strict => GEARBX_GUARANTEE_STRICT,
            Guarantee::Verified => GEARBX_GUARANTEE_VERIFIED,
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gear_params_choose_the_gears_that_get_tiers() {
        let mut p = gearbx_gear_default_params();
        // SAFETY (here and below): every string field is NULL or a static C string.
        let built = |p: &gearbx_gear_params| unsafe { p.gearbox_options(1) }.map(|o| o.gears.0);
        assert_eq!(built(&p).ok(), Some([true; 3]));
        p.gears = c"low,high".as_ptr();
        assert_eq!(built(&p).ok(), Some([true, false, true]));
        p.gears = c"low,fast".as_ptr();
        let e = built(&p).unwrap_err();
        assert!(
            e.message.contains("gears.gears: unknown gear"),
            "{}",
            e.message
        );
    }
}
