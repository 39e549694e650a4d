//! The session API on the real model: what the CLI and the C engine stand on. Store defaults
//! reach the request, a kept KV cache is reused (and only the new part decoded), a session
//! without tiers refuses lossless mode, bad options are refused before anything loads.

mod common;

use common::*;
use gearbx::engine::{StopReason, Turn};
use gearbx::gearbox::Gear;
use gearbx::session::{GearPolicy, Session, SessionOptions, TierCache, TierOptions};

fn options(model: &str, tiers: bool) -> SessionOptions {
    let f = fixture();
    SessionOptions {
        model: Some(model.into()),
        models_dir: Some(f.store.path().to_path_buf()),
        n_ctx: Some(1024),
        threads: Some(2),
        tiers: tiers.then(|| TierOptions {
            cache: TierCache::Dir(
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tier-cache"),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn the_store_defaults_reach_the_request_and_the_prompt() {
    let s = Session::open(&options("smollm2:135m", false)).unwrap();
    let r = s.default_request("Hi");
    // The fixture's params layer: temperature 0.7 and a stop string; the rest built in.
    assert_eq!(r.sampling.temperature, 0.7);
    assert_eq!(r.stop, vec!["<|im_end|>".to_string()]);
    assert_eq!(r.sampling.top_k, 40);
    assert_eq!(r.sampling.repeat_penalty, 1.1);
    // The store's system prompt is used where the request has none.
    let p = s.prompt(&r.prompt).unwrap();
    assert!(p.text.contains(SYSTEM), "{}", p.text);
    let mut own = r.prompt.clone();
    own.system = Some("Answer in French.".into());
    let p = s.prompt(&own).unwrap();
    assert!(p.text.contains("Answer in French.") && !p.text.contains(SYSTEM));
    assert!(s.tiers().is_none(), "opened without tiers");
}

#[test]
fn a_kept_cache_is_reused_and_only_the_new_part_is_decoded() {
    let mut s = Session::open(&options(fixture().model.to_str().unwrap(), false)).unwrap();
    let mut req = s.default_request("Name three primary colours.");
    req.sampling.temperature = 0.0;
    req.n_predict = Some(16);
    req.reuse_cache = true;
    let first = s.generate(&req, |_| {}).unwrap();
    assert_eq!(
        first.prompt_cached, 0,
        "nothing cached before the first request"
    );
    // The same request again: everything but the last prompt token comes from the cache, and
    // the greedy reply is the same.
    let again = s.generate(&req, |_| {}).unwrap();
    assert_eq!(again.prompt_tokens, first.prompt_tokens);
    assert_eq!(again.prompt_cached, first.prompt_tokens - 1);
    assert_eq!(again.text, first.text);
    // A second turn: the first turn (prompt and reply) is found in the cache.
    let mut next = req.clone();
    next.prompt.history = vec![
        Turn {
            role: "user".into(),
            content: req.prompt.user.clone(),
        },
        Turn {
            role: "assistant".into(),
            content: first.text.clone(),
        },
    ];
    next.prompt.user = "And three secondary ones?".into();
    let turn2 = s.generate(&next, |_| {}).unwrap();
    assert!(
        turn2.prompt_cached >= first.prompt_tokens,
        "{} cached of {}, first prompt {}",
        turn2.prompt_cached,
        turn2.prompt_tokens,
        first.prompt_tokens
    );
    assert!(turn2.generated_tokens > 0);
    // Without reuse_cache every request starts from an empty cache.
    next.reuse_cache = false;
    let fresh = s.generate(&next, |_| {}).unwrap();
    assert_eq!(fresh.prompt_cached, 0);
    assert_eq!(fresh.prompt_tokens, turn2.prompt_tokens);
}

#[test]
fn gears_and_lossless_need_tiers_and_fixed_gears_shift() {
    let mut plain = Session::open(&options("smollm2:135m", false)).unwrap();
    let mut req = plain.default_request("Count to five.");
    req.sampling.temperature = 0.0;
    req.n_predict = Some(12);
    req.lossless = Some(Default::default());
    let e = plain.generate(&req, |_| {}).unwrap_err().to_string();
    assert!(e.contains("lossless mode needs tiers"), "{e}");
    req.lossless = None;
    let off = plain.generate(&req, |_| {}).unwrap();
    assert!(off.gears.is_none());

    let mut geared = Session::open(&options("smollm2:135m", true)).unwrap();
    req.gear = GearPolicy::Fixed(Gear::High);
    let high = geared.generate(&req, |_| {}).unwrap();
    assert_eq!(high.text, off.text, "the high gear is the plain model");
    req.gear = GearPolicy::Fixed(Gear::Low);
    let mut gears = Vec::new();
    let low = geared.generate(&req, |ev| gears.push(ev.gear)).unwrap();
    // The first token comes from the prompt's pass, which always runs at the high gear.
    assert!(gears.len() > 1, "{gears:?}");
    assert_eq!(gears[0], Some(Gear::High));
    assert!(
        gears[1..].iter().all(|g| *g == Some(Gear::Low)),
        "{gears:?}"
    );
    assert_ne!(low.text, high.text, "the low gear's tiers were used");
    req.lossless = Some(Default::default());
    let lossless = geared.generate(&req, |_| {}).unwrap();
    assert_eq!(
        lossless.text, off.text,
        "strict lossless gives the high gear's tokens"
    );
}

#[test]
fn bad_options_are_refused_with_a_message() {
    let mut o = options("smollm2:135m", false);
    o.n_ctx = Some(20_000_000);
    let e = Session::open(&o).err().unwrap().to_string();
    assert_eq!(
        e,
        "invalid parameter: n_ctx must be at most 16777216, got 20000000"
    );
    let o = options("no-such-model:7b", false);
    let e = Session::open(&o).err().unwrap();
    assert!(
        matches!(e, gearbx::Error::ModelNotFound { .. }) || e.to_string().contains("not found"),
        "{e}"
    );
    let mut s = Session::open(&options("smollm2:135m", false)).unwrap();
    let mut req = s.default_request("Hi");
    req.sampling.top_p = 2.0;
    match s.generate(&req, |_| {}) {
        Err(gearbx::Error::BadParam { param, rule }) => {
            assert_eq!(param, gearbx::error::param::TOP_P);
            assert_eq!(rule, "must be in [0, 1], got 2");
        }
        other => panic!("{other:?}"),
    }
    req.sampling.top_p = 0.9;
    req.n_predict = Some(2);
    let ok = s.generate(&req, |_| {}).unwrap();
    assert!(matches!(
        ok.stop_reason,
        StopReason::Length | StopReason::Eos | StopReason::StopWord
    ));
}

#[test]
fn an_interrupted_generation_leaves_nothing_behind() {
    let o = options("smollm2:135m", false);
    let abort = o.abort.clone();
    let mut s = Session::open(&o).unwrap();
    let mut req = s.default_request("Count from one to fifty.");
    req.sampling.temperature = 0.0;
    req.n_predict = Some(40);
    req.reuse_cache = true;
    let full = s.generate(&req, |_| {}).unwrap();
    // Interrupted after a few tokens (as Ctrl-C or gearbx_engine_cancel would).
    let mut seen = 0;
    let cut = s
        .generate(&req, |_| {
            seen += 1;
            if seen == 3 {
                abort.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
    assert_eq!(cut.stop_reason, StopReason::Interrupted);
    assert!(cut.generated_tokens < full.generated_tokens);
    // The next request runs (the abort was the last one's) and reuses nothing of the
    // interrupted one's cache.
    let after = s.generate(&req, |_| {}).unwrap();
    assert_eq!(after.prompt_cached, 0);
    assert_eq!(after.text, full.text);
}

#[test]
fn gearbx_run_refuses_a_prompt_that_cannot_fit_before_building_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "smollm2:135m",
        "-c",
        "8",
        "--tier-cache",
        dir.path().to_str().unwrap(),
        "-p",
        "This prompt is certainly longer than eight tokens",
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("raise -c/--ctx-size (the model was trained with 8192)"),
        "{}",
        stderr(&o)
    );
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 0, "refused before any tier was built or cached");
}
