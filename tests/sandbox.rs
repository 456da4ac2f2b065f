//! Hostile policies: each is stopped or refused with a message naming the policy, the step
//! and the cause; the run's saved state survives; the trainer never hangs.

mod common;

use common::{assert_error, assert_one_line_error, assert_success, fixture, read_jsonl, train_cpu, trainer};
use std::path::Path;

/// Trains with the hostile fixture in `mode`, checkpointing every 2 steps; it misbehaves
/// from step 3 on.
fn hostile_run(run_dir: &Path, mode: &str, extra: &[&str]) -> std::process::Output {
    let policy = format!("{}:mode={mode},at=3", fixture("hostile_policy").display());
    let mut args = vec!["--steps", "8", "--batch-size", "8", "--checkpoint-every", "2"];
    args.extend(extra);
    train_cpu(run_dir, &[policy], &args)
}

/// The checkpoint after step 2 is intact, and a fault checkpoint after step 3 names the fault.
fn assert_state_saved(run_dir: &Path, cause: &str) {
    assert!(run_dir.join("checkpoints/step-2/manifest.json").exists(), "the regular checkpoint survives");
    let fault = std::fs::read_to_string(run_dir.join("checkpoints/step-3/manifest.json")).expect("a fault checkpoint");
    assert!(fault.contains(cause), "the fault checkpoint records the fault: {fault}");
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let output = hostile_run(dir.path(), "infinite_loop", &[]);
    assert_error(&output, 3, &["`hostile_policy`", "step 3", "ran out of fuel"]);
    assert_state_saved(dir.path(), "ran out of fuel");
}

#[test]
fn an_infinite_loop_with_ample_fuel_hits_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let output = hostile_run(dir.path(), "infinite_loop", &["--policy-fuel", "1000000000000000"]);
    assert_error(&output, 3, &["`hostile_policy`", "step 3", "deadline"]);
    assert_state_saved(dir.path(), "deadline");
}

#[test]
fn a_memory_bomb_hits_the_memory_cap() {
    let dir = tempfile::tempdir().unwrap();
    let output = hostile_run(dir.path(), "memory_bomb", &[]);
    assert_error(&output, 3, &["`hostile_policy`", "step 3", "memory"]);
    assert_state_saved(dir.path(), "memory");
}

#[test]
fn invalid_decisions_name_the_field() {
    for (mode, field) in [
        ("nan_lr", "lrs[vision]"),
        ("negative_weight", "loss_weights[contrastive]"),
        ("out_of_range_knob", "augmentation[crop_scale_min]"),
        ("unclaimed_knob", "freeze"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = hostile_run(dir.path(), mode, &[]);
        assert_error(&output, 3, &["`hostile_policy`", "step 3", "invalid decision", field]);
        assert_state_saved(dir.path(), field);
    }
}

#[test]
fn a_panic_in_load_state_stops_the_resume_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&hostile_run(dir.path(), "panic_in_load_state", &["--pause-after-steps", "2"]));
    let output = trainer(&["train", "--resume", dir.path().to_str().unwrap(), "--device", "cpu"]);
    assert_error(&output, 3, &["`hostile_policy`", "load-state", "panicked"]);
    assert!(dir.path().join("checkpoints/step-2/manifest.json").exists());
    assert!(!dir.path().join("final").exists());
}

fn run_component(wat: &str, name: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    trainer(&[
        "train",
        "--policy",
        path.to_str().unwrap(),
        "--steps",
        "2",
        "--run-dir",
        dir.path().join("run").to_str().unwrap(),
    ])
}

#[test]
fn a_component_importing_wasi_is_refused() {
    let output = run_component(r#"(component (import "wasi:cli/environment@0.2.0" (instance)))"#, "wasi.wasm");
    assert_one_line_error(&output, 1, &["wasi.wasm", "imports wasi:cli/environment@0.2.0", "no WASI"]);
}

/// A policy whose memory grows at every call, as a leaking language runtime's does, would
/// hit its 64 MiB cap at about the 250th call: it is started again from its saved state
/// before that, as often as needed, and decides on as if it had not been.
#[test]
fn a_policy_whose_memory_keeps_growing_is_started_again_from_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let policy = format!("{}:mode=memory_leak", fixture("hostile_policy").display());
    assert_success(&train_cpu(dir.path(), &[policy], &["--steps", "600", "--batch-size", "4", "--workers", "1"]));
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    let restarts = log.matches("started again from its saved state").count();
    assert!(restarts >= 2, "{restarts} restarts logged:\n{log}");
    let decisions = read_jsonl(&dir.path().join("decisions.jsonl"));
    assert_eq!(decisions.len(), 600);
    for decision in decisions {
        // The rate follows the policy's step counter, which a restart without its state
        // would have set back to zero.
        let step = decision["step"].as_f64().unwrap();
        let lr = decision["lrs"]["vision"].as_f64().unwrap();
        assert!((lr - 1e-3 * (1.0 + 1.0 / (step + 1.0))).abs() < 1e-12, "step {step}: lr {lr}");
    }
}
