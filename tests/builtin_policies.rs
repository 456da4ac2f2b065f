//! The standard policies built into the binary: named without a path from any folder,
//! listed by `trainer policies` from their own documentation, and never preferred over a
//! file the user has.

mod common;

use common::{
    STANDARD_POLICIES, assert_error, assert_one_line_error, assert_success, read_json, read_jsonl, trainer, trainer_in,
    workspace,
};

fn one_spaced(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A policy's `Arguments:` text as its `lib.rs` gives it, on one line.
fn documented_arguments(name: &str) -> String {
    let lib_rs = workspace().join("policies").join(name).join("src/lib.rs");
    let source = std::fs::read_to_string(&lib_rs).unwrap_or_else(|err| panic!("{}: {err}", lib_rs.display()));
    let doc: Vec<&str> = source.lines().map_while(|line| line.strip_prefix("//!")).collect();
    let doc = one_spaced(&doc.join(" "));
    let (_, after) = doc.split_once("Arguments:").unwrap_or_else(|| panic!("{name} documents no arguments"));
    after.split("Owns:").next().unwrap().trim().to_string()
}

#[test]
fn policies_lists_every_standard_policy_with_its_documented_arguments() {
    let output = trainer(&["policies"]);
    assert_success(&output);
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    let flat = one_spaced(&listing);
    for name in STANDARD_POLICIES {
        assert!(listing.lines().any(|line| line.starts_with(name)), "`{name}` missing from:\n{listing}");
        let arguments = documented_arguments(name);
        assert!(flat.contains(&arguments), "`{name}`: arguments `{arguments}` missing from:\n{listing}");
    }
    assert!(flat.contains("cosine_warmup: linear warmup, then cosine decay to a floor, for every group."), "{listing}");
    assert!(flat.contains("`warmup_steps` (default: 5% of the run), `min_lr` (absolute floor, default 0)"));
    assert!(flat.contains("owns: freezing, learning-rate multipliers"), "staged_unfreeze's knobs: {listing}");

    let output = trainer(&["policies", "cosine_warmup"]);
    assert_success(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("- during warmup (`step < w`)"), "the whole doc");
    let output = trainer(&["policies", "cosine_warmpu"]);
    assert_one_line_error(&output, 1, &["`cosine_warmpu`", "cosine_warmup"]);
}

/// Trains from a folder outside the clone, pausing after two steps, then resumes from another
/// folder: the run names the policy as given, and the name finds the same embedded component.
#[test]
fn a_built_in_policy_trains_and_resumes_from_any_folder() {
    let cwd = tempfile::tempdir().unwrap();
    let run_dir = cwd.path().join("run");
    let run_dir = run_dir.to_str().unwrap();
    let args =
        ["--steps", "3", "--batch-size", "8", "--device", "cpu", "--run-dir", run_dir, "--pause-after-steps", "2"];
    let output = trainer_in(cwd.path(), &[&["train", "--policy", "cosine_warmup:warmup_steps=2"], &args[..]].concat());
    assert_success(&output);
    assert_eq!(
        read_json(&cwd.path().join("run/run.json"))["train"]["policies"][0]["path"],
        "cosine_warmup",
        "as given"
    );
    let log = std::fs::read_to_string(cwd.path().join("run/run.log")).unwrap();
    assert!(log.contains("policy `cosine_warmup`: built-in (sha256 "), "the start-up report says where: {log}");

    let elsewhere = tempfile::tempdir().unwrap();
    let output = trainer_in(elsewhere.path(), &["train", "--resume", run_dir, "--device", "cpu"]);
    assert_success(&output);
    let decisions = read_jsonl(&cwd.path().join("run/decisions.jsonl"));
    assert_eq!(decisions.len(), 3, "one line per step");
    for decision in &decisions {
        assert_eq!(decision["policy"], "cosine_warmup");
        assert!(decision["lrs"]["vision"].as_f64().is_some_and(|lr| lr > 0.0), "a learning rate: {decision}");
    }
}

#[test]
fn check_policy_takes_a_built_in_name() {
    let cwd = tempfile::tempdir().unwrap();
    let output = trainer_in(cwd.path(), &["check-policy", "constant", "--cases", "2", "--steps", "20"]);
    assert_success(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("check-policy `constant`"));
    // The design's spelling: a bare file name that is not a file here.
    let output = trainer_in(cwd.path(), &["check-policy", "constant.wasm:lr=1e-3", "--cases", "2", "--steps", "20"]);
    assert_success(&output);
}

#[test]
fn an_unknown_name_lists_the_built_in_policies() {
    let cwd = tempfile::tempdir().unwrap();
    let run_dir = cwd.path().join("run");
    let args = ["train", "--policy", "cosine_warmpu", "--steps", "2", "--run-dir", run_dir.to_str().unwrap()];
    let output = trainer_in(cwd.path(), &args);
    let mut needles = vec!["`cosine_warmpu`"];
    needles.extend(STANDARD_POLICIES);
    assert_one_line_error(&output, 1, &needles);
}

#[test]
fn a_file_wins_over_the_built_in_policy_of_its_name() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("cosine_warmup.wasm"), "not a component").unwrap();
    let output = trainer_in(cwd.path(), &["check-policy", "cosine_warmup.wasm", "--cases", "2", "--steps", "20"]);
    assert_error(&output, 1, &["cosine_warmup.wasm", "not a WebAssembly file"]);
}
