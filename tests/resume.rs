//! Exact resume: a run paused at any step and resumed ends bit-identical (weights, decisions,
//! evaluations, final evaluation) to the same run uninterrupted, on CPU.

mod common;

use common::{assert_error, assert_success, policy, read_json, read_jsonl, train_cpu, trainer};
use std::path::Path;

const STEPS: &str = "24";

/// Every knob moves in this run: a group is unfrozen at step 10 with a ramp, the loss weight
/// adapts, augmentation ramps up, and evaluations come every 5 steps.
fn policies() -> Vec<String> {
    vec![
        format!("{}:unfreeze=vision@10,ramp_steps=4", policy("staged_unfreeze").display()),
        format!("{}:metric=val_loss,patience=100,eval_every=5", policy("early_stopping").display()),
        policy("loss_balance").display().to_string(),
        format!("{}:ramp_steps=6,off_at=20", policy("aug_curriculum").display()),
    ]
}

fn run(run_dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--steps", STEPS, "--batch-size", "16", "--seed", "3"];
    args.extend(extra);
    train_cpu(run_dir, &policies(), &args)
}

fn resume(run_dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", "--resume", run_dir.to_str().unwrap(), "--device", "cpu"];
    args.extend(extra);
    trainer(&args)
}

/// metrics.jsonl without the wall-clock throughput, which no two runs share.
fn metrics_without_timing(run_dir: &Path) -> Vec<serde_json::Value> {
    let mut records = read_jsonl(&run_dir.join("metrics.jsonl"));
    for record in &mut records {
        record.as_object_mut().unwrap().remove("images_per_second");
    }
    records
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn paused_and_resumed_runs_end_bit_identical() {
    let whole = tempfile::tempdir().unwrap();
    assert_success(&run(whole.path(), &[]));

    // 1: the first step; 5: right after an evaluation; 10: just before the unfreeze;
    // 11: right after it; 23: the last step but one.
    for pause in ["1", "5", "10", "11", "23"] {
        let part = tempfile::tempdir().unwrap();
        let paused = run(part.path(), &["--pause-after-steps", pause]);
        assert_success(&paused);
        assert!(part.path().join(format!("checkpoints/step-{pause}/manifest.json")).exists());
        assert!(!part.path().join("final").exists(), "a paused run has no final weights yet");
        assert_success(&resume(part.path(), &[]));

        let same = |file: &str| bytes(&whole.path().join(file)) == bytes(&part.path().join(file));
        for file in ["final/model.safetensors", "decisions.jsonl", "evaluations.jsonl", "eval.json"] {
            assert!(same(file), "{file} differs after pausing at step {pause}");
        }
        assert_eq!(
            metrics_without_timing(whole.path()),
            metrics_without_timing(part.path()),
            "metrics, paused at {pause}"
        );
    }
}

#[test]
fn resuming_with_another_policy_needs_the_explicit_swap() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&run(dir.path(), &["--pause-after-steps", "3"]));
    let constant = policy("constant");
    let swapped = resume(dir.path(), &["--policy", constant.to_str().unwrap()]);
    assert_error(&swapped, 1, &["other policies", "--swap-policies"]);
    // Nothing was lost: the checkpoint is still there, and the swap works when asked for.
    assert!(dir.path().join("checkpoints/step-3/manifest.json").exists());
    assert_success(&resume(dir.path(), &["--policy", constant.to_str().unwrap(), "--swap-policies"]));
    let decisions = read_jsonl(&dir.path().join("decisions.jsonl"));
    assert!(decisions.iter().filter(|d| d["step"].as_u64().unwrap() >= 3).all(|d| d["policy"] == "constant"));
    assert_eq!(read_json(&dir.path().join("eval.json"))["step"], 24);
}

#[test]
fn a_damaged_checkpoint_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&run(dir.path(), &["--pause-after-steps", "2"]));
    let weights = dir.path().join("checkpoints/step-2/model.safetensors");
    let mut damaged = bytes(&weights);
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xFF;
    std::fs::write(&weights, damaged).unwrap();
    assert_error(&resume(dir.path(), &[]), 1, &["model.safetensors", "checksum mismatch"]);
}

#[test]
fn resume_keeps_the_saved_settings() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&run(dir.path(), &["--pause-after-steps", "2"]));
    assert_error(&resume(dir.path(), &["--lr", "1"]), 1, &["--lr", "saved settings"]);
}

#[test]
fn sigterm_saves_a_checkpoint_after_the_step_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy("cosine_warmup");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "train",
            "--policy",
            policy.to_str().unwrap(),
            "--steps",
            "100000",
            "--batch-size",
            "16",
            "--device",
            "cpu",
        ])
        .args(["--run-dir", dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&metrics).map(|text| text.lines().count()).unwrap_or(0) < 3 {
        assert!(std::time::Instant::now() < deadline, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success(), "an interrupted run exits cleanly");
    let checkpoints: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints")).unwrap().collect();
    assert_eq!(checkpoints.len(), 1, "one checkpoint, written on the signal");
    let steps_done = read_jsonl(&metrics).len();
    assert!(dir.path().join(format!("checkpoints/step-{steps_done}/manifest.json")).exists());
}
