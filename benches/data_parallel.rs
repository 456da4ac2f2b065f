//! Data-parallel throughput on the CPU: the demo's contrastive training as one process and
//! as two (`--nproc 2`, Gloo over 127.0.0.1), the same global batch, the two sides
//! alternating over three rounds; prints the median images/s of each and their ratio.
//!
//! Each side gets the machine's cores: one process all of them, two processes half each
//! (as `--nproc` sets OMP_NUM_THREADS). On one machine two processes add the collectives
//! and gain nothing but what splitting the cores gains; the figure is the price of the
//! collectives, the base for runs over several machines or GPUs.
//!
//! Run with `cargo bench --workspace --bench data_parallel` (after `make`).

use std::path::Path;
use std::process::Command;

const STEPS: usize = 60;
/// Steps left out of each median: start-up, first allocations.
const WARM_UP: usize = 10;
const ROUNDS: usize = 3;

/// The median images/s of one run with `processes` processes.
fn images_per_second(processes: usize, run_dir: &Path) -> f64 {
    let steps = STEPS.to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainer"));
    command.args(["train", "--policy", "cosine_warmup", "--device", "cpu", "--batch-size", "256", "--steps", &steps]);
    command.args(["--overwrite", "--run-dir"]).arg(run_dir);
    if processes > 1 {
        command.args(["--nproc", &processes.to_string()]);
    }
    let output = command.output().expect("the trainer runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("the run wrote metrics");
    let mut rates: Vec<f64> = metrics
        .lines()
        .skip(WARM_UP)
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON lines")["images_per_second"].as_f64())
        .map(|rate| rate.expect("every step has a throughput"))
        .collect();
    median(&mut rates)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        one.push(images_per_second(1, &dir.path().join("one")));
        two.push(images_per_second(2, &dir.path().join("two")));
        println!("round {round}: 1 process {:.0} images/s, 2 processes {:.0} images/s", one[round - 1], two[round - 1]);
    }
    let ratios: Vec<f64> = one.iter().zip(&two).map(|(a, b)| b / a).collect();
    let spread = ratios.iter().cloned().fold(f64::INFINITY, f64::min)..=ratios.iter().cloned().fold(0.0, f64::max);
    let (one, two) = (median(&mut one), median(&mut two));
    println!(
        "demo CLIP, batch 256 on {} cores: 1 process {one:.0} images/s, 2 processes {two:.0} images/s: \
         {:.2}x (rounds {:.2}x to {:.2}x)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        two / one,
        spread.start(),
        spread.end()
    );
}
