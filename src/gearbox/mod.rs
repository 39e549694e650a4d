//! The gearbox: builds a tier set per gear by requantizing the managed weights from their
//! source bytes, and shifts gears by swapping every managed tensor's storage in place.

pub mod plan;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::llama::weights::{self, TensorTiers, WeightTensor};
use crate::llama::{Context, Model};
use crate::store::GgufInfo;
pub use plan::{Gear, Manage, TierOverrides};

/// How to build the gearbox.
#[derive(Debug, Clone, Default)]
pub struct GearboxOptions {
    pub manage: Manage,
    pub overrides: TierOverrides,
    pub threads: usize,
    pub progress: bool,
}

/// What building produced, for the user and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub managed_tensors: usize,
    pub build_ms: f64,
    /// Bytes of the managed weights at each gear (low, mid, high).
    pub bytes: [u64; 3],
    /// Types at each gear, e.g. "Q4_0 x180, Q3_K x30".
    pub types: [String; 3],
    pub warnings: Vec<String>,
}

/// Per-gear tier sets over the managed tensors of one model.
pub struct Gearbox<'m> {
    tiers: TensorTiers<'m>,
    gear_set: [usize; 3],
    gear: Gear,
    report: BuildReport,
}

fn source_bytes(w: &WeightTensor, file: &File, gguf: &GgufInfo) -> Result<Vec<u8>> {
    if !w.is_repacked() {
        return w.read_bytes();
    }
    // Repacked (interleaved) weights cannot be read back: take the bytes from the GGUF file.
    let name = w.name();
    let t = gguf
        .tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::Llama(format!("{name} is repacked and not in the GGUF file")))?;
    if t.ggml_type != w.ggml_type() || t.size as usize != w.nbytes() {
        return Err(Error::Llama(format!(
            "{name} in the GGUF file does not match the loaded tensor"
        )));
    }
    let mut buf = vec![0u8; t.size as usize];
    file.read_exact_at(&mut buf, t.file_offset)
        .map_err(|e| Error::io(format!("reading {name} from the model file"), e))?;
    Ok(buf)
}

fn type_summary(types: impl Iterator<Item = u32>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in types {
        *counts.entry(weights::type_name(t)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'m> Gearbox<'m> {
    /// Finds the managed weights, builds the tiers and leaves the model at the high gear.
    pub fn build(
        model: &'m Model,
        model_path: &Path,
        gguf: &GgufInfo,
        opts: &GearboxOptions,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let threads = opts.threads.max(1);
        let all = weights::find_matmul_weights(model, threads as i32)?;
        let managed: Vec<WeightTensor> = all
            .into_iter()
            .filter(|w| opts.manage.matches(&w.name()))
            .collect();
        if managed.is_empty() {
            return Err(Error::InvalidParam(
                "no weight matrices match --manage/--layers".into(),
            ));
        }
        let src_types: Vec<u32> = managed.iter().map(|w| w.ggml_type()).collect();
        let warnings = plan::plan_warnings(&src_types, &opts.overrides);
        let per_tensor: Vec<[Option<u32>; 3]> = managed
            .iter()
            .map(|w| plan::tensor_types(w.ggml_type(), w.ne()[0], &opts.overrides))
            .collect();
        let mut tiers = TensorTiers::new(model, managed);

        // One set per distinct per-tensor type vector; a gear whose types are all "source"
        // uses set 0 (the loaded tensors).
        let mut gear_set = [0usize; 3];
        let mut made: Vec<(Vec<Option<u32>>, usize)> = Vec::new();
        for g in Gear::ALL {
            let types: Vec<Option<u32>> = per_tensor.iter().map(|t| t[g as usize]).collect();
            if types.iter().all(Option::is_none) {
                continue;
            }
            gear_set[g as usize] = match made.iter().find(|(t, _)| *t == types) {
                Some((_, s)) => *s,
                None => {
                    let s = tiers.add_set(&types)?;
                    made.push((types, s));
                    s
                }
            };
        }

        // Requantize: each worker takes a tensor, dequantizes its source once and writes every
        // set that needs a copy of it.
        let file = File::open(model_path)
            .map_err(|e| Error::io(format!("opening {}", model_path.display()), e))?;
        let n = tiers.weights().len();
        let pb = if opts.progress {
            ProgressBar::new(n as u64)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template("building tiers [{bar:30}] {pos}/{len} tensors {elapsed}")
                .expect("template")
                .progress_chars("=> "),
        );
        let next = AtomicUsize::new(0);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let tiers_ref = &tiers;
        std::thread::scope(|s| {
            for _ in 0..threads.min(n) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let w = tiers_ref.weights()[i];
                    let r = (|| -> Result<()> {
                        let bytes = source_bytes(&w, &file, gguf)?;
                        let f32s = weights::to_f32(w.ggml_type(), &bytes, w.n_elements())?;
                        let ne = w.ne();
                        let rows = (ne[1] * ne[2] * ne[3]) as usize;
                        for (types, set) in &made {
                            if let Some(ty) = types[i] {
                                let q = weights::quantize(ty, &f32s, rows, ne[0] as usize)?;
                                tiers_ref.fill(*set, i, &q)?;
                            }
                        }
                        Ok(())
                    })();
                    if let Err(e) = r {
                        let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        fe.get_or_insert(e);
                        return;
                    }
                    pb.inc(1);
                });
            }
        });
        pb.finish_and_clear();
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let set_bytes = tiers.set_bytes().to_vec();
        let report = BuildReport {
            managed_tensors: n,
            build_ms: t0.elapsed().as_secs_f64() * 1e3,
            bytes: gear_set.map(|s| set_bytes[s]),
            types: gear_set.map(|s| type_summary((0..n).map(|i| tiers.type_in_set(s, i)))),
            warnings,
        };
        Ok(Self {
            tiers,
            gear_set,
            gear: Gear::High,
            report,
        })
    }

    pub fn report(&self) -> &BuildReport {
        &self.report
    }

    /// The gear the next forward pass will use.
    pub fn gear(&self) -> Gear {
        self.gear
    }

    /// Shifts to `gear` (waiting for the context first); returns the time the swap took.
    pub fn shift(&mut self, ctx: &Context<'_>, gear: Gear) -> Duration {
        let t = Instant::now();
        self.tiers
            .activate_synced(ctx, self.gear_set[gear as usize]);
        self.gear = gear;
        t.elapsed()
    }

    /// Each managed tensor's name and current ggml type (introspection).
    pub fn current_types(&self) -> Vec<(String, u32)> {
        self.tiers.current_types()
    }

    /// The type managed tensor `i` has at `gear`.
    pub fn type_at(&self, gear: Gear, i: usize) -> u32 {
        self.tiers.type_in_set(self.gear_set[gear as usize], i)
    }
}
