//! `trainer simulate`: drives policies with a recorded or synthetic metric stream and no
//! model, to see what they would decide before spending GPU hours. A recorded run is
//! replayed from its run directory: the policies start with the run's saved specification,
//! and step `s` shows them what the run showed them (step `s - 1`'s readings from
//! `metrics.jsonl`, knob values replayed from their own decisions, the evaluation recorded
//! at `s`), so the same policies reproduce the run's `decisions.jsonl` line for line. A run
//! whose policies were swapped on resume (by hand, or by a population-based sweep) is
//! replayed through each swap at the step it happened, as the run made it.
//! A synthetic stream is a decaying loss per term (magnitudes 100, 10, 1, ...) with seeded
//! noise, and evaluations every `eval_every` steps or when a policy asks.
//!
//! Shadow policies run beside the others on the same stream: their decisions go to
//! `decisions.jsonl` marked as shadows, the knobs each would have set are plotted beside the
//! run's, and the steps where they differ are counted.

use super::checkpoint::{LastStep, PendingEvaluation, TrainerState};
use super::config::{PolicySwap, RUN_FILE, SavedRun};
use super::error::{EngineError, io_error};
use super::knobs::KnobState;
use super::loss_gradients::MeasuredGradients;
use super::trace::{SavedGroup, SavedKnob, SavedSpec, decision_records, swap_decision_records};
use crate::data::augment::KNOBS;
use crate::data::sampler::keyed;
use crate::files::FileError;
use crate::policy::{PolicyRuntime, PolicySet, PolicySource, SandboxLimits, StepDecision};
use crate::report::{Chart, JsonLines, Series, float_from_json, read_records};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The metric stream to drive the policies with.
#[derive(Debug, Clone)]
pub enum Trace {
    /// The run directory of a finished (or stopped, or paused) run.
    Recorded(PathBuf),
    Synthetic(SyntheticCurve),
}

#[derive(Debug, Clone)]
pub struct SyntheticCurve {
    pub steps: u64,
    pub steps_per_epoch: u64,
    /// Loss term names; term `i` starts near 100 / 10^i.
    pub losses: Vec<String>,
    /// Evaluate (`val_loss`) every this many steps; 0: only when a policy asks.
    pub eval_every: u64,
    /// Parameter groups, each starting at `lr`.
    pub groups: Vec<String>,
    pub lr: f64,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// The policies to drive; `None`: those of the recorded run.
    pub policies: Option<Vec<PolicySource>>,
    /// Shadow policies; `None`: those of the recorded run.
    pub shadow_policies: Option<Vec<PolicySource>>,
    pub trace: Trace,
    /// Where `decisions.jsonl` and the plots go.
    pub out: PathBuf,
    pub policy_fuel: u64,
    pub policy_cache: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SimulateOutcome {
    pub steps: u64,
    /// The step after which a policy stops the run, the policy and its reason.
    pub stopped: Option<(u64, String, String)>,
    pub decisions: PathBuf,
    pub plots: Vec<PathBuf>,
    /// Each shadow, with the steps at which the knobs it would have set differ from the
    /// run's (learning rates with multipliers, loss weights, augmentation).
    pub shadows: Vec<(String, u64)>,
}

/// What a step measured, as the next observation shows it.
struct Reading {
    losses: Vec<f64>,
    total: f64,
    grad_norm: f64,
    logit_scale: f64,
    images_per_second: f64,
    /// Each term's gradient norm, where the run measured them.
    loss_gradients: Option<Vec<f64>>,
}

/// Where readings and evaluations come from, step by step.
enum Stream {
    Recorded { readings: Vec<Reading>, evaluations: HashMap<u64, Vec<f64>> },
    Synthetic(SyntheticCurve),
}

impl Stream {
    fn len(&self) -> u64 {
        match self {
            Stream::Recorded { readings, .. } => readings.len() as u64,
            Stream::Synthetic(curve) => curve.steps,
        }
    }

    /// The evaluation shown before step `step`, given whether a policy asked for one at
    /// the step before.
    fn evaluation(&self, step: u64, requested: bool, last: &LastStep) -> Option<Vec<f64>> {
        match self {
            Stream::Recorded { evaluations, .. } => evaluations.get(&step).cloned(),
            Stream::Synthetic(curve) => {
                let scheduled = curve.eval_every > 0 && step > 0 && step.is_multiple_of(curve.eval_every);
                // The validation loss follows the training loss, a little higher.
                (scheduled || requested).then(|| vec![last.losses.iter().sum::<f64>() * 1.05])
            }
        }
    }

    fn reading(&self, step: u64, weights: &[f64]) -> Reading {
        match self {
            Stream::Recorded { readings, .. } => {
                let r = &readings[step as usize];
                Reading { losses: r.losses.clone(), loss_gradients: r.loss_gradients.clone(), ..*r }
            }
            Stream::Synthetic(curve) => {
                let progress = step as f64 / curve.steps.max(1) as f64;
                let losses: Vec<f64> = (0..curve.losses.len())
                    .map(|term| {
                        let noise = (keyed(curve.seed, &[step, term as u64]) >> 11) as f64 / (1u64 << 53) as f64;
                        let scale = 100.0 / 10f64.powi(term as i32);
                        scale * (0.1 + 0.9 * (-3.0 * progress).exp()) * (1.0 + 0.1 * (noise - 0.5))
                    })
                    .collect();
                let total = losses.iter().zip(weights).map(|(loss, weight)| loss * weight).sum();
                Reading {
                    losses,
                    total,
                    grad_norm: 1.0,
                    logit_scale: 14.29,
                    images_per_second: 1000.0,
                    loss_gradients: None,
                }
            }
        }
    }
}

pub fn simulate(options: &SimulateOptions) -> Result<SimulateOutcome, EngineError> {
    let (spec, recorded, stream) = match &options.trace {
        Trace::Recorded(run_dir) => {
            let (spec, recorded, stream) = read_recorded(run_dir)?;
            (spec, Some(recorded), stream)
        }
        Trace::Synthetic(curve) => (synthetic_spec(curve), None, Stream::Synthetic(curve.clone())),
    };
    let (recorded_policies, recorded_shadows, recorded_swaps) = match recorded {
        Some(Recorded { policies, shadows, swaps }) => (Some(policies), Some(shadows), swaps),
        None => (None, None, Vec::new()),
    };
    let shadows = options.shadow_policies.clone().or(recorded_shadows).unwrap_or_default();
    // The run's own policies are replayed through its swaps; policies given instead run alone.
    let (policies, swaps) = match (&options.policies, recorded_policies) {
        (Some(policies), _) if !policies.is_empty() => (policies.clone(), Vec::new()),
        (_, Some(recorded)) => (recorded, recorded_swaps),
        _ => return Err(EngineError::Config("--policy: give at least one policy to simulate".into())),
    };
    let limits = SandboxLimits { fuel_per_call: options.policy_fuel, ..Default::default() };
    let runtime = PolicyRuntime::new(limits, options.policy_cache.clone());
    let mut set = PolicySet::start(&runtime, &policies, &shadows, spec.to_run_spec())?;
    for (shadow, line) in set.take_logs() {
        eprintln!("[shadow {shadow}] {}", line.message);
    }

    std::fs::create_dir_all(&options.out).map_err(io_error(&options.out))?;
    let decisions_path = options.out.join("decisions.jsonl");
    let mut decisions = JsonLines::create(&decisions_path).map_err(io_error(&decisions_path))?;
    let (groups, losses, knob_names) = (spec.group_names(), spec.loss_names(), spec.knob_names());
    let knobs = KnobState {
        frozen: spec.groups.iter().map(|g| g.frozen).collect(),
        ..KnobState::new(
            spec.groups.iter().map(|g| g.base_lr).collect(),
            vec![1.0; spec.losses.len()],
            spec.augmentation.iter().map(|k| k.default).collect(),
            policies.len(),
        )
    };
    // What each shadow would have set, alone in the run's place.
    let mut shadow_knobs: Vec<(String, KnobState, u64)> = shadows
        .iter()
        .map(|source| {
            (source.name(), KnobState { lr_multipliers: vec![vec![1.0; knobs.lrs.len()]], ..knobs.clone() }, 0)
        })
        .collect();
    let mut state = TrainerState::new(knobs);
    let mut history: Vec<(u64, KnobState)> = Vec::new();
    let mut shadow_history: Vec<(String, Vec<(u64, KnobState)>)> =
        shadow_knobs.iter().map(|(name, _, _)| (name.clone(), Vec::new())).collect();
    let mut requested = false;
    let mut stopped = None;
    let steps = stream.len().min(spec.total_steps);
    for step in 0..steps {
        if let Some(swap) = swaps.iter().find(|swap| swap.step == step) {
            let kept = set.swap(&runtime, &swap.to)?;
            let swapped_in: Vec<(&PolicySource, bool)> = swap.to.iter().zip(kept).collect();
            for record in swap_decision_records(step, &swapped_in) {
                decisions.write(&record).map_err(io_error(&decisions_path))?;
            }
            state.knobs.fit_policies(swap.to.len());
        }
        state.steps_done = step;
        state.pending_evaluation =
            stream.evaluation(step, requested, &state.last).map(|values| PendingEvaluation { step, values });
        let decision = set.decide(&state.observation(step / spec.steps_per_epoch.max(1), None))?;
        for record in decision_records(step, &decision, &groups, &losses, &knob_names) {
            decisions.write(&record).map_err(io_error(&decisions_path))?;
        }
        state.knobs.apply(&decision);
        history.push((step, state.knobs.clone()));
        for (name, decided) in &decision.shadows {
            let Some(index) = shadow_knobs.iter().position(|(shadow, _, _)| shadow == name) else { continue };
            let (_, knobs, differing) = &mut shadow_knobs[index];
            let alone = StepDecision {
                merged: decided.clone(),
                per_policy: vec![(name.clone(), decided.clone())],
                stop: None,
                shadows: vec![],
            };
            knobs.apply(&alone);
            let differs = |a: &KnobState, b: &KnobState| {
                a.effective_lrs() != b.effective_lrs()
                    || a.loss_weights != b.loss_weights
                    || a.augmentation != b.augmentation
            };
            *differing += u64::from(differs(knobs, &state.knobs));
            shadow_history[index].1.push((step, knobs.clone()));
        }
        requested = decision.merged.evaluate;
        let reading = stream.reading(step, &state.knobs.loss_weights);
        let loss_gradients = match (reading.loss_gradients, &stream) {
            (Some(norms), _) => Some(norms),
            // A synthetic term's gradient grows with its index as its loss shrinks, so the
            // shares of the gradient differ from those of the losses.
            (None, Stream::Synthetic(_)) if decision.merged.measure_loss_gradients => Some(
                reading
                    .losses
                    .iter()
                    .zip(&state.knobs.loss_weights)
                    .enumerate()
                    .map(|(i, (loss, w))| loss * w * 10f64.powi(i as i32))
                    .collect(),
            ),
            (None, _) => None,
        };
        state.last = LastStep {
            losses: reading.losses,
            total_loss: Some(reading.total),
            grad_norm: Some(reading.grad_norm),
            logit_scale: Some(reading.logit_scale),
            images_per_second: Some(reading.images_per_second),
            loss_gradients: loss_gradients.map(|norms| MeasuredGradients::from_norms(step, norms)),
        };
        if let Some((policy, reason)) = decision.stop {
            stopped = Some((step + 1, policy, reason));
            break;
        }
    }
    for (shadow, line) in set.take_logs() {
        eprintln!("[shadow {shadow}] {}", line.message);
    }
    let mut series = vec![(None, history.as_slice())];
    series.extend(shadow_history.iter().map(|(name, history)| (Some(name.as_str()), history.as_slice())));
    let plots = plot_knobs(&options.out, &spec, &series)?;
    let shadows = shadow_knobs.into_iter().map(|(name, _, differing)| (name, differing)).collect();
    Ok(SimulateOutcome { steps: history.len() as u64, stopped, decisions: decisions_path, plots, shadows })
}

/// The policies a recorded run started with, its shadows and its policy swaps.
struct Recorded {
    policies: Vec<PolicySource>,
    shadows: Vec<PolicySource>,
    swaps: Vec<PolicySwap>,
}

/// The spec, the policies and the stream of a recorded run.
fn read_recorded(run_dir: &Path) -> Result<(SavedSpec, Recorded, Stream), EngineError> {
    let run_path = run_dir.join(RUN_FILE);
    let mut saved = SavedRun::read(run_dir)?;
    let spec = saved.spec.take().ok_or_else(|| {
        FileError::format(&run_path, "no recorded policy specification (the run predates `trainer simulate`)")
    })?;
    let number = |value: &serde_json::Value| float_from_json(value).unwrap_or(f64::NAN);
    let metrics_path = run_dir.join("metrics.jsonl");
    let readings = read_records::<serde_json::Value>(&metrics_path)?
        .into_iter()
        .map(|record| Reading {
            losses: spec.losses.iter().map(|name| number(&record["losses"][name])).collect(),
            total: number(&record["loss"]),
            grad_norm: number(&record["grad_norm"]),
            logit_scale: number(&record["logit_scale"]),
            images_per_second: number(&record["images_per_second"]),
            loss_gradients: record
                .get("loss_gradients")
                .map(|norms| spec.losses.iter().map(|name| number(&norms[name])).collect()),
        })
        .collect();
    let evaluations_path = run_dir.join("evaluations.jsonl");
    let evaluations =
        if evaluations_path.exists() { read_records::<serde_json::Value>(&evaluations_path)? } else { Vec::new() }
            .into_iter()
            .filter_map(|record| {
                let step = record["step"].as_u64()?;
                Some((step, spec.metrics.iter().map(|name| number(&record[name])).collect()))
            })
            .collect();
    let policies = Recorded {
        policies: saved.first_policies().to_vec(),
        shadows: saved.train.shadow_policies,
        swaps: saved.policy_swaps,
    };
    Ok((spec, policies, Stream::Recorded { readings, evaluations }))
}

fn synthetic_spec(curve: &SyntheticCurve) -> SavedSpec {
    SavedSpec {
        groups: curve
            .groups
            .iter()
            .map(|name| SavedGroup {
                name: name.clone(),
                base_lr: curve.lr,
                param_count: 0,
                frozen: false,
                tower: None,
                depth: None,
            })
            .collect(),
        losses: curve.losses.clone(),
        augmentation: KNOBS
            .iter()
            .map(|k| SavedKnob { name: k.name.to_string(), min: k.min, max: k.max, default: k.default })
            .collect(),
        metrics: vec!["val_loss".to_string()],
        total_steps: curve.steps,
        steps_per_epoch: curve.steps_per_epoch,
        seed: curve.seed,
    }
}

/// `lr.png`, `loss_weights.png` and `augmentation.png` of the knob values over the steps:
/// the run's (`shadow` `None`), then each shadow's, named `<knob> [shadow <name>]`.
fn plot_knobs(
    out: &Path,
    spec: &SavedSpec,
    histories: &[(Option<&str>, &[(u64, KnobState)])],
) -> Result<Vec<PathBuf>, EngineError> {
    let series = |names: &[&str], value: &dyn Fn(&KnobState, usize) -> f64| -> Vec<Series> {
        histories
            .iter()
            .flat_map(|(shadow, history)| {
                names.iter().enumerate().map(move |(i, name)| {
                    let label = match shadow {
                        Some(shadow) => format!("{name} [shadow {shadow}]"),
                        None => name.to_string(),
                    };
                    Series::new(label, history.iter().map(|(step, knobs)| (*step as f64, value(knobs, i))).collect())
                })
            })
            .collect()
    };
    let charts = [
        (
            "lr.png",
            "Learning rate per group",
            "learning rate",
            series(&spec.group_names(), &|k, i| k.effective_lrs()[i]),
        ),
        ("loss_weights.png", "Loss weights", "weight", series(&spec.loss_names(), &|k, i| k.loss_weights[i])),
        ("augmentation.png", "Augmentation knobs", "value", series(&spec.knob_names(), &|k, i| k.augmentation[i])),
    ];
    let mut written = Vec::new();
    for (file, title, y_label, series) in charts {
        let path = out.join(file);
        Chart::new(title, "step", y_label, series)
            .write_png(&path)
            .map_err(|err| EngineError::Config(err.to_string()))?;
        written.push(path);
    }
    Ok(written)
}
