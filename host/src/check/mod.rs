//! `trainer check-policy`: the conformance check a policy author runs before a long run.
//! Property-based: proptest generates observation streams (smooth curves, plateaus, spikes,
//! NaN and infinite losses, evaluations at random steps, long runs) and checks, for each,
//! that the policy never traps within its limits, that every decision is valid, that the
//! same stream gives the same decisions, and that `save-state` / `load-state` in the middle
//! of a stream changes nothing afterwards. A failure is shrunk to a minimal stream.

mod stream;

use crate::models::groups::{GroupBy, GroupLayout};
use crate::policy::{
    AugmentationKnob, Decision, Depth, Knobs, ParamGroup, PolicyError, PolicyInstance, PolicyRuntime, PolicySource,
    PreparedPolicy, RunSpec, SandboxLimits, validate_decision,
};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
pub use stream::StreamSpec;

/// How hard to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Streams to try.
    pub cases: u32,
    /// The run length the policy is told, and the longest stream.
    pub total_steps: u64,
    pub limits: SandboxLimits,
    pub seed: u64,
    /// Where compiled components are cached (`None`: compile every time).
    pub component_cache: Option<std::path::PathBuf>,
    /// The groups of the run spec: CLIP's parts, or its layers.
    pub group_by: GroupBy,
}

/// A passed check: what was tried and the most fuel one call used.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub policy: String,
    pub cases: u32,
    pub max_fuel: u64,
}

/// A failed check: the property, the minimal stream, and what happened on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy `{policy}` fails `{property}`: {detail}\nminimal failing stream: {stream}")]
pub struct CheckFailure {
    pub policy: String,
    pub property: &'static str,
    pub detail: String,
    pub stream: String,
}

/// The run spec policies are checked against: every kind of name a real run has, with CLIP's
/// groups (by part, or by layer of two-block towers).
pub fn check_spec(total_steps: u64, args: Vec<(String, String)>, group_by: GroupBy) -> RunSpec {
    let layout = GroupLayout::new(group_by, &[("vision", 2), ("text", 2)], &crate::models::clip::HEADS);
    let groups = layout
        .groups()
        .iter()
        .map(|group| ParamGroup {
            name: group.name.clone(),
            // The pretrained towers slower than the parts outside them, as in fine-tuning.
            base_lr: if matches!(group.tower.as_str(), "vision" | "text") { 1e-4 } else { 1e-3 },
            param_count: 1_000_000,
            frozen: false,
            tower: group.tower.clone(),
            depth: group.depth.map(|(index, count)| Depth { index, count }),
        })
        .collect();
    let knob = |name: &str, min: f64, max: f64, default: f64| AugmentationKnob { name: name.into(), min, max, default };
    RunSpec {
        groups,
        losses: vec!["tag".into(), "align".into(), "distill".into()],
        augmentation: vec![
            knob("crop_scale_min", 0.08, 1.0, 1.0),
            knob("flip_prob", 0.0, 1.0, 0.0),
            knob("color_jitter", 0.0, 0.9, 0.0),
        ],
        metrics: vec!["val_loss".into(), "val_top1".into(), "val_top5".into()],
        total_steps,
        steps_per_epoch: (total_steps / 10).max(1),
        seed: 0,
        args,
    }
}

struct Checker<'a> {
    runtime: &'a PolicyRuntime,
    prepared: PreparedPolicy,
    spec: RunSpec,
}

/// Why one stream failed: the property and what happened.
type Violation = (&'static str, String);

impl Checker<'_> {
    fn start(&self) -> Result<(PolicyInstance, Knobs), Violation> {
        let mut instance = self.runtime.instantiate(&self.prepared).map_err(|e| ("loads and starts", e.to_string()))?;
        let knobs = instance.init(&self.spec).map_err(|e| ("loads and starts", e.to_string()))?;
        Ok((instance, knobs))
    }

    /// Runs `stream` from `from` on `instance`, validating each decision; returns them as text.
    fn run(
        &self,
        instance: &mut PolicyInstance,
        knobs: Knobs,
        stream: &StreamSpec,
        from: u64,
        max_fuel: &mut u64,
    ) -> Result<Vec<String>, Violation> {
        let mut decisions = Vec::new();
        for step in from..stream.len {
            let observation = stream.observation(step, &self.spec);
            let decision: Decision = instance.decide(&observation).map_err(|e| match e {
                PolicyError::Trap { cause, .. } => ("never traps", format!("step {step}: {cause}")),
                other => ("never traps", other.to_string()),
            })?;
            *max_fuel = (*max_fuel).max(instance.last_fuel_used());
            validate_decision(instance.name(), step, &self.spec, knobs, &decision)
                .map_err(|e| ("decides validly", e.to_string()))?;
            decisions.push(format!("{decision:?}"));
        }
        Ok(decisions)
    }

    fn check(&self, stream: &StreamSpec, max_fuel: &mut u64) -> Result<(), Violation> {
        let (mut first, knobs) = self.start()?;
        let expected = self.run(&mut first, knobs, stream, 0, max_fuel)?;
        let (mut again, _) = self.start()?;
        let repeated = self.run(&mut again, knobs, stream, 0, max_fuel)?;
        if let Some(step) = first_difference(&expected, &repeated, 0) {
            return Err(("is deterministic", format!("the same stream gave another decision at step {step}")));
        }
        let cut = stream.save_at.min(stream.len);
        let (mut head, _) = self.start()?;
        let mut head_fuel = 0;
        let mut partial = StreamSpec { len: cut, ..stream.clone() };
        self.run(&mut head, knobs, &partial, 0, &mut head_fuel)?;
        let state = head.save_state("check").map_err(|e| ("saves and restores its state", e.to_string()))?;
        let (mut resumed, _) = self.start()?;
        resumed.load_state(&state).map_err(|e| ("saves and restores its state", e.to_string()))?;
        partial.len = stream.len;
        let tail = self.run(&mut resumed, knobs, &partial, cut, max_fuel)?;
        if let Some(step) = first_difference(&expected[cut as usize..], &tail, cut) {
            return Err((
                "saves and restores its state",
                format!("restored after step {cut}, it decided differently at step {step}"),
            ));
        }
        Ok(())
    }
}

fn first_difference(a: &[String], b: &[String], offset: u64) -> Option<u64> {
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| i as u64 + offset)
}

/// Checks the policy named by `source` over `options.cases` generated streams.
pub fn check_policy(source: &PolicySource, options: &CheckOptions) -> Result<CheckReport, CheckFailure> {
    let runtime = PolicyRuntime::new(options.limits, options.component_cache.clone());
    let policy = source.name();
    let not_loaded = |detail: String| CheckFailure {
        policy: policy.clone(),
        property: "loads and starts",
        detail,
        stream: "(none: init)".into(),
    };
    let prepared = runtime.prepare(source).map_err(|e| not_loaded(e.to_string()))?;
    let spec = check_spec(options.total_steps, source.args.clone(), options.group_by);
    let checker = Checker { runtime: &runtime, prepared, spec };
    // A policy that cannot even start fails before any stream.
    checker.start().map_err(|(property, detail)| CheckFailure {
        policy: policy.clone(),
        property,
        detail,
        stream: "(none: init)".into(),
    })?;
    let config = Config { cases: options.cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed_bytes(options.seed),
        ),
    );
    let max_fuel = std::cell::Cell::new(0);
    let last_violation = std::cell::RefCell::new(None);
    let outcome = runner.run(&StreamSpec::strategy(options.total_steps), |stream| {
        let mut fuel = max_fuel.get();
        let checked = checker.check(&stream, &mut fuel);
        max_fuel.set(fuel);
        checked.map_err(|violation| {
            *last_violation.borrow_mut() = Some(violation.clone());
            TestCaseError::fail(format!("{}: {}", violation.0, violation.1))
        })
    });
    match outcome {
        Ok(()) => Ok(CheckReport { policy, cases: options.cases, max_fuel: max_fuel.get() }),
        Err(TestError::Fail(_, stream)) => {
            // Re-run the minimal stream for its own message (the last recorded one may belong
            // to a larger stream tried during shrinking).
            let (property, detail) = checker
                .check(&stream, &mut 0)
                .err()
                .or_else(|| last_violation.borrow().clone())
                .unwrap_or(("unknown", String::new()));
            Err(CheckFailure { policy, property, detail, stream: stream.to_string() })
        }
        Err(TestError::Abort(reason)) => {
            Err(CheckFailure { policy, property: "can be checked", detail: reason.to_string(), stream: "-".into() })
        }
    }
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&crate::data::sampler::keyed(seed, &[i as u64]).to_le_bytes());
    }
    bytes
}
