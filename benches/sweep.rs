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
//!
//! Run with `cargo bench --workspace --bench sweep [-- --trials N --overhead-trials N
//! --rounds N --out DIR]` (after `make test-setup`, which installs Optuna).

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

/// The detector, and the `[train]` section of the toy fine-tuning.
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
        "[train]\nargs = [\"--task\", \"detection\", \"--model\", {:?}, \"--data\", {:?}, \"--val-data\", {:?}, \
         \"--images\", {:?}, \"--batch-size\", \"8\", \"--steps\", \"12\", \"--eval-every\", \"4\", \"--device\", \
         \"cpu\", \"--seed\", \"1\", \"--workers\", \"1\"]\npolicies = [\"cosine_warmup:warmup_steps=2\"]\n\
         [space]\n\"--lr\" = {{ log-uniform = [1e-5, 1e-1] }}\n\
         \"cosine_warmup:warmup_steps\" = {{ uniform = [0.0, 0.3], of-steps = true }}\n\
         [objective]\nmetric = \"val_AP50\"\n",
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
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--trials" => trials = value.parse().expect("--trials N"),
            "--overhead-trials" => overhead_trials = value.parse().expect("--overhead-trials N"),
            "--rounds" => rounds = value.parse().expect("--rounds N"),
            "--out" => out = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    std::fs::create_dir_all(&out).expect("writable --out");
    let out = out.canonicalize().expect("--out exists");
    let spec = prepare(&out);

    let mut ratios = Vec::new();
    let mut added = Vec::new();
    for round in 0..rounds {
        let budget = format!("[budget]\ntrials = {overhead_trials}\n[search]\nseed = {round}\n");
        let run = out.join(format!("overhead-{round}"));
        let timed_sweep = |run: &Path| {
            let start = Instant::now();
            let study = sweep(&spec, &budget, run);
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
    let spread = |values: &[f64]| {
        let (low, high) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        format!("{low:.2}-{high:.2}")
    };
    let ratio_spread = spread(&ratios);
    let added_spread = spread(&added);
    println!(
        "overhead: a sweep of {overhead_trials} trials takes {:.2}x their time alone (rounds {ratio_spread}), {:.2} s more \
         per trial (rounds {added_spread})",
        median(&mut ratios),
        median(&mut added)
    );

    for sampler in ["tpe", "random"] {
        let mut bests = Vec::new();
        for seed in 0..3 {
            let extra = format!("[budget]\ntrials = {trials}\n[search]\nsampler = \"{sampler}\"\nseed = {seed}\n");
            let study = sweep(&spec, &extra, &out.join(format!("{sampler}-{seed}")));
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
