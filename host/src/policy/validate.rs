//! Checks a policy's decision against the run before anything is applied, so that a bad
//! value stops the run with the policy, step and field named instead of corrupting it.

use super::{Decision, GradClip, Knobs, PolicyError, RunSpec};

/// Longest stop reason kept; a policy cannot flood the run's records through it.
pub const MAX_STOP_REASON_CHARS: usize = 500;

/// Most batches one rollback may skip: far beyond any run, well within the data order's
/// signed offset.
pub const MAX_SKIP_BATCHES: u64 = 1 << 40;

/// Accepts `decision` of `policy` (which claimed `claimed`) for step `step`, or says what is
/// wrong with the first bad field.
pub fn validate_decision(
    policy: &str,
    step: u64,
    spec: &RunSpec,
    claimed: Knobs,
    decision: &Decision,
) -> Result<(), PolicyError> {
    let invalid = |field: String, problem: String| PolicyError::InvalidDecision {
        policy: policy.to_string(),
        step,
        field,
        problem,
    };
    let check_slots = |field: &str, len: usize, names: usize, knob: Knobs, sets_any: bool| {
        if len != 0 && len != names {
            return Err(invalid(field.into(), format!("{len} values for {names} names (give one per name, or none)")));
        }
        if sets_any && !claimed.contains(knob) {
            return Err(invalid(
                field.into(),
                format!("the policy did not claim the {} knob in init", super::knob_name(knob)),
            ));
        }
        Ok(())
    };
    let groups = spec.groups.len();
    check_slots("lrs", decision.lrs.len(), groups, Knobs::LEARNING_RATES, decision.lrs.iter().any(Option::is_some))?;
    let multipliers = &decision.lr_multipliers;
    let sets_multipliers = multipliers.iter().any(Option::is_some);
    check_slots("lr_multipliers", multipliers.len(), groups, Knobs::LR_MULTIPLIERS, sets_multipliers)?;
    let losses = spec.losses.len();
    let sets_weights = decision.loss_weights.iter().any(Option::is_some);
    check_slots("loss_weights", decision.loss_weights.len(), losses, Knobs::LOSS_WEIGHTS, sets_weights)?;
    let knobs = spec.augmentation.len();
    let sets_knobs = decision.augmentation.iter().any(Option::is_some);
    check_slots("augmentation", decision.augmentation.len(), knobs, Knobs::AUGMENTATION, sets_knobs)?;
    check_slots("freeze", decision.freeze.len(), groups, Knobs::FREEZING, decision.freeze.iter().any(Option::is_some))?;

    for (group, lr) in spec.groups.iter().zip(&decision.lrs) {
        if let Some(lr) = *lr
            && !(lr.is_finite() && lr >= 0.0)
        {
            return Err(invalid(
                format!("lrs[{}]", group.name),
                format!("learning rate {lr} is not a finite number >= 0"),
            ));
        }
    }
    for (group, multiplier) in spec.groups.iter().zip(multipliers) {
        if let Some(multiplier) = *multiplier
            && !(multiplier.is_finite() && multiplier >= 0.0)
        {
            return Err(invalid(
                format!("lr_multipliers[{}]", group.name),
                format!("multiplier {multiplier} is not a finite number >= 0"),
            ));
        }
    }
    for (name, weight) in spec.losses.iter().zip(&decision.loss_weights) {
        if let Some(weight) = *weight
            && !(weight.is_finite() && weight >= 0.0)
        {
            return Err(invalid(
                format!("loss_weights[{name}]"),
                format!("weight {weight} is not a finite number >= 0"),
            ));
        }
    }
    for (knob, value) in spec.augmentation.iter().zip(&decision.augmentation) {
        if let Some(value) = *value
            && !(value.is_finite() && (knob.min..=knob.max).contains(&value))
        {
            return Err(invalid(
                format!("augmentation[{}]", knob.name),
                format!("{value} is outside the knob's range [{}, {}]", knob.min, knob.max),
            ));
        }
    }
    if let Some(clip) = &decision.grad_clip {
        if !claimed.contains(Knobs::GRAD_CLIP) {
            return Err(invalid("grad_clip".into(), "the policy did not claim the grad-clip knob in init".into()));
        }
        if let GradClip::MaxNorm(norm) = *clip
            && !(norm.is_finite() && norm > 0.0)
        {
            return Err(invalid("grad_clip".into(), format!("max norm {norm} is not a finite number > 0")));
        }
    }
    if let Some(rollback) = &decision.rollback
        && rollback.skip_batches > MAX_SKIP_BATCHES
    {
        let problem = format!("skip_batches {} is more than {MAX_SKIP_BATCHES}", rollback.skip_batches);
        return Err(invalid("rollback".into(), problem));
    }
    if let Some(reason) = &decision.stop
        && reason.chars().count() > MAX_STOP_REASON_CHARS
    {
        return Err(invalid("stop".into(), format!("reason longer than {MAX_STOP_REASON_CHARS} characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AugmentationKnob, ParamGroup, Rollback, RollbackSource};

    fn spec() -> RunSpec {
        let group = |name: &str| ParamGroup {
            name: name.into(),
            base_lr: 1e-3,
            param_count: 10,
            frozen: false,
            tower: name.into(),
            depth: None,
        };
        RunSpec {
            groups: vec![group("vision"), group("text")],
            losses: vec!["contrastive".into()],
            augmentation: vec![AugmentationKnob { name: "flip_prob".into(), min: 0.0, max: 1.0, default: 0.0 }],
            metrics: vec!["val_loss".into()],
            total_steps: 10,
            steps_per_epoch: 5,
            seed: 0,
            args: vec![],
        }
    }

    #[test]
    fn good_decisions_pass() {
        for lrs in [vec![], vec![Some(0.0), None], vec![Some(1.0), Some(2.0)]] {
            validate_decision("p", 3, &spec(), Knobs::LEARNING_RATES, &Decision { lrs, ..Decision::keep() }).unwrap();
        }
        let all = Knobs::all();
        let decision = Decision {
            loss_weights: vec![Some(0.0)],
            augmentation: vec![Some(1.0)],
            grad_clip: Some(GradClip::MaxNorm(1.0)),
            freeze: vec![Some(true), None],
            ..Decision::keep()
        };
        validate_decision("p", 3, &spec(), all, &decision).unwrap();
    }

    #[test]
    fn bad_values_name_policy_step_and_field() {
        let cases = [
            (Decision { lrs: vec![None, Some(f64::NAN)], ..Decision::keep() }, "lrs[text]"),
            (Decision { lrs: vec![None, Some(-1e-9)], ..Decision::keep() }, "lrs[text]"),
            (Decision { loss_weights: vec![Some(-1.0)], ..Decision::keep() }, "loss_weights[contrastive]"),
            (Decision { augmentation: vec![Some(1.5)], ..Decision::keep() }, "augmentation[flip_prob]"),
            (Decision { grad_clip: Some(GradClip::MaxNorm(f64::INFINITY)), ..Decision::keep() }, "grad_clip"),
            (Decision { lrs: vec![Some(1.0)], ..Decision::keep() }, "1 values for 2 names"),
            (Decision { lr_multipliers: vec![Some(-0.5), None], ..Decision::keep() }, "lr_multipliers[vision]"),
            (
                Decision {
                    rollback: Some(Rollback { source: RollbackSource::Snapshot, skip_batches: u64::MAX }),
                    ..Decision::keep()
                },
                "rollback",
            ),
        ];
        for (decision, field) in cases {
            let text = validate_decision("cosine", 7, &spec(), Knobs::all(), &decision).unwrap_err().to_string();
            assert!(text.contains("`cosine`") && text.contains("step 7") && text.contains(field), "{text}");
        }
    }

    #[test]
    fn unclaimed_knobs_are_refused() {
        let decision = Decision { freeze: vec![Some(true), None], ..Decision::keep() };
        let text = validate_decision("p", 0, &spec(), Knobs::LEARNING_RATES, &decision).unwrap_err().to_string();
        assert!(text.contains("freeze") && text.contains("did not claim"), "{text}");
        let decision = Decision { lr_multipliers: vec![Some(0.5), None], ..Decision::keep() };
        let text = validate_decision("p", 0, &spec(), Knobs::LEARNING_RATES, &decision).unwrap_err().to_string();
        assert!(text.contains("lr_multipliers") && text.contains("lr-multipliers knob"), "{text}");
    }
}
