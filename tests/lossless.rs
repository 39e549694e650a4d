//! Lossless mode on the real model: strict greedy output identical to the high gear alone over
//! long generations, across turns that reuse the KV cache, and with a draft tier that disagrees
//! often; verified output re-scored at its declared shapes; the controller drafting only where
//! it pays; the drafting statistics add up.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::*;
use gearbx::engine::lossless::{self, Guarantee, LosslessParams, LosslessStats, StepPenalty};
use gearbx::engine::{self, GearControl, GenerateParams, Outcome};
use gearbx::gearbox::{plan, Gear, Gearbox, GearboxOptions};
use gearbx::llama::{Context, ContextParams, Model, ModelParams, Token};
use gearbx::store::gguf;

const PROMPTS: [&str; 3] = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three most important inventions of the nineteenth century were",
];

fn load() -> (Model, gguf::GgufInfo) {
    let f = fixture();
    (
        Model::load(&f.model, &ModelParams::default()).unwrap(),
        gguf::inspect(&f.model).unwrap(),
    )
}

fn gearbox<'m>(model: &'m Model, info: &gguf::GgufInfo, tiers: Option<&str>) -> Gearbox<'m> {
    let opts = GearboxOptions {
        threads: 1,
        overrides: tiers
            .map(|t| plan::parse_overrides(t).unwrap())
            .unwrap_or_default(),
        ..Default::default()
    };
    Gearbox::build(model, &fixture().model, info, &opts).unwrap()
}

fn context(model: &Model) -> Context<'_> {
    Context::new(
        model,
        &ContextParams {
            n_ctx: 2048,
            n_batch: 512,
            n_threads: 1,
            rebuild_graphs: false,
            kv: Default::default(),
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

fn tokens_of(o: &Outcome, toks: &[Token]) -> Vec<Token> {
    assert_eq!(o.generated_tokens, toks.len());
    toks.to_vec()
}

/// Greedy tokens of the high gear alone, one turn per prompt in one context.
fn high_alone(
    gb: &mut Gearbox<'_>,
    ctx: &mut Context<'_>,
    prompts: &[Vec<Token>],
    n: usize,
) -> Vec<Vec<Token>> {
    let params = GenerateParams::greedy(n, true);
    prompts
        .iter()
        .map(|p| {
            let mut toks = Vec::new();
            let control = GearControl {
                gearbox: &mut *gb,
                monitor: None,
                fixed: Gear::High,
                calibrate: None,
            };
            let o = engine::generate(ctx, p, &params, Some(control), |ev| {
                if ev.token >= 0 {
                    toks.push(ev.token)
                }
            })
            .unwrap();
            tokens_of(&o, &toks)
        })
        .collect()
}

/// Drafting whenever the entropy gate allows, under `guarantee`: what the identity checks need
/// (the controller would turn drafting off on this CPU, where it does not pay).
fn always(guarantee: Guarantee) -> LosslessParams {
    LosslessParams {
        guarantee: Some(guarantee),
        adaptive: false,
        ..Default::default()
    }
}

fn lossless_turns(
    gb: &mut Gearbox<'_>,
    ctx: &mut Context<'_>,
    prompts: &[Vec<Token>],
    n: usize,
) -> Vec<(Vec<Token>, LosslessStats, usize)> {
    lossless_turns_with(gb, ctx, prompts, n, &always(Guarantee::Strict))
}

fn lossless_turns_with(
    gb: &mut Gearbox<'_>,
    ctx: &mut Context<'_>,
    prompts: &[Vec<Token>],
    n: usize,
    lp: &LosslessParams,
) -> Vec<(Vec<Token>, LosslessStats, usize)> {
    let params = GenerateParams::greedy(n, true);
    prompts
        .iter()
        .map(|p| {
            let mut toks = Vec::new();
            let o = lossless::generate(ctx, p, &params, gb, lp, |ev| {
                if ev.token >= 0 {
                    toks.push(ev.token)
                }
            })
            .unwrap();
            let n_gen = o.generated_tokens;
            (tokens_of(&o, &toks), o.lossless.unwrap(), n_gen)
        })
        .collect()
}

fn check_stats(l: &LosslessStats, n_gen: usize) {
    let drafted: usize = l.cycles.iter().map(|c| c.0).sum();
    let accepted: usize = l.cycles.iter().map(|c| c.1).sum();
    assert_eq!(drafted, l.drafted);
    assert_eq!(accepted, l.accepted);
    assert_eq!(l.cycles.len(), l.verifies);
    assert!(l.cycles.iter().all(|(d, a)| a <= d && *d >= 1));
    // The prompt's pass gives the first token; each verify emits its accepted drafts plus the
    // high gear's own token; a pass without a draft emits one.
    assert_eq!(n_gen, 1 + l.accepted + l.verifies + l.plain_steps, "{l:?}");
    if l.drafted > 0 {
        assert!((l.acceptance_rate - l.accepted as f64 / l.drafted as f64).abs() < 1e-12);
    }
    // Every high-gear pass is logged with what it emitted.
    assert_eq!(l.passes.len(), l.verifies + l.plain_steps);
    assert_eq!(l.passes.iter().map(|p| p.1).sum::<usize>(), n_gen - 1);
}

#[test]
fn lossless_equals_the_high_gear_token_for_token_across_prompts_and_turns() {
    let (model, info) = load();
    let mut gb = gearbox(&model, &info, None);
    let prompts: Vec<Vec<Token>> = PROMPTS
        .iter()
        .map(|p| model.tokenize(p, true, false).unwrap())
        .collect();
    // Three turns in one context each: the second and third reuse the KV cache.
    let want = high_alone(&mut gb, &mut context(&model), &prompts, 160);
    let got = lossless_turns(&mut gb, &mut context(&model), &prompts, 160);
    for (i, ((toks, stats, n_gen), want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(toks, want, "turn {i} differs from the high gear");
        check_stats(stats, *n_gen);
        assert!(
            stats.verifies > 0 && stats.accepted > 0,
            "turn {i}: {stats:?}"
        );
    }
    // The model is back at the high gear as loaded.
    assert_eq!(gb.gear(), Gear::High);
}

#[test]
fn a_draft_tier_that_disagrees_often_still_gives_the_high_gears_tokens() {
    let (model, info) = load();
    // A 2-bit low tier (double quantization of the 4-bit source): a poor drafter.
    let mut gb = gearbox(&model, &info, Some("low=Q2_K"));
    let prompts = vec![model.tokenize(PROMPTS[0], true, false).unwrap()];
    let want = high_alone(&mut gb, &mut context(&model), &prompts, 120);
    let got = lossless_turns(&mut gb, &mut context(&model), &prompts, 120);
    let (toks, stats, n_gen) = &got[0];
    assert_eq!(toks, &want[0]);
    check_stats(stats, *n_gen);
    let rejected = stats.drafted - stats.accepted;
    assert!(
        rejected >= 10,
        "the poor drafter was rejected only {rejected} times: {stats:?}"
    );
}

#[test]
fn cli_lossless_prints_the_high_gears_text_and_refuses_what_it_cannot_do() {
    let args = [
        "smollm2:135m",
        "--temp",
        "0",
        "-n",
        "40",
        "-p",
        "Name three rivers in Europe.",
    ];
    let high = run_json(&[&args[..], &["--gear", "high"]].concat());
    let lossless = run_json(&[&args[..], &["--lossless"]].concat());
    assert_eq!(lossless["text"], high["text"]);
    let l = &lossless["lossless"];
    assert!(
        l["verifies"].as_u64().unwrap() + l["plain_steps"].as_u64().unwrap() > 0,
        "{l}"
    );
    assert_eq!(lossless["gears"]["mode"], "lossless");
    // Drafting shifts low and back; those shifts are timed like the plain loop's.
    let g = &lossless["gears"];
    if g["shifts"].as_u64().unwrap() > 0 {
        assert!(g["swap_us_mean"].as_f64().unwrap() > 0.0, "{g}");
        assert!(g["swap_us_max"].as_f64().unwrap() >= g["swap_us_mean"].as_f64().unwrap());
    }
    for (extra, what) in [
        (&["--gear", "low"][..], "--gear"),
        (&["--calibrate"][..], "--calibrate"),
        (&["--draft-max", "0"][..], "--draft-max"),
        (&["--entropy", "backend"][..], "--entropy"),
    ] {
        let o = run(&[&args[..], &["--lossless"], extra].concat());
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{extra:?}: {}", stderr(&o));
    }
    for (alone, what) in [
        ("--lossless=exact", "exact"),
        ("--draft-always", "--draft-always"),
    ] {
        let o = run(&[&args[..], &[alone]].concat());
        assert_eq!(o.status.code(), Some(2), "{alone}: {}", stderr(&o));
        assert!(stderr(&o).contains(what), "{alone}: {}", stderr(&o));
    }
    let strict = run_json(&[&args[..], &["--lossless=strict"]].concat());
    assert_eq!(strict["lossless"]["guarantee"], "strict");
    assert_eq!(strict["text"], high["text"]);
    // The CPU default is strict.
    assert_eq!(lossless["lossless"]["guarantee"], "strict");
    // With temperature: seeded runs repeat; the drafting statistics are there.
    let hot = [
        "smollm2:135m",
        "--temp",
        "0.8",
        "--seed",
        "5",
        "--lossless",
        "--draft-always",
        "-n",
        "40",
        "-p",
        "Hi",
    ];
    let (a, b) = (run_json(&hot), run_json(&hot));
    assert_eq!(a["text"], b["text"]);
    assert!(
        a["lossless"]["drafted"].as_u64().unwrap() > 0,
        "{}",
        a["lossless"]
    );
}

#[test]
fn verification_is_capped_where_batched_kernels_round_differently() {
    let (model, info) = load();
    // A Q4_K high tier lives in llama.cpp's repacked buffer, whose CPU kernel for 4 or more
    // columns rounds differently from the single-column one: the probe must find that and cap
    // the verification batch, so the output stays the high gear's.
    let mut gb = gearbox(&model, &info, Some("high=Q4_K"));
    let prompts = vec![model.tokenize(PROMPTS[2], true, false).unwrap()];
    let want = high_alone(&mut gb, &mut context(&model), &prompts, 120);
    let got = lossless_turns(&mut gb, &mut context(&model), &prompts, 120);
    let (toks, stats, n_gen) = &got[0];
    assert!(stats.verify_width < 4, "{stats:?}");
    assert_eq!(toks, &want[0]);
    check_stats(stats, *n_gen);
    assert!(stats.cycles.iter().all(|(d, _)| *d < stats.verify_width));
    // The source model's kernels agree at every width tried: long drafts are allowed.
    drop(gb);
    let mut plain = gearbox(&model, &info, None);
    let got = lossless_turns(&mut plain, &mut context(&model), &prompts, 16);
    assert!(got[0].1.verify_width >= 8, "{:?}", got[0].1);
}

#[test]
fn identity_holds_past_the_first_kv_block_with_two_threads() {
    // With 2 threads, llama.cpp's single-query attention over 512 cells rounds differently
    // from a batched one (over 256 it does not): the per-block probe must stop drafting there.
    let (model, info) = load();
    let mut gb = gearbox(&model, &info, None);
    let two = |m| {
        Context::new(
            m,
            &ContextParams {
                n_ctx: 1024,
                n_batch: 512,
                n_threads: 2,
                rebuild_graphs: false,
                kv: Default::default(),
            },
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap()
    };
    let prompts = vec![model.tokenize(PROMPTS[0], true, false).unwrap()];
    let want = high_alone(&mut gb, &mut two(&model), &prompts, 300);
    let got = lossless_turns(&mut gb, &mut two(&model), &prompts, 300);
    let (toks, stats, n_gen) = &got[0];
    assert_eq!(toks, &want[0]);
    check_stats(stats, *n_gen);
    assert!(stats.verifies > 0, "{stats:?}");
}

#[test]
fn verified_output_rescores_identically_at_its_declared_shape() {
    let (model, info) = load();
    let mut gb = gearbox(&model, &info, None);
    let lp = always(Guarantee::Verified);
    let prompts: Vec<Vec<Token>> = PROMPTS[..2]
        .iter()
        .map(|p| model.tokenize(p, true, false).unwrap())
        .collect();
    let params = GenerateParams::greedy(200, true);
    for p in &prompts {
        let mut ctx = context(&model);
        let got = lossless_turns_with(&mut gb, &mut ctx, std::slice::from_ref(p), 200, &lp);
        let (toks, stats, n_gen) = &got[0];
        check_stats(stats, *n_gen);
        assert_eq!(stats.guarantee, Guarantee::Verified);
        assert_eq!(stats.verify_width, lp.draft_max + 1);
        assert!(stats.verifies > 5, "{stats:?}");
        // Every verification pass had the declared width; plain steps are single tokens.
        assert!(stats
            .passes
            .iter()
            .all(|&(w, _)| w == 1 || w == lp.draft_max + 1));
        let mut fresh = context(&model);
        let first_bad = lossless::rescore(&mut fresh, &mut gb, p, toks, &params, stats).unwrap();
        assert_eq!(
            first_bad, None,
            "verified tokens the high gear does not choose"
        );
        // The check can fail: a changed token is found where it is.
        let mut bent = toks.clone();
        let at = bent.len() / 2;
        bent[at] = (bent[at] + 1) % model.n_vocab() as Token;
        let first_bad = lossless::rescore(&mut fresh, &mut gb, p, &bent, &params, stats).unwrap();
        assert_eq!(first_bad, Some(at));
    }
}

#[test]
fn the_controller_drafts_where_drafting_pays_and_stops_where_it_does_not() {
    let (model, info) = load();
    let mut gb = gearbox(&model, &info, None);
    let prompts = vec![model.tokenize(PROMPTS[0], true, false).unwrap()];
    let ms = std::time::Duration::from_millis;
    let run = |gb: &mut Gearbox<'_>, penalty: StepPenalty| {
        let lp = LosslessParams {
            guarantee: Some(Guarantee::Strict),
            penalty,
            ..Default::default()
        };
        let want = high_alone(gb, &mut context(&model), &prompts, 120);
        let got = lossless_turns_with(gb, &mut context(&model), &prompts, 120, &lp);
        let (toks, stats, n_gen) = got.into_iter().next().unwrap();
        assert_eq!(toks, want[0], "{penalty:?}");
        check_stats(&stats, n_gen);
        stats
    };
    // High-gear passes made 150 ms slower: drafts are cheap beside them (and an extra
    // verified column, ~10 ms on this CPU, too), so the controller drafts.
    let cheap = run(
        &mut gb,
        StepPenalty {
            draft: ms(0),
            high: ms(150),
        },
    );
    assert!(
        cheap.verifies >= 10 && cheap.estimates.expected_gain > 1.0,
        "{cheap:?}"
    );
    // Draft steps made as slow as that: the controller times one, sees that no acceptance
    // could pay for it, and never drafts.
    let dear = run(
        &mut gb,
        StepPenalty {
            draft: ms(60),
            high: ms(0),
        },
    );
    assert!(dear.verifies == 0 && dear.plain_steps > 100, "{dear:?}");
    let e = dear.estimates;
    assert!(e.draft_step_ms.unwrap() > e.high_step_ms.unwrap(), "{e:?}");
    assert!(
        cheap.drafted > 0 && dear.drafted == 0,
        "{cheap:?}\n{dear:?}"
    );
}
