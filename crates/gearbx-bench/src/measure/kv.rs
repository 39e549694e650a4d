//! `gearbx-bench kv`: what a user needs to choose a KV cache type. For each (K, V) cache type
//! pair llama.cpp supports, with and without its Hadamard rotation, a lane reads the same long
//! window of real text as the F16-cache reference; the last positions of the window are scored
//! (teacher-forced KL against the reference, top-1 agreement, perplexity), after a prompt that
//! fills the context. KV bytes per token are computed from the types and measured (llama.cpp's
//! serialized sequence state after the window). Auto-gear lanes with a cache type give the
//! interaction of gears and the cache (KL of auto mode against the same reference).
//! Simulated lanes (`--simulate`, measure/kv_sim.rs) store a format llama.cpp lacks through a
//! round trip on an F32 cache, with llama.cpp's own types simulated beside them as the check.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use gearbx::error::Result;
use gearbx::gearbox::Gearbox;
use gearbx::llama::kv::{head_sizes, CacheType, FlashAttn, KvCache};
use gearbx::llama::{Context, ContextParams, GgmlType, Model};
use gearbx::monitor::MonitorConfig;

use super::kv_sim::{SharedSimHook, SimFormat, SimHook, SimPart};
use super::quality::{evaluate, EvalOptions, Lane, Policy};
use super::report::text_windows;

/// One lane's configuration.
#[derive(Debug, Clone)]
pub struct KvLane {
    pub kv: KvCache,
    /// Auto gears (through the model's gearbox) instead of the source weights.
    pub auto_gears: bool,
    /// A simulated format on an F32 cache instead of `kv`'s types.
    pub sim: Option<SimFormat>,
}

impl KvLane {
    fn name(&self) -> String {
        if let Some(f) = self.sim {
            let ggml_quantized = [f.k, f.v]
                .iter()
                .any(|p| matches!(p, SimPart::Ggml(t) if t.is_quantized()));
            let rot = match (ggml_quantized, f.rotation) {
                (false, _) => "",
                (true, true) => " rot",
                (true, false) => " no-rot",
            };
            return format!("sim K {} V {}{rot}", f.k, f.v);
        }
        let rot = if self.kv.type_k.is_quantized() || self.kv.type_v.is_quantized() {
            if self.kv.rotation {
                " rot"
            } else {
                " no-rot"
            }
        } else {
            ""
        };
        let gears = if self.auto_gears { ", auto gears" } else { "" };
        format!("K {} V {}{rot}{gears}", self.kv.type_k, self.kv.type_v)
    }
}

/// The lanes of a full run: every type pair of `pairs` (rotation on, and off for quantized
/// ones), then auto gears with each of `auto_with`.
pub fn lanes(
    pairs: &[(CacheType, CacheType)],
    auto_with: &[(CacheType, CacheType)],
) -> Vec<KvLane> {
    let mut out = Vec::new();
    let kv = |k: CacheType, v: CacheType, rotation: bool| KvCache {
        type_k: k,
        type_v: v,
        flash_attn: FlashAttn::On,
        rotation,
    };
    for &(k, v) in pairs {
        out.push(KvLane {
            kv: kv(k, v, true),
            auto_gears: false,
            sim: None,
        });
        if k.is_quantized() || v.is_quantized() {
            out.push(KvLane {
                kv: kv(k, v, false),
                auto_gears: false,
                sim: None,
            });
        }
    }
    for &(k, v) in auto_with {
        out.push(KvLane {
            kv: kv(k, v, true),
            auto_gears: true,
            sim: None,
        });
    }
    out
}

/// Simulated lanes for `pairs` of parts: rotation on, and off where a llama.cpp part is
/// quantized (`tqN` parts always rotate).
pub fn sim_lanes(pairs: &[(SimPart, SimPart)]) -> Vec<KvLane> {
    let f32 = CacheType(GgmlType::F32);
    let mut out = Vec::new();
    for &(k, v) in pairs {
        let ggml_quantized = [k, v]
            .iter()
            .any(|p| matches!(p, SimPart::Ggml(t) if t.is_quantized()));
        for rotation in [true, false] {
            if !rotation && !ggml_quantized {
                continue;
            }
            out.push(KvLane {
                kv: KvCache {
                    type_k: f32,
                    type_v: f32,
                    flash_attn: FlashAttn::On,
                    rotation: false,
                },
                auto_gears: false,
                sim: Some(SimFormat { k, v, rotation }),
            });
        }
    }
    out
}

/// One lane's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct KvResult {
    pub lane: String,
    pub type_k: String,
    pub type_v: String,
    pub rotation: bool,
    pub auto_gears: bool,
    pub context_tokens: usize,
    /// Bytes a cached token takes across all layers, from the types.
    pub bytes_per_token: u64,
    /// Bits per cached value (K and V together), from the types.
    pub bits_per_value: f64,
    /// The sequence's cache as llama.cpp serializes it after the window, per token (none for
    /// a simulated format, which llama.cpp stores as F32).
    pub measured_bytes_per_token: Option<f64>,
    /// Whether the format was simulated (measure/kv_sim.rs).
    pub simulated: bool,
    pub positions: usize,
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub top1_agreement: f64,
    pub perplexity: f64,
    /// Perplexity over the reference's (F16 cache, source weights).
    pub perplexity_ratio: f64,
    pub gear_fraction: [f64; 3],
    pub decode_tokens_per_s: f64,
}

/// Measures `lanes` on `model` over one window of `ctx` tokens of `text`, scoring its last
/// `scored` positions. Lane 0 of the result is the reference (F16 cache, source weights,
/// flash attention on like every lane).
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model,
    gearbox: Option<&mut Gearbox<'_>>,
    text: &Path,
    ctx: usize,
    scored: usize,
    lanes: &[KvLane],
    threads: usize,
    mut log: impl FnMut(&str),
) -> Result<Vec<KvResult>> {
    if scored == 0 || scored + 2 > ctx {
        return Err(gearbx::error::Error::InvalidParam(format!(
            "{scored} scored positions do not fit a window of {ctx} tokens with a prompt"
        )));
    }
    let tokens = text_windows(model, text, ctx, 1)?;
    // Flash attention on everywhere, so that only the cache differs from the reference.
    let reference = KvLane {
        kv: KvCache {
            flash_attn: FlashAttn::On,
            ..KvCache::default()
        },
        auto_gears: false,
        sim: None,
    };
    let all: Vec<KvLane> = std::iter::once(reference)
        .chain(
            lanes
                .iter()
                .filter(|l| !l.auto_gears || gearbox.is_some())
                .cloned(),
        )
        .collect();
    let mut evals = Vec::new();
    let mut hooks = Vec::new();
    for l in &all {
        l.kv.check(model)?;
        let params = ContextParams {
            n_ctx: ctx as u32,
            n_batch: 512,
            n_threads: threads as i32,
            rebuild_graphs: l.auto_gears && model.shifts_need_graph_rebuild(),
            kv: l.kv,
        };
        let abort = Arc::new(AtomicBool::new(false));
        let c = match l.sim {
            Some(f) => {
                let hook = SharedSimHook(Arc::new(Mutex::new(SimHook::new(model, f)?)));
                hooks.push(Some(hook.clone()));
                Context::with_kv_hook(model, &params, abort, Box::new(hook))?
            }
            None => {
                hooks.push(None);
                Context::new(model, &params, abort)?
            }
        };
        let policy = if l.auto_gears {
            Policy::Auto(MonitorConfig::default())
        } else {
            Policy::Plain
        };
        evals.push(Lane::new(l.name(), c, policy));
    }
    log(&format!(
        "{} lanes, {ctx} tokens of context, {scored} scored positions",
        all.len()
    ));
    let res = evaluate(
        &mut evals,
        gearbox,
        &tokens,
        &EvalOptions {
            window: ctx,
            prompt: ctx - scored - 1,
            max_positions: scored,
        },
        |done, total| {
            if done == total {
                log("scored");
            }
        },
    )?;
    for (l, h) in all.iter().zip(&hooks) {
        let Some(h) = h else { continue };
        let h =
            h.0.lock()
                .map_err(|_| gearbx::error::Error::Llama("a simulation hook panicked".into()))?;
        if let Some(e) = &h.error {
            return Err(gearbx::error::Error::Llama(format!("{}: {e}", l.name())));
        }
        if h.rows == 0 {
            return Err(gearbx::error::Error::Llama(format!(
                "{}: the simulation edited no cache rows",
                l.name()
            )));
        }
    }
    let ref_ppl = res[0].perplexity;
    Ok(all
        .iter()
        .zip(&res)
        .zip(&evals)
        .map(|((l, r), e)| {
            let values = model_kv_values(model, &l.kv);
            let (bpt, bits, measured) = match l.sim {
                Some(f) => {
                    let (hk, hv) = head_sizes(model);
                    let bits = (f.k.bits() * hk as f64 + f.v.bits() * hv as f64) / (hk + hv) as f64;
                    ((bits * values as f64 / 8.0).round() as u64, bits, None)
                }
                None => {
                    let bpt = l.kv.bytes_per_token(model);
                    let measured = e.ctx.kv_state_bytes() as f64 / e.ctx.n_past().max(1) as f64;
                    (bpt, bpt as f64 * 8.0 / values as f64, Some(measured))
                }
            };
            let (type_k, type_v, rotation) = match l.sim {
                Some(f) => (f.k.to_string(), f.v.to_string(), f.rotation),
                None => (
                    l.kv.type_k.to_string(),
                    l.kv.type_v.to_string(),
                    l.kv.rotation,
                ),
            };
            KvResult {
                lane: r.name.clone(),
                type_k,
                type_v,
                rotation,
                auto_gears: l.auto_gears,
                context_tokens: ctx,
                bytes_per_token: bpt,
                bits_per_value: bits,
                measured_bytes_per_token: measured,
                simulated: l.sim.is_some(),
                positions: r.positions,
                kl_mean: r.kl_mean,
                kl_p99: r.kl_p99,
                top1_agreement: r.top1_agreement,
                perplexity: r.perplexity,
                perplexity_ratio: r.perplexity / ref_ppl,
                gear_fraction: r.gear_fraction,
                decode_tokens_per_s: r.decode_tokens_per_s,
            }
        })
        .collect())
}

/// Values one token stores in the cache (K and V, all layers): the F32 cache's bytes / 4.
fn model_kv_values(model: &Model, kv: &KvCache) -> u64 {
    let f32 = KvCache {
        type_k: CacheType(GgmlType::F32),
        type_v: CacheType(GgmlType::F32),
        ..*kv
    };
    f32.bytes_per_token(model) / 4
}

/// The results as a markdown table.
pub fn markdown(model_name: &str, rows: &[KvResult]) -> String {
    let mut s = format!(
        "| {model_name} | ctx | bits/value | bytes/token (measured) | KL mean | KL p99 | top-1 | PPL ratio | gears low/mid/high |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let gears = if r.auto_gears {
            format!(
                "{:.0}/{:.0}/{:.0}%",
                r.gear_fraction[0] * 100.0,
                r.gear_fraction[1] * 100.0,
                r.gear_fraction[2] * 100.0
            )
        } else {
            "-".into()
        };
        let measured = r
            .measured_bytes_per_token
            .map_or_else(|| "simulated".to_string(), |m| format!("{m:.0}"));
        s.push_str(&format!(
            "| {} | {} | {:.2} | {} ({}) | {:.5} | {:.4} | {:.3} | {:.4} | {} |\n",
            r.lane,
            r.context_tokens,
            r.bits_per_value,
            r.bytes_per_token,
            measured,
            r.kl_mean,
            r.kl_p99,
            r.top1_agreement,
            r.perplexity_ratio,
            gears
        ));
    }
    s
}
