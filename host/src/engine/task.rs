//! What a run trains: a model, its data, its loss terms and its evaluation, behind the one
//! interface the training loop drives. The loop owns everything else (policies, knobs,
//! optimizer, checkpoints, reports), so a new kind of training is one implementation of
//! [`Task`], and every policy works with it unchanged.

use super::error::EngineError;
use super::loss_gradients::LossGradientMeter;
use crate::data::augment::{KNOBS, KnobSpec};
use crate::models::groups::Group;
use crate::report::{PrCounts, float_to_json};
use std::path::Path;
use tch::{Tensor, nn};

/// Results of an evaluation, named.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scores {
    pub names: Vec<&'static str>,
    pub values: Vec<f64>,
    /// Images evaluated on.
    pub images: usize,
    /// Which images: `test` or `held-out`.
    pub split: &'static str,
    /// Tables a person reads beside the numbers (a tagger's per-tag figures), written to
    /// `eval.json` by name; not shown to policies.
    pub tables: serde_json::Map<String, serde_json::Value>,
    /// Images and curves a person looks at, written to TensorBoard (images also to `plots/`).
    #[serde(skip)]
    pub visuals: Vec<Visual>,
}

/// What an evaluation shows beside its numbers.
#[derive(Debug, Clone)]
pub enum Visual {
    /// A PNG, also written to `plots/{tag}.png` (`/` in the tag becoming `_`).
    Image { tag: String, png: Vec<u8>, width: u32, height: u32 },
    /// A precision-recall curve, for TensorBoard's PR-curve plugin.
    PrCurve { tag: String, counts: PrCounts },
}

impl Scores {
    pub fn new(names: Vec<&'static str>, values: Vec<f64>, images: usize, split: &'static str) -> Self {
        Scores { names, values, images, split, tables: serde_json::Map::new(), visuals: Vec::new() }
    }

    /// The numbers by name, the images and split they were measured on, and the tables: what
    /// `eval.json` records of an evaluation.
    pub fn record(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut record = self.to_json();
        record.insert("images".into(), self.images.into());
        record.insert("split".into(), self.split.into());
        record.extend(self.tables.clone());
        record
    }

    /// `{name: value, ...}` in the order of the names, as `eval.json`, `evaluations.jsonl`
    /// and `trainer eval` write them (non-finite values as strings).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.names.iter().zip(&self.values).map(|(name, value)| (name.to_string(), float_to_json(*value))).collect()
    }
}

/// The knob values one step trains with.
#[derive(Clone, Copy)]
pub struct StepKnobs<'a> {
    /// Aligned with [`Task::augmentation_knobs`].
    pub augmentation: &'a [f64],
    /// Aligned with [`Task::loss_names`].
    pub loss_weights: &'a [f64],
    /// How the loss terms reach the gradients; `None` when no parameter is trainable, and
    /// no gradient is computed.
    pub backward: Option<Backward<'a>>,
    /// The run's length, bounding how far ahead data is prepared.
    pub total_steps: u64,
    pub seed: u64,
}

/// How a step's loss terms reach the parameters' gradients: their weighted sum
/// back-propagated at once, or, when a policy asked for the per-loss gradients, each
/// weighted term alone through the meter (the gradient is the same sum).
#[derive(Clone, Copy)]
pub struct Backward<'a> {
    /// Aligned with the terms.
    pub weights: &'a [f64],
    pub meter: Option<&'a LossGradientMeter>,
}

impl Backward<'_> {
    /// Back-propagates the weighted sum of `terms` into the parameters' gradients.
    pub fn run(&self, terms: &[Tensor]) -> Result<(), EngineError> {
        if let Some(meter) = self.meter {
            return meter.backward(terms, self.weights);
        }
        let weighted = terms.iter().zip(self.weights).map(|(term, &weight)| term * weight);
        Ok(weighted.reduce(|sum, term| sum + term).expect("a step has at least one loss term").f_backward()?)
    }
}

/// What one step measured.
#[derive(Debug)]
pub struct StepLosses {
    /// Each loss term's raw (unweighted) value as a 0-d tensor on the training device,
    /// detached, aligned with [`Task::loss_names`]; read back once, with the others.
    pub raw: Vec<Tensor>,
    /// Images the step trained on.
    pub images: usize,
    /// Samples `--skip-bad-samples` left out of the batch, one line each.
    pub skipped: Vec<String>,
}

pub trait Task {
    /// Parameter groups, each with its own learning rate, in the order policies see them.
    fn groups(&self) -> &[Group];
    /// Loss terms, in the order policies see them.
    fn loss_names(&self) -> &[&'static str];
    /// Evaluation metrics, in the order policies see them.
    fn metric_names(&self) -> &[&'static str];
    /// The augmentation knobs its `step` reads, in the order policies see them.
    fn augmentation_knobs(&self) -> &'static [KnobSpec] {
        &KNOBS
    }
    fn var_store(&self) -> &nn::VarStore;
    /// The group of a variable; `None` for variables that are never trained (a frozen
    /// teacher, fixed queries).
    fn parameter_group(&self, name: &str) -> Option<usize>;
    fn steps_per_epoch(&self) -> u64;
    /// Samples it trains on (after any `--skip-bad-samples` left out): part of the data's
    /// fingerprint, which counts images rather than hashing them.
    fn train_samples(&self) -> usize;
    fn epoch_of(&self, step: u64) -> u64;
    /// Lines for the start-up report (which tokenizer, which teacher).
    fn describe(&self) -> Vec<String>;
    /// Samples `--skip-bad-samples` left out before training started, one line each.
    fn skipped_at_start(&self) -> &[String];
    /// The batch of `step` forward, and, when `knobs.backward`, the gradient of the
    /// weighted sum of the losses accumulated into the parameters.
    fn step(&mut self, step: u64, knobs: StepKnobs) -> Result<StepLosses, EngineError>;
    /// exp(logit scale) of the contrastive part, as a 0-d tensor, for the policies.
    fn logit_scale(&self) -> Tensor;
    /// Called after each optimizer update (e.g. to clamp the logit scale).
    fn after_update(&mut self);
    /// Mid-run evaluation on held-out data, values aligned with [`Task::metric_names`].
    fn evaluate(&mut self) -> Result<Scores, EngineError>;
    /// The end-of-run evaluation written to `eval.json`.
    fn final_evaluation(&mut self) -> Result<Scores, EngineError>;
    /// Writes the model (`config.json`, `model.safetensors`) into `dir`.
    fn save(&self, dir: &Path) -> Result<(), EngineError>;
    /// The model's configuration, recorded in `run.json`.
    fn model_config(&self) -> serde_json::Value;
}
