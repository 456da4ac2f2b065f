//! Never losing a run: the divergence guard stops a run whose updates keep being skipped
//! as non-finite (no final/ from ruined weights); old checkpoints are pruned to the newest
//! N; a checkpoint or final/ that cannot be written leaves a resumable state; NaN and the
//! infinities are written exactly and replayed exactly by `trainer simulate`.

mod common;

use common::{assert_error, assert_success, policy, read_json, read_jsonl, train_cpu, trainer};
use std::path::Path;

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp paths")
}

fn constant(lr: &str) -> Vec<String> {
    vec![format!("{}:lr={lr}", policy("constant").display())]
}

/// Step folders under `run/checkpoints`, sorted.
fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_huge_but_valid_learning_rate_is_stopped_by_the_divergence_guard() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let extra = ["--steps", "12", "--batch-size", "8", "--checkpoint-every", "1"];
    let output = train_cpu(&run, &constant("1e30"), &extra);
    // The first update is finite and ruins the weights; every step after it is skipped.
    assert_error(&output, 4, &["diverged", "3 steps in a row", "from step 1", "no final/", "step-4"]);
    assert!(!run.join("final").exists(), "no final/ from ruined weights");
    // Checkpoints written during the non-finite steps push none out; the guard's own is the
    // state after step 4.
    assert_eq!(checkpoints(&run), ["step-1", "step-2", "step-3", "step-4"]);
    let manifest = read_json(&run.join("checkpoints/step-4/manifest.json"));
    assert!(manifest["fault"].as_str().unwrap().contains("diverged"), "{manifest}");
    let metrics = read_jsonl(&run.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 4, "steps 0 to 3 ran");
    assert!(metrics[1]["loss"].is_string(), "a non-finite loss is written as text: {}", metrics[1]);
    assert!(metrics[1]["skipped"].as_bool().unwrap());

    // Without the guard the run goes to the end, counting what it skipped.
    let unguarded = dir.path().join("unguarded");
    let output =
        train_cpu(&unguarded, &constant("1e30"), &["--steps", "4", "--batch-size", "8", "--max-skipped-steps", "0"]);
    assert_success(&output);
    assert_eq!(read_json(&unguarded.join("eval.json"))["skipped_steps"], 3);
    assert!(String::from_utf8_lossy(&output.stdout).contains("3 steps skipped"));
}

#[test]
fn retention_keeps_exactly_the_newest_checkpoints_and_says_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let extra = ["--steps", "5", "--batch-size", "8", "--checkpoint-every", "1", "--keep-checkpoints", "2"];
    assert_success(&train_cpu(&run, &constant("1e-3"), &extra));
    assert_eq!(checkpoints(&run), ["step-4", "step-5"]);
    let log = std::fs::read_to_string(run.join("run.log")).unwrap();
    assert!(log.lines().any(|line| line.starts_with("checkpoint after step 5:") && line.contains(" MB")), "{log}");

    let all = dir.path().join("all");
    assert_success(&train_cpu(&all, &constant("1e-3"), &[&extra[..6], &["--keep-checkpoints", "0"]].concat()));
    assert_eq!(checkpoints(&all).len(), 5);
}

#[test]
fn a_checkpoint_or_final_write_that_fails_leaves_a_resumable_state() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // A file where the checkpoint of step 4 is staged: the write fails as on a full disk.
    let blocker = run.join("checkpoints/step-4.tmp");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"").unwrap();
    let extra = ["--steps", "6", "--batch-size", "8", "--checkpoint-every", "2"];
    let output = train_cpu(&run, &constant("1e-3"), &extra);
    assert_error(&output, 1, &["step-4.tmp"]);
    assert_eq!(checkpoints(&run), ["step-2", "step-4.tmp"], "the earlier checkpoint is intact");
    std::fs::remove_file(&blocker).unwrap();
    assert_success(&trainer(&["train", "--device", "cpu", "--resume", arg(&run)]));
    assert!(run.join("final/model.safetensors").exists());

    // final/ that cannot be written: the state is checkpointed, and a resume writes final/.
    let second = dir.path().join("second");
    let blocker = second.join("final.tmp");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(&blocker, b"").unwrap();
    let output = train_cpu(&second, &constant("1e-3"), &["--steps", "2", "--batch-size", "8"]);
    assert_error(&output, 1, &["final.tmp", "resume to write final/"]);
    std::fs::remove_file(&blocker).unwrap();
    assert_success(&trainer(&["train", "--device", "cpu", "--resume", arg(&second)]));
    assert!(second.join("final/model.safetensors").exists() && second.join("eval.json").exists());
}

#[test]
fn non_finite_values_are_written_and_replayed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let policies = [constant("1e30"), vec![policy("loss_balance").display().to_string()]].concat();
    let extra = ["--steps", "5", "--batch-size", "8", "--max-skipped-steps", "0"];
    assert_success(&train_cpu(&run, &policies, &extra));
    let metrics = read_jsonl(&run.join("metrics.jsonl"));
    let texts: Vec<&str> = metrics.iter().filter_map(|m| m["grad_norm"].as_str().or(m["loss"].as_str())).collect();
    assert!(!texts.is_empty() && texts.iter().all(|t| ["NaN", "inf", "-inf"].contains(t)), "{metrics:?}");

    let out = dir.path().join("simulated");
    assert_success(&trainer(&["simulate", "--trace", arg(&run), "--out", arg(&out)]));
    let recorded = std::fs::read_to_string(run.join("decisions.jsonl")).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("decisions.jsonl")).unwrap(), recorded);
}

#[test]
fn a_run_stopped_by_a_policy_is_finished_by_resume_not_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // final/ cannot be written, after early_stopping stops at the first non-finite step.
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("final.tmp"), b"").unwrap();
    let policies =
        [constant("1e30"), vec![format!("{}:stop_on_non_finite=true", policy("early_stopping").display())]].concat();
    let extra = ["--steps", "10", "--batch-size", "8", "--max-skipped-steps", "0"];
    let output = train_cpu(&run, &policies, &extra);
    assert_error(&output, 1, &["final.tmp", "resume to write final/"]);
    let steps = read_jsonl(&run.join("metrics.jsonl")).len();
    assert!(steps < 10, "stopped early");
    std::fs::remove_file(run.join("final.tmp")).unwrap();
    assert_success(&trainer(&["train", "--device", "cpu", "--resume", arg(&run)]));
    assert_eq!(read_jsonl(&run.join("metrics.jsonl")).len(), steps, "no step after the stop");
    assert_eq!(read_json(&run.join("eval.json"))["stopped_by"]["policy"], "early_stopping");
}

#[test]
fn a_resume_passes_over_a_damaged_newest_checkpoint_to_an_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let extra = ["--steps", "4", "--batch-size", "8", "--checkpoint-every", "1", "--pause-after-steps", "3"];
    assert_success(&train_cpu(&run, &constant("1e-3"), &extra));
    let weights = run.join("checkpoints/step-3/model.safetensors");
    let mut damaged = std::fs::read(&weights).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xFF;
    std::fs::write(&weights, damaged).unwrap();
    let output = trainer(&["train", "--device", "cpu", "--resume", arg(&run)]);
    assert_success(&output);
    assert!(
        common::stderr(&output).contains("passed over a checkpoint that does not load"),
        "{}",
        common::stderr(&output)
    );
    let log = std::fs::read_to_string(run.join("run.log")).unwrap();
    assert!(log.contains("step-3") && log.contains("checksum mismatch"), "{log}");
    assert!(log.contains("checkpoints/step-2 after step 2"), "resumed from the older one: {log}");
    let steps: Vec<u64> = read_jsonl(&run.join("metrics.jsonl")).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2, 3], "the steps after step 2 trained again, once each");
}
