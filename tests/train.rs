//! The `trainer` binary on the real Fashion-MNIST data with real policy components, as a
//! user runs it. Policies come from `build/policies/` (built by `make test`).

mod common;

use common::{assert_one_line_error, assert_success, policy, read_json, read_jsonl, stderr, train_cpu, trainer};
use std::path::Path;
use std::process::Output;

/// A short CPU run: small enough for tests, long enough for warmup and decay.
fn short_run(policy_arg: &str, run_dir: &Path, steps: u64) -> Output {
    let steps = steps.to_string();
    let extra = ["--steps", &steps, "--batch-size", "32", "--lr", "1e-3", "--seed", "7"];
    let output = train_cpu(run_dir, &[policy_arg.to_string()], &extra);
    assert_success(&output);
    output
}

const GROUPS: [&str; 4] = ["vision", "text", "projection", "logit_scale"];

/// The learning rates metrics.jsonl recorded, per step, per group.
fn recorded_lrs(run_dir: &Path) -> Vec<Vec<f64>> {
    read_jsonl(&run_dir.join("metrics.jsonl"))
        .iter()
        .enumerate()
        .map(|(index, record)| {
            assert_eq!(record["step"], index as u64, "one line per step, in order");
            GROUPS.iter().map(|group| record["lr"][group].as_f64().expect("an LR per group")).collect()
        })
        .collect()
}

/// The cosine-with-warmup schedule, written independently of the policy.
fn cosine_warmup_reference(step: u64, base: f64, warmup: u64, total: u64, min_lr: f64) -> f64 {
    if step < warmup {
        base * (step as f64 + 1.0) / warmup as f64
    } else {
        let t = (step - warmup) as f64 / (total - warmup) as f64;
        min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
    }
}

#[test]
fn recorded_learning_rates_follow_the_cosine_warmup_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let policy_arg = format!("{}:warmup_steps=6,min_lr=1e-4", policy("cosine_warmup").display());
    let output = short_run(&policy_arg, dir.path(), 40);

    let lrs = recorded_lrs(dir.path());
    assert_eq!(lrs.len(), 40);
    for (step, step_lrs) in lrs.iter().enumerate() {
        let expected = cosine_warmup_reference(step as u64, 1e-3, 6, 40, 1e-4);
        for lr in step_lrs {
            assert!((lr - expected).abs() <= 1e-15, "step {step}: recorded {lr}, schedule {expected}");
        }
    }
    let decisions = read_jsonl(&dir.path().join("decisions.jsonl"));
    assert_eq!(decisions.len(), 40);
    assert_eq!(decisions[3]["policy"], "cosine_warmup");

    assert!(dir.path().join("final/model.safetensors").exists());
    let top1 =
        read_json(&dir.path().join("eval.json"))["zero_shot_top1"].as_f64().expect("eval.json has zero_shot_top1");
    assert!((0.0..=1.0).contains(&top1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("10000 test images: zero_shot_top1"), "the accuracy is printed: {stdout}");
}

#[test]
fn a_second_policy_file_changes_the_run_without_rebuilding() {
    let cosine_dir = tempfile::tempdir().unwrap();
    let constant_dir = tempfile::tempdir().unwrap();
    short_run(policy("cosine_warmup").to_str().unwrap(), cosine_dir.path(), 12);
    short_run(&format!("{}:lr=3e-4", policy("constant").display()), constant_dir.path(), 12);

    let constant = recorded_lrs(constant_dir.path());
    assert!(constant.iter().flatten().all(|&lr| lr == 3e-4), "constant policy holds 3e-4: {constant:?}");
    let cosine = recorded_lrs(cosine_dir.path());
    assert_ne!(cosine, constant);
    let losses = |dir: &Path| -> Vec<f64> {
        read_jsonl(&dir.join("metrics.jsonl")).iter().map(|r| r["loss"].as_f64().unwrap()).collect()
    };
    assert_ne!(losses(cosine_dir.path()), losses(constant_dir.path()), "different schedules train differently");
}

#[test]
fn the_demo_configuration_reaches_80_percent_zero_shot() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_cpu(dir.path(), &[policy("cosine_warmup").display().to_string()], &[]);
    assert_success(&output);
    let top1 = read_json(&dir.path().join("eval.json"))["zero_shot_top1"].as_f64().unwrap();
    assert!(top1 >= 0.80, "zero-shot top-1 {top1} is below 0.80");
}

fn train_with_policy(policy_path: &Path) -> Output {
    let dir = tempfile::tempdir().unwrap();
    trainer(&[
        "train",
        "--policy",
        policy_path.to_str().unwrap(),
        "--steps",
        "2",
        "--run-dir",
        dir.path().to_str().unwrap(),
    ])
}

#[test]
fn a_missing_policy_file_is_named() {
    let output = train_with_policy(Path::new("/nonexistent/policy.wasm"));
    assert_one_line_error(&output, 1, &["/nonexistent/policy.wasm", "No such file"]);
}

#[test]
fn a_file_that_is_not_wasm_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "these are not WebAssembly bytes").unwrap();
    assert_one_line_error(&train_with_policy(&path), 1, &["notes.wasm", "not a WebAssembly file"]);
}

#[test]
fn a_core_module_is_told_apart_from_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, wat::parse_str("(module (func (export \"decide\")))").unwrap()).unwrap();
    assert_one_line_error(&train_with_policy(&path), 1, &["core.wasm", "not a component"]);
}

#[test]
fn a_component_without_the_world_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.wasm");
    std::fs::write(&path, wat::parse_str("(component)").unwrap()).unwrap();
    assert_one_line_error(
        &train_with_policy(&path),
        1,
        &["empty.wasm", "does not implement", "trainer:policy/strategy@1.0.0"],
    );
}

#[test]
fn a_component_with_another_interface_version_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.wasm");
    let component = r#"(component
        (component $strategy)
        (instance $i (instantiate $strategy))
        (export "trainer:policy/strategy@2.0.0" (instance $i)))"#;
    std::fs::write(&path, wat::parse_str(component).unwrap()).unwrap();
    assert_one_line_error(&train_with_policy(&path), 1, &["future.wasm", "strategy@2.0.0", "trainer:policy@1.0.0"]);
}

#[test]
fn non_positive_steps_are_refused_naming_the_flag() {
    let cosine = policy("cosine_warmup");
    for steps in ["0", "-3"] {
        let output = trainer(&["train", "--policy", cosine.to_str().unwrap(), "--steps", steps]);
        assert_one_line_error(&output, 2, &["--steps", "positive"]);
    }
}

#[test]
fn a_policy_refusing_its_arguments_is_named() {
    let arg = format!("{}:warmup=3", policy("cosine_warmup").display());
    let dir = tempfile::tempdir().unwrap();
    let output = trainer(&["train", "--policy", &arg, "--steps", "2", "--run-dir", dir.path().to_str().unwrap()]);
    assert_one_line_error(&output, 1, &["cosine_warmup", "`warmup`", "warmup_steps"]);
}

#[test]
fn composed_policies_report_who_owns_which_knob() {
    let dir = tempfile::tempdir().unwrap();
    let policies = [
        policy("cosine_warmup").display().to_string(),
        format!("{}:metric=val_loss,patience=50,eval_every=4", policy("early_stopping").display()),
        policy("loss_balance").display().to_string(),
    ];
    let output = train_cpu(dir.path(), &policies, &["--steps", "8", "--batch-size", "16"]);
    assert_success(&output);
    let report = stderr(&output);
    for line in [
        "learning-rates  owned by `cosine_warmup`",
        "loss-weights    owned by `loss_balance`",
        "freezing        trainer default",
    ] {
        assert!(report.contains(line), "`{line}` missing from the start-up report:\n{report}");
    }
    let decisions = read_jsonl(&dir.path().join("decisions.jsonl"));
    assert_eq!(decisions.len(), 8 * 3, "one line per policy per step");
    assert!(decisions.iter().any(|d| d["policy"] == "early_stopping" && d["evaluate"] == true));
    assert_eq!(read_jsonl(&dir.path().join("evaluations.jsonl")).len(), 2);
    let metrics = read_jsonl(&dir.path().join("metrics.jsonl"));
    let loss_weighted = metrics[5]["loss"].as_f64().unwrap() / metrics[5]["losses"]["contrastive"].as_f64().unwrap();
    assert!((loss_weighted - 1.0).abs() > 1e-3, "loss_balance's weight is applied: {loss_weighted}");
}

#[test]
fn two_policies_claiming_one_knob_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let policies = [policy("cosine_warmup").display().to_string(), policy("constant").display().to_string()];
    let output = train_cpu(dir.path(), &policies, &[]);
    assert_one_line_error(&output, 1, &["`cosine_warmup`", "`constant`", "learning-rates"]);
}

#[test]
fn a_stop_request_ends_the_run_after_that_step() {
    let dir = tempfile::tempdir().unwrap();
    let early_stopping =
        format!("{}:metric=val_loss,patience=1,eval_every=2,min_delta=100", policy("early_stopping").display());
    let policies = [policy("constant").display().to_string(), early_stopping];
    let output = train_cpu(dir.path(), &policies, &["--steps", "50", "--batch-size", "16"]);
    assert_success(&output);
    // Evaluations after steps 2 and 4; the second cannot improve by 100, so the decision of
    // step 4 (index 4, the fifth step) stops the run after it.
    assert_eq!(read_jsonl(&dir.path().join("metrics.jsonl")).len(), 5);
    let eval = read_json(&dir.path().join("eval.json"));
    assert_eq!(eval["step"], 5);
    assert_eq!(eval["stopped_by"]["policy"], "early_stopping");
    assert!(String::from_utf8_lossy(&output.stdout).contains("stopped early by `early_stopping`"));
}

#[test]
fn gradient_clipping_is_applied_after_measuring_the_norm() {
    let constant = policy("constant").display().to_string();
    let clip = format!("{}:max_norm=1e-9", policy("grad_clip").display());
    let extra = ["--steps", "6", "--batch-size", "16", "--seed", "5"];
    let free = tempfile::tempdir().unwrap();
    let clipped = tempfile::tempdir().unwrap();
    assert_success(&train_cpu(free.path(), std::slice::from_ref(&constant), &extra));
    assert_success(&train_cpu(clipped.path(), &[constant, clip], &extra));

    let decisions = read_jsonl(&clipped.path().join("decisions.jsonl"));
    assert!(decisions.iter().filter(|d| d["policy"] == "grad_clip").all(|d| d["grad_clip"] == 1e-9));
    let norms = |dir: &Path| -> Vec<f64> {
        read_jsonl(&dir.join("metrics.jsonl")).iter().map(|r| r["grad_norm"].as_f64().unwrap()).collect()
    };
    let (free_norms, clipped_norms) = (norms(free.path()), norms(clipped.path()));
    assert_eq!(free_norms[0], clipped_norms[0], "the norm is measured before clipping");
    assert!(clipped_norms[0] > 1e-3, "and it is the real norm: {}", clipped_norms[0]);
    // Gradients scaled to 1e-9 drown in AdamW's epsilon: the weights barely move.
    let weights = |dir: &Path| std::fs::read(dir.join("final/model.safetensors")).unwrap();
    assert_ne!(weights(free.path()), weights(clipped.path()));
    let losses = |dir: &Path| -> Vec<f64> {
        read_jsonl(&dir.join("metrics.jsonl")).iter().map(|r| r["loss"].as_f64().unwrap()).collect()
    };
    let drop = |l: Vec<f64>| l[0] - l[5];
    assert!(drop(losses(clipped.path())) < drop(losses(free.path())), "clipped training learns less in 6 steps");
}

#[test]
fn the_tensorboard_event_file_reads_back_with_the_tensorboard_package() {
    let dir = tempfile::tempdir().unwrap();
    let early_stopping = format!("{}:metric=val_loss,patience=50,eval_every=3", policy("early_stopping").display());
    let policies = [policy("cosine_warmup").display().to_string(), early_stopping];
    assert_success(&train_cpu(dir.path(), &policies, &["--steps", "6", "--batch-size", "16"]));

    let read = common::python_fixture("read_tensorboard.py", &[dir.path().as_os_str()]);
    assert!(read.status.success(), "tensorboard could not read the run: {}", String::from_utf8_lossy(&read.stderr));
    let series: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();

    let metrics = read_jsonl(&dir.path().join("metrics.jsonl"));
    let loss = series["loss/total"].as_array().expect("a loss/total series");
    assert_eq!(loss.len(), 6);
    for (point, record) in loss.iter().zip(&metrics) {
        assert_eq!(point[0], record["step"]);
        let (logged, recorded) = (point[1].as_f64().unwrap(), record["loss"].as_f64().unwrap());
        assert!((logged - recorded).abs() <= 1e-6 * recorded.abs(), "{logged} vs {recorded} (stored as f32)");
    }
    for tag in ["lr/vision", "lr/logit_scale", "grad_norm", "logit_scale", "loss/contrastive"] {
        assert_eq!(series[tag].as_array().map(Vec::len), Some(6), "{tag}");
    }
    let evaluations = series["eval/val_zero_shot_top1"].as_array().expect("evaluation series");
    assert_eq!(evaluations.iter().map(|p| p[0].as_u64().unwrap()).collect::<Vec<_>>(), [3, 6]);
}
