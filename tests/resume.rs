//! Exact resume: a run paused at any step and resumed ends bit-identical (weights, decisions,
//! evaluations, final evaluation) to the same run uninterrupted, on CPU.

mod common;

use common::{assert_error, assert_success, metrics_without_timing, policy, read_json, read_jsonl, train_cpu, trainer};
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

/// Activation checkpointing changes memory, not results: a run that checkpoints its layers,
/// paused and resumed without doing so, ends with the weights of a plain run, bit for bit.
#[test]
fn grad_checkpointing_trains_the_same_weights_and_may_change_on_resume() {
    let (plain, checkpointed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--steps", "6", "--batch-size", "16", "--seed", "3"];
    assert_success(&train_cpu(plain.path(), &[policy("cosine_warmup").display().to_string()], &args));
    let paused = [&args[..], &["--grad-checkpointing", "--pause-after-steps", "3"]].concat();
    assert_success(&train_cpu(checkpointed.path(), &[policy("cosine_warmup").display().to_string()], &paused));
    assert_success(&resume(checkpointed.path(), &[]));
    let weights = "final/model.safetensors";
    assert!(bytes(&plain.path().join(weights)) == bytes(&checkpointed.path().join(weights)), "the weights differ");
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
    let swap = ["--policy", constant.to_str().unwrap(), "--swap-policies", "--steps", "30", "--pause-after-steps", "6"];
    assert_success(&resume(dir.path(), &swap));
    // The swap and the new length are the run's settings now: a plain resume goes on with them.
    assert_success(&resume(dir.path(), &[]));
    let decisions = read_jsonl(&dir.path().join("decisions.jsonl"));
    assert!(decisions.iter().filter(|d| d["step"].as_u64().unwrap() >= 3).all(|d| d["policy"] == "constant"));
    assert_eq!(read_json(&dir.path().join("eval.json"))["step"], 30);
    let swaps = &read_json(&dir.path().join("run.json"))["policy_swaps"];
    assert_eq!(swaps.as_array().map(Vec::len), Some(1), "{swaps}");
    assert_eq!((swaps[0]["step"].as_u64(), swaps[0]["from"].as_array().map(Vec::len)), (Some(3), Some(4)));
}

/// A policy given again with other arguments starts fresh, so the new arguments hold (a
/// state saved under the old ones would undo them); `decisions.jsonl` and `run.json` record
/// each swap, and `trainer simulate` replays the run through them line for line.
#[test]
fn swapped_arguments_take_effect_and_the_swaps_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let constant = |lr: &str| format!("{}:lr={lr}", policy("constant").display());
    let first =
        train_cpu(dir.path(), &[constant("0.001")], &["--steps", "9", "--batch-size", "8", "--pause-after-steps", "3"]);
    assert_success(&first);
    for (lr, pause) in [("0.0005", "6"), ("0.0002", "9")] {
        let swap = resume(dir.path(), &["--policy", &constant(lr), "--swap-policies", "--pause-after-steps", pause]);
        assert_success(&swap);
    }
    let decisions = read_jsonl(&dir.path().join("decisions.jsonl"));
    let lr_at = |step: u64| {
        let decided = decisions.iter().find(|d| d["step"] == step && d["lrs"].is_object()).expect("a decision");
        decided["lrs"].as_object().unwrap().values().next().and_then(|lr| lr.as_f64()).unwrap()
    };
    assert_eq!([lr_at(2), lr_at(3), lr_at(8)], [0.001, 0.0005, 0.0002]);
    let swaps: Vec<_> = decisions.iter().filter(|d| d["action"] == "swap").collect();
    assert_eq!(swaps.len(), 2, "{swaps:?}");
    assert!(swaps.iter().all(|d| d["state"] == "fresh"), "{swaps:?}");
    assert_eq!(swaps[1]["source"], constant("0.0002"));
    let recorded = &read_json(&dir.path().join("run.json"))["policy_swaps"];
    let steps: Vec<_> = recorded.as_array().unwrap().iter().map(|swap| swap["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [3, 6]);

    let out = dir.path().join("simulated");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    assert_success(&trainer(&["simulate", "--trace", &path(dir.path()), "--out", &path(&out)]));
    let replayed = std::fs::read_to_string(out.join("decisions.jsonl")).unwrap();
    assert_eq!(replayed, std::fs::read_to_string(dir.path().join("decisions.jsonl")).unwrap());
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

/// `--resume RUN --steps N` continues to a new length: `cosine_warmup` re-plans its decay
/// from the resume step, without a jump, to the floor at the new end (its documented rule),
/// and run.json records the new length for the next resume and for `simulate`.
#[test]
fn a_run_resumed_with_a_longer_length_replans_its_cosine_from_the_resume_step() {
    let dir = tempfile::tempdir().unwrap();
    let cosine = [format!("{}:warmup_steps=2", policy("cosine_warmup").display())];
    let paused = train_cpu(dir.path(), &cosine, &["--steps", "6", "--batch-size", "8", "--pause-after-steps", "4"]);
    assert_success(&paused);
    assert_error(&resume(dir.path(), &["--steps", "3"]), 1, &["--steps 3", "at least 4"]);

    let resumed = resume(dir.path(), &["--steps", "12"]);
    assert_success(&resumed);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(stdout.contains("run length changed from 6 to 12 steps at step 4"), "{stdout}");
    let rates: Vec<f64> = read_jsonl(&dir.path().join("decisions.jsonl"))
        .iter()
        .map(|record| record["lrs"]["vision"].as_f64().unwrap())
        .collect();
    assert_eq!(rates.len(), 12, "one decision per step: {rates:?}");
    let base = rates[1];
    let fall = |progress: f64| 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    let first_plan =
        |step: usize| if step < 2 { (step + 1) as f64 / 2.0 * base } else { base * fall((step - 2) as f64 / 4.0) };
    let reached = first_plan(4);
    for (step, &rate) in rates.iter().enumerate() {
        let expected = if step < 4 { first_plan(step) } else { reached * fall((step - 4) as f64 / 8.0) };
        assert!((rate - expected).abs() <= 1e-15 * base, "step {step}: {rate} vs {expected}; all: {rates:?}");
    }
    assert_eq!(rates[4], reached, "no jump at the resume step");
    assert!(rates[11] < rates[10] && rates[5] > first_plan(5), "a slower decay over the longer run: {rates:?}");
    let run = read_json(&dir.path().join("run.json"));
    assert_eq!((run["train"]["steps"].as_u64(), run["spec"]["total_steps"].as_u64()), (Some(12), Some(12)));
    assert!(dir.path().join("final").exists() && dir.path().join("eval.json").exists());
}

/// A policy may refuse a new length in `load-state`: its message is shown, the run does not
/// start, and nothing it had written changes.
#[test]
fn a_policy_that_refuses_a_new_length_leaves_the_run_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = [format!("{}:mode=fixed_length", common::fixture("hostile_policy").display())];
    assert_success(&train_cpu(dir.path(), &fixed, &["--steps", "4", "--batch-size", "8", "--pause-after-steps", "2"]));
    let before = bytes(&dir.path().join("run.json"));
    assert_error(
        &resume(dir.path(), &["--steps", "8"]),
        1,
        &["hostile_policy", "planned for 4 steps, cannot continue to 8"],
    );
    assert_eq!(bytes(&dir.path().join("run.json")), before);
    assert_success(&resume(dir.path(), &[]));
}
