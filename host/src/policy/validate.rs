//! Checks a policy's decision against the run before anything is applied, so that a bad
//! value stops the run with the policy, step and field named instead of corrupting it.

use super::{Decision, PolicyError, RunSpec};

/// Accepts `decision` for step `step` of the run described by `spec`, or says what is wrong.
pub fn validate_decision(policy: &str, step: u64, spec: &RunSpec, decision: &Decision) -> Result<(), PolicyError> {
    let invalid = |field: String, problem: String| PolicyError::InvalidDecision {
        policy: policy.to_string(),
        step,
        field,
        problem,
    };
    if !decision.lrs.is_empty() && decision.lrs.len() != spec.groups.len() {
        return Err(invalid(
            "lrs".into(),
            format!("{} values for {} parameter groups (give one per group, or none)", decision.lrs.len(), spec.groups.len()),
        ));
    }
    for (group, lr) in spec.groups.iter().zip(&decision.lrs) {
        if let Some(lr) = *lr
            && !(lr.is_finite() && lr >= 0.0)
        {
            return Err(invalid(format!("lrs[{}]", group.name), format!("learning rate {lr} is not a finite number >= 0")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ParamGroup;

    fn spec() -> RunSpec {
        let group = |name: &str| ParamGroup { name: name.into(), base_lr: 1e-3, param_count: 10, frozen: false };
        RunSpec {
            groups: vec![group("vision"), group("text")],
            losses: vec!["contrastive".into()],
            total_steps: 10,
            steps_per_epoch: 5,
            seed: 0,
            args: vec![],
        }
    }

    #[test]
    fn good_decisions_pass() {
        for lrs in [vec![], vec![Some(0.0), None], vec![Some(1.0), Some(2.0)]] {
            validate_decision("p", 3, &spec(), &Decision { lrs }).unwrap();
        }
    }

    #[test]
    fn bad_values_name_policy_step_and_group() {
        for bad in [f64::NAN, f64::INFINITY, -1e-9] {
            let err = validate_decision("cosine", 7, &spec(), &Decision { lrs: vec![None, Some(bad)] }).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("`cosine`") && text.contains("step 7") && text.contains("lrs[text]"), "{text}");
        }
    }

    #[test]
    fn a_wrong_length_is_refused() {
        let err = validate_decision("p", 0, &spec(), &Decision { lrs: vec![Some(1.0)] }).unwrap_err();
        assert!(err.to_string().contains("1 values for 2 parameter groups"), "{err}");
    }
}
