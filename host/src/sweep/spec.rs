//! The sweep spec: a TOML file naming the base `trainer train` arguments, the search space
//! over flags and policy arguments, the objective, the budget and the search, checked here
//! entry by entry before anything runs and resolved into what the search driver reads.
//!
//! ```toml
//! [train]
//! args = ["--task", "detection", "--steps", "200", "--eval-every", "50"]
//! policies = ["cosine_warmup", "layerwise:vision=0.1"]
//!
//! [space]
//! "--lr" = { log-uniform = [1e-6, 5e-4] }
//! "--batch-size" = { choice = [4, 8, 16, 32] }
//! "cosine_warmup:warmup_steps" = { uniform = [0.0, 0.2], of-steps = true }
//!
//! [objective]
//! metric = "val_AP50"
//!
//! [budget]
//! trials = 20
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

use crate::policy::PolicySource;

/// A spec that cannot be run, named by its file and entry.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Flags the sweep sets itself for each trial, which neither `[train] args` nor `[space]`
/// may give.
const SWEEP_FLAGS: [&str; 7] =
    ["--run-dir", "--resume", "--overwrite", "--policy", "--dry-run", "--time-limit", "--swap-policies"];

/// Steps of a run whose `--steps` is not given: `trainer train`'s default.
const DEFAULT_STEPS: u64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    train: TrainSection,
    #[serde(default)]
    space: BTreeMap<String, DimensionEntry>,
    objective: ObjectiveSection,
    #[serde(default)]
    budget: BudgetSection,
    #[serde(default)]
    search: SearchSection,
    pbt: Option<PbtSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainSection {
    #[serde(default)]
    args: Vec<String>,
    policies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DimensionEntry {
    uniform: Option<[f64; 2]>,
    log_uniform: Option<[f64; 2]>,
    int: Option<[i64; 2]>,
    log_int: Option<[i64; 2]>,
    choice: Option<Vec<toml::Value>>,
    #[serde(default)]
    of_steps: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectiveSection {
    metric: String,
    direction: Option<Direction>,
    value: Option<ObjectiveValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Direction {
    Max,
    Min,
}

/// Which of a trial's evaluations is its objective value: by default the best for a search,
/// the last for a population (whose members' earlier evaluations may be their donors').
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveValue {
    /// The best of every evaluation of the run, the final one included.
    Best,
    /// The final evaluation's.
    Last,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BudgetSection {
    trials: Option<u32>,
    #[serde(default = "default_parallel")]
    parallel: u32,
    trial_time: Option<String>,
}

impl Default for BudgetSection {
    fn default() -> Self {
        BudgetSection { trials: None, parallel: default_parallel(), trial_time: None }
    }
}

/// Trials of an Optuna search whose `[budget] trials` is not given.
const DEFAULT_TRIALS: u32 = 20;

fn default_parallel() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SearchSection {
    #[serde(default)]
    scheduler: Scheduler,
    #[serde(default)]
    sampler: Sampler,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    pruner: Pruner,
    #[serde(default = "default_pruner_startup_trials")]
    pruner_startup_trials: u32,
    #[serde(default = "default_storage")]
    storage: String,
    #[serde(default = "default_study")]
    study: String,
}

impl Default for SearchSection {
    fn default() -> Self {
        SearchSection {
            scheduler: Scheduler::default(),
            sampler: Sampler::default(),
            seed: 0,
            pruner: Pruner::default(),
            pruner_startup_trials: default_pruner_startup_trials(),
            storage: default_storage(),
            study: default_study(),
        }
    }
}

fn default_pruner_startup_trials() -> u32 {
    5
}

fn default_storage() -> String {
    "journal".into()
}

fn default_study() -> String {
    "sweep".into()
}

/// How trials are run: each from the start with its own arguments (Optuna's search), or as
/// a population whose weak members continue from strong ones' checkpoints with perturbed
/// arguments (Ray Tune's population-based training).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scheduler {
    #[default]
    None,
    Pbt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PbtSection {
    #[serde(default = "default_population")]
    population: u32,
    interval: Option<u64>,
    #[serde(default = "default_quantile")]
    quantile: f64,
    #[serde(default = "default_quantile")]
    resample_probability: f64,
    address: Option<String>,
    #[serde(default = "default_cpus_per_member")]
    cpus_per_member: f64,
    #[serde(default)]
    gpus_per_member: f64,
}

fn default_population() -> u32 {
    4
}

/// Ray Tune's defaults for both: the bottom quarter exploits the top quarter, and a quarter
/// of the perturbations resample instead of scaling.
fn default_quantile() -> f64 {
    0.25
}

fn default_cpus_per_member() -> f64 {
    1.0
}

/// Population-based training, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pbt {
    pub population: u32,
    /// Steps between a member's reports, at each of which it may exploit another.
    pub interval: u64,
    pub quantile: f64,
    pub resample_probability: f64,
    /// A Ray cluster to run on; a local Ray instance when absent.
    pub address: Option<String>,
    pub cpus_per_member: f64,
    pub gpus_per_member: f64,
}

/// Optuna's samplers by name: TPE (the Bayesian search by default), random, a Gaussian
/// process, CMA-ES.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampler {
    #[default]
    Tpe,
    Random,
    Gp,
    Cmaes,
}

/// Optuna's pruners by name, stopping a trial whose evaluations fall behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pruner {
    #[default]
    None,
    Median,
    SuccessiveHalving,
    Hyperband,
}

/// Where the study lives: in the driver's memory (lost when it ends), in Optuna's journal
/// file, or in a database by URL (SQLite or any that SQLAlchemy reaches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Storage {
    Memory,
    Journal { path: PathBuf },
    Database { url: String },
}

/// One dimension of the search space, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    /// A flag (`--lr`) or a policy's argument (`cosine_warmup:warmup_steps`).
    pub name: String,
    #[serde(flatten)]
    pub range: Range,
    /// The value is a fraction of the run's steps, given to the trial as a whole number.
    pub of_steps: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Range {
    Float { low: f64, high: f64, log: bool },
    Int { low: i64, high: i64, log: bool },
    Choice { choices: Vec<serde_json::Value> },
}

/// A policy of the trials, by the name `[space]` keys use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialPolicy {
    pub name: String,
    /// What `--policy` is given: a built-in name or a component file.
    pub source: String,
    pub args: Vec<(String, String)>,
}

/// A checked spec, as the search driver reads it from `RUN/sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub spec_file: PathBuf,
    /// The folder the trials run in, so relative paths mean what they meant to the spec.
    pub cwd: PathBuf,
    pub run_dir: PathBuf,
    pub trainer: PathBuf,
    pub args: Vec<String>,
    /// The entries of `args` a trial continued with `--resume` is given again.
    #[serde(default)]
    pub resume_args: Vec<String>,
    pub policies: Vec<TrialPolicy>,
    pub space: Vec<Dimension>,
    pub steps: u64,
    pub metric: String,
    pub maximize: bool,
    pub value: ObjectiveValue,
    pub trials: u32,
    pub parallel: u32,
    pub trial_seconds: Option<u64>,
    pub sampler: Sampler,
    pub seed: u64,
    pub pruner: Pruner,
    pub pruner_startup_trials: u32,
    pub storage: Storage,
    pub study: String,
    /// Population-based training instead of Optuna's search.
    pub pbt: Option<Pbt>,
}

/// How `trainer train` reads the flags of a trial: whether `flag` is one of its flags, and
/// whether a whole argument list parses (the reason if not).
pub trait TrainFlags {
    fn has_flag(&self, flag: &str) -> bool;
    /// Whether `trainer train --resume` needs `flag` again (how the process trains, such as
    /// `--device` or `--nproc`, which run.json does not keep).
    fn given_again_on_resume(&self, flag: &str) -> bool;
    fn parse(&self, args: &[String]) -> Result<(), String>;
}

/// Reads and checks the spec at `path` for a sweep in `run_dir` run by `trainer`.
pub fn read_spec(
    path: &Path,
    run_dir: &Path,
    trainer: &Path,
    cwd: &Path,
    flags: &dyn TrainFlags,
) -> Result<Sweep, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.into(), source })?;
    let invalid = |message: String| SpecError::Invalid { path: path.into(), message };
    let file: SpecFile = toml::from_str(&text).map_err(|err| invalid(one_line(&err.to_string())))?;
    resolve(file, path, run_dir, trainer, cwd, flags).map_err(invalid)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn resolve(
    file: SpecFile,
    path: &Path,
    run_dir: &Path,
    trainer: &Path,
    cwd: &Path,
    flags: &dyn TrainFlags,
) -> Result<Sweep, String> {
    let SpecFile { train, space, objective, budget, search, pbt } = file;
    if let Some(owned) = train.args.iter().find(|arg| SWEEP_FLAGS.contains(&flag_name(arg))) {
        return Err(format!("[train] args: `{owned}` is set by the sweep for each trial"));
    }
    if train.policies.is_empty() {
        return Err("[train] policies: give at least one policy".into());
    }
    let mut policies = Vec::with_capacity(train.policies.len());
    for text in &train.policies {
        let source: PolicySource = text.parse().map_err(|err| format!("[train] policies: `{text}`: {err}"))?;
        let name = source.name();
        if policies.iter().any(|p: &TrialPolicy| p.name == name) {
            return Err(format!("[train] policies: `{name}` is given twice"));
        }
        policies.push(TrialPolicy { name, source: source.path.display().to_string(), args: source.args });
    }
    let mut probe = train.args.clone();
    for policy in &policies {
        probe.extend(["--policy".to_string(), policy.source.clone()]);
    }
    flags.parse(&probe).map_err(|err| format!("[train] args: {err}"))?;
    let steps = match flag_value(&train.args, "--steps") {
        Some(value) => value.parse().map_err(|_| format!("[train] args: --steps `{value}` is not a whole number"))?,
        None => DEFAULT_STEPS,
    };

    let mut dimensions = Vec::with_capacity(space.len());
    for (name, entry) in space {
        let dimension = resolve_dimension(&name, entry, &policies, flags)
            .map_err(|problem| format!("[space] \"{name}\": {problem}"))?;
        if dimension.of_steps && space_has_steps(&dimensions) {
            return Err(format!("[space] \"{name}\": of-steps with --steps searched too has no fixed length"));
        }
        if name == "--steps" && dimensions.iter().any(|d: &Dimension| d.of_steps) {
            return Err("[space] \"--steps\": searched while another value is a fraction of it".into());
        }
        if train.args.iter().any(|arg| flag_name(arg) == name) {
            return Err(format!("[space] \"{name}\": also given in [train] args; give it in one place"));
        }
        dimensions.push(dimension);
    }

    if objective.metric.trim().is_empty() {
        return Err("[objective] metric: name the evaluation metric to optimise".into());
    }
    // Without a direction, as --best-metric: losses are minimised, other metrics maximised.
    let maximize = match objective.direction {
        Some(direction) => direction == Direction::Max,
        None => !objective.metric.contains("loss"),
    };
    if budget.trials == Some(0) {
        return Err("[budget] trials: at least 1".into());
    }
    if budget.parallel == 0 {
        return Err("[budget] parallel: at least 1".into());
    }
    let trial_seconds = budget
        .trial_time
        .as_deref()
        .map(|text| crate::cli::parse_duration(text).map(|d: Duration| d.as_secs()))
        .transpose()
        .map_err(|err| format!("[budget] trial-time: {err}"))?;
    if search.pruner == Pruner::Hyperband && steps < 2 {
        return Err("[search] pruner hyperband: needs runs of at least 2 steps".into());
    }
    if search.study.trim().is_empty() {
        return Err("[search] study: give the study a name".into());
    }
    let storage = match search.storage.as_str() {
        "memory" => Storage::Memory,
        "journal" => Storage::Journal { path: run_dir.join("study.journal") },
        "sqlite" => Storage::Database { url: format!("sqlite:///{}", run_dir.join("study.db").display()) },
        other => match other.split_once(':') {
            Some(("journal", file)) => Storage::Journal { path: cwd.join(file) },
            Some((_, rest)) if rest.starts_with("//") => Storage::Database { url: other.to_string() },
            _ => {
                return Err(format!(
                    "[search] storage `{other}`: memory, journal, journal:FILE, sqlite, or a database URL \
                     (sqlite:///FILE, postgresql://...)"
                ));
            }
        },
    };
    let mut args = train.args;
    let pbt = match (search.scheduler, pbt) {
        (Scheduler::None, None) => None,
        (Scheduler::None, Some(_)) => {
            return Err("[pbt]: set `scheduler = \"pbt\"` in [search] to train a population".into());
        }
        (Scheduler::Pbt, section) => {
            let pbt = resolve_pbt(section.unwrap_or_default(), steps, &dimensions, &budget, &search)?;
            // Each member is compared with the others at every interval: the runs evaluate then.
            match flag_value(&args, "--eval-every") {
                Some(value) => {
                    let every: u64 = value.parse().unwrap_or(0);
                    if every == 0 || !pbt.interval.is_multiple_of(every) {
                        return Err(format!(
                            "[pbt] interval {}: the members must evaluate at each interval, and [train] args \
                             evaluate every {value} steps; give an interval that is a multiple of it",
                            pbt.interval
                        ));
                    }
                }
                None => args.extend(["--eval-every".to_string(), pbt.interval.to_string()]),
            }
            Some(pbt)
        }
    };
    let resume_args = execution_args(&args, flags);
    let trials = match &pbt {
        Some(pbt) => pbt.population,
        None => budget.trials.unwrap_or(DEFAULT_TRIALS),
    };
    Ok(Sweep {
        spec_file: path.to_path_buf(),
        cwd: cwd.to_path_buf(),
        run_dir: run_dir.to_path_buf(),
        trainer: trainer.to_path_buf(),
        args,
        resume_args,
        policies,
        space: dimensions,
        steps,
        metric: objective.metric,
        maximize,
        value: objective.value.unwrap_or(if pbt.is_some() { ObjectiveValue::Last } else { ObjectiveValue::Best }),
        trials,
        parallel: budget.parallel,
        trial_seconds,
        sampler: search.sampler,
        seed: search.seed,
        pruner: search.pruner,
        pruner_startup_trials: search.pruner_startup_trials,
        storage,
        study: search.study,
        pbt,
    })
}

impl Default for PbtSection {
    fn default() -> Self {
        PbtSection {
            population: default_population(),
            interval: None,
            quantile: default_quantile(),
            resample_probability: default_quantile(),
            address: None,
            cpus_per_member: default_cpus_per_member(),
            gpus_per_member: 0.0,
        }
    }
}

/// Checks the `[pbt]` section and what population-based training cannot take: flags in the
/// space (a member continues with new arguments on `--resume`, where the flags are those it
/// started with), Optuna's sampler, pruner and storage, and a trial budget or time.
fn resolve_pbt(
    section: PbtSection,
    steps: u64,
    dimensions: &[Dimension],
    budget: &BudgetSection,
    search: &SearchSection,
) -> Result<Pbt, String> {
    if let Some(flag) = dimensions.iter().find(|d| d.name.starts_with("--")) {
        return Err(format!(
            "[space] \"{}\": population-based training changes arguments mid-run, which only policies' arguments \
             can; search the rate through a policy (`constant:lr`, `layerwise:vision`)",
            flag.name
        ));
    }
    if dimensions.is_empty() {
        return Err("[space]: population-based training needs at least one policy argument to perturb".into());
    }
    if budget.trials.is_some() {
        return Err("[budget] trials: population-based training trains [pbt] population members".into());
    }
    if budget.trial_time.is_some() {
        return Err("[budget] trial-time: not for population-based training".into());
    }
    if search.sampler != Sampler::Tpe || search.pruner != Pruner::None {
        return Err("[search] sampler, pruner: Optuna's, not for population-based training".into());
    }
    if search.storage != default_storage() || search.study != default_study() {
        return Err("[search] storage, study: population-based training keeps its state in RUN/ray".into());
    }
    let PbtSection { population, interval, quantile, resample_probability, address, cpus_per_member, gpus_per_member } =
        section;
    if population < 2 {
        return Err(format!("[pbt] population {population}: at least 2 members"));
    }
    let Some(interval) = interval else {
        return Err("[pbt] interval: give the steps between the members' comparisons".into());
    };
    if interval == 0 || interval >= steps {
        return Err(format!("[pbt] interval {interval}: between 1 and the run's {steps} steps, exclusive"));
    }
    if !(quantile > 0.0 && quantile <= 0.5) {
        return Err(format!("[pbt] quantile {quantile}: the fraction that exploits (and is exploited), in (0, 0.5]"));
    }
    if !(0.0..=1.0).contains(&resample_probability) {
        return Err(format!("[pbt] resample-probability {resample_probability}: between 0 and 1"));
    }
    if !(cpus_per_member >= 0.0 && gpus_per_member >= 0.0) {
        return Err("[pbt] cpus-per-member, gpus-per-member: at least 0".into());
    }
    Ok(Pbt { population, interval, quantile, resample_probability, address, cpus_per_member, gpus_per_member })
}

/// The flags of `args`, with their values, that a resumed run is given again.
fn execution_args(args: &[String], flags: &dyn TrainFlags) -> Vec<String> {
    let mut kept = Vec::new();
    let mut keeping = false;
    for arg in args {
        if arg.starts_with("--") {
            keeping = flags.given_again_on_resume(flag_name(arg));
        }
        if keeping {
            kept.push(arg.clone());
        }
    }
    kept
}

fn space_has_steps(dimensions: &[Dimension]) -> bool {
    dimensions.iter().any(|d| d.name == "--steps")
}

/// The value `args` give `flag` (`--flag value` or `--flag=value`), if they give it.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|arg| flag_name(arg) == flag)?;
    Some(match args[at].split_once('=') {
        Some((_, value)) => value,
        None => args.get(at + 1).map(String::as_str).unwrap_or_default(),
    })
}

/// `--flag` of `--flag` or `--flag=value`; anything else as it is.
fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(flag, _)| flag)
}

fn resolve_dimension(
    name: &str,
    entry: DimensionEntry,
    policies: &[TrialPolicy],
    flags: &dyn TrainFlags,
) -> Result<Dimension, String> {
    if name.starts_with("--") {
        if SWEEP_FLAGS.contains(&name) {
            return Err("set by the sweep for each trial".into());
        }
        if !flags.has_flag(name) {
            return Err("not a flag of `trainer train`".into());
        }
    } else {
        let Some((policy, argument)) = name.split_once(':') else {
            return Err("a flag (`--lr`) or a policy's argument (`cosine_warmup:warmup_steps`)".into());
        };
        if argument.is_empty() {
            return Err(format!("name the argument of `{policy}`"));
        }
        if !policies.iter().any(|p| p.name == policy) {
            let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
            return Err(format!("`{policy}` is not among [train] policies ({})", names.join(", ")));
        }
    }
    let DimensionEntry { uniform, log_uniform, int, log_int, choice, of_steps } = entry;
    let given = [uniform.is_some(), log_uniform.is_some(), int.is_some(), log_int.is_some(), choice.is_some()];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err("give exactly one of uniform, log-uniform, int, log-int, choice".into());
    }
    let range = if let Some([low, high]) = uniform.or(log_uniform) {
        let log = log_uniform.is_some();
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(format!("[{low}, {high}] is empty: the low end must be below the high end"));
        }
        if log && low <= 0.0 {
            return Err(format!("log-uniform from {low}: both ends must be above 0"));
        }
        if of_steps && !(0.0..=1.0).contains(&low) | !(0.0..=1.0).contains(&high) {
            return Err(format!("of-steps [{low}, {high}]: fractions of the steps, between 0 and 1"));
        }
        Range::Float { low, high, log }
    } else if let Some([low, high]) = int.or(log_int) {
        let log = log_int.is_some();
        if low >= high {
            return Err(format!("[{low}, {high}] is empty: the low end must be below the high end"));
        }
        if log && low < 1 {
            return Err(format!("log-int from {low}: both ends must be at least 1"));
        }
        Range::Int { low, high, log }
    } else {
        let choices = choice.unwrap_or_default();
        if choices.is_empty() {
            return Err("choice of nothing: give at least one value".into());
        }
        let choices = choices
            .into_iter()
            .map(|value| match value {
                toml::Value::String(text) => Ok(serde_json::Value::String(text)),
                toml::Value::Integer(n) => Ok(n.into()),
                toml::Value::Float(x) if x.is_finite() => Ok(x.into()),
                toml::Value::Boolean(b) => Ok(b.into()),
                other => Err(format!("choice {other}: numbers, strings or booleans")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Range::Choice { choices }
    };
    if of_steps && !matches!(range, Range::Float { .. }) {
        return Err("of-steps: only for uniform or log-uniform fractions".into());
    }
    Ok(Dimension { name: name.to_string(), range, of_steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `trainer train` as far as these tests need: a few flags, any argument list parses.
    struct Flags;

    impl TrainFlags for Flags {
        fn has_flag(&self, flag: &str) -> bool {
            ["--lr", "--steps", "--batch-size", "--weight-decay"].contains(&flag)
        }
        fn given_again_on_resume(&self, flag: &str) -> bool {
            ["--device", "--grad-checkpointing", "--nproc"].contains(&flag)
        }
        fn parse(&self, _: &[String]) -> Result<(), String> {
            Ok(())
        }
    }

    fn resolved(text: &str) -> Result<Sweep, String> {
        let file: SpecFile = toml::from_str(text).map_err(|err| err.to_string())?;
        let dir = Path::new("/runs/s");
        resolve(file, Path::new("s.toml"), dir, Path::new("/bin/trainer"), Path::new("/work"), &Flags)
    }

    const BASE: &str = "[train]\nargs = [\"--steps\", \"200\"]\npolicies = [\"cosine_warmup:min_lr=0\"]\n";

    #[test]
    fn a_spec_resolves_ranges_steps_direction_and_storage() {
        let sweep = resolved(&format!(
            "{BASE}[space]\n\"--lr\" = {{ log-uniform = [1e-6, 5e-4] }}\n\"--batch-size\" = {{ choice = [4, 8] }}\n\
             \"cosine_warmup:warmup_steps\" = {{ uniform = [0.0, 0.2], of-steps = true }}\n\
             [objective]\nmetric = \"val_loss\"\n[search]\nstorage = \"sqlite\"\n"
        ))
        .unwrap();
        assert_eq!(sweep.steps, 200);
        assert!(!sweep.maximize, "a loss is minimised");
        assert_eq!(sweep.policies[0].args, [("min_lr".to_string(), "0".to_string())]);
        let names: Vec<&str> = sweep.space.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["--batch-size", "--lr", "cosine_warmup:warmup_steps"]);
        assert_eq!(sweep.space[1].range, Range::Float { low: 1e-6, high: 5e-4, log: true });
        assert!(sweep.space[2].of_steps);
        assert_eq!(sweep.storage, Storage::Database { url: "sqlite:////runs/s/study.db".into() });
        assert_eq!((sweep.trials, sweep.parallel, sweep.sampler, sweep.pruner), (20, 1, Sampler::Tpe, Pruner::None));
    }

    #[test]
    fn a_resumed_trial_is_given_the_execution_flags_again() {
        let base = BASE.replace(
            "\"200\"]",
            "\"200\", \"--device\", \"cpu\", \"--grad-checkpointing\", \"--batch-size\", \"8\", \"--nproc=2\"]",
        );
        let sweep = resolved(&format!("{base}[objective]\nmetric = \"val_AP50\"\n")).unwrap();
        assert_eq!(sweep.resume_args, ["--device", "cpu", "--grad-checkpointing", "--nproc=2"]);
    }

    #[test]
    fn entries_that_cannot_run_are_named() {
        let objective = "[objective]\nmetric = \"val_AP50\"\n";
        let cases = [
            ("\"--steps\" = { int = [10, 20] }", "[space] \"--steps\": also given in [train] args"),
            ("\"--run-dir\" = { choice = [\"a\"] }", "[space] \"--run-dir\": set by the sweep"),
            ("\"--lr\" = { log-uniform = [0.0, 1e-3] }", "both ends must be above 0"),
            ("\"--lr\" = { uniform = [0.1, 0.2], int = [1, 2] }", "exactly one of"),
            ("\"--lr\" = { choice = [] }", "choice of nothing"),
            ("\"--lr\" = { int = [1, 9], of-steps = true }", "of-steps: only for"),
            ("\"--lr\" = { uniform = [0.5, 2.0], of-steps = true }", "between 0 and 1"),
            ("\"lr\" = { uniform = [0.1, 0.2] }", "a flag (`--lr`) or a policy's argument"),
        ];
        for (entry, expected) in cases {
            let err = resolved(&format!("{BASE}[space]\n{entry}\n{objective}")).unwrap_err();
            assert!(err.contains(expected), "{entry}: {err}");
        }
        let err = resolved(&format!("[train]\nargs = [\"--run-dir\", \"x\"]\npolicies = [\"a\"]\n{objective}"));
        assert!(err.unwrap_err().contains("[train] args: `--run-dir` is set by the sweep"));
        let err = resolved(&format!("{BASE}{objective}[search]\nstorage = \"redis\"\n")).unwrap_err();
        assert!(err.contains("[search] storage `redis`"), "{err}");
    }

    const PBT_SPACE: &str = "[space]\n\"cosine_warmup:min_lr\" = { log-uniform = [1e-6, 1e-4] }\n\
                             [objective]\nmetric = \"val_AP50\"\n[search]\nscheduler = \"pbt\"\n";

    #[test]
    fn a_population_spec_resolves_with_an_evaluation_at_each_interval() {
        let sweep = resolved(&format!("{BASE}{PBT_SPACE}[pbt]\ninterval = 50\n")).unwrap();
        let pbt = sweep.pbt.as_ref().expect("population-based");
        assert_eq!((pbt.population, pbt.interval, pbt.quantile, sweep.trials), (4, 50, 0.25, 4));
        assert_eq!(sweep.value, ObjectiveValue::Last, "a member is judged by where it ended");
        assert_eq!(sweep.args, ["--steps", "200", "--eval-every", "50"]);
        let given = BASE.replace("\"200\"]", "\"200\", \"--eval-every\", \"25\"]");
        assert!(resolved(&format!("{given}{PBT_SPACE}[pbt]\ninterval = 50\n")).is_ok());
    }

    #[test]
    fn the_example_population_spec_resolves() {
        let file: SpecFile = toml::from_str(include_str!("../../../examples/sweeps/pbt.toml")).unwrap();
        let dir = Path::new("/runs/pbt");
        let sweep = resolve(file, Path::new("pbt.toml"), dir, Path::new("/bin/trainer"), Path::new("/work"), &Flags);
        let pbt = sweep.unwrap().pbt.expect("population-based");
        assert_eq!((pbt.population, pbt.interval), (8, 250));
    }

    #[test]
    fn what_a_population_cannot_take_is_named() {
        let cases = [
            (format!("{BASE}{PBT_SPACE}"), "[pbt] interval: give"),
            (format!("{BASE}{PBT_SPACE}[pbt]\ninterval = 200\n"), "[pbt] interval 200"),
            (format!("{BASE}{PBT_SPACE}[pbt]\ninterval = 50\npopulation = 1\n"), "at least 2 members"),
            (format!("{BASE}{PBT_SPACE}[pbt]\ninterval = 50\nquantile = 0.7\n"), "[pbt] quantile"),
            (format!("{BASE}{PBT_SPACE}[pbt]\ninterval = 50\n[budget]\ntrials = 8\n"), "[budget] trials"),
            (
                format!("{BASE}{}[pbt]\ninterval = 50\n", PBT_SPACE.replace("cosine_warmup:min_lr", "--lr")),
                "only policies' arguments",
            ),
            (
                format!(
                    "{}{PBT_SPACE}[pbt]\ninterval = 50\n",
                    BASE.replace("\"200\"]", "\"200\", \"--eval-every=30\"]")
                ),
                "multiple of it",
            ),
            (
                format!(
                    "{BASE}{}[pbt]\ninterval = 50\n",
                    PBT_SPACE.replace("scheduler = \"pbt\"", "sampler = \"tpe\"")
                ),
                "set `scheduler = \"pbt\"`",
            ),
        ];
        for (text, expected) in cases {
            let err = resolved(&text).unwrap_err();
            assert!(err.contains(expected), "{text}\n{err}");
        }
    }
}
