//! The measurement harness, small: gearbx-bench on the real SmolLM2 and a real Austen novel
//! (prepared by scripts/fetch-austen.py from Debian's r-cran-janeaustenr), a few dozen
//! positions. Asserts the outputs are well formed and the numbers that must hold do.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn austen() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("austen");
    let st = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/fetch-austen.py"
        ))
        .arg(&dir)
        .status()
        .expect("running python3");
    assert!(st.success(), "scripts/fetch-austen.py failed");
    dir.join("pride-and-prejudice.txt")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn quick_report_is_well_formed_and_consistent() {
    fixture();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_gearbx-bench"))
        .args([
            "--positions",
            "30",
            "--window",
            "40",
            "--prompt",
            "8",
            "--rounds",
            "1",
        ])
        .args([
            "--tokens",
            "12",
            "--sweep",
            "1,3",
            "--gen-tokens",
            "12",
            "--lossless-prompts",
            "2",
            "--lossless-tokens",
            "24",
            "-t",
            "2",
        ])
        .arg("--text")
        .arg(austen())
        .arg("--out")
        .arg(out.path())
        .env(
            "GEARBX_CACHE_DIR",
            gearbx::store::default_model::cache_dir().unwrap(),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let r = &json[0];
    let lanes = r["quality"].as_array().unwrap();
    let lane = |name: &str| {
        lanes
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no lane {name}"))
    };
    assert_eq!(lane("source (reference)")["positions"], 30);
    // The high gear is the source tensors: identical distributions at every position.
    assert_eq!(lane("high gear")["kl_max"].as_f64(), Some(0.0));
    assert_eq!(lane("high gear")["top1_agreement"].as_f64(), Some(1.0));
    // A fixed tier is the static llama.cpp model of the same types, bit for bit.
    for g in ["mid", "low"] {
        let fixed = lane(&format!("{g} gear"));
        let stat = lane(&format!("static {g} (llama.cpp)"));
        assert_eq!(fixed["kl_mean"], stat["kl_mean"], "{g}");
        assert_eq!(fixed["perplexity"], stat["perplexity"], "{g}");
        assert!(
            fixed["kl_mean"].as_f64().unwrap() > 0.0,
            "{g} tier is not the source"
        );
    }
    // Auto lanes route: fractions sum to 1; a 3x threshold sends more to low than 1x.
    let f = |n: &str| floats(&lane(n)["gear_fraction"]);
    assert!((f("auto x1").iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(f("auto x3")[0] >= f("auto x1")[0]);
    // Control routers: one pair per auto lane, with its exact gear fractions (the lane names
    // carry them), the oracle no worse than random (it knows each tier's KL per position).
    let routers = r["routers"].as_array().unwrap();
    assert_eq!(routers.len(), 2);
    for c in routers {
        let (rk, ok) = (
            c["random_kl"].as_f64().unwrap(),
            c["oracle_kl"].as_f64().unwrap(),
        );
        assert!(rk.is_finite() && ok.is_finite() && ok >= 0.0, "{c}");
        for lane in [&c["random"], &c["oracle"]] {
            assert_eq!(lane["positions"], 30, "{c}");
            let (got, want) = (floats(&lane["gear_fraction"]), floats(&c["gear_fraction"]));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1.0 / 30.0 + 1e-9,
                    "fractions {got:?} vs {want:?}"
                );
            }
        }
    }
    // Speed: one ratio per gear, positive and finite.
    for g in r["speed"]["gears"].as_array().unwrap() {
        let x = g["ratio"]["median"].as_f64().unwrap();
        assert!(x.is_finite() && x > 0.0);
    }
    assert_eq!(r["separation"]["trivial"].as_array().unwrap().len(), 6);
    // Lossless mode under both guarantees: strict gives the high gear's tokens in every
    // window, both re-score identically at their verified shapes, the trace adds up, and the
    // width noise floor is measured.
    let gs = r["lossless"]["guarantees"].as_array().unwrap();
    assert_eq!(gs.len(), 2);
    assert_eq!(gs[0]["guarantee"], "strict");
    assert_eq!(gs[1]["guarantee"], "verified");
    assert_eq!(gs[0]["identical"], 2, "{}", gs[0]);
    for l in gs {
        assert_eq!(l["prompts"], 2);
        assert_eq!(l["rescored_identical"], 2, "{l}");
        let cycles = l["cycles"].as_array().unwrap();
        assert_eq!(cycles.len() as u64, l["verifies"].as_u64().unwrap());
        let accepted: u64 = cycles.iter().map(|c| c[1].as_u64().unwrap()).sum();
        let drafted: u64 = cycles.iter().map(|c| c[0].as_u64().unwrap()).sum();
        assert!(accepted <= drafted);
        if drafted > 0 {
            let rate = l["acceptance_rate"].as_f64().unwrap();
            assert!((rate - accepted as f64 / drafted as f64).abs() < 1e-9);
        }
        // Every generated token after the first came from a verification or a plain step.
        let steps = l["verifies"].as_u64().unwrap() + l["plain_steps"].as_u64().unwrap();
        assert!(steps + accepted == 2 * (24 - 1), "{l}");
    }
    let noise = &r["lossless"]["noise"];
    assert!(noise["positions"].as_u64().unwrap() > 0, "{noise}");
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        md.contains("| high gear | 0.0000 | 0.0000 | 1.000 |"),
        "{md}"
    );
    assert!(
        md.contains("**Does entropy pick the right positions?**"),
        "{md}"
    );
    for chart in ["frontier", "speed", "timeline"] {
        let svg = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(chart))
            .unwrap_or_else(|| panic!("no {chart} chart"));
        let s = std::fs::read_to_string(svg).unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>") && !s.contains("NaN"));
        assert!(
            md.contains(&format!("]({chart}-")),
            "results.md links the {chart} chart"
        );
    }
}

/// `gearbx-bench kv` small: the reference row is the reference, a quantized cache changes the
/// distributions (KL > 0), the measured bytes per token follow the types, rotation and auto
/// rows are there.
#[test]
fn kv_cache_comparison_is_consistent() {
    let model = fixture().model.clone();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_gearbx-bench"))
        .arg("kv")
        .arg("-m")
        .arg(&model)
        .arg("--text")
        .arg(austen())
        .args(["--ctx", "256", "--scored", "12", "-t", "2"])
        .args(["--pairs", "q8_0/q8_0,q4_0/q4_0", "--auto-with", "q4_0/q4_0"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("kv.json")).unwrap())
            .unwrap();
    let rows: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["result"])
        .collect();
    // Reference, q8_0 rot and no-rot, q4_0 rot and no-rot, q4_0 with auto gears.
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert_eq!(rows[0]["kl_mean"].as_f64(), Some(0.0));
    assert_eq!(rows[0]["top1_agreement"].as_f64(), Some(1.0));
    for r in &rows[1..] {
        assert!(r["kl_mean"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["positions"].as_u64(), Some(12));
    }
    assert_eq!(rows[1]["rotation"], true);
    assert_eq!(rows[2]["rotation"], false);
    assert_eq!(rows[5]["auto_gears"], true);
    let per = |r: &serde_json::Value| r["bytes_per_token"].as_f64().unwrap();
    let measured = |r: &serde_json::Value| r["measured_bytes_per_token"].as_f64().unwrap();
    assert_eq!(
        per(rows[1]) * 64.0,
        per(rows[0]) * 34.0,
        "q8_0: 34 bytes per 32 values"
    );
    assert_eq!(
        per(rows[3]) * 64.0,
        per(rows[0]) * 18.0,
        "q4_0: 18 bytes per 32 values"
    );
    for r in &rows {
        let (p, m) = (per(r), measured(r));
        assert!(
            m >= p && m < p * 1.05 + 64.0,
            "computed {p}, llama.cpp's state {m}"
        );
    }
    assert!(std::fs::read_to_string(out.path().join("kv.md"))
        .unwrap()
        .contains("| K q4_0 V q4_0 rot |"));
}

/// `gearbx-bench kv --simulate`: llama.cpp's q4_0 simulated on an F32 cache lands where the
/// real q4_0 cache does (the check of the method), the TurboQuant-style rows carry their bits,
/// and simulated rows report no measured state.
#[test]
fn kv_simulation_matches_the_real_cache_it_simulates() {
    let model = fixture().model.clone();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_gearbx-bench"))
        .arg("kv")
        .arg("-m")
        .arg(&model)
        .arg("--text")
        .arg(austen())
        .args(["--ctx", "256", "--scored", "16", "-t", "2"])
        .args(["--pairs", "q4_0/q4_0", "--auto-with", ""])
        .args(["--simulate", "q4_0/q4_0,tq4/tq2"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("kv.json")).unwrap())
            .unwrap();
    let rows: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["result"])
        .collect();
    // Reference; real q4_0 rot, no-rot; simulated q4_0 rot, no-rot; tq4/tq2.
    assert_eq!(rows.len(), 6, "{rows:?}");
    let kl = |r: &serde_json::Value| r["kl_mean"].as_f64().unwrap();
    for (real, sim) in [(1, 3), (2, 4)] {
        assert_eq!(rows[sim]["simulated"], true);
        assert!(rows[sim]["measured_bytes_per_token"].is_null());
        assert_eq!(rows[real]["rotation"], rows[sim]["rotation"]);
        let ratio = kl(rows[sim]) / kl(rows[real]);
        assert!(
            (0.5..2.0).contains(&ratio),
            "simulated q4_0 KL {} vs real {}",
            kl(rows[sim]),
            kl(rows[real])
        );
    }
    assert_eq!(rows[5]["type_k"], "tq4");
    assert_eq!(rows[5]["type_v"], "tq2");
    assert_eq!(rows[5]["bits_per_value"].as_f64(), Some(3.25));
    assert!(kl(rows[5]) > 0.0);
    assert!(std::fs::read_to_string(out.path().join("kv.md"))
        .unwrap()
        .contains("| sim K tq4 V tq2 |"));
}
