//! The harness of the side-by-side benchmarks: the PyTorch side is a script under `benches/`
//! run with the project's Python on a model config written as JSON, answering one JSON
//! object; the two sides alternate over rounds (A B A B …) so that a machine's drift falls
//! on both, and [`Ratios`] sums the rounds up as a median with its spread.

use serde::Serialize;
use std::process::Command;

/// Runs `benches/<script> <config.json> <args...>` and parses its reply.
pub fn run_reference(script: &str, config: &impl Serialize, args: &[String]) -> Result<serde_json::Value, String> {
    let python =
        std::env::var("TRAINER_PYTHON").map_err(|_| "TRAINER_PYTHON is not set; run `make` once".to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_string(config).expect("configs serialize"))
        .map_err(|e| e.to_string())?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches").join(script);
    let output = Command::new(python).arg(script).arg(&config_path).args(args).output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Per-round speeds of the two sides (higher is faster), paired by round.
#[derive(Debug, Default)]
pub struct Ratios {
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

impl Ratios {
    pub fn push(&mut self, ours: f64, theirs: f64) {
        self.ours.push(ours);
        self.theirs.push(theirs);
    }

    pub fn is_empty(&self) -> bool {
        self.ours.is_empty()
    }

    /// `ours A, theirs B, ratio R× (min–max over N rounds)`: medians of each side and of the
    /// per-round ratios, which pair the runs that shared a stretch of the machine's time.
    pub fn summary(&self, unit: &str) -> String {
        let ratios: Vec<f64> = self.ours.iter().zip(&self.theirs).map(|(a, b)| a / b).collect();
        let (low, high) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| (l.min(*r), h.max(*r)));
        format!(
            "trainer {:.1} {unit}, PyTorch {:.1} {unit}, ratio {:.2}x (rounds {:.2}-{:.2}, {} rounds)",
            median(&self.ours),
            median(&self.theirs),
            median(&ratios),
            low,
            high,
            ratios.len()
        )
    }
}
