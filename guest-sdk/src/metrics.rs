//! Evaluation metrics as policies name them in their arguments: finding one in the run spec,
//! and which direction is better.

use crate::RunSpec;

/// Index of the evaluation metric `name` in `spec.metrics`; the error names the argument and
/// the choices, `also` listing names the policy accepts besides the run's metrics.
pub fn metric_index(spec: &RunSpec, argument: &str, name: &str, also: &[&str]) -> Result<usize, String> {
    spec.metrics.iter().position(|metric| metric == name).ok_or_else(|| {
        let choices: Vec<&str> = also.iter().copied().chain(spec.metrics.iter().map(String::as_str)).collect();
        format!("argument `{argument}`: `{name}` is not a metric of this run (metrics: {})", choices.join(", "))
    })
}

/// The default direction of a metric: losses are minimised, everything else maximised.
pub fn default_mode(name: &str) -> &'static str {
    if name.ends_with("loss") { "min" } else { "max" }
}
