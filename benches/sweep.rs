//! The sweep benchmark, on the toy search of `tests/sweep.rs`: a detector trained from
//! scratch on the canvas data (400 steps), fine-tuned for 12 steps on 32 canvas images and
//! evaluated on 100 others, searching the learning rate (log-uniform 1e-5..1e-1) and the
//! warmup (0..30% of the steps) for the held-out AP50.
//!
//! 1. Overhead: a sweep of `--overhead-trials` trials against the same trials' commands
//!    run one after another without it, alternating which goes first over `--rounds`
//!    rounds; prints the median ratio of the wall times and the seconds the sweep adds per
//!    trial (its Python and Optuna start, the spec's two dry runs, the polling).
//! 2. Search quality: the best AP50 after `--trials` trials, TPE against random sampling,
//!    for seeds 0, 1 and 2.
//! 3. Population-based training: a population of 4 searching `constant:lr` (the same
//!    range) over 3 intervals of 4 steps, one member at a time, against its 4 starting
//!    rates trained alone, alternating which goes first over `--rounds` rounds; prints the
//!    median ratio of the wall times and each side's best final AP50.
//!
//! Run with `cargo bench --workspace --bench sweep [-- --trials N --overhead-trials N
//! --rounds N --out DIR --part overhead|quality|pbt]` (after `make test-setup`, which
//! installs Optuna and Ray).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn trainer(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("the trainer runs");
    assert!(output.status.success(), "trainer {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("a file the trainer wrote")).expect("JSON")
}

/// The detector, and the `args = [...]` line of the toy fine-tuning's `[train]` section.
fn prepare(out: &Path) -> String {
    let detector = out.join("detector");
    let args = [
        "train",
        "--task",
        "detection",
        "--policy",
        "cosine_warmup:warmup_steps=40",
        "--batch-size",
        "32",
        "--seed",
        "2",
        "--steps",
        "400",
        "--lr",
        "2e-3",
        "--device",
        "cpu",
        "--overwrite",
        "--run-dir",
    ];
    let output = trainer(&[&args[..], &[detector.to_str().expect("UTF-8 paths")]].concat());
    let report = String::from_utf8_lossy(&output.stderr);
    let (_, after) = report.split_once("a COCO folder made once at ").expect("the report names the canvas folder");
    let canvas = PathBuf::from(after.lines().next().expect("a path").trim());
    let coco = read_json(&canvas.join("annotations/instances_val.json"));
    let subset = |name: &str, first: usize, count: usize| {
        let mut part = coco.clone();
        let images = coco["images"].as_array().expect("images")[first..first + count].to_vec();
        let ids: Vec<&serde_json::Value> = images.iter().map(|image| &image["id"]).collect();
        let boxes: Vec<serde_json::Value> = coco["annotations"]
            .as_array()
            .expect("annotations")
            .iter()
            .filter(|a| ids.contains(&&a["image_id"]))
            .cloned()
            .collect();
        part["images"] = images.into();
        part["annotations"] = boxes.into();
        let path = out.join(format!("{name}.json"));
        std::fs::write(&path, part.to_string()).expect("writable --out");
        path
    };
    let (train, val) = (subset("train", 0, 32), subset("val", 32, 100));
    format!(
        "args = [\"--task\", \"detection\", \"--model\", {:?}, \"--data\", {:?}, \"--val-data\", {:?}, \
         \"--images\", {:?}, \"--batch-size\", \"8\", \"--steps\", \"12\", \"--eval-every\", \"4\", \"--device\", \
         \"cpu\", \"--seed\", \"1\", \"--workers\", \"1\"]\n",
        detector.join("final").display().to_string(),
        train.display().to_string(),
        val.display().to_string(),
        canvas.join("val").display().to_string()
    )
}

/// Runs a sweep of `spec` with `extra` appended, in `run`; the study it leaves.
fn sweep(spec_text: &str, extra: &str, run: &Path) -> serde_json::Value {
    let _ = std::fs::remove_dir_all(run);
    std::fs::create_dir_all(run).expect("writable --out");
    let spec = run.with_extension("toml");
    std::fs::write(&spec, format!("{spec_text}{extra}")).expect("writable --out");
    let run_dir = run.join("sweep");
    trainer(&["sweep", spec.to_str().expect("UTF-8"), "--run-dir", run_dir.to_str().expect("UTF-8")]);
    read_json(&run_dir.join("study.json"))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() as f64 - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let (mut trials, mut overhead_trials, mut rounds, mut out) = (20u32, 4u32, 3u32, PathBuf::from("runs/sweep-bench"));
    let mut part = None;
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--trials" => trials = value.parse().expect("--trials N"),
            "--overhead-trials" => overhead_trials = value.parse().expect("--overhead-trials N"),
            "--rounds" => rounds = value.parse().expect("--rounds N"),
            "--out" => out = PathBuf::from(value),
            "--part" => part = Some(value),
            other => panic!("unknown flag {other}"),
        }
    }
    std::fs::create_dir_all(&out).expect("writable --out");
    let out = out.canonicalize().expect("--out exists");
    let args = prepare(&out);
    let spec = format!(
        "[train]\n{args}policies = [\"cosine_warmup:warmup_steps=2\"]\n[space]\n\
         \"--lr\" = {{ log-uniform = [1e-5, 1e-1] }}\n\
         \"cosine_warmup:warmup_steps\" = {{ uniform = [0.0, 0.3], of-steps = true }}\n\
         [objective]\nmetric = \"val_AP50\"\n"
    );
    let pbt_spec = format!(
        "[train]\n{args}policies = [\"constant\"]\n[space]\n\"constant:lr\" = {{ log-uniform = [1e-5, 1e-1] }}\n\
         [objective]\nmetric = \"val_AP50\"\nvalue = \"last\"\n[budget]\nparallel = 1\n[search]\nscheduler = \"pbt\"\n\
         [pbt]\npopulation = 4\ninterval = 4\n"
    );
    if part.as_deref().is_none_or(|part| part == "overhead") {
        overhead(&spec, &out, overhead_trials, rounds);
    }
    if part.as_deref().is_none_or(|part| part == "quality") {
        quality(&spec, &out, trials);
    }
    if part.as_deref().is_none_or(|part| part == "pbt") {
        population(&pbt_spec, &out, rounds);
    }
}

fn spread(values: &[f64]) -> String {
    let (low, high) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    format!("{low:.2}-{high:.2}")
}

fn overhead(spec: &str, out: &Path, overhead_trials: u32, rounds: u32) {
    let mut ratios = Vec::new();
    let mut added = Vec::new();
    for round in 0..rounds {
        let budget = format!("[budget]\ntrials = {overhead_trials}\n[search]\nseed = {round}\n");
        let run = out.join(format!("overhead-{round}"));
        let timed_sweep = |run: &Path| {
            let start = Instant::now();
            let study = sweep(spec, &budget, run);
            (start.elapsed().as_secs_f64(), study)
        };
        let timed_alone = |study: &serde_json::Value, dir: &Path| {
            let start = Instant::now();
            for (index, trial) in study["trials"].as_array().expect("trials").iter().enumerate() {
                let command: Vec<String> = trial["command"]
                    .as_str()
                    .expect("a command")
                    .split(' ')
                    .map(|word| word.trim_matches('\'').to_string())
                    .collect();
                let at = command.iter().position(|word| word == "--run-dir").expect("--run-dir");
                let alone = dir.join(format!("alone-{index}"));
                let mut line: Vec<&str> = command[1..at].iter().map(String::as_str).collect();
                line.extend(["--overwrite", "--run-dir", alone.to_str().expect("UTF-8")]);
                trainer(&line);
            }
            start.elapsed().as_secs_f64()
        };
        // The commands come from a sweep; which side goes first alternates by round.
        let (swept, alone) = if round % 2 == 0 {
            let (swept, study) = timed_sweep(&run);
            (swept, timed_alone(&study, &run))
        } else {
            let (_, study) = timed_sweep(&run.with_extension("commands"));
            let alone = timed_alone(&study, &run);
            (timed_sweep(&run).0, alone)
        };
        println!("overhead round {round}: sweep {swept:.1} s, the same {overhead_trials} trials alone {alone:.1} s");
        ratios.push(swept / alone);
        added.push((swept - alone) / f64::from(overhead_trials));
    }
    let ratio_spread = spread(&ratios);
    let added_spread = spread(&added);
    println!(
        "overhead: a sweep of {overhead_trials} trials takes {:.2}x their time alone (rounds {ratio_spread}), {:.2} s more \
         per trial (rounds {added_spread})",
        median(&mut ratios),
        median(&mut added)
    );
}

fn quality(spec: &str, out: &Path, trials: u32) {
    for sampler in ["tpe", "random"] {
        let mut bests = Vec::new();
        for seed in 0..3 {
            let extra = format!("[budget]\ntrials = {trials}\n[search]\nsampler = \"{sampler}\"\nseed = {seed}\n");
            let study = sweep(spec, &extra, &out.join(format!("{sampler}-{seed}")));
            let best = study["trials"]
                .as_array()
                .expect("trials")
                .iter()
                .filter_map(|trial| trial["value"].as_f64())
                .fold(f64::NEG_INFINITY, f64::max);
            println!("{sampler} seed {seed}: best val_AP50 {:.2}% after {trials} trials", best * 100.0);
            bests.push(best * 100.0);
        }
        let (mean, sd) = mean_sd(&bests);
        println!("{sampler}: best val_AP50 after {trials} trials {mean:.2} ± {sd:.2}% (seeds 0-2)");
    }
}

/// The best of final AP50s, in percent.
fn best_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::NEG_INFINITY, f64::max) * 100.0
}

fn population(spec: &str, out: &Path, rounds: u32) {
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let run = out.join(format!("pbt-{round}"));
        let timed_population = |run: &Path| {
            let start = Instant::now();
            let seeded = spec.replace("scheduler = \"pbt\"\n", &format!("scheduler = \"pbt\"\nseed = {round}\n"));
            let study = sweep(&seeded, "", run);
            (start.elapsed().as_secs_f64(), study)
        };
        // The starting rates, trained alone from the first step to the last.
        let timed_alone = |run: &Path, dir: &Path| {
            let lineage = std::fs::read_to_string(run.join("sweep/pbt.jsonl")).expect("the lineage");
            let starts: Vec<serde_json::Value> = lineage
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON"))
                .filter(|record| record["step"] == 0 && record.get("from").is_none())
                .collect();
            let commands = read_json(&run.join("sweep/sweep.json"));
            let start = Instant::now();
            let mut finals = Vec::new();
            for (index, member) in starts.iter().enumerate() {
                let alone = dir.join(format!("alone-{index}"));
                let mut line: Vec<String> = vec!["train".into()];
                line.extend(
                    commands["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("text").into()),
                );
                line.extend(["--policy".into(), format!("constant:lr={}", member["params"]["constant:lr"])]);
                line.extend(["--overwrite".into(), "--run-dir".into(), alone.display().to_string()]);
                trainer(&line.iter().map(String::as_str).collect::<Vec<_>>());
                finals.push(read_json(&alone.join("eval.json"))["val_AP50"].as_f64().expect("AP50"));
            }
            (start.elapsed().as_secs_f64(), best_of(finals.into_iter()))
        };
        let finals = |study: &serde_json::Value| {
            let trials = study["trials"].as_array().expect("trials").clone();
            best_of(trials.into_iter().filter_map(|trial| trial["value"].as_f64()))
        };
        let ((pbt, pbt_best), (alone, alone_best)) = if round % 2 == 0 {
            let (seconds, study) = timed_population(&run);
            ((seconds, finals(&study)), timed_alone(&run, &run))
        } else {
            // The same seed draws the same starting rates.
            timed_population(&run.with_extension("starts"));
            let alone = timed_alone(&run.with_extension("starts"), &run);
            let (seconds, study) = timed_population(&run);
            ((seconds, finals(&study)), alone)
        };
        println!(
            "pbt round {round}: population {pbt:.1} s (best AP50 {pbt_best:.2}%), its 4 starting rates alone {alone:.1} s \
             (best {alone_best:.2}%)"
        );
        ratios.push(pbt / alone);
    }
    println!(
        "pbt: a population of 4 takes {:.2}x its starting runs alone (rounds {})",
        median(&mut ratios.clone()),
        spread(&ratios)
    );
}
