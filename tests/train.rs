//! The `trainer` binary on the real Fashion-MNIST data with real policy components, as a
//! user runs it. Policies come from `build/policies/` (built by `make test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ sits in the workspace").to_path_buf()
}

fn policy(name: &str) -> PathBuf {
    let path = workspace().join("build/policies").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make policies` (or `make test`) first", path.display());
    path
}

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("the trainer binary runs")
}

/// A short CPU run: small enough for tests, long enough for warmup and decay.
fn short_run(policy_arg: &str, run_dir: &Path, steps: u64) -> Output {
    let steps = steps.to_string();
    let output = trainer(&[
        "train",
        "--policy",
        policy_arg,
        "--steps",
        &steps,
        "--batch-size",
        "32",
        "--lr",
        "1e-3",
        "--seed",
        "7",
        "--device",
        "cpu",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "trainer failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
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
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval.json")).unwrap()).unwrap();
    let top1 = eval["zero_shot_top1"].as_f64().expect("eval.json has zero_shot_top1");
    assert!((0.0..=1.0).contains(&top1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("zero-shot"), "the accuracy is printed: {stdout}");
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
    let output = trainer(&[
        "train",
        "--policy",
        policy("cosine_warmup").to_str().unwrap(),
        "--device",
        "cpu",
        "--run-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval.json")).unwrap()).unwrap();
    let top1 = eval["zero_shot_top1"].as_f64().unwrap();
    assert!(top1 >= 0.80, "zero-shot top-1 {top1} is below 0.80");
}

/// A failed start: non-zero exit, one line on stderr that contains each of `needles`.
fn assert_one_line_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` missing from: {}", lines[0]);
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

fn train_with_policy(policy_path: &Path) -> Output {
    let dir = tempfile::tempdir().unwrap();
    trainer(&["train", "--policy", policy_path.to_str().unwrap(), "--steps", "2", "--run-dir", dir.path().to_str().unwrap()])
}

#[test]
fn a_missing_policy_file_is_named() {
    let output = train_with_policy(Path::new("/nonexistent/policy.wasm"));
    assert_one_line_error(&output, &["/nonexistent/policy.wasm", "No such file"]);
}

#[test]
fn a_file_that_is_not_wasm_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "these are not WebAssembly bytes").unwrap();
    assert_one_line_error(&train_with_policy(&path), &["notes.wasm", "not a WebAssembly file"]);
}

#[test]
fn a_core_module_is_told_apart_from_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, wat::parse_str("(module (func (export \"decide\")))").unwrap()).unwrap();
    assert_one_line_error(&train_with_policy(&path), &["core.wasm", "not a component"]);
}

#[test]
fn a_component_without_the_world_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.wasm");
    std::fs::write(&path, wat::parse_str("(component)").unwrap()).unwrap();
    assert_one_line_error(&train_with_policy(&path), &["empty.wasm", "does not implement", "trainer:policy/strategy@1.0.0"]);
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
    assert_one_line_error(&train_with_policy(&path), &["future.wasm", "strategy@2.0.0", "trainer:policy@1.0.0"]);
}

#[test]
fn non_positive_steps_are_refused_naming_the_flag() {
    let cosine = policy("cosine_warmup");
    for steps in ["0", "-3"] {
        let output = trainer(&["train", "--policy", cosine.to_str().unwrap(), "--steps", steps]);
        assert_one_line_error(&output, &["--steps", "positive"]);
        assert_eq!(output.status.code(), Some(2));
    }
}

#[test]
fn a_policy_refusing_its_arguments_is_named() {
    let arg = format!("{}:warmup=3", policy("cosine_warmup").display());
    let dir = tempfile::tempdir().unwrap();
    let output = trainer(&["train", "--policy", &arg, "--steps", "2", "--run-dir", dir.path().to_str().unwrap()]);
    assert_one_line_error(&output, &["cosine_warmup", "`warmup`", "warmup_steps"]);
}
