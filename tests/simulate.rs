//! `trainer simulate`: a recorded run replayed without a model gives the run's decisions
//! line for line, its shadows' too; a synthetic stream shows where a policy would stop, with
//! plots of the knobs.

mod common;

use common::{assert_one_line_error, assert_success, policy, read_jsonl, stderr, train_cpu, trainer};

fn arg(path: &std::path::Path) -> &str {
    path.to_str().expect("UTF-8 temp paths")
}

#[test]
fn replaying_a_recorded_run_reproduces_its_decisions_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Learning rates, loss weights, augmentation, requested evaluations and a stop.
    let policies = [
        format!("{}:warmup_steps=5", policy("cosine_warmup").display()),
        format!("{}:metric=val_loss,patience=2,eval_every=3", policy("early_stopping").display()),
        policy("loss_balance").display().to_string(),
        format!("{}:flip_prob=0.5,ramp_steps=10", policy("aug_curriculum").display()),
    ];
    let shadow = format!("{}:lr=1e-3", policy("constant").display());
    let args = ["--steps", "30", "--batch-size", "32", "--shadow-policy", &shadow];
    assert_success(&train_cpu(&run, &policies, &args));
    assert!(!read_jsonl(&run.join("evaluations.jsonl")).is_empty(), "the run evaluated");

    let out = dir.path().join("simulated");
    let output = trainer(&["simulate", "--trace", arg(&run), "--out", arg(&out)]);
    assert_success(&output);
    // The shadow's constant rate is the cosine's at no step of the 30.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("shadow `constant`: its knobs differ from the run's at 30 of 30 steps"), "{stdout}");
    let recorded = std::fs::read_to_string(run.join("decisions.jsonl")).unwrap();
    let simulated = std::fs::read_to_string(out.join("decisions.jsonl")).unwrap();
    assert_eq!(simulated, recorded, "simulate reproduces decisions.jsonl byte for byte");
    for plot in ["lr.png", "loss_weights.png", "augmentation.png"] {
        assert!(std::fs::read(out.join(plot)).unwrap().starts_with(b"\x89PNG"), "{plot}");
    }
}

#[test]
fn a_synthetic_curve_shows_where_early_stopping_would_stop() {
    let dir = tempfile::tempdir().unwrap();
    let early_stopping = format!("{}:metric=val_loss,patience=3,min_delta=0.5", policy("early_stopping").display());
    let out = dir.path().join("out");
    let args = ["simulate", "--policy", &early_stopping, "--synthetic", "--steps", "400", "--eval-every", "10"];
    let output = trainer(&[&args[..], &["--out", arg(&out)]].concat());
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let decisions = read_jsonl(&out.join("decisions.jsonl"));
    let stop = decisions.iter().find(|d| d.get("stop").is_some()).expect("early_stopping stops the plateauing curve");
    let step = stop["step"].as_u64().unwrap();
    assert!(step < 399, "stops before the end: {step}");
    assert!(stdout.contains(&format!("stops the run after step {}", step + 1)), "{stdout}");
}

#[test]
fn a_run_directory_without_a_recorded_specification_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.json"), r#"{"train": {}, "model": {}}"#).unwrap();
    let output = trainer(&["simulate", "--trace", arg(dir.path()), "--out", arg(&dir.path().join("out"))]);
    assert_one_line_error(&output, 1, &["run.json"]);
    assert!(!stderr(&output).contains("panicked"));
}
