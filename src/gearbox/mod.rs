//! The gearbox: builds a tier set per gear by requantizing the managed weights from their
//! source bytes, and shifts gears by swapping every managed tensor's storage in place.

pub mod cache;
mod device;
pub mod memory;
pub mod plan;
pub mod top;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::llama::weights::{self, TensorTiers, WeightTensor};
use crate::llama::{cuda_graphs, Context, GgmlType, Model};
use crate::store::{GgufInfo, ResolvedModel};
pub use plan::{Gear, GearSet, Manage, PerGear, TierOverrides};

/// How to build the gearbox.
#[derive(Debug, Clone, Default)]
pub struct GearboxOptions {
    pub manage: Manage,
    pub overrides: TierOverrides,
    /// Which gears get tiers of their own (default: all three).
    pub gears: GearSet,
    pub threads: usize,
    pub progress: bool,
    /// Where to keep built tiers between runs (None: always build).
    pub cache: Option<CacheOptions>,
    /// Set from another thread (Ctrl-C) to stop building: [`Error::Interrupted`].
    pub abort: Option<Arc<AtomicBool>>,
}

/// The on-disk tier cache of one model.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// The source model's sha256 (the cache key starts from it).
    pub source_sha256: String,
}

impl CacheOptions {
    /// The cache for model `m` in `dir` (default: `$GEARBX_TIER_CACHE`, else `<cache>/tiers`);
    /// hashes a GGUF given by path once and memoises the digest under `<dir>/digests`.
    pub fn for_model(dir: Option<PathBuf>, m: &ResolvedModel, progress: bool) -> Result<Self> {
        let dir = Self::dir(dir)?;
        let source_sha256 = crate::store::digest::source_sha256(m, &dir.join("digests"), progress)?;
        Ok(Self { dir, source_sha256 })
    }

    /// The tier cache folder: `dir` if given, else `$GEARBX_TIER_CACHE`, else `<cache>/tiers`.
    pub fn dir(dir: Option<PathBuf>) -> Result<PathBuf> {
        let from_env = std::env::var_os("GEARBX_TIER_CACHE").filter(|v| !v.is_empty());
        match dir.or_else(|| from_env.map(PathBuf::from)) {
            Some(d) => Ok(d),
            None => Ok(crate::store::default_model::cache_dir()?.join("tiers")),
        }
    }
}

/// Where the tiers of this run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TierOrigin {
    /// Requantized from the source weights (and saved to the cache when one is set).
    Built,
    /// Read back from the tier cache.
    Cache,
    /// Requantized on the GPU that holds the weights (by our CUDA kernels; never cached: it
    /// is faster than reading a cache file).
    Gpu,
}

/// What building produced, for the user and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub managed_tensors: usize,
    /// Time to make the tiers ready: requantization or reading the cache.
    pub build_ms: f64,
    pub origin: TierOrigin,
    /// The cache file used or written, if any.
    pub cache_file: Option<PathBuf>,
    /// Bytes of the managed weights at each gear.
    pub bytes: PerGear<u64>,
    /// Types at each gear, e.g. "Q4_0 x180, Q3_K x30".
    pub types: PerGear<String>,
    /// Buffer types holding each gear's weights, e.g. "CUDA0" or "CPU_REPACK, CPU".
    pub placement: PerGear<String>,
    /// Bytes of every tier gearbx holds beside the loaded model (a tensor whose type is the
    /// same at two gears is stored once and counted once).
    pub shadow_bytes: u64,
    /// Shadow tensors a gear shares with a lower gear (the same type at both).
    pub shared_tensors: usize,
    /// Per device: the bytes the tiers needed there and the free memory before (checked).
    pub memory: Vec<memory::DeviceMemory>,
    /// Shadow tensors requantized on the GPU, and on the CPU (0 and 0 when read from cache).
    pub built_on_gpu: usize,
    pub built_on_cpu: usize,
    pub warnings: Vec<String>,
}

impl BuildReport {
    /// Bytes of the tiers in GPU memory (every device but the CPU).
    pub fn gpu_bytes(&self) -> u64 {
        self.memory
            .iter()
            .filter(|d| d.device != "CPU")
            .map(|d| d.need)
            .sum()
    }
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
    if t.ggml_type != w.ggml_type().id() || t.size as usize != w.nbytes() {
        return Err(Error::Llama(format!(
            "{name} in the GGUF file does not match the loaded tensor"
        )));
    }
    let mut buf = vec![0u8; t.size as usize];
    file.read_exact_at(&mut buf, t.file_offset)
        .map_err(|e| Error::io(format!("reading {name} from the model file"), e))?;
    Ok(buf)
}

/// Checks that the GGUF at `path` holds the tensors of the loaded model: every managed tensor
/// is in it with the same type and size, and its first bytes are the loaded ones (where the
/// loaded copy is readable; repacked tensors are compared by type and size). A host that names
/// a different file than it loaded would otherwise get tiers of the wrong weights from the
/// cache.
fn check_source_file(
    weights: &[WeightTensor],
    file: &File,
    gguf: &GgufInfo,
    path: &Path,
) -> Result<()> {
    for w in weights {
        let name = w.name();
        let bad = |why: String| {
            Error::InvalidParam(format!(
                "{} is not the file this model was loaded from: {why}",
                path.display()
            ))
        };
        let t = gguf
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| bad(format!("it has no tensor {name}")))?;
        if t.ggml_type != w.ggml_type().id() || t.size as usize != w.nbytes() {
            return Err(bad(format!("{name} differs in type or size")));
        }
        if !w.is_repacked() {
            let loaded = w.read_prefix(64)?;
            let mut on_disk = vec![0u8; loaded.len()];
            file.read_exact_at(&mut on_disk, t.file_offset)
                .map_err(|e| Error::io(format!("reading {name} from {}", path.display()), e))?;
            if loaded != on_disk {
                return Err(bad(format!("the values of {name} differ")));
            }
        }
    }
    Ok(())
}

fn type_summary(types: impl Iterator<Item = GgmlType>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in types {
        *counts.entry(t.name()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `work(i)` for every tensor index on `threads` workers with a progress bar; stops at
/// the first error and returns it.
fn for_each_tensor(
    n: usize,
    threads: usize,
    what: &str,
    opts: &GearboxOptions,
    work: impl Fn(usize) -> Result<()> + Sync,
) -> Result<()> {
    let progress = opts.progress;
    let aborted = || {
        opts.abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Relaxed))
    };
    let pb = if progress {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} tensors {{elapsed}}"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(n) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                if let Err(e) = if aborted() {
                    Err(Error::Interrupted)
                } else {
                    work(i)
                } {
                    let mut fe = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    fe.get_or_insert(e);
                    return;
                }
                pb.inc(1);
            });
        }
    });
    pb.finish_and_clear();
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
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
            return Err(Error::bad_param(
                crate::error::param::MANAGE,
                "match no weight matrices",
            ));
        }
        let file = File::open(model_path)
            .map_err(|e| Error::io(format!("opening {}", model_path.display()), e))?;
        check_source_file(&managed, &file, gguf, model_path)?;
        let src_types: Vec<GgmlType> = managed.iter().map(|w| w.ggml_type()).collect();
        let mut warnings = plan::plan_warnings(&src_types, &opts.overrides);
        let per_tensor: Vec<[Option<GgmlType>; 3]> = managed
            .iter()
            .map(|w| {
                opts.gears.apply(plan::tensor_types(
                    w.ggml_type(),
                    w.ne()[0],
                    &opts.overrides,
                ))
            })
            .collect();
        let rows: Vec<i64> = managed.iter().map(|w| w.ne()[0]).collect();
        if opts.gears.0[0] && opts.gears.0[1] {
            warnings.extend(plan::same_type_warning(&per_tensor, &rows));
        }
        let mut tiers = TensorTiers::new(model, managed);

        // One set per distinct per-tensor type vector; a gear whose types are all "source"
        // uses set 0 (the loaded tensors).
        let gear_types: Vec<Vec<Option<GgmlType>>> = Gear::ALL
            .iter()
            .map(|&g| per_tensor.iter().map(|t| t[g as usize]).collect())
            .collect();
        let mut distinct: Vec<Vec<Option<GgmlType>>> = Vec::new();
        for types in &gear_types {
            if !types.iter().all(Option::is_none) && !distinct.contains(types) {
                distinct.push(types.clone());
            }
        }
        // What that needs on each device, checked before anything is allocated.
        let memory_plan = memory::plan(&tiers, &distinct);
        memory::check(&memory_plan)?;
        let mut gear_set = [0usize; 3];
        let mut made: Vec<(Vec<Option<GgmlType>>, usize)> = Vec::new();
        for (g, types) in Gear::ALL.iter().zip(gear_types) {
            if types.iter().all(Option::is_none) {
                continue;
            }
            gear_set[*g as usize] = match made.iter().find(|(t, _)| *t == types) {
                Some((_, s)) => *s,
                None => {
                    let s = tiers.add_set(&types)?;
                    made.push((types, s));
                    s
                }
            };
        }

        // One cache entry per shadow tensor, grouped by managed tensor.
        let n = tiers.weights().len();
        let names: Vec<String> = tiers.weights().iter().map(|w| w.name()).collect();
        let mut entries = Vec::new();
        let mut entries_of: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in 0..n {
            for (_, set) in &made {
                if let Some(len) = tiers.shadow_nbytes(*set, i) {
                    entries_of[i].push(entries.len());
                    entries.push(cache::Entry {
                        tensor: names[i].clone(),
                        index: i,
                        set: *set,
                        ggml_type: tiers.type_in_set(*set, i).id(),
                        len: len as u64,
                        offset: 0,
                        crc32: 0,
                    });
                }
            }
        }
        // Tiers the GPU builds are not worth caching; the cache is used only when some must
        // be built on the CPU.
        let all_on_gpu = !entries.is_empty()
            && entries.iter().all(|e| {
                device::can_build(&tiers, e.set, e.index, GgmlType::from_ggml(e.ggml_type))
            });
        let cache_at = opts.cache.as_ref().filter(|_| !all_on_gpu).map(|c| {
            let plans: Vec<cache::TensorPlan<'_>> = tiers
                .weights()
                .iter()
                .enumerate()
                .map(|(i, w)| cache::TensorPlan {
                    name: &names[i],
                    source_type: w.ggml_type().id(),
                    ne: w.ne(),
                    set_types: made.iter().map(|(t, _)| t[i].map(GgmlType::id)).collect(),
                })
                .collect();
            let key = cache::key(&c.source_sha256, &plans);
            (cache::path_for(&c.dir, &c.source_sha256, &key), key, c)
        });

        // Read the tiers back from the cache when a matching file is there.
        let mut origin = TierOrigin::Built;
        if let Some((path, key, _)) = &cache_at {
            let loaded = cache::Reader::open(path, key, &entries).and_then(|r| match r {
                None => Ok(false),
                Some(r) => {
                    for_each_tensor(n, threads, "loading tiers", opts, |i| {
                        for &k in &entries_of[i] {
                            tiers.fill(entries[k].set, i, &r.read(k)?)?;
                        }
                        Ok(())
                    })?;
                    Ok(true)
                }
            });
            match loaded {
                Ok(true) => origin = TierOrigin::Cache,
                Ok(false) => {}
                Err(e) => warnings.push(format!("{e}; rebuilding the tiers")),
            }
        }

        let (mut built_on_gpu, mut built_on_cpu) = (0, 0);
        if origin == TierOrigin::Built {
            // Saving is best effort: a full disk costs the next start a rebuild, not this run.
            let writer = cache_at.as_ref().and_then(|(path, key, c)| {
                cache::Writer::create(path, key, &c.source_sha256, &entries)
                    .map_err(|e| warnings.push(format!("not caching the tiers: {e}")))
                    .ok()
            });
            let write_error: Mutex<Option<Error>> = Mutex::new(None);
            let gpus: Mutex<Vec<i32>> = Mutex::new(Vec::new());
            let on_gpu = AtomicUsize::new(0);
            // Each worker takes a tensor and builds every set that needs a copy of it: on the
            // GPU where the weight lives there, else from its source dequantized once.
            for_each_tensor(n, threads, "building tiers", opts, |i| {
                let w = tiers.weights()[i];
                let ne = w.ne();
                let rows = (ne[1] * ne[2] * ne[3]) as usize;
                let mut on_cpu = Vec::new();
                for &k in &entries_of[i] {
                    let e = &entries[k];
                    let ty = GgmlType::from_ggml(e.ggml_type);
                    let Some(dev) = device::build(&tiers, e.set, i, ty)? else {
                        on_cpu.push((k, ty));
                        continue;
                    };
                    on_gpu.fetch_add(1, Ordering::Relaxed);
                    let mut g = gpus.lock().unwrap_or_else(|p| p.into_inner());
                    if !g.contains(&dev) {
                        g.push(dev);
                    }
                    drop(g);
                    if let Some(wr) = &writer {
                        // Read back after the kernel (the copy's stream waits for it).
                        if let Err(err) = tiers.read_shadow(e.set, i).and_then(|q| wr.write(k, &q))
                        {
                            write_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(err);
                        }
                    }
                }
                if on_cpu.is_empty() {
                    return Ok(());
                }
                // The rest from the source, converted once a chunk at a time into every type.
                let bytes = source_bytes(&w, &file, gguf)?;
                let types: Vec<GgmlType> = on_cpu.iter().map(|&(_, ty)| ty).collect();
                let built =
                    weights::requantize(w.ggml_type(), &bytes, rows, ne[0] as usize, &types)?;
                drop(bytes);
                for ((k, _), q) in on_cpu.into_iter().zip(built) {
                    tiers.fill(entries[k].set, i, &q)?;
                    if let Some(wr) = &writer {
                        if let Err(err) = wr.write(k, &q) {
                            write_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(err);
                        }
                    }
                }
                Ok(())
            })?;
            device::synchronize(&gpus.into_inner().unwrap_or_else(|p| p.into_inner()))?;
            built_on_gpu = on_gpu.into_inner();
            built_on_cpu = entries.len() - built_on_gpu;
            if all_on_gpu {
                origin = TierOrigin::Gpu;
            }
            if let Some(wr) = writer {
                let saved = match write_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    Some(e) => Err(e),
                    None => wr.finish(),
                };
                if let Err(e) = saved {
                    warnings.push(format!("not caching the tiers: {e}"));
                }
            }
        }
        let set_bytes = tiers.set_bytes().to_vec();
        let shared_tensors = made
            .iter()
            .map(|(_, set)| (0..n).filter(|&i| tiers.shadow_is_shared(*set, i)).count())
            .sum();
        let report = BuildReport {
            shadow_bytes: tiers.shadow_bytes(),
            memory: memory_plan,
            shared_tensors,
            managed_tensors: n,
            build_ms: t0.elapsed().as_secs_f64() * 1e3,
            origin,
            cache_file: cache_at.map(|(p, _, _)| p),
            bytes: PerGear(gear_set.map(|s| set_bytes[s])),
            types: PerGear(gear_set.map(|s| type_summary((0..n).map(|i| tiers.type_in_set(s, i))))),
            placement: PerGear(gear_set.map(|s| tiers.set_placement(s).join(", "))),
            built_on_gpu,
            built_on_cpu,
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

    /// [`Gearbox::shift`] on a context a host program owns (the attach API).
    ///
    /// # Safety
    /// `ctx` must be a live `llama_context` of the model this gearbox was built for.
    pub unsafe fn shift_host(
        &mut self,
        ctx: *mut crate::llama::sys::llama_context,
        gear: Gear,
    ) -> Duration {
        let t = Instant::now();
        let (before, set) = (self.tiers.active(), self.gear_set[gear as usize]);
        // SAFETY: forwarded from the caller.
        unsafe { self.tiers.activate_synced_raw(ctx, set) };
        // A host's decodes do not pass through Context::decode: select the gear's CUDA graph
        // variant on this thread (the attach API asks for the decoding thread), and after a
        // real shift make every captured graph check its nodes before its next replay, so a
        // decode on another thread re-captures instead of replaying the old weights.
        cuda_graphs::set_variant(self.tiers.model().graph_variant());
        if set != before {
            cuda_graphs::invalidate();
        }
        self.gear = gear;
        t.elapsed()
    }

    /// Each managed tensor's name and current ggml type (introspection).
    pub fn current_types(&self) -> Vec<(String, GgmlType)> {
        self.tiers.current_types()
    }

    /// The type managed tensor `i` has at `gear`.
    pub fn type_at(&self, gear: Gear, i: usize) -> GgmlType {
        self.tiers.type_in_set(self.gear_set[gear as usize], i)
    }
}
