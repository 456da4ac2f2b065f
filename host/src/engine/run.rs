//! A training run of CLIP on Fashion-MNIST captions, steered by one policy.

use crate::data::fashion_mnist::{self, CLASS_NAMES, Split};
use crate::data::prompts::{CaptionTable, END_ID, PAD_ID, START_ID, TEMPLATES};
use crate::data::sampler::{EpochSampler, keyed};
use crate::data::{DataError, grey_to_pixel_values};
use crate::engine::optimizer::{AdamW, AdamWConfig, OptimizedParam};
use crate::eval::{ZeroShotAccuracy, zero_shot_accuracy};
use crate::models::clip::{Clip, ClipConfig, PARAMETER_GROUPS, parameter_group};
use crate::policy::{Decision, Observation, ParamGroup, PolicyError, PolicyInstance, PolicyRuntime, PolicySource, RunSpec, validate_decision};
use crate::report::{JsonLines, Progress};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

/// Everything a run is configured with.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    #[serde(serialize_with = "serialize_policy")]
    pub policy: PolicySource,
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
    /// Base learning rate of every group; the policy scales or replaces it.
    pub lr: f64,
    pub weight_decay: f64,
    #[serde(serialize_with = "serialize_device")]
    pub device: Device,
    pub run_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Replace an earlier run in `run_dir` instead of refusing to start.
    pub overwrite: bool,
}

fn serialize_policy<S: serde::Serializer>(policy: &PolicySource, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Named<'a> {
        path: &'a Path,
        args: BTreeMap<&'a str, &'a str>,
    }
    let args = policy.args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Named { path: &policy.path, args }.serialize(s)
}

fn serialize_device<S: serde::Serializer>(device: &Device, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    })
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps: u64,
    pub final_loss: f64,
    pub zero_shot: ZeroShotAccuracy,
    pub train_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io { path: path.to_path_buf(), source }
}

/// The name of the only loss term of contrastive training.
const CONTRASTIVE_LOSS: &str = "contrastive";
/// Key that separates the caption-template draw from other per-sample randomness.
const CAPTION_DRAW: u64 = 0xC4_7104;
const EVAL_BATCH_SIZE: usize = 1000;

#[derive(Serialize)]
struct MetricsRecord<'a> {
    step: u64,
    epoch: u64,
    loss: f64,
    lr: BTreeMap<&'a str, f64>,
    grad_norm: f64,
    logit_scale: f64,
    images_per_second: f64,
}

#[derive(Serialize)]
struct DecisionRecord<'a> {
    step: u64,
    policy: &'a str,
    lrs: BTreeMap<&'a str, Option<f64>>,
}

/// What the previous step measured, as the policy sees it.
#[derive(Default)]
struct LastStep {
    loss: Option<f64>,
    grad_norm: Option<f64>,
    images_per_second: Option<f64>,
    logit_scale: Option<f64>,
}

pub fn train(config: &TrainConfig) -> Result<TrainOutcome, EngineError> {
    validate_config(config)?;
    // The policy is loaded before anything slow, so that a bad policy fails at once.
    let runtime = PolicyRuntime::new();
    let mut policy = runtime.load(&config.policy)?;

    let train_data = fashion_mnist::load(&config.data_dir, Split::Train)?;
    let test_data = fashion_mnist::load(&config.data_dir, Split::Test)?;
    if config.batch_size > train_data.len() {
        return Err(EngineError::Config(format!(
            "--batch-size {} is larger than the training set ({} images)",
            config.batch_size,
            train_data.len()
        )));
    }
    prepare_run_dir(&config.run_dir, config.overwrite)?;

    let captions = CaptionTable::new(&CLASS_NAMES);
    let model_config =
        ClipConfig::tiny(captions.tokenizer.vocab_size(), captions.tokenizer.context_length(), START_ID, END_ID, PAD_ID);
    let image_size = model_config.vision_config.image_size;
    tch::manual_seed(config.seed as i64);
    let var_store = nn::VarStore::new(config.device);
    let mut model = Clip::new(&var_store.root(), &model_config);

    let mut variables: Vec<(String, Tensor)> = var_store.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut param_counts = [0u64; PARAMETER_GROUPS.len()];
    let params = variables
        .into_iter()
        .map(|(name, tensor)| {
            let group = parameter_group(&name);
            param_counts[group] += tensor.numel() as u64;
            let decay = tensor.dim() >= 2 && name != "logit_scale";
            OptimizedParam { tensor, group, decay }
        })
        .collect();
    let mut optimizer = AdamW::new(params, AdamWConfig { weight_decay: config.weight_decay, ..Default::default() });

    let mut sampler = EpochSampler::new(config.seed, train_data.len(), config.batch_size);
    let spec = RunSpec {
        groups: PARAMETER_GROUPS
            .iter()
            .zip(param_counts)
            .map(|(name, count)| ParamGroup { name: name.to_string(), base_lr: config.lr, param_count: count, frozen: false })
            .collect(),
        losses: vec![CONTRASTIVE_LOSS.to_string()],
        total_steps: config.steps,
        steps_per_epoch: sampler.steps_per_epoch(),
        seed: config.seed,
        args: config.policy.args.clone(),
    };
    let progress = Progress::new(config.steps);
    policy.init(&spec)?;
    forward_policy_log(&mut policy, &progress, None);

    write_json(&config.run_dir.join("run.json"), &serde_json::json!({ "train": config, "model": model_config }))?;
    let metrics_path = config.run_dir.join("metrics.jsonl");
    let mut metrics = JsonLines::create(&metrics_path).map_err(io_error(&metrics_path))?;
    let decisions_path = config.run_dir.join("decisions.jsonl");
    let mut decisions = JsonLines::create(&decisions_path).map_err(io_error(&decisions_path))?;

    let device = config.device;
    let train_images = train_data.images.to_device(device);
    let train_labels = train_data.labels.to_device(device);
    let caption_ids = captions.ids.to_device(device);
    let mut lrs = vec![config.lr; PARAMETER_GROUPS.len()];
    let mut last = LastStep::default();
    let started = Instant::now();
    for step in 0..config.steps {
        let step_started = Instant::now();
        let epoch = sampler.epoch_of(step);
        let observation = Observation {
            step,
            epoch,
            losses: last.loss.into_iter().collect(),
            total_loss: last.loss,
            grad_norm: last.grad_norm,
            lrs: lrs.clone(),
            images_per_second: last.images_per_second,
            logit_scale: last.logit_scale,
        };
        let decision = policy.decide(&observation)?;
        forward_policy_log(&mut policy, &progress, Some(step));
        validate_decision(policy.name(), step, &spec, &decision)?;
        decisions
            .write(&DecisionRecord { step, policy: policy.name(), lrs: by_group(&decision_lrs(&decision)) })
            .map_err(io_error(&decisions_path))?;
        for (lr, decided) in lrs.iter_mut().zip(&decision.lrs) {
            if let Some(decided) = decided {
                *lr = *decided;
            }
        }

        let indices = sampler.batch(step);
        let template_draws: Vec<i64> = indices
            .iter()
            .map(|&index| (keyed(config.seed, &[CAPTION_DRAW, epoch, index as u64]) % TEMPLATES.len() as u64) as i64)
            .collect();
        let indices = Tensor::from_slice(indices).to_device(device);
        let templates = Tensor::from_slice(&template_draws).to_device(device);
        let pixel_values = grey_to_pixel_values(&train_images.index_select(0, &indices), image_size, device);
        let input_ids = caption_ids.index(&[Some(train_labels.index_select(0, &indices)), Some(templates)]);

        let loss = model.contrastive_loss(&pixel_values, &input_ids);
        optimizer.zero_grad();
        loss.backward();
        let grad_norm = optimizer.grad_norm();
        optimizer.step(&lrs);
        model.clamp_logit_scale();

        // The one read-back per step: the policy needs these numbers.
        let readings = Tensor::stack(&[loss.detach().to_kind(Kind::Double), grad_norm.to_kind(Kind::Double), tch::no_grad(|| model.logit_scale().to_kind(Kind::Double))], 0);
        let readings = Vec::<f64>::try_from(&readings)?;
        let images_per_second = config.batch_size as f64 / step_started.elapsed().as_secs_f64();
        last = LastStep {
            loss: Some(readings[0]),
            grad_norm: Some(readings[1]),
            logit_scale: Some(readings[2]),
            images_per_second: Some(images_per_second),
        };
        metrics
            .write(&MetricsRecord {
                step,
                epoch,
                loss: readings[0],
                lr: by_group(&lrs),
                grad_norm: readings[1],
                logit_scale: readings[2],
                images_per_second,
            })
            .map_err(io_error(&metrics_path))?;
        progress.update(step + 1, readings[0], lrs[0], images_per_second);
    }
    progress.finish();
    let train_seconds = started.elapsed().as_secs_f64();

    save_final(&config.run_dir, &var_store, &model_config)?;
    let zero_shot = zero_shot_accuracy(&model, &test_data, &captions, image_size, EVAL_BATCH_SIZE, device);
    write_json(
        &config.run_dir.join("eval.json"),
        &serde_json::json!({
            "step": config.steps,
            "zero_shot_top1": zero_shot.top1,
            "zero_shot_top5": zero_shot.top5,
            "test_images": zero_shot.images,
        }),
    )?;
    Ok(TrainOutcome { steps: config.steps, final_loss: last.loss.unwrap_or(f64::NAN), zero_shot, train_seconds })
}

fn validate_config(config: &TrainConfig) -> Result<(), EngineError> {
    if !(config.lr.is_finite() && config.lr >= 0.0) {
        return Err(EngineError::Config(format!("--lr {}: must be a finite number >= 0", config.lr)));
    }
    if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
        return Err(EngineError::Config(format!("--weight-decay {}: must be a finite number >= 0", config.weight_decay)));
    }
    if let Device::Cuda(index) = config.device {
        let available = tch::Cuda::device_count();
        if index as i64 >= available {
            return Err(EngineError::Config(format!(
                "--device cuda:{index}: libtorch sees {available} CUDA device(s)"
            )));
        }
    }
    Ok(())
}

/// Refuses to write over an earlier run unless asked to, so no run is lost by accident.
fn prepare_run_dir(run_dir: &Path, overwrite: bool) -> Result<(), EngineError> {
    let holds_run = run_dir.join("metrics.jsonl").exists() || run_dir.join("run.json").exists();
    if holds_run && !overwrite {
        return Err(EngineError::Config(format!(
            "--run-dir {}: already holds a run; choose another directory or pass --overwrite",
            run_dir.display()
        )));
    }
    if holds_run {
        for name in ["run.json", "metrics.jsonl", "decisions.jsonl", "eval.json"] {
            let path = run_dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
    }
    std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))
}

fn decision_lrs(decision: &Decision) -> Vec<Option<f64>> {
    if decision.lrs.is_empty() { vec![None; PARAMETER_GROUPS.len()] } else { decision.lrs.clone() }
}

fn by_group<T: Copy>(values: &[T]) -> BTreeMap<&'static str, T> {
    PARAMETER_GROUPS.iter().copied().zip(values.iter().copied()).collect()
}

fn forward_policy_log(policy: &mut PolicyInstance, progress: &Progress, step: Option<u64>) {
    for line in policy.take_log() {
        let at = step.map(|s| format!(" step {s}")).unwrap_or_default();
        progress.println(format!("[policy {}{at}] {:?}: {}", policy.name(), line.level, line.message));
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(value).expect("run records serialize");
    std::fs::write(path, text + "\n").map_err(io_error(path))
}

/// Writes `final/` (weights and `config.json`, the Hugging Face layout) through a temporary
/// folder and a rename, so an interrupted save never leaves half a checkpoint.
fn save_final(run_dir: &Path, var_store: &nn::VarStore, model_config: &ClipConfig) -> Result<(), EngineError> {
    let staging = run_dir.join("final.tmp");
    let target = run_dir.join("final");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    var_store.save(staging.join("model.safetensors"))?;
    write_json(&staging.join("config.json"), model_config)?;
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io_error(&target))?;
    }
    std::fs::rename(&staging, &target).map_err(io_error(&target))
}
