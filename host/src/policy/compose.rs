//! Several policies in one run (`--policy a.wasm --policy b.wasm`). The rule: each kind of
//! knob is owned by the one policy that claims it in `init`; a second claim is refused at
//! start, naming both. Actions are merged: any policy may request an evaluation, a
//! checkpoint, or the stop (the first reason, in command-line order, is reported).

use super::{
    Decision, Knobs, LogLine, PolicyError, PolicyInstance, PolicyRuntime, PolicySource, RunSpec, validate_decision,
};

/// Every kind of knob with its name in messages and reports.
pub const KNOB_NAMES: [(Knobs, &str); 5] = [
    (Knobs::LEARNING_RATES, "learning-rates"),
    (Knobs::LOSS_WEIGHTS, "loss-weights"),
    (Knobs::AUGMENTATION, "augmentation"),
    (Knobs::GRAD_CLIP, "grad-clip"),
    (Knobs::FREEZING, "freezing"),
];

/// The name of one kind of knob.
pub fn knob_name(knob: Knobs) -> &'static str {
    KNOB_NAMES.iter().find(|(k, _)| *k == knob).map(|(_, name)| *name).unwrap_or("unknown")
}

struct Member {
    instance: PolicyInstance,
    source: PolicySource,
    claimed: Knobs,
}

/// The policies of a run, started and checked for conflicting claims.
pub struct PolicySet {
    spec: RunSpec,
    members: Vec<Member>,
}

/// One step's decisions: what each policy said, and their merge.
#[derive(Debug, Clone)]
pub struct StepDecision {
    pub merged: Decision,
    /// Each policy's own decision, in command-line order.
    pub per_policy: Vec<(String, Decision)>,
    /// The policy that asked to stop, and why.
    pub stop: Option<(String, String)>,
}

impl PolicySet {
    /// Loads and starts every policy. `spec.args` is replaced by each policy's own arguments.
    pub fn start(runtime: &PolicyRuntime, sources: &[PolicySource], spec: RunSpec) -> Result<Self, PolicyError> {
        let mut members: Vec<Member> = Vec::with_capacity(sources.len());
        for source in sources {
            let mut instance = runtime.load(source)?;
            let claimed = instance.init(&RunSpec { args: source.args.clone(), ..spec.clone() })?;
            for (knob, name) in KNOB_NAMES {
                if let Some(owner) = members.iter().find(|m| claimed.contains(knob) && m.claimed.contains(knob)) {
                    return Err(PolicyError::KnobConflict {
                        knob: name,
                        first: owner.instance.name().to_string(),
                        second: instance.name().to_string(),
                    });
                }
            }
            members.push(Member { instance, source: source.clone(), claimed });
        }
        Ok(PolicySet { spec, members })
    }

    /// Which policy owns each kind of knob (`None`: nobody; the trainer keeps its value).
    pub fn ownership(&self) -> Vec<(&'static str, Option<&str>)> {
        KNOB_NAMES
            .iter()
            .map(|(knob, name)| {
                (*name, self.members.iter().find(|m| m.claimed.contains(*knob)).map(|m| m.instance.name()))
            })
            .collect()
    }

    /// Asks every policy, validates each decision and merges them.
    pub fn decide(&mut self, observation: &super::Observation) -> Result<StepDecision, PolicyError> {
        let mut merged = Decision::keep();
        let mut per_policy = Vec::with_capacity(self.members.len());
        let mut stop = None;
        for member in &mut self.members {
            let decision = member.instance.decide(observation)?;
            let name = member.instance.name().to_string();
            validate_decision(&name, observation.step, &self.spec, member.claimed, &decision)?;
            // Validation has checked that a policy sets only what it claimed, and claims are
            // exclusive, so each field comes from at most one policy.
            if member.claimed.contains(Knobs::LEARNING_RATES) {
                merged.lrs = decision.lrs.clone();
            }
            if member.claimed.contains(Knobs::LOSS_WEIGHTS) {
                merged.loss_weights = decision.loss_weights.clone();
            }
            if member.claimed.contains(Knobs::AUGMENTATION) {
                merged.augmentation = decision.augmentation.clone();
            }
            if member.claimed.contains(Knobs::GRAD_CLIP) {
                merged.grad_clip = decision.grad_clip;
            }
            if member.claimed.contains(Knobs::FREEZING) {
                merged.freeze = decision.freeze.clone();
            }
            merged.evaluate |= decision.evaluate;
            merged.checkpoint |= decision.checkpoint;
            if stop.is_none()
                && let Some(reason) = &decision.stop
            {
                stop = Some((name.clone(), reason.clone()));
                merged.stop = Some(reason.clone());
            }
            per_policy.push((name, decision));
        }
        Ok(StepDecision { merged, per_policy, stop })
    }

    /// Log lines of every policy since the last call, tagged with the policy's name.
    pub fn take_logs(&mut self) -> Vec<(String, LogLine)> {
        self.members
            .iter_mut()
            .flat_map(|m| {
                let name = m.instance.name().to_string();
                m.instance.take_log().into_iter().map(move |line| (name.clone(), line))
            })
            .collect()
    }

    /// The policies with their sources, in command-line order.
    pub fn members_mut(&mut self) -> impl Iterator<Item = (&PolicySource, &mut PolicyInstance)> {
        self.members.iter_mut().map(|m| (&m.source, &mut m.instance))
    }
}
