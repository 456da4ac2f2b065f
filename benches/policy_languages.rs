//! What a policy costs to start in each language: `cosine_warmup` as a Rust, Python,
//! JavaScript and C component, cold compile (nothing cached), cached start-up (the compiled
//! component read back from the cache), and instantiation with `init`. Per-call costs are
//! criterion's: `cargo bench --workspace --bench micro -- policy_decide`.
//!
//! Run with `cargo bench --workspace --bench policy_languages` (after `make policies-all`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use trainer::check::check_spec;
use trainer::models::groups::GroupBy;
use trainer::policy::{PolicyRuntime, PolicySource, SandboxLimits};

const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", "cosine_warmup"),
    ("Python", "python_cosine_warmup"),
    ("JavaScript", "js_cosine_warmup"),
    ("C", "c_cosine_warmup"),
];

fn component(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies").join(format!("{file}.wasm"));
    assert!(path.exists(), "{} is missing: run `make policies-all` first", path.display());
    path
}

fn timed<T>(body: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = body();
    (value, started.elapsed())
}

fn main() {
    let spec = check_spec(1_000_000, vec![], GroupBy::Part);
    println!("cosine_warmup start-up per language:");
    println!("{:<12} {:>14} {:>14} {:>14}", "", "cold compile", "cached start", "instantiate");
    let cache = tempfile::tempdir().expect("a temporary cache folder");
    for (language, file) in LANGUAGES {
        let source = PolicySource { path: component(file), args: vec![] };
        let cold_runtime = PolicyRuntime::new(SandboxLimits::default(), Some(cache.path().to_path_buf()));
        let (_, cold) = timed(|| cold_runtime.prepare(&source).unwrap());
        drop(cold_runtime);
        let runtime = PolicyRuntime::new(SandboxLimits::default(), Some(cache.path().to_path_buf()));
        let (prepared, cached) = timed(|| runtime.prepare(&source).unwrap());
        let (_, instantiate) = timed(|| {
            let mut instance = runtime.instantiate(&prepared).unwrap();
            instance.init(&spec).unwrap();
            instance
        });
        println!(
            "{:<12} {:>12.0}ms {:>12.1}ms {:>12.1}ms",
            language,
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            instantiate.as_secs_f64() * 1e3,
        );
    }
}
