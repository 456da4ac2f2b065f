//! Each loss term's gradient, measured on the steps a policy asks for it
//! (`measure-loss-gradients`), for policies that balance the terms by what they do to the
//! weights rather than by their values (GradNorm). On such a step each weighted term is
//! back-propagated alone through the shared graph, its gradient kept apart as well as
//! added into the parameters' gradients, so the update is the same sum as on any other
//! step. The cost is one backward pass per term instead of one in all, and memory for one
//! more gradient per term, for that step only.
//!
//! A term's norm is taken over the parameters every term reaches (the shared trunk, where
//! the terms compete), or over all parameters any term reaches when no parameter is
//! reached by all. Data-parallel ranks sum each term's gradient before the norm, so the
//! norms are those of the whole batch's gradients, the same on every rank.

use super::error::EngineError;
use crate::distributed::Team;
use std::cell::RefCell;
use tch::{Kind, Tensor};

/// Each weighted loss term's gradient norm, and its share of their sum.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeasuredGradients {
    /// The step they were measured on.
    pub step: u64,
    #[serde(with = "super::exact::list")]
    pub norms: Vec<f64>,
    #[serde(with = "super::exact::list")]
    pub shares: Vec<f64>,
}

impl MeasuredGradients {
    /// The norms of step `step` with their shares of the sum (all 0 when it is 0).
    pub fn from_norms(step: u64, norms: Vec<f64>) -> Self {
        let total: f64 = norms.iter().sum();
        let shares = norms.iter().map(|norm| if total > 0.0 { norm / total } else { 0.0 }).collect();
        MeasuredGradients { step, norms, shares }
    }
}

/// Keeps each term's gradient apart during one step.
pub struct LossGradientMeter {
    params: Vec<Tensor>,
    /// Per term, per parameter: the gradient summed over the step's micro-batches, `None`
    /// where the term has not reached the parameter.
    per_term: RefCell<Vec<Vec<Option<Tensor>>>>,
}

impl LossGradientMeter {
    /// A meter for `terms` loss terms over the trainable `params` (whose `grad` the step's
    /// gradient goes into).
    pub fn new(params: Vec<Tensor>, terms: usize) -> Self {
        let per_term = (0..terms).map(|_| params.iter().map(|_| None).collect()).collect();
        LossGradientMeter { params, per_term: RefCell::new(per_term) }
    }

    /// Back-propagates each `terms[i] * weights[i]` alone (keeping the graph for the next),
    /// adding its gradient to the parameters' gradients and to the term's own.
    pub fn backward(&self, terms: &[Tensor], weights: &[f64]) -> Result<(), EngineError> {
        let mut per_term = self.per_term.borrow_mut();
        let last = terms.iter().rposition(Tensor::requires_grad);
        for (index, (term, weight)) in terms.iter().zip(weights).enumerate() {
            // A term that depends on no parameter (no boxes in a batch, say) has no gradient.
            if !term.requires_grad() {
                continue;
            }
            let keep_graph = Some(index) != last;
            let grads = Tensor::f_run_backward(&[term * *weight], &self.params, keep_graph, false)?;
            tch::no_grad(|| {
                for ((param, grad), kept) in self.params.iter().zip(&grads).zip(&mut per_term[index]) {
                    if !grad.defined() {
                        continue;
                    }
                    let _ = param.grad().g_add_(grad);
                    match kept {
                        Some(sum) => drop(sum.g_add_(grad)),
                        None => *kept = Some(grad.copy()),
                    }
                }
            });
        }
        Ok(())
    }

    /// The norms of the step (`step`), summed over `team`'s ranks first.
    pub fn finish(self, step: u64, team: &Team) -> Result<MeasuredGradients, EngineError> {
        let mut per_term = self.per_term.into_inner();
        let (terms, params) = (per_term.len(), self.params.len());
        // Which term reached which parameter on any rank: every rank must then sum the same
        // tensors, zeros where it had none.
        let reached: Vec<f64> = per_term.iter().flatten().map(|grad| f64::from(u8::from(grad.is_some()))).collect();
        let reached_anywhere = Tensor::from_slice(&reached);
        team.sum(&[reached_anywhere.shallow_clone()], "the sum of the per-loss gradients' reach")?;
        let reached = Vec::<f64>::try_from(&reached_anywhere)?;
        let reaches = |term: usize, param: usize| reached[term * params + param] > 0.0;
        let mut summed = Vec::new();
        for (term, grads) in per_term.iter_mut().enumerate() {
            for (param, grad) in grads.iter_mut().enumerate() {
                if reaches(term, param) {
                    summed.push(grad.get_or_insert_with(|| self.params[param].zeros_like()).shallow_clone());
                }
            }
        }
        team.sum(&summed, "the sum of the per-loss gradients")?;
        let shared: Vec<usize> = (0..params).filter(|&p| (0..terms).all(|t| reaches(t, p))).collect();
        let measured: Vec<usize> = if shared.is_empty() {
            (0..params).filter(|&p| (0..terms).any(|t| reaches(t, p))).collect()
        } else {
            shared
        };
        let squares: Vec<Tensor> = per_term
            .iter()
            .map(|grads| {
                let parts: Vec<Tensor> = measured
                    .iter()
                    .filter_map(|&p| grads[p].as_ref())
                    .map(|grad| grad.to_kind(Kind::Double).square().sum(Kind::Double))
                    .collect();
                if parts.is_empty() { Tensor::from(0.0f64) } else { Tensor::stack(&parts, 0).sum(Kind::Double) }
            })
            .collect();
        let squares = Vec::<f64>::try_from(&Tensor::stack(&squares, 0).to_device(tch::Device::Cpu))?;
        Ok(MeasuredGradients::from_norms(step, squares.iter().map(|square| square.sqrt()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two terms that share a trunk `w` and each have a head of their own: the norms are the
    /// terms' own gradient norms over the trunk, computed directly; the parameters' gradient
    /// is that of the weighted sum.
    #[test]
    fn norms_are_each_terms_own_gradient_over_the_shared_parameters() {
        tch::manual_seed(1);
        let options = (Kind::Float, Device::Cpu);
        let fresh = || {
            let w = Tensor::randn([4, 3], options).set_requires_grad(true);
            let (a, b) = (Tensor::randn([3], options).set_requires_grad(true), Tensor::randn([3], options));
            let b = b.set_requires_grad(true);
            (w, a, b)
        };
        let x = Tensor::randn([5, 4], options);
        let terms = |w: &Tensor, a: &Tensor, b: &Tensor| {
            let hidden = x.matmul(w).tanh();
            vec![hidden.matmul(a).square().mean(Kind::Float), (hidden.matmul(b) - 1.0).abs().mean(Kind::Float)]
        };
        let weights = [2.0, 0.25];

        let (w, a, b) = fresh();
        // Zero gradients to add into, as the optimizer's gradient views are.
        (w.sum(Kind::Float) * 0.0 + a.sum(Kind::Float) * 0.0 + b.sum(Kind::Float) * 0.0).backward();
        let meter = LossGradientMeter::new(vec![w.shallow_clone(), a.shallow_clone(), b.shallow_clone()], 2);
        meter.backward(&terms(&w, &a, &b), &weights).unwrap();
        let measured = meter.finish(7, &Team::solo()).unwrap();

        let direct: Vec<f64> = terms(&w, &a, &b)
            .iter()
            .zip(weights)
            .map(|(term, weight)| {
                let grads = Tensor::run_backward(&[term * weight], &[&w], true, false);
                grads[0].to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]).sqrt()
            })
            .collect();
        assert_eq!(measured.step, 7);
        for (got, want) in measured.norms.iter().zip(&direct) {
            assert!((got - want).abs() <= 1e-5 * want.max(1.0), "{got} vs {want}");
        }
        let total: f64 = direct.iter().sum();
        assert!((measured.shares[0] - direct[0] / total).abs() < 1e-6);

        let summed = terms(&w, &a, &b).iter().zip(weights).map(|(t, wt)| t * wt).reduce(|x, y| x + y).unwrap();
        let expected = Tensor::run_backward(&[summed], &[&w, &a, &b], false, false);
        for (param, want) in [&w, &a, &b].iter().zip(&expected) {
            let diff = (param.grad() - want).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "the update's gradient differs by {diff}");
        }
    }
}
