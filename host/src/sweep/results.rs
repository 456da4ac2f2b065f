//! What a sweep found, from the study the driver leaves in `RUN/study.json`: the table of
//! trials (printed, and written as `trials.csv`), `best.json` with the command that
//! reproduces the best trial, plots (the objective by trial, the arguments' parallel
//! coordinates and Optuna's parameter importances; for population-based training, each
//! member's arguments and objective by step, its lineage) and the HParams dashboard's
//! entries, so that TensorBoard on the sweep's folder compares the trials.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::spec::{Dimension, Range, Sweep};
use crate::files::{FileError, write_atomically};
use crate::report::{
    BarChart, Chart, EventWriter, HparamDomain, HparamValue, PLOTS_DIR, PlotError, Series, SessionStatus,
};

/// The study file the driver writes.
pub const STUDY_FILE: &str = "study.json";

/// A study as the driver writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Study {
    pub metric: String,
    pub maximize: bool,
    pub trials: Vec<TrialRecord>,
    /// Each argument's importance to reaching the best values (Optuna's PED-ANOVA), largest
    /// first, adding up to 1.
    pub importances: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrialRecord {
    pub number: u32,
    /// complete, pruned, failed, running, interrupted or waiting.
    pub state: String,
    pub value: Option<f64>,
    pub params: BTreeMap<String, serde_json::Value>,
    /// (step, value) of each evaluation reported.
    pub intermediate: Vec<(u64, f64)>,
    pub steps: Option<u64>,
    pub run_dir: Option<PathBuf>,
    pub command: Option<String>,
    /// Why a trial failed or was stopped.
    pub cause: Option<String>,
    /// A population member's arguments from each step on, through the members it took
    /// over from; empty for a trial of a search.
    #[serde(default)]
    pub schedule: Vec<(u64, BTreeMap<String, serde_json::Value>)>,
}

/// `best.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Best<'a> {
    pub trial: u32,
    pub metric: &'a str,
    pub value: f64,
    pub params: &'a BTreeMap<String, serde_json::Value>,
    pub run_dir: Option<&'a Path>,
    /// The `trainer train` command line of the trial, which reproduces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<&'a str>,
    /// A population member's arguments from each step on (`run.json` in its folder records
    /// the same swaps, which `trainer simulate` replays).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub schedule: &'a [(u64, BTreeMap<String, serde_json::Value>)],
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl Study {
    pub fn read(run_dir: &Path) -> Result<Study, FileError> {
        let path = run_dir.join(STUDY_FILE);
        let text = std::fs::read(&path).map_err(FileError::io(&path))?;
        serde_json::from_slice(&text).map_err(|err| FileError::format(&path, err.to_string()))
    }

    /// The complete trial with the best value (the first of equals).
    pub fn best(&self) -> Option<&TrialRecord> {
        let mut best: Option<&TrialRecord> = None;
        for trial in self.trials.iter().filter(|t| t.state == "complete") {
            let Some(value) = trial.value else { continue };
            let better = match best.and_then(|b| b.value) {
                None => true,
                Some(current) if self.maximize => value > current,
                Some(current) => value < current,
            };
            if better {
                best = Some(trial);
            }
        }
        best
    }

    /// The number of trials in each state, e.g. `6 complete, 2 pruned`.
    pub fn state_counts(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for trial in &self.trials {
            *counts.entry(trial.state.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(state, count)| format!("{count} {state}")).collect();
        parts.join(", ")
    }

    /// The table of trials, a line each: number, state, objective, steps, each argument, and
    /// the cause of a failed or stopped trial.
    pub fn table(&self, space: &[Dimension]) -> Vec<Vec<String>> {
        let mut rows = vec![
            ["trial", "state", self.metric.as_str(), "steps"]
                .into_iter()
                .map(String::from)
                .chain(space.iter().map(|d| d.name.clone()))
                .chain(["cause".to_string()])
                .collect::<Vec<_>>(),
        ];
        for trial in &self.trials {
            let mut row = vec![
                format!("{:04}", trial.number),
                trial.state.clone(),
                trial.value.map_or_else(|| "-".into(), |v| format!("{v:.6}")),
                trial.steps.map_or_else(|| "-".into(), |s| s.to_string()),
            ];
            row.extend(space.iter().map(|d| trial.params.get(&d.name).map_or_else(|| "-".into(), param_text)));
            row.push(trial.cause.clone().unwrap_or_default());
            rows.push(row);
        }
        rows
    }
}

fn param_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or_default();
            if x != 0.0 && x.abs() < 1e-2 { format!("{x:.3e}") } else { format!("{x:.4}") }
        }
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The rows aligned in columns, as the terminal shows them.
pub fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|t| t.chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn csv(rows: &[Vec<String>]) -> String {
    let field = |text: &String| {
        if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.clone() }
    };
    rows.iter().map(|row| row.iter().map(field).collect::<Vec<_>>().join(",") + "\n").collect()
}

/// Writes `trials.csv`, `best.json` (when a trial completed) and the plots into the sweep's
/// folder; returns the files written.
pub fn write_results(study: &Study, sweep: &Sweep) -> Result<Vec<PathBuf>, ResultsError> {
    let run_dir = &sweep.run_dir;
    let mut written = Vec::new();
    let table = run_dir.join("trials.csv");
    write_atomically(&table, csv(&study.table(&sweep.space)).as_bytes())?;
    written.push(table);
    if let Some(trial) = study.best() {
        let best = Best {
            trial: trial.number,
            metric: &study.metric,
            value: trial.value.unwrap_or(f64::NAN),
            params: &trial.params,
            run_dir: trial.run_dir.as_deref(),
            command: trial.command.as_deref(),
            schedule: &trial.schedule,
        };
        let path = run_dir.join("best.json");
        write_atomically(&path, serde_json::to_string_pretty(&best).expect("best.json serializes").as_bytes())?;
        written.push(path);
    }
    let plots = run_dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&plots).map_err(FileError::io(&plots))?;
    let complete: Vec<(&TrialRecord, f64)> =
        study.trials.iter().filter(|t| t.state == "complete").filter_map(|t| Some((t, t.value?))).collect();
    if sweep.pbt.is_some() {
        let path = plots.join("objective.png");
        objective_by_step(study).write_png(&path)?;
        written.push(path);
        for (index, dimension) in sweep.space.iter().enumerate() {
            let path = plots.join(format!("lineage_{index}.png"));
            lineage_chart(study, dimension, sweep.steps).write_png(&path)?;
            written.push(path);
        }
    } else if !complete.is_empty() {
        let path = plots.join("objective.png");
        objective_chart(study, &complete).write_png(&path)?;
        written.push(path);
        if !sweep.space.is_empty() {
            let path = plots.join("parallel_coordinates.png");
            parallel_coordinates(study, &complete, &sweep.space).write_png(&path)?;
            written.push(path);
        }
    }
    written.extend(write_hparams(study, sweep).map_err(|err| FileError::io(run_dir)(err))?);
    if !study.importances.is_empty() {
        let path = plots.join("importances.png");
        let chart = BarChart {
            title: format!("what matters to {} (PED-ANOVA importance)", study.metric),
            x_label: "importance (the arguments' add up to 1)".into(),
            bars: study.importances.clone(),
        };
        chart.write_png(&path)?;
        written.push(path);
    }
    Ok(written)
}

/// The file of the HParams entries, in the sweep's folder (the experiment) and in each
/// trial's (its session), written whole each time so a resumed sweep leaves one of each.
const HPARAMS_EVENTS: &str = "0.hparams";

/// Writes the HParams experiment (the arguments searched, the objective's scalar tag) and
/// each trial's session; returns the files written.
fn write_hparams(study: &Study, sweep: &Sweep) -> std::io::Result<Vec<PathBuf>> {
    let hparams: Vec<(String, Option<HparamDomain>)> =
        sweep.space.iter().map(|d| (d.name.clone(), Some(domain(&d.range)))).collect();
    let mut experiment = EventWriter::create_named(&sweep.run_dir, HPARAMS_EVENTS)?;
    experiment.hparams_experiment(&hparams, &[format!("eval/{}", study.metric)])?;
    let mut written = vec![experiment.path().to_path_buf()];
    for trial in &study.trials {
        let Some(dir) = trial.run_dir.as_deref().filter(|dir| dir.is_dir()) else { continue };
        let values: Vec<(String, HparamValue)> =
            trial.params.iter().filter_map(|(name, value)| Some((name.clone(), hparam_value(value)?))).collect();
        let status = match trial.state.as_str() {
            "complete" => SessionStatus::Success,
            "failed" => SessionStatus::Failure,
            "running" | "interrupted" => SessionStatus::Running,
            _ => SessionStatus::Unknown,
        };
        let mut session = EventWriter::create_named(dir, HPARAMS_EVENTS)?;
        session.hparams_session(&values, status)?;
        written.push(session.path().to_path_buf());
    }
    Ok(written)
}

fn domain(range: &Range) -> HparamDomain {
    match range {
        Range::Float { low, high, .. } => HparamDomain::Interval { min: *low, max: *high },
        Range::Int { low, high, .. } => HparamDomain::Interval { min: *low as f64, max: *high as f64 },
        Range::Choice { choices } => HparamDomain::Discrete(choices.iter().filter_map(hparam_value).collect()),
    }
}

fn hparam_value(value: &serde_json::Value) -> Option<HparamValue> {
    match value {
        serde_json::Value::Number(n) => n.as_f64().map(HparamValue::Number),
        serde_json::Value::String(text) => Some(HparamValue::Text(text.clone())),
        serde_json::Value::Bool(b) => Some(HparamValue::Bool(*b)),
        _ => None,
    }
}

fn objective_chart(study: &Study, complete: &[(&TrialRecord, f64)]) -> Chart {
    let points: Vec<(f64, f64)> = complete.iter().map(|(t, v)| (f64::from(t.number), *v)).collect();
    let mut best_so_far = Vec::with_capacity(points.len());
    for &(x, y) in &points {
        let best = match best_so_far.last() {
            Some(&(_, b)) if study.maximize => y.max(b),
            Some(&(_, b)) => y.min(b),
            None => y,
        };
        best_so_far.push((x, best));
    }
    let mut chart = Chart::new(
        format!("{} by trial", study.metric),
        "trial",
        study.metric.clone(),
        vec![Series::new(study.metric.clone(), points), Series::new("best so far", best_so_far)],
    );
    chart.log_y = false;
    chart
}

/// Each population member's objective at each interval.
fn objective_by_step(study: &Study) -> Chart {
    let series = study
        .trials
        .iter()
        .map(|trial| {
            let points = trial.intermediate.iter().map(|&(step, value)| (step as f64, value)).collect();
            Series::new(format!("member {}", trial.number), points)
        })
        .collect();
    let mut chart =
        Chart::new(format!("{} of each member by step", study.metric), "step", study.metric.clone(), series);
    chart.log_y = false;
    chart
}

/// Each population member's value of `dimension` by step, through the members it took over
/// from: the schedule population-based training found.
fn lineage_chart(study: &Study, dimension: &Dimension, steps: u64) -> Chart {
    let value = |params: &BTreeMap<String, serde_json::Value>| {
        params.get(&dimension.name).map_or(f64::NAN, |v| match &dimension.range {
            Range::Choice { choices } => choices.iter().position(|c| c == v).map_or(f64::NAN, |i| i as f64),
            _ => v.as_f64().unwrap_or(f64::NAN),
        })
    };
    let series = study
        .trials
        .iter()
        .map(|trial| {
            let mut points = Vec::with_capacity(2 * trial.schedule.len());
            for (index, (from, params)) in trial.schedule.iter().enumerate() {
                let until = trial.schedule.get(index + 1).map_or(trial.steps.unwrap_or(steps), |(next, _)| *next);
                points.extend([(*from as f64, value(params)), (until as f64, value(params))]);
            }
            Series::new(format!("member {}", trial.number), points)
        })
        .collect();
    let y_label = match &dimension.range {
        Range::Choice { .. } => format!("{} (index of the choice)", dimension.name),
        _ => dimension.name.clone(),
    };
    let mut chart =
        Chart::new(format!("{} of each member by step (its lineage)", dimension.name), "step", y_label, series);
    chart.log_y = matches!(dimension.range, Range::Float { log: true, .. } | Range::Int { log: true, .. });
    chart
}

/// Each complete trial a line across the arguments' axes (each scaled to its range, log
/// ranges on a log scale, choices evenly) and, last, the objective's.
fn parallel_coordinates(study: &Study, complete: &[(&TrialRecord, f64)], space: &[Dimension]) -> Chart {
    let (low, high) = complete.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), (_, v)| (l.min(*v), h.max(*v)));
    let series = complete
        .iter()
        .map(|(trial, value)| {
            let mut points: Vec<(f64, f64)> = space
                .iter()
                .enumerate()
                .map(|(axis, dimension)| {
                    let position =
                        trial.params.get(&dimension.name).map_or(f64::NAN, |v| position(v, &dimension.range));
                    (axis as f64, position)
                })
                .collect();
            let objective = if high > low { (value - low) / (high - low) } else { 0.5 };
            points.push((space.len() as f64, objective));
            Series::new(format!("trial {} ({value:.4})", trial.number), points)
        })
        .collect();
    let axes: Vec<String> = space
        .iter()
        .enumerate()
        .map(|(axis, d)| format!("{axis} {}", d.name))
        .chain([format!("{} {}", space.len(), study.metric)])
        .collect();
    let mut chart = Chart::new(
        "parallel coordinates of the complete trials",
        format!("axes: {}", axes.join(", ")),
        "position in the range",
        series,
    );
    chart.log_y = false;
    chart
}

/// Where `value` lies in `range`, from 0 at the low end to 1 at the high end.
fn position(value: &serde_json::Value, range: &Range) -> f64 {
    let scaled = |x: f64, low: f64, high: f64, log: bool| {
        if log { (x.ln() - low.ln()) / (high.ln() - low.ln()) } else { (x - low) / (high - low) }
    };
    match range {
        Range::Float { low, high, log } => value.as_f64().map_or(f64::NAN, |x| scaled(x, *low, *high, *log)),
        Range::Int { low, high, log } => {
            value.as_f64().map_or(f64::NAN, |x| scaled(x, *low as f64, *high as f64, *log))
        }
        Range::Choice { choices } => match choices.iter().position(|c| c == value) {
            Some(index) if choices.len() > 1 => index as f64 / (choices.len() - 1) as f64,
            Some(_) => 0.5,
            None => f64::NAN,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(number: u32, state: &str, value: Option<f64>) -> TrialRecord {
        TrialRecord {
            number,
            state: state.into(),
            value,
            params: BTreeMap::from([("--lr".to_string(), serde_json::json!(1e-4))]),
            intermediate: vec![],
            steps: Some(10),
            run_dir: None,
            command: None,
            cause: None,
            schedule: vec![],
        }
    }

    #[test]
    fn the_best_trial_is_the_first_best_complete_one_in_the_direction_asked() {
        let trials = vec![
            trial(0, "complete", Some(0.2)),
            trial(1, "pruned", Some(0.9)),
            trial(2, "complete", Some(0.5)),
            trial(3, "complete", Some(0.5)),
            trial(4, "failed", None),
        ];
        let mut study = Study { metric: "val_AP50".into(), maximize: true, trials, importances: vec![] };
        assert_eq!(study.best().map(|t| t.number), Some(2));
        study.maximize = false;
        assert_eq!(study.best().map(|t| t.number), Some(0));
        assert_eq!(study.state_counts(), "3 complete, 1 failed, 1 pruned");
    }

    #[test]
    fn positions_scale_log_ranges_logarithmically_and_choices_evenly() {
        let log = Range::Float { low: 1e-6, high: 1e-2, log: true };
        assert!((position(&serde_json::json!(1e-4), &log) - 0.5).abs() < 1e-12);
        let choice = Range::Choice { choices: vec![4.into(), 8.into(), 16.into()] };
        assert_eq!(position(&serde_json::json!(16), &choice), 1.0);
        assert!(position(&serde_json::json!(5), &choice).is_nan());
    }

    #[test]
    fn csv_quotes_fields_with_commas_and_quotes() {
        let rows = vec![vec!["a".to_string(), "x, \"y\"".to_string()]];
        assert_eq!(csv(&rows), "a,\"x, \"\"y\"\"\"\n");
    }
}
