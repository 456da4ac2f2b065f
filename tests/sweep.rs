//! `trainer sweep` end to end on tiny detection runs (32 canvas images, 12 steps), with
//! Optuna itself proposing and pruning: a spec that cannot run is refused before any trial,
//! naming its entry; a seeded sweep with one worker is reproducible and its best trial
//! clearly beats its worst; a failing trial is recorded with its cause; the median pruner
//! stops trials early with a checkpoint each;
//! two sweep processes on one journal run every trial once, and an interrupted sweep
//! resumes its trials from their checkpoints; the detection example spec runs at toy size.

mod common;

use common::{
    assert_one_line_error, assert_success, canvas_detector, canvas_folder, canvas_subset, metrics_without_timing,
    read_json, read_jsonl, trainer, workspace,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `[train]` section of a toy detection run: the canvas detector fine-tuned on 32 canvas
/// images for 12 steps, evaluated on 100 others every 4, in batches of 8 unless the space
/// searches the batch size.
fn toy_train(dir: &Path) -> String {
    toy_train_with(dir, "\"--batch-size\", \"8\", ")
}

fn toy_train_with(dir: &Path, batch_size: &str) -> String {
    let train = canvas_subset(dir, "train", 0, 32);
    let val = canvas_subset(dir, "val", 32, 100);
    let model = canvas_detector().join("final");
    let images = canvas_folder().join("val");
    format!(
        "[train]\nargs = [\"--task\", \"detection\", \"--model\", {:?}, \"--data\", {:?}, \"--val-data\", {:?}, \"--images\", {:?}, \
         {batch_size}\"--steps\", \"12\", \"--eval-every\", \"4\", \"--device\", \"cpu\", \"--seed\", \
         \"1\", \"--workers\", \"1\"]\npolicies = [\"cosine_warmup:warmup_steps=2\"]\n",
        model.display().to_string(),
        train.display().to_string(),
        val.display().to_string(),
        images.display().to_string()
    )
}

const TOY_SPACE: &str = r#"
[space]
"--lr" = { log-uniform = [1e-5, 1e-1] }
"cosine_warmup:warmup_steps" = { uniform = [0.0, 0.3], of-steps = true }

[objective]
metric = "val_AP50"
"#;

fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn sweep(args: &[&str]) -> Output {
    trainer(&[&["sweep"], args].concat())
}

fn spawn_sweep(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("sweep")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn study(run: &Path) -> serde_json::Value {
    read_json(&run.join("study.json"))
}

fn trials(run: &Path) -> Vec<serde_json::Value> {
    study(run)["trials"].as_array().unwrap().clone()
}

fn states(run: &Path) -> Vec<String> {
    trials(run).iter().map(|t| t["state"].as_str().unwrap().to_string()).collect()
}

/// The HParams plugin's data in the event files of `dir`, read with the `tensorboard`
/// package: {tag: the plugin data as a dict}.
fn tensorboard_hparams(dir: &Path) -> serde_json::Value {
    let output = common::python_fixture("read_tensorboard.py", &[dir.as_os_str(), "--all".as_ref()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()["hparams"].clone()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(120), "waited two minutes for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_spec_that_cannot_run_is_refused_before_any_trial_naming_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let train = toy_train(dir.path());
    let cases: [(&str, String, &[&str]); 6] = [
        (
            "unknown flag",
            format!(
                "{train}[space]\n\"--learning-rate\" = {{ uniform = [0.1, 0.2] }}\n[objective]\nmetric = \"val_AP50\"\n"
            ),
            &["[space] \"--learning-rate\"", "not a flag of `trainer train`"],
        ),
        (
            "empty range",
            format!(
                "{train}[space]\n\"--lr\" = {{ log-uniform = [1e-2, 1e-4] }}\n[objective]\nmetric = \"val_AP50\"\n"
            ),
            &["[space] \"--lr\"", "empty"],
        ),
        (
            "policy not given",
            format!(
                "{train}[space]\n\"layerwise:vision\" = {{ uniform = [0.1, 1.0] }}\n[objective]\nmetric = \"val_AP50\"\n"
            ),
            &["[space] \"layerwise:vision\"", "not among [train] policies"],
        ),
        (
            "unknown policy argument",
            format!(
                "{train}[space]\n\"cosine_warmup:warmup\" = {{ int = [1, 5] }}\n[objective]\nmetric = \"val_AP50\"\n"
            ),
            &["cosine_warmup", "warmup"],
        ),
        (
            "metric not reported",
            format!("{train}[objective]\nmetric = \"val_loss\"\n"),
            &["[objective] metric `val_loss`", "val_AP50"],
        ),
        (
            "unknown section entry",
            format!("{train}[objective]\nmetric = \"val_AP50\"\n[budget]\ntrails = 3\n"),
            &["trails"],
        ),
    ];
    for (case, text, needles) in cases {
        let spec = write_spec(dir.path(), "spec.toml", &text);
        let run = dir.path().join(case.replace(' ', "-"));
        let output = sweep(&[path(&spec), "--run-dir", path(&run)]);
        assert_one_line_error(&output, 2, &[&["spec.toml"][..], needles].concat());
        assert!(!run.join("trials/0000").exists(), "{case}: a trial started");
    }
}

/// Eight trials of a seeded TPE search with one worker: the same arguments, values and
/// table twice; the best trial's held-out AP50 far above the worst's (a learning rate that
/// destroys what the detector learnt); the HParams dashboard's experiment and sessions read
/// back with `tensorboard`; every trial a run folder `trainer eval` reads; best.json's
/// command trains the best trial again.
#[test]
fn a_seeded_sweep_is_reproducible_and_its_best_trial_clearly_beats_its_worst() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}{TOY_SPACE}\n[budget]\ntrials = 8\n[search]\nseed = 3\n", toy_train(dir.path()));
    let spec = write_spec(dir.path(), "spec.toml", &text);
    let runs = [dir.path().join("first"), dir.path().join("second")];
    for run in &runs {
        let output = sweep(&[path(&spec), "--run-dir", path(run)]);
        assert_success(&output);
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(printed.contains("8 trials: 8 complete") && printed.contains("best: trial"), "{printed}");
    }
    let [first, second] = runs.each_ref().map(|run| trials(run));
    for (a, b) in first.iter().zip(&second) {
        assert_eq!((&a["params"], &a["value"]), (&b["params"], &b["value"]), "trial {}", a["number"]);
    }
    let values: Vec<f64> = first.iter().map(|t| t["value"].as_f64().unwrap()).collect();
    let (worst, best) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(w, b), &v| (w.min(v), b.max(v)));
    assert!(best >= 0.03 && best >= 3.0 * worst, "val_AP50 best {best}, worst {worst}: {values:?}");
    assert_eq!(
        std::fs::read_to_string(runs[0].join("trials.csv")).unwrap(),
        std::fs::read_to_string(runs[1].join("trials.csv")).unwrap()
    );
    for plot in ["objective.png", "parallel_coordinates.png", "importances.png"] {
        assert!(runs[0].join("plots").join(plot).is_file(), "{plot}");
    }

    // TensorBoard on the sweep's folder compares the trials in its HParams dashboard.
    let hparams = |dir: &Path| tensorboard_hparams(dir);
    let experiment = &hparams(&runs[0])["_hparams_/experiment"]["experiment"];
    let names: Vec<&str> =
        experiment["hparamInfos"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["--lr", "cosine_warmup:warmup_steps"], "{experiment}");
    assert_eq!(experiment["metricInfos"][0]["name"]["tag"], "eval/val_AP50", "{experiment}");

    let best_record = read_json(&runs[0].join("best.json"));
    assert_eq!(best_record["value"].as_f64(), Some(best));
    let trial_dir = PathBuf::from(best_record["run_dir"].as_str().unwrap());
    // The warmup, a fraction of the steps, reached the policy as a whole number of steps.
    let warmup = best_record["params"]["cosine_warmup:warmup_steps"].as_f64().unwrap();
    let run_json = read_json(&trial_dir.join("run.json"));
    let warmup_steps = ((warmup * 12.0).round() as u64).to_string();
    assert_eq!(run_json["train"]["policies"][0]["args"], serde_json::json!([["warmup_steps", warmup_steps]]));
    let session = hparams(&trial_dir);
    assert_eq!(session["_hparams_/session_start_info"]["sessionStartInfo"]["hparams"], best_record["params"]);
    assert_eq!(session["_hparams_/session_end_info"]["sessionEndInfo"]["status"], "STATUS_SUCCESS");
    assert_success(&trainer(&["eval", "--model", path(&trial_dir.join("final")), "--device", "cpu"]));
    // The command, with a new folder, trains the best trial again to the same loss.
    let command: Vec<String> =
        best_record["command"].as_str().unwrap().split(' ').map(|word| word.trim_matches('\'').to_string()).collect();
    let again = dir.path().join("again");
    let at = command.iter().position(|word| word == "--run-dir").unwrap();
    let mut args: Vec<&str> = command[1..at].iter().map(String::as_str).collect();
    args.extend(["--run-dir", path(&again)]);
    assert_success(&trainer(&args));
    let ap50 = |run: &Path| read_json(&run.join("eval.json"))["val_AP50"].as_f64();
    assert_eq!(ap50(&again), ap50(&trial_dir));
}

/// The median pruner stops trials whose evaluations fall behind: each is sent SIGTERM, so
/// it checkpoints, and `trainer train --resume` takes it to the end.
#[test]
fn the_median_pruner_stops_trials_early_each_with_a_checkpoint_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{TOY_SPACE}\n[budget]\ntrials = 8\n[search]\nseed = 1\npruner = \"median\"\npruner-startup-trials = 2\n",
        toy_train(dir.path())
    );
    let spec = write_spec(dir.path(), "spec.toml", &text);
    let run = dir.path().join("run");
    assert_success(&sweep(&[path(&spec), "--run-dir", path(&run)]));
    let trials = trials(&run);
    let pruned: Vec<&serde_json::Value> = trials.iter().filter(|t| t["state"] == "pruned").collect();
    assert!(!pruned.is_empty(), "no trial pruned: {trials:?}");
    for trial in &pruned {
        assert!(trial["steps"].as_u64().unwrap() < 12, "{trial}");
        assert!(trial["cause"].as_str().unwrap().starts_with("pruned at step"), "{trial}");
    }
    let resumed = PathBuf::from(pruned[0]["run_dir"].as_str().unwrap());
    assert_success(&trainer(&["train", "--resume", path(&resumed), "--device", "cpu"]));
    assert_eq!(read_json(&resumed.join("eval.json"))["step"], 12);
}

/// A trial that fails (here: a learning rate that makes the loss NaN, so the run stops as
/// diverged) is recorded as failed with the trainer's own error, and the sweep goes on.
#[test]
fn a_failing_trial_is_recorded_with_its_cause_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let space = "[space]\n\"--lr\" = { choice = [1e-4, 1e12] }\n[objective]\nmetric = \"val_AP50\"\n";
    let text = format!("{}{space}[budget]\ntrials = 4\n[search]\nsampler = \"random\"\n", toy_train(dir.path()));
    let spec = write_spec(dir.path(), "spec.toml", &text);
    let run = dir.path().join("run");
    let output = sweep(&[path(&spec), "--run-dir", path(&run)]);
    assert_success(&output);
    let trials = trials(&run);
    assert_eq!(trials.len(), 4);
    for trial in &trials {
        let diverging = trial["params"]["--lr"] == 1e12;
        let state = trial["state"].as_str().unwrap();
        assert_eq!(state, if diverging { "failed" } else { "complete" }, "{trial}");
        if diverging {
            let cause = trial["cause"].as_str().unwrap();
            assert!(cause.starts_with("exit code 4: error: the run diverged"), "{cause}");
        }
    }
    assert!(trials.iter().any(|t| t["state"] == "failed") && trials.iter().any(|t| t["state"] == "complete"));
    assert!(String::from_utf8_lossy(&output.stdout).contains("the run diverged"));
}

/// `--nproc` in the trials' arguments trains each trial over that many processes.
#[test]
fn a_trial_trains_over_two_processes_with_nproc() {
    let dir = tempfile::tempdir().unwrap();
    let train = toy_train(dir.path()).replace("\"--workers\", \"1\"]", "\"--workers\", \"1\", \"--nproc\", \"2\"]");
    let space = "[space]\n\"--lr\" = { choice = [1e-4] }\n[objective]\nmetric = \"val_AP50\"\n";
    let spec = write_spec(dir.path(), "spec.toml", &format!("{train}{space}[budget]\ntrials = 1\n"));
    let run = dir.path().join("run");
    assert_success(&sweep(&[path(&spec), "--run-dir", path(&run)]));
    assert_eq!(states(&run), ["complete"]);
    let command = trials(&run)[0]["command"].as_str().unwrap().to_string();
    assert!(command.contains("--nproc 2"), "{command}");
    assert_eq!(read_json(&run.join("trials/0000/eval.json"))["step"], 12);
}

/// Two processes on one journal share the budget and run every trial once; a sweep stopped
/// by SIGINT leaves its trials in flight checkpointed, and `--resume` finishes them.
#[test]
fn two_processes_on_one_journal_run_each_trial_once_and_an_interrupted_sweep_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}{TOY_SPACE}\n[budget]\ntrials = 6\n", toy_train(dir.path()));
    let spec = write_spec(dir.path(), "spec.toml", &text);
    let run = dir.path().join("run");
    let first = spawn_sweep(&[path(&spec), "--run-dir", path(&run)]);
    wait_for("sweep.json", || run.join("sweep.json").is_file());
    let second = spawn_sweep(&["--resume", path(&run)]);
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert_success(&output);
    }
    let trials = trials(&run);
    assert_eq!(trials.len(), 6, "{trials:?}");
    let numbers: Vec<u64> = trials.iter().map(|t| t["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..6).collect::<Vec<_>>());
    for trial in &trials {
        assert_eq!((trial["state"].as_str(), trial["steps"].as_u64()), (Some("complete"), Some(12)), "{trial}");
        let dir = PathBuf::from(trial["run_dir"].as_str().unwrap());
        let steps: Vec<u64> =
            common::read_jsonl(&dir.join("metrics.jsonl")).iter().map(|m| m["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (0..12).collect::<Vec<_>>(), "{}", dir.display());
    }

    // SIGINT once the first trial has trained a step.
    let text = format!("{}{TOY_SPACE}\n[budget]\ntrials = 2\n", toy_train(dir.path()));
    let spec = write_spec(dir.path(), "short.toml", &text);
    let run = dir.path().join("interrupted");
    let child = spawn_sweep(&[path(&spec), "--run-dir", path(&run)]);
    wait_for("the first step", || {
        std::fs::read_to_string(run.join("trials/0000/metrics.jsonl")).is_ok_and(|text| !text.is_empty())
    });
    // SAFETY: kill(2) on a child that has not been waited for.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("trainer sweep --resume"));
    assert_eq!(states(&run), ["interrupted"]);
    assert!(run.join("trials/0000/checkpoints").is_dir());
    assert_success(&sweep(&["--resume", path(&run)]));
    assert_eq!(states(&run), ["complete", "complete"]);
    assert_eq!(read_json(&run.join("trials/0000/eval.json"))["step"], 12);
}

/// The practice's search space for detection ships as an example; it runs at toy size.
#[test]
fn the_detection_example_spec_runs_at_toy_size() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(workspace().join("examples/sweeps/detection.toml")).unwrap();
    let (_, rest) = example.split_once("[space]").expect("the example has a search space");
    let text = format!("{}[space]{rest}", toy_train_with(dir.path(), "")).replace("trials = 40", "trials = 2");
    let spec = write_spec(dir.path(), "spec.toml", &text);
    let run = dir.path().join("run");
    let output = sweep(&[path(&spec), "--run-dir", path(&run)]);
    assert_success(&output);
    assert_eq!(states(&run), ["complete", "complete"]);
    let example_space = study(&run)["trials"][0]["params"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(example_space, ["--batch-size", "--lr", "--weight-decay", "cosine_warmup:warmup_steps"]);
}

/// Population-based training on Ray Tune: four members trained over three intervals of 4
/// steps, two at a time, interrupted with Ctrl-C after the first comparison and continued
/// with `--resume`. At each of the two comparisons the weakest member exploits the
/// strongest (continues from its checkpoint) and explores (its learning rate scaled by 0.8
/// or 1.2, or drawn anew). Every member trains each step once; its run.json and
/// decisions.jsonl record each switch, so `trainer simulate` replays its decisions line
/// for line; the member that exploited last continued exactly as `--resume --swap-policies`
/// from its donor's checkpoint does, and a member that never exploited ends as its run
/// uninterrupted, to the bit.
#[test]
fn a_population_exploits_and_explores_and_each_member_resumes_exactly_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let train = toy_train(dir.path()).replace("\"cosine_warmup:warmup_steps=2\"", "\"constant\"");
    let text = format!(
        "{train}[space]\n\"constant:lr\" = {{ log-uniform = [1e-5, 1e-1] }}\n[objective]\nmetric = \"val_AP50\"\n\
         [budget]\nparallel = 2\n[search]\nscheduler = \"pbt\"\n[pbt]\npopulation = 4\ninterval = 4\n"
    );
    let spec = write_spec(dir.path(), "spec.toml", &text);
    let run = dir.path().join("pbt");
    let child = spawn_sweep(&[path(&spec), "--run-dir", path(&run)]);
    let member = |number: u64| run.join(format!("trials/{number:04}"));
    let steps_of = |number: u64| {
        let metrics = std::fs::read_to_string(member(number).join("metrics.jsonl")).unwrap_or_default();
        metrics.lines().filter(|line| line.ends_with('}')).count()
    };
    wait_for("the first comparison and a step past it", || {
        let lineage = std::fs::read_to_string(run.join("pbt.jsonl")).unwrap_or_default();
        lineage.contains("\"from\"") && (0..4).any(|number| steps_of(number) > 5)
    });
    // SAFETY: kill(2) on a child that has not been waited for.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(states(&run).contains(&"interrupted".to_string()), "{:?}", states(&run));
    let output = sweep(&["--resume", path(&run)]);
    assert_success(&output);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("4 trials: 4 complete"), "{printed}");

    let lineage = read_jsonl(&run.join("pbt.jsonl"));
    let exploits: Vec<&serde_json::Value> = lineage.iter().filter(|record| record.get("from").is_some()).collect();
    let steps: Vec<u64> = exploits.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [4, 8], "one exploit at each comparison: {lineage:?}");
    for exploit in &exploits {
        let lr = |params: &serde_json::Value| params["constant:lr"].as_f64().unwrap();
        let (before, after) = (lr(&exploit["from_params"]), lr(&exploit["params"]));
        assert!(after != before && (1e-5..=1e-1).contains(&after), "explored {before} -> {after}");
    }

    for number in 0..4 {
        let steps: Vec<u64> =
            read_jsonl(&member(number).join("metrics.jsonl")).iter().map(|m| m["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (0..12).collect::<Vec<_>>(), "member {number}");
        let out = dir.path().join(format!("simulated-{number}"));
        assert_success(&trainer(&["simulate", "--trace", path(&member(number)), "--out", path(&out)]));
        let replayed = std::fs::read_to_string(out.join("decisions.jsonl")).unwrap();
        assert_eq!(replayed, std::fs::read_to_string(member(number).join("decisions.jsonl")).unwrap());
    }

    let last = exploits[1];
    let (taker, donor) = (member(last["member"].as_u64().unwrap()), member(last["from"].as_u64().unwrap()));
    let swaps = &read_json(&taker.join("run.json"))["policy_swaps"];
    assert_eq!(swaps.as_array().unwrap().last().unwrap()["step"], 8, "{swaps}");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let at = |folder: &Path| std::fs::read(folder.join("checkpoints/step-8").join(file)).unwrap();
        assert!(at(&taker) == at(&donor), "{file} at step 8 is not the donor's");
    }
    assert_eq!(metrics_without_timing(&taker)[..8], metrics_without_timing(&donor)[..8]);
    // The donor's folder as it was at step 8, continued by hand with the taker's new rate.
    let reference = dir.path().join("reference");
    std::fs::create_dir_all(reference.join("checkpoints")).unwrap();
    for name in ["run.json", "metrics.jsonl", "decisions.jsonl", "evaluations.jsonl"] {
        std::fs::copy(donor.join(name), reference.join(name)).unwrap();
    }
    copy_folder(&donor.join("checkpoints/step-8"), &reference.join("checkpoints/step-8"));
    let rate = format!("constant:lr={}", last["params"]["constant:lr"]);
    assert_success(&trainer(&["train", "--resume", path(&reference), "--swap-policies", "--policy", &rate]));
    assert_eq!(metrics_without_timing(&reference), metrics_without_timing(&taker));
    let weights = |folder: &Path| std::fs::read(folder.join("final/model.safetensors")).unwrap();
    assert!(weights(&reference) == weights(&taker), "the continued weights differ");

    // A member that never took another's place ends as its run uninterrupted, to the bit.
    let kept = (0..4).find(|number| !exploits.iter().any(|e| e["member"] == *number)).expect("a member kept its run");
    let rate = lineage.iter().find(|r| r["member"] == kept && r["step"] == 0).unwrap()["params"]["constant:lr"].clone();
    let mut straight: Vec<String> = read_json(&run.join("sweep.json"))["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_string())
        .collect();
    let uninterrupted = dir.path().join("uninterrupted");
    straight.extend([
        "--policy".into(),
        format!("constant:lr={rate}"),
        "--run-dir".into(),
        path(&uninterrupted).into(),
    ]);
    assert_success(&trainer(&[&["train"][..], &straight.iter().map(String::as_str).collect::<Vec<_>>()].concat()));
    assert!(weights(&uninterrupted) == weights(&member(kept)), "member {kept} differs from its run uninterrupted");

    let best = read_json(&run.join("best.json"));
    let schedule = best["schedule"].as_array().unwrap();
    assert_eq!(schedule[0][0], 0, "{best}");
    for plot in ["objective.png", "lineage_0.png"] {
        assert!(run.join("plots").join(plot).is_file(), "{plot}");
    }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
