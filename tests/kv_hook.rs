//! The KV row hook on the real model: it sees every layer's K and V rows as llama.cpp writes
//! them, an identity hook leaves the computation bit for bit as it was, an edit reaches
//! attention, and the settings it cannot work with are refused.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use common::*;
use gearbx::llama::kv::{CacheType, FlashAttn, KvCache, KvPart, KvRowHook};
use gearbx::llama::{Context, ContextParams, GgmlType, Model, ModelParams};

fn params(ty: GgmlType, fa: FlashAttn) -> ContextParams {
    ContextParams {
        n_ctx: 64,
        n_batch: 64,
        n_threads: 2,
        rebuild_graphs: false,
        kv: KvCache {
            type_k: CacheType(ty),
            type_v: CacheType(ty),
            flash_attn: fa,
            rotation: true,
        },
    }
}

/// Records the (part, layer, row length) it sees; zeroes V rows when asked.
struct Recorder {
    seen: Arc<Mutex<BTreeSet<(bool, u32, usize)>>>,
    rows: Arc<Mutex<usize>>,
    zero_v: bool,
}

impl KvRowHook for Recorder {
    fn edit_row(&mut self, part: KvPart, layer: u32, row: &mut [f32]) {
        self.seen
            .lock()
            .unwrap()
            .insert((part == KvPart::K, layer, row.len()));
        *self.rows.lock().unwrap() += 1;
        if self.zero_v && part == KvPart::V {
            row.fill(0.0);
        }
    }
}

fn last_logits(model: &Model, hook: Option<Recorder>) -> Vec<f32> {
    let toks = model
        .tokenize("It is a truth universally acknowledged", true, false)
        .unwrap();
    let p = params(GgmlType::F32, FlashAttn::On);
    let abort = Arc::new(AtomicBool::new(false));
    let mut ctx = match hook {
        Some(h) => Context::with_kv_hook(model, &p, abort, Box::new(h)).unwrap(),
        None => Context::new(model, &p, abort).unwrap(),
    };
    // A batch, then single tokens: both paths write the cache.
    ctx.decode(&toks[..toks.len() - 2]).unwrap();
    ctx.decode(&toks[toks.len() - 2..toks.len() - 1]).unwrap();
    ctx.decode(&toks[toks.len() - 1..]).unwrap();
    ctx.logits().unwrap().to_vec()
}

/// The fixture's model with every layer on the CPU (where the hook can edit the cache).
fn cpu_model() -> Model {
    let cpu = ModelParams {
        n_gpu_layers: 0,
        ..Default::default()
    };
    Model::load(&fixture().model, &cpu).unwrap()
}

#[test]
fn kv_row_hook_sees_every_row_and_its_edits_reach_attention() {
    let model = cpu_model();
    let n_tokens = model
        .tokenize("It is a truth universally acknowledged", true, false)
        .unwrap()
        .len();
    let plain = last_logits(&model, None);
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let rows = Arc::new(Mutex::new(0));
    let identity = last_logits(
        &model,
        Some(Recorder {
            seen: seen.clone(),
            rows: rows.clone(),
            zero_v: false,
        }),
    );
    assert_eq!(plain, identity, "an identity hook changes nothing");
    // SmolLM2: 30 layers, K and V rows of 3 heads of 64.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 60, "{seen:?}");
    assert!(seen.iter().all(|&(_, layer, n)| layer < 30 && n == 192));
    assert_eq!(
        *rows.lock().unwrap(),
        60 * n_tokens,
        "one row per token and layer"
    );
    let zeroed = last_logits(
        &model,
        Some(Recorder {
            seen: Arc::default(),
            rows: Arc::default(),
            zero_v: true,
        }),
    );
    let diff: f32 = plain.iter().zip(&zeroed).map(|(a, b)| (a - b).abs()).sum();
    assert!(diff > 1.0, "zeroed V rows change the logits ({diff})");
}

#[test]
fn kv_row_hook_refuses_caches_it_cannot_edit() {
    let model = cpu_model();
    let hook = || {
        Box::new(Recorder {
            seen: Arc::default(),
            rows: Arc::default(),
            zero_v: false,
        })
    };
    for p in [
        params(GgmlType::F16, FlashAttn::On),
        params(GgmlType::F32, FlashAttn::Off),
    ] {
        let e = Context::with_kv_hook(&model, &p, Arc::new(AtomicBool::new(false)), hook())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("f32 cache with flash attention on"), "{e}");
    }
}
