//! The spike benchmark: the demo's CLIP training, where a test policy multiplies the
//! learning rate by `--factor` for one step (`hostile_policy:mode=lr_spike`), trained three
//! ways with the same seed: with no spike, with the spike and nothing to catch it, and with
//! the spike and `spike_guard` (rolling back to its latest snapshot and skipping the batches
//! since). Prints, for each, the loss just before the spike, the worst loss after it, the
//! mean loss of the last 20 steps, the steps the guard rolled back, and the zero-shot top-1
//! accuracy at the end.
//!
//! Run with `cargo bench --workspace --bench spike [-- --steps N --spike-at N --factor F
//! --out DIR]` (after `make policies-all`).

use std::path::{Path, PathBuf};
use std::process::Command;
use trainer::report::read_records;

struct Outcome {
    before: f64,
    worst_after: f64,
    last: f64,
    rollbacks: Vec<u64>,
    top1: f64,
}

fn built(folder: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../build").join(folder).join(format!("{name}.wasm"))
}

fn run(run_dir: &Path, policies: &[String], steps: u64, spike_at: u64) -> Outcome {
    let mut args: Vec<String> = ["train", "--device", "cpu", "--seed", "0", "--overwrite"].map(String::from).to_vec();
    args.extend(["--steps".into(), steps.to_string(), "--run-dir".into(), run_dir.display().to_string()]);
    for policy in policies {
        args.extend(["--policy".into(), policy.clone()]);
    }
    let output = Command::new(env!("CARGO_BIN_EXE_trainer")).args(&args).output().expect("the trainer runs");
    assert!(output.status.success(), "{}: {}", run_dir.display(), String::from_utf8_lossy(&output.stderr));
    let metrics: Vec<serde_json::Value> = read_records(&run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    let loss = |record: &serde_json::Value| record["loss"].as_f64().unwrap_or(f64::NAN);
    let losses: Vec<f64> = metrics.iter().map(loss).collect();
    let decisions: Vec<serde_json::Value> = read_records(&run_dir.join("decisions.jsonl")).expect("decisions.jsonl");
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("eval.json")).expect("eval.json")).expect("JSON");
    let tail = &losses[losses.len().saturating_sub(20)..];
    Outcome {
        before: losses[spike_at as usize - 1],
        worst_after: losses[spike_at as usize..].iter().copied().fold(f64::NEG_INFINITY, f64::max),
        last: tail.iter().sum::<f64>() / tail.len() as f64,
        rollbacks: decisions.iter().filter(|d| d["action"] == "rollback").filter_map(|d| d["step"].as_u64()).collect(),
        top1: eval["zero_shot_top1"].as_f64().unwrap_or(f64::NAN),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut steps, mut spike_at, mut factor, mut out) = (300u64, 200u64, 50.0f64, PathBuf::from("runs/spike"));
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--steps" => steps = value.parse().expect("--steps N"),
            "--spike-at" => spike_at = value.parse().expect("--spike-at N"),
            "--factor" => factor = value.parse().expect("--factor F"),
            "--out" => out = PathBuf::from(value),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    let schedule = format!("{}:warmup_steps={}", built("policies", "cosine_warmup").display(), steps / 20);
    let spike =
        format!("{}:mode=lr_spike,at={spike_at},factor={factor}", built("fixtures", "hostile_policy").display());
    let guard = format!("{}:snapshot_every=25", built("policies", "spike_guard").display());
    let variants: [(&str, Vec<String>); 3] = [
        ("no spike", vec![schedule.clone()]),
        ("spike, unguarded", vec![schedule.clone(), spike.clone()]),
        ("spike, spike_guard", vec![schedule, spike, guard]),
    ];
    println!("CLIP demo, {steps} steps, learning rate x{factor} at step {spike_at} alone");
    println!(
        "{:<20} {:>13} {:>16} {:>14} {:>14} {:>16}",
        "run", "loss before", "worst after", "last 20 mean", "rolled back at", "zero-shot top-1"
    );
    for (name, policies) in variants {
        let outcome = run(&out.join(name.replace([' ', ','], "_")), &policies, steps, spike_at);
        let rollbacks: Vec<String> = outcome.rollbacks.iter().map(u64::to_string).collect();
        println!(
            "{:<20} {:>13.4} {:>16.4} {:>14.4} {:>14} {:>15.2}%",
            name,
            outcome.before,
            outcome.worst_after,
            outcome.last,
            if rollbacks.is_empty() { "-".to_string() } else { rollbacks.join(",") },
            outcome.top1 * 100.0
        );
    }
}
