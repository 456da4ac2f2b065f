//! What a policy costs in each language: per-call µs of `cosine_warmup`'s decide as a Rust,
//! Python, JavaScript and C component against the same logic as plain native Rust (the ratio
//! is the sandbox's overhead, plus the language runtime's), and per language the start-up:
//! cold compile (nothing cached), cached start-up (the compiled component read back from the
//! cache), and instantiation with `init`.
//!
//! Run with `cargo bench -p trainer --bench policy_languages` (after `make policies`).

use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use trainer::check::{StreamSpec, check_spec};
use trainer::policy::{Decision, Observation, PolicyRuntime, PolicySource, SandboxLimits};

const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", "cosine_warmup"),
    ("Python", "python_cosine_warmup"),
    ("JavaScript", "js_cosine_warmup"),
    ("C", "c_cosine_warmup"),
];
const TOTAL_STEPS: u64 = 1_000_000;
const CALLS: usize = 2_000;

fn component(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies").join(format!("{file}.wasm"));
    assert!(path.exists(), "{} is missing: run `make policies` first", path.display());
    path
}

/// Median time per call of `body`, over `rounds` rounds of `calls` calls.
fn median_per_call(rounds: usize, calls: usize, mut body: impl FnMut(u64)) -> Duration {
    let mut step = 0;
    let mut per_call: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..calls {
                body(step);
                step += 1;
            }
            started.elapsed() / calls as u32
        })
        .collect();
    per_call.sort();
    per_call[rounds / 2]
}

fn timed<T>(body: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = body();
    (value, started.elapsed())
}

/// The policy's decision as plain Rust: the schedule of policies/cosine_warmup with its
/// arguments, building the same `Decision`.
fn native_decide(observation: &Observation, base_lrs: &[f64], warmup: u64, min_lr: f64) -> Decision {
    let step = observation.step;
    let lr = |base: f64| {
        if step < warmup {
            return (step + 1) as f64 / warmup as f64 * base;
        }
        let floor = min_lr.min(base);
        let progress = ((step - warmup) as f64 / (TOTAL_STEPS - warmup).max(1) as f64).min(1.0);
        floor + (base - floor) * (0.5 * (1.0 + (PI * progress).cos()))
    };
    Decision { lrs: base_lrs.iter().map(|&base| Some(lr(base))).collect(), ..Decision::keep() }
}

fn main() {
    let spec = check_spec(TOTAL_STEPS, vec![]);
    // One smooth stream, the observation every policy sees at each step.
    let stream = StreamSpec {
        len: TOTAL_STEPS,
        save_at: 0,
        start_loss: 5.0,
        decay: 1e-4,
        plateau_from: None,
        spikes: vec![],
        non_finite: vec![],
        evaluations: vec![],
    };
    let observations: Vec<Observation> = (0..CALLS as u64 * 9).map(|step| stream.observation(step, &spec)).collect();
    let observe = |step: u64| &observations[step as usize % observations.len()];

    let base_lrs: Vec<f64> = spec.groups.iter().map(|group| group.base_lr).collect();
    let native = median_per_call(9, CALLS, |step| {
        std::hint::black_box(native_decide(observe(step), &base_lrs, TOTAL_STEPS / 20, 0.0));
    });
    println!("cosine_warmup decide, per call (median of 9 rounds of {CALLS} calls), start-up per language:");
    println!(
        "{:<12} {:>10} {:>8} {:>14} {:>14} {:>14}",
        "", "decide µs", "ratio", "cold compile", "cached start", "instantiate"
    );
    println!("{:<12} {:>10.3} {:>8.1}", "native Rust", native.as_secs_f64() * 1e6, 1.0);

    let cache = tempfile::tempdir().expect("a temporary cache folder");
    for (language, file) in LANGUAGES {
        let source = PolicySource { path: component(file), args: vec![] };
        let cold_runtime = PolicyRuntime::new(SandboxLimits::default(), Some(cache.path().to_path_buf()));
        let (_, cold) = timed(|| cold_runtime.prepare(&source).unwrap());
        drop(cold_runtime);
        let runtime = PolicyRuntime::new(SandboxLimits::default(), Some(cache.path().to_path_buf()));
        let (prepared, cached) = timed(|| runtime.prepare(&source).unwrap());
        let (mut instance, instantiate) = timed(|| {
            let mut instance = runtime.instantiate(&prepared).unwrap();
            instance.init(&spec).unwrap();
            instance
        });
        let per_call = median_per_call(9, CALLS, |step| {
            std::hint::black_box(instance.decide(observe(step)).unwrap());
        });
        println!(
            "{:<12} {:>10.3} {:>8.1} {:>12.0}ms {:>12.1}ms {:>12.1}ms",
            language,
            per_call.as_secs_f64() * 1e6,
            per_call.as_secs_f64() / native.as_secs_f64(),
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            instantiate.as_secs_f64() * 1e3,
        );
    }
}
