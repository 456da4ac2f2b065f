//! Never losing a run: the divergence guard stops a run whose updates keep being skipped
//! as non-finite (no final/ from ruined weights); old checkpoints are pruned to the newest
//! N; a checkpoint or final/ that cannot be written leaves a resumable state, and a full
//! disk or a removed folder is said in one line; NaN and the infinities are written exactly
//! and replayed exactly by `trainer simulate`; a run folder is held by one run at a time,
//! and a run killed with SIGKILL resumes at once.

mod common;

use common::{assert_error, assert_success, policy, read_json, read_jsonl, train_cpu, trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A `trainer train` started in the background, its output dropped.
fn spawn_train(run: &Path, policies: &[String], extra: &[&str]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainer"));
    command.args(["train", "--device", "cpu", "--run-dir", arg(run)]);
    for policy in policies {
        command.args(["--policy", policy]);
    }
    command.args(extra).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the trainer starts")
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill -{name}");
}

fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(contents(&path));
        } else {
            found.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    found
}

#[test]
fn a_live_run_folder_is_refused_to_a_second_run_and_the_first_ends_as_if_alone() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--steps", "12", "--batch-size", "8", "--seed", "5", "--checkpoint-every", "4"];
    let alone = dir.path().join("alone");
    assert_success(&train_cpu(&alone, &constant("1e-3"), &extra));

    let live = dir.path().join("live");
    let first = spawn_train(&live, &constant("1e-3"), &extra);
    wait_for(&live.join("checkpoints/step-4/manifest.json"));
    // Held still while it holds the folder, so every attempt below meets it there.
    signal(&first, "STOP");
    let before = contents(&live);
    let holder = format!("in use by pid {}", first.id());
    let overwrite = [&extra[..], &["--overwrite"]].concat();
    let attempts = [
        train_cpu(&live, &constant("1e-3"), &overwrite),
        train_cpu(&live, &constant("1e-3"), &extra),
        trainer(&["train", "--device", "cpu", "--resume", arg(&live)]),
    ];
    for attempt in &attempts {
        common::assert_one_line_error(attempt, 1, &[arg(&live), &holder, "run.lock"]);
    }
    assert_eq!(contents(&live), before, "a refused run touches nothing");
    signal(&first, "CONT");
    let mut first = first;
    assert!(first.wait().unwrap().success());
    let model = |run: &Path| std::fs::read(run.join("final/model.safetensors")).unwrap();
    assert_eq!(model(&live), model(&alone), "the first run ends as it does alone");
    assert_eq!(read_json(&live.join("eval.json")), read_json(&alone.join("eval.json")));
}

#[test]
fn a_run_killed_with_sigkill_resumes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut killed =
        spawn_train(&run, &constant("1e-3"), &["--steps", "100000", "--batch-size", "8", "--checkpoint-every", "2"]);
    wait_for(&run.join("checkpoints/step-2/manifest.json"));
    signal(&killed, "KILL");
    killed.wait().unwrap();
    let newest = checkpoints(&run).iter().filter_map(|name| name.strip_prefix("step-")?.parse::<u64>().ok()).max();
    let steps = (newest.unwrap() + 2).to_string();
    assert_success(&trainer(&["train", "--device", "cpu", "--resume", arg(&run), "--steps", &steps]));
    assert!(run.join("final/model.safetensors").exists());
}

#[test]
fn a_folder_removed_during_the_run_is_said_and_not_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["train", "--device", "cpu", "--run-dir", arg(&run), "--policy", &constant("1e-3")[0]])
        .args(["--steps", "100000", "--batch-size", "8", "--checkpoint-every", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&run.join("metrics.jsonl"));
    signal(&child, "STOP");
    std::fs::remove_dir_all(&run).unwrap();
    signal(&child, "CONT");
    let output = child.wait_with_output().unwrap();
    assert_error(&output, 1, &[arg(&run), "vanished while writing checkpoint step-20", "nothing of it is left"]);
    assert!(!run.exists(), "the run folder is not made again");
}

/// A full disk, on a tmpfs of a few checkpoints in a mount namespace of its own: one line
/// naming the checkpoint and the intact ones, and a resume once space is freed.
#[test]
fn a_full_disk_is_said_in_one_line_naming_the_intact_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // The size of one checkpoint of this model, measured.
    let measure = dir.path().join("measure");
    let extra = ["--steps", "6", "--batch-size", "8", "--checkpoint-every", "2", "--keep-checkpoints", "0"];
    assert_success(&train_cpu(&measure, &constant("1e-3"), &["--steps", "1", "--batch-size", "8"]));
    let final_bytes: u64 = contents(&measure.join("final")).values().map(|bytes| bytes.len() as u64).sum();
    // Two checkpoints (weights and two optimizer moments each) and a half fit, with the
    // run's small files.
    let size = final_bytes * 3 * 5 / 2 + (1 << 18);
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let script = r#"size=$1 run=$2 trainer=$3 policy=$4; shift 4
        mount -t tmpfs -o size=$size tmpfs "$run" || exit 90
        "$trainer" train --device cpu --run-dir "$run" --policy "$policy" "$@" 2>"$run.first"
        echo "first exit $?" >>"$run.first"
        ls "$run/checkpoints" >>"$run.first"
        rm -r "$run/checkpoints/step-2"
        "$trainer" train --device cpu --resume "$run" --keep-checkpoints 1"#;
    let output = Command::new("unshare")
        .args(["-rm", "sh", "-c", script, "sh", &size.to_string(), arg(&run), env!("CARGO_BIN_EXE_trainer")])
        .arg(&constant("1e-3")[0])
        .args(extra)
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(90), "mounting a tmpfs failed: {}", common::stderr(&output));
    let first = std::fs::read_to_string(dir.path().join("run.first")).unwrap();
    let run = arg(&run);
    let expected = format!(
        "error: disk full while writing checkpoint step-6 in {run}; checkpoints step-2, step-4 are intact; free \
         space and run `trainer train --resume {run}`"
    );
    assert_eq!(first.lines().find(|line| line.starts_with("error: ")), Some(expected.as_str()), "{first}");
    assert!(first.contains("first exit 1\nstep-2\nstep-4\n"), "the staged checkpoint is removed: {first}");
    assert!(output.status.success(), "the resume after freeing space: {}", common::stderr(&output));
}
