//! The loss-balancing benchmark: the same tagging task (`tag` in the hundreds, `align`
//! around four, `distill` below one) trained four ways with equal budgets, over several
//! seeds: (a) the unweighted sum, (b) hand-set weights 1 / 10 / 100, (c) the adaptive
//! `loss_balance` policy (balancing loss values), (d) `grad_balance` (balancing each term's
//! share of the gradient toward targets). Prints each variant's test mAP (mean and spread
//! over the seeds) and each loss term's share of the gradient, and writes
//! `loss_curves.png` (every term of every variant, first seed, log scale). Then it measures
//! what measuring the per-loss gradients costs: the step time with `grad_balance` measuring
//! at every step against the unweighted run, alternating the two over rounds.
//!
//! Run with `cargo bench --workspace --bench loss_balance [-- --steps N --batch-size N
//! --seeds N --out DIR]` (after `make policies-all`); the tests run it at a small size.

use std::path::{Path, PathBuf};
use std::process::Command;
use trainer::report::{Chart, Series, read_records};

/// One way of weighting the losses: its name and its loss-weight policy, if any.
const VARIANTS: [(&str, Option<&str>); 4] = [
    ("unweighted sum", None),
    ("fixed 1/10/100", Some("loss_balance.wasm:mode=fixed,tag=1,align=10,distill=100")),
    ("adaptive loss_balance", Some("loss_balance.wasm")),
    // Targets near the shares the unweighted sum ends with at the default size (tag 0.99,
    // align 0.01, distill 0.002): most of the gradient to the tags, a little to the
    // alignment, almost none to the distillation, which does not help the tags.
    ("grad_balance", Some("grad_balance.wasm:tag=0.9,align=0.09,distill=0.01,every=10")),
];
pub const LOSSES: [&str; 3] = ["tag", "align", "distill"];

/// The outcome of one variant over the seeds.
#[derive(Debug)]
pub struct Row {
    pub variant: &'static str,
    /// The test mAP of each seed.
    pub maps: Vec<f64>,
    /// Each loss term's share of the gradient at the end, in the order of [`LOSSES`],
    /// averaged over the seeds.
    pub shares: [f64; 3],
}

impl Row {
    pub fn mean(&self) -> f64 {
        self.maps.iter().sum::<f64>() / self.maps.len() as f64
    }

    /// The sample standard deviation over the seeds (0 for one seed).
    pub fn spread(&self) -> f64 {
        let n = self.maps.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        (self.maps.iter().map(|map| (map - self.mean()).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    }
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies")
}

/// Trains a tagging run into `run_dir` with the schedule and `weighting`; returns its
/// `eval.json`.
fn train(run_dir: &Path, weighting: Option<&str>, steps: u64, batch_size: u64, seed: u64) -> serde_json::Value {
    let policies = policies_dir();
    let schedule = format!("{}:warmup_steps={}", policies.join("cosine_warmup.wasm").display(), steps / 20);
    let mut args = vec!["train".to_string(), "--device".into(), "cpu".into(), "--task".into(), "tagging".into()];
    args.extend(["--policy".into(), schedule]);
    if let Some(weighting) = weighting {
        args.extend(["--policy".into(), policies.join(weighting).display().to_string()]);
    }
    args.extend(["--lr".into(), "2e-3".into()]);
    for (flag, value) in [("--seed", seed), ("--steps", steps), ("--batch-size", batch_size), ("--eval-every", steps)] {
        args.extend([flag.into(), value.to_string()]);
    }
    args.extend(["--run-dir".into(), run_dir.display().to_string(), "--overwrite".into()]);
    let output = Command::new(env!("CARGO_BIN_EXE_trainer")).args(&args).output().expect("the trainer runs");
    assert!(output.status.success(), "{}: {}", run_dir.display(), String::from_utf8_lossy(&output.stderr));
    let eval_path = run_dir.join("eval.json");
    std::fs::read_to_string(&eval_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("{} holds the run's evaluation", eval_path.display()))
}

/// Trains every variant for `steps` steps of `batch_size` mosaics with each of `seeds` into
/// `out/<variant>-<seed>/`, writes `out/loss_curves.png`, and returns the table.
pub fn compare(steps: u64, batch_size: u64, seeds: &[u64], out: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (variant, weighting) in VARIANTS {
        let mut row = Row { variant, maps: Vec::new(), shares: [0.0; 3] };
        for &seed in seeds {
            let run_dir = out.join(format!("{}-{seed}", variant.replace([' ', '/'], "_")));
            let eval = train(&run_dir, weighting, steps, batch_size, seed);
            let number = |key: &str| eval[key].as_f64().unwrap_or(f64::NAN);
            row.maps.push(number("mAP"));
            for (share, loss) in row.shares.iter_mut().zip(LOSSES) {
                *share += number(&format!("grad_share_{loss}")) / seeds.len() as f64;
            }
            if seed != seeds[0] {
                continue;
            }
            let metrics: Vec<serde_json::Value> =
                read_records(&run_dir.join("metrics.jsonl")).expect("metrics.jsonl reads");
            for loss in LOSSES {
                let points = metrics
                    .iter()
                    .map(|record| {
                        let value = record["losses"][loss].as_f64().unwrap_or(f64::NAN);
                        (record["step"].as_f64().unwrap_or(0.0), value)
                    })
                    .collect();
                curves.push(Series::new(format!("{loss}, {variant}"), points));
            }
        }
        rows.push(row);
    }
    let mut chart = Chart::new("Loss terms by weighting", "step", "raw loss (log scale)", curves);
    // Terms a hundred times apart only show on a log scale; distill's zero at step 0 is a gap.
    chart.log_y = true;
    chart.write_png(&out.join("loss_curves.png")).expect("the loss curves plot");
    rows
}

pub fn print_table(rows: &[Row]) {
    let seeds = rows.first().map_or(0, |row| row.maps.len());
    println!("test mAP over {seeds} seeds (mean ± sample standard deviation), gradient shares averaged");
    println!(
        "{:<24} {:>8} {:>8} {:>26} {:>10} {:>12} {:>14}",
        "weighting", "mAP", "± sd", "per seed", "share tag", "share align", "share distill"
    );
    for row in rows {
        let [tag, align, distill] = row.shares;
        let per_seed: Vec<String> = row.maps.iter().map(|map| format!("{map:.4}")).collect();
        println!(
            "{:<24} {:>8.4} {:>8.4} {:>26} {:>10.4} {:>12.4} {:>14.4}",
            row.variant,
            row.mean(),
            row.spread(),
            per_seed.join(" "),
            tag,
            align,
            distill
        );
    }
}

/// The median seconds per step of a run, from the throughput it logged, past warm-up.
fn median_step_seconds(run_dir: &Path, batch_size: u64) -> f64 {
    let metrics: Vec<serde_json::Value> = read_records(&run_dir.join("metrics.jsonl")).expect("metrics.jsonl reads");
    let mut seconds: Vec<f64> = metrics
        .iter()
        .skip(2)
        .filter_map(|record| record["images_per_second"].as_f64())
        .map(|rate| batch_size as f64 / rate)
        .collect();
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

/// Step time with the per-loss gradients measured at every step, over the plain step's,
/// alternating the two for `rounds` rounds of `steps` steps: the median of the rounds'
/// ratios, with the range.
pub fn measurement_cost(steps: u64, batch_size: u64, rounds: usize, out: &Path) -> (f64, f64, f64) {
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let plain = median_step_seconds(
            &{
                let dir = out.join(format!("cost-plain-{round}"));
                train(&dir, None, steps, batch_size, 0);
                dir
            },
            batch_size,
        );
        let measured = median_step_seconds(
            &{
                let dir = out.join(format!("cost-measured-{round}"));
                train(&dir, Some("grad_balance.wasm:every=1"), steps, batch_size, 0);
                dir
            },
            batch_size,
        );
        ratios.push(measured / plain);
    }
    ratios.sort_by(f64::total_cmp);
    (ratios[ratios.len() / 2], ratios[0], ratios[ratios.len() - 1])
}

#[allow(dead_code)] // The tests use `compare`, `print_table` and `measurement_cost` only.
fn main() {
    let mut args = std::env::args().skip(1);
    let (mut steps, mut batch_size, mut out) = (600u64, 64u64, PathBuf::from("runs/loss_balance"));
    let mut seeds = 3u64;
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--steps" => steps = value.parse().expect("--steps N"),
            "--batch-size" => batch_size = value.parse().expect("--batch-size N"),
            "--out" => out = PathBuf::from(value),
            "--seeds" => seeds = value.parse().expect("--seeds N"),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    let rows = compare(steps, batch_size, &(0..seeds).collect::<Vec<_>>(), &out);
    print_table(&rows);
    println!("loss curves: {}", out.join("loss_curves.png").display());
    let (median, low, high) = measurement_cost(40, batch_size, 3, &out);
    println!(
        "measuring the per-loss gradients at every step: {median:.2}x the step time (rounds {low:.2}-{high:.2}; 3 \
         terms: 3 backward passes through the shared graph instead of 1)"
    );
}
