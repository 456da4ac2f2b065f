//! The PyTorch side of the side-by-side benchmarks: a script under `benches/` run with the
//! project's Python on a model config written as JSON, answering one JSON object.

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
