//! Several policies in one run (`--policy a.wasm --policy b.wasm`). The rule: each kind of
//! knob is owned by the one policy that claims it in `init`; a second claim is refused at
//! start, naming both. The exception is `lr-multipliers`, which any number of policies may
//! claim: each keeps its own multipliers and the trainer multiplies them. Actions are
//! merged: any policy may request an evaluation, a checkpoint, a snapshot, a measurement of
//! the per-loss gradients, the stop or a rollback (for the last two, the first in
//! command-line order is taken).
//!
//! Shadow policies (`--shadow-policy`) see the same observations and their decisions are
//! validated and recorded, but never applied; they claim nothing, so ownership does not
//! bind them, and one that fails is dropped with a warning instead of stopping the run.

use super::{
    Decision, Knobs, LogLevel, LogLine, PolicyError, PolicyInstance, PolicyRuntime, PolicySource, RunSpec,
    validate_decision,
};

/// Every kind of knob with its name in messages and reports.
pub const KNOB_NAMES: [(Knobs, &str); 6] = [
    (Knobs::LEARNING_RATES, "learning-rates"),
    (Knobs::LR_MULTIPLIERS, "lr-multipliers"),
    (Knobs::LOSS_WEIGHTS, "loss-weights"),
    (Knobs::AUGMENTATION, "augmentation"),
    (Knobs::GRAD_CLIP, "grad-clip"),
    (Knobs::FREEZING, "freezing"),
];

/// The kinds any number of policies may claim.
const SHARED_KNOBS: Knobs = Knobs::LR_MULTIPLIERS;

/// The name of one kind of knob.
pub fn knob_name(knob: Knobs) -> &'static str {
    KNOB_NAMES.iter().find(|(k, _)| *k == knob).map(|(_, name)| *name).unwrap_or("unknown")
}

struct Member {
    instance: PolicyInstance,
    source: PolicySource,
    claimed: Knobs,
}

/// The policies of a run, started and checked for conflicting claims, and its shadows.
pub struct PolicySet {
    spec: RunSpec,
    members: Vec<Member>,
    shadows: Vec<Member>,
    /// Warnings about shadows dropped since the last [`PolicySet::take_logs`].
    dropped: Vec<(String, LogLine)>,
}

/// One step's decisions: what each policy said, and their merge.
#[derive(Debug, Clone)]
pub struct StepDecision {
    pub merged: Decision,
    /// Each policy's own decision, in command-line order.
    pub per_policy: Vec<(String, Decision)>,
    /// The policy that asked to stop, and why.
    pub stop: Option<(String, String)>,
    /// Each shadow's decision, recorded but not applied.
    pub shadows: Vec<(String, Decision)>,
}

impl PolicySet {
    /// Loads and starts every policy and shadow. `spec.args` is replaced by each policy's
    /// own arguments. A shadow that cannot start is left out with a warning.
    pub fn start(
        runtime: &PolicyRuntime,
        sources: &[PolicySource],
        shadow_sources: &[PolicySource],
        spec: RunSpec,
    ) -> Result<Self, PolicyError> {
        let start = |source: &PolicySource| -> Result<Member, PolicyError> {
            let mut instance = runtime.load(source)?;
            let claimed = instance.init(&RunSpec { args: source.args.clone(), ..spec.clone() })?;
            Ok(Member { instance, source: source.clone(), claimed })
        };
        let mut members: Vec<Member> = Vec::with_capacity(sources.len());
        for source in sources {
            let member = start(source)?;
            for (knob, name) in KNOB_NAMES.into_iter().filter(|(knob, _)| !SHARED_KNOBS.contains(*knob)) {
                let claims = |other: &Member| other.claimed.contains(knob);
                if let Some(owner) = members.iter().find(|owner| claims(&member) && claims(owner)) {
                    return Err(PolicyError::KnobConflict {
                        knob: name,
                        first: owner.instance.name().to_string(),
                        second: member.instance.name().to_string(),
                    });
                }
            }
            members.push(member);
        }
        let mut shadows = Vec::with_capacity(shadow_sources.len());
        let mut dropped = Vec::new();
        for source in shadow_sources {
            match start(source) {
                Ok(shadow) => shadows.push(shadow),
                Err(error) => dropped.push(shadow_dropped(&source.name(), &error)),
            }
        }
        Ok(PolicySet { spec, members, shadows, dropped })
    }

    /// Each kind of knob, whether any number of policies may claim it (their values are
    /// then multiplied), and the policies that claimed it (none: the trainer keeps its value).
    pub fn ownership(&self) -> Vec<(&'static str, bool, Vec<&str>)> {
        KNOB_NAMES
            .iter()
            .map(|(knob, name)| {
                let claimers = self.members.iter().filter(|m| m.claimed.contains(*knob));
                (*name, SHARED_KNOBS.contains(*knob), claimers.map(|m| m.instance.name()).collect())
            })
            .collect()
    }

    /// Asks every policy, validates each decision and merges them.
    pub fn decide(&mut self, observation: &super::Observation) -> Result<StepDecision, PolicyError> {
        let mut merged = Decision::keep();
        let mut per_policy = Vec::with_capacity(self.members.len());
        let mut stop = None;
        let step = observation.step;
        for member in &mut self.members {
            let decision = member.instance.decide(observation)?;
            let name = member.instance.name().to_string();
            validate_decision(&name, step, &self.spec, member.claimed, &decision)?;
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
            merged.measure_loss_gradients |= decision.measure_loss_gradients;
            merged.snapshot |= decision.snapshot;
            merged.rollback = merged.rollback.or(decision.rollback);
            if stop.is_none()
                && let Some(reason) = &decision.stop
            {
                stop = Some((name.clone(), reason.clone()));
                merged.stop = Some(reason.clone());
            }
            per_policy.push((name, decision));
        }
        let mut shadows = Vec::with_capacity(self.shadows.len());
        let mut failed = Vec::new();
        for (index, shadow) in self.shadows.iter_mut().enumerate() {
            let name = shadow.instance.name().to_string();
            let decided = shadow.instance.decide(observation).and_then(|decision| {
                validate_decision(&name, step, &self.spec, shadow.claimed, &decision).map(|()| decision)
            });
            match decided {
                Ok(decision) => shadows.push((name, decision)),
                Err(error) => failed.push((index, error)),
            }
        }
        for (index, error) in failed.into_iter().rev() {
            let shadow = self.shadows.remove(index);
            self.dropped.push(shadow_dropped(shadow.instance.name(), &error));
        }
        Ok(StepDecision { merged, per_policy, stop, shadows })
    }

    /// Log lines of every policy and shadow since the last call, tagged with its name, and
    /// a warning for each shadow dropped.
    pub fn take_logs(&mut self) -> Vec<(String, LogLine)> {
        let mut lines: Vec<(String, LogLine)> = self
            .members
            .iter_mut()
            .chain(&mut self.shadows)
            .flat_map(|m| {
                let name = m.instance.name().to_string();
                m.instance.take_log().into_iter().map(move |line| (name.clone(), line))
            })
            .collect();
        lines.append(&mut self.dropped);
        lines
    }

    /// Replaces the policies, not the shadows, with `sources`, as a run resumed with
    /// `--swap-policies` does: when the count is the same, a policy with the component and
    /// arguments of the one it replaces continues from that one's state; any other starts
    /// fresh. Returns, per new policy, whether it continued.
    pub fn swap(&mut self, runtime: &PolicyRuntime, sources: &[PolicySource]) -> Result<Vec<bool>, PolicyError> {
        let PolicySet { mut members, .. } = PolicySet::start(runtime, sources, &[], self.spec.clone())?;
        let same_count = members.len() == self.members.len();
        let mut kept = Vec::with_capacity(members.len());
        for (index, member) in members.iter_mut().enumerate() {
            let old = self.members.get_mut(index).filter(|old| {
                same_count
                    && continues_state(
                        &member.instance,
                        &member.source,
                        old.instance.name(),
                        old.instance.sha256(),
                        &old.source.args,
                    )
            });
            let continues = match old {
                Some(old) if !old.instance.has_trapped() => {
                    let state = old.instance.save_state("a swap")?;
                    member.instance.load_state(&state)?;
                    true
                }
                _ => false,
            };
            kept.push(continues);
        }
        self.members = members;
        Ok(kept)
    }

    /// The policies with their sources, in command-line order.
    pub fn members_mut(&mut self) -> impl Iterator<Item = (&PolicySource, &mut PolicyInstance)> {
        self.members.iter_mut().map(|m| (&m.source, &mut m.instance))
    }

    /// The shadows still running, with their sources, in command-line order.
    pub fn shadows_mut(&mut self) -> impl Iterator<Item = (&PolicySource, &mut PolicyInstance)> {
        self.shadows.iter_mut().map(|m| (&m.source, &mut m.instance))
    }
}

/// Whether a policy started from `source` as `instance`, in the place of one that ran as
/// `name` (component hash `sha256`) with arguments `args`, continues that one's state: the
/// same component with the same arguments. A state saved under other arguments (a
/// schedule's floor, say) would undo them, so any other starts fresh. A resumed run and
/// `trainer simulate`'s replay of its swaps both decide by this.
pub fn continues_state(
    instance: &PolicyInstance,
    source: &PolicySource,
    name: &str,
    sha256: &str,
    args: &[(String, String)],
) -> bool {
    instance.sha256() == sha256 && instance.name() == name && source.args == args
}

/// The warning for a shadow left out of the run.
fn shadow_dropped(name: &str, error: &PolicyError) -> (String, LogLine) {
    let message = format!("shadow policy dropped; the run goes on without it: {error}");
    (name.to_string(), LogLine { level: LogLevel::Warn, message })
}
