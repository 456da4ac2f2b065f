//! The loss-balancing benchmark: the same tagging task (`tag` in the hundreds, `align`
//! around four, `distill` below one) trained three ways with equal budgets and seeds:
//! (a) the unweighted sum, (b) hand-set weights 1 / 10 / 100, (c) the adaptive
//! `loss_balance` policy. Prints a table of the final test mAP and each loss term's share of
//! the gradient, and writes `loss_curves.png` (every term of every variant, log scale).
//!
//! Run with `cargo bench -p trainer --bench loss_balance [-- --steps N --batch-size N --out DIR]`
//! (after `make policies`); the tests run it at a small size.

use std::path::{Path, PathBuf};
use std::process::Command;
use trainer::report::{Chart, Series, read_records};

/// One way of weighting the losses: its name and its loss-weight policy, if any.
const VARIANTS: [(&str, Option<&str>); 3] = [
    ("unweighted sum", None),
    ("fixed 1/10/100", Some("loss_balance.wasm:mode=fixed,tag=1,align=10,distill=100")),
    ("adaptive loss_balance", Some("loss_balance.wasm")),
];
pub const LOSSES: [&str; 3] = ["tag", "align", "distill"];

/// The outcome of one variant.
#[derive(Debug)]
pub struct Row {
    pub variant: &'static str,
    pub map: f64,
    /// Each loss term's share of the gradient at the end, in the order of [`LOSSES`].
    pub shares: [f64; 3],
}

/// Trains every variant for `steps` steps of `batch_size` mosaics into `out/<variant>/`,
/// writes `out/loss_curves.png`, and returns the table.
pub fn compare(steps: u64, batch_size: u64, out: &Path) -> Vec<Row> {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/policies");
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (variant, weighting) in VARIANTS {
        let run_dir = out.join(variant.replace([' ', '/'], "_"));
        let schedule = format!("{}:warmup_steps={}", policies.join("cosine_warmup.wasm").display(), steps / 20);
        let mut args = vec!["train".to_string(), "--device".into(), "cpu".into(), "--task".into(), "tagging".into()];
        args.extend(["--policy".into(), schedule]);
        if let Some(weighting) = weighting {
            args.extend(["--policy".into(), policies.join(weighting).display().to_string()]);
        }
        for (flag, value) in [("--lr", "2e-3".to_string()), ("--seed", "0".into())] {
            args.extend([flag.into(), value]);
        }
        for (flag, value) in [("--steps", steps), ("--batch-size", batch_size), ("--eval-every", steps)] {
            args.extend([flag.into(), value.to_string()]);
        }
        args.extend(["--run-dir".into(), run_dir.display().to_string(), "--overwrite".into()]);
        let output = Command::new(env!("CARGO_BIN_EXE_trainer")).args(&args).output().expect("the trainer runs");
        assert!(output.status.success(), "{variant}: {}", String::from_utf8_lossy(&output.stderr));

        let eval_path = run_dir.join("eval.json");
        let eval: serde_json::Value = std::fs::read_to_string(&eval_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| panic!("{} holds the run's evaluation", eval_path.display()));
        let number = |key: &str| eval[key].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            variant,
            map: number("mAP"),
            shares: LOSSES.map(|loss| number(&format!("grad_share_{loss}"))),
        });
        let metrics: Vec<serde_json::Value> =
            read_records(&run_dir.join("metrics.jsonl")).expect("metrics.jsonl reads");
        for loss in LOSSES {
            let points = metrics
                .iter()
                .map(|record| {
                    (record["step"].as_f64().unwrap_or(0.0), record["losses"][loss].as_f64().unwrap_or(f64::NAN))
                })
                .collect();
            curves.push(Series::new(format!("{loss}, {variant}"), points));
        }
    }
    let mut chart = Chart::new("Loss terms by weighting", "step", "raw loss (log scale)", curves);
    // Terms a hundred times apart only show on a log scale; distill's zero at step 0 is a gap.
    chart.log_y = true;
    chart.write_png(&out.join("loss_curves.png")).expect("the loss curves plot");
    rows
}

pub fn print_table(rows: &[Row]) {
    println!("{:<24} {:>8} {:>12} {:>12} {:>14}", "weighting", "test mAP", "share tag", "share align", "share distill");
    for row in rows {
        let [tag, align, distill] = row.shares;
        println!("{:<24} {:>8.4} {:>12.4} {:>12.4} {:>14.4}", row.variant, row.map, tag, align, distill);
    }
}

#[allow(dead_code)] // The tests use `compare` and `print_table` only.
fn main() {
    let mut args = std::env::args().skip(1);
    let (mut steps, mut batch_size, mut out) = (1500u64, 128u64, PathBuf::from("runs/loss_balance"));
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--steps" => steps = value.parse().expect("--steps N"),
            "--batch-size" => batch_size = value.parse().expect("--batch-size N"),
            "--out" => out = PathBuf::from(value),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    let rows = compare(steps, batch_size, &out);
    print_table(&rows);
    println!("loss curves: {}", out.join("loss_curves.png").display());
}
