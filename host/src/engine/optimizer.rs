//! AdamW over parameter groups, written on tch tensors because tch's own optimizer can
//! neither save its state nor skip weight decay per parameter. Decoupled weight decay as
//! in Loshchilov & Hutter, with PyTorch's bias correction and epsilon placement.

use tch::Tensor;

/// AdamW's hyper-parameters other than the learning rate, which comes every step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// A parameter the optimizer updates, with the group whose learning rate it follows.
#[derive(Debug)]
pub struct OptimizedParam {
    /// The parameter's name, which also names its moments in saved optimizer state.
    pub name: String,
    pub tensor: Tensor,
    pub group: usize,
    /// Biases, norms, 1-D embeddings and the logit scale take no weight decay.
    pub decay: bool,
}

/// Per-parameter state. The step count is per parameter, as in PyTorch, so a group
/// unfrozen late starts with fresh bias correction instead of tiny or huge first updates.
#[derive(Debug)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: i64,
}

#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<OptimizedParam>,
    moments: Vec<Moments>,
}

impl AdamW {
    pub fn new(params: Vec<OptimizedParam>, config: AdamWConfig) -> Self {
        let moments = params
            .iter()
            .map(|p| Moments { exp_avg: p.tensor.zeros_like(), exp_avg_sq: p.tensor.zeros_like(), steps: 0 })
            .collect();
        AdamW { config, params, moments }
    }

    pub fn zero_grad(&mut self) {
        for param in &mut self.params {
            param.tensor.zero_grad();
        }
    }

    /// The L2 norm of all gradients together, as one scalar tensor (no host sync).
    pub fn grad_norm(&self) -> Tensor {
        tch::no_grad(|| {
            let squares: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.tensor.grad())
                .filter(Tensor::defined)
                .map(|g| g.square().sum(tch::Kind::Float))
                .collect();
            Tensor::stack(&squares, 0).sum(tch::Kind::Float).sqrt()
        })
    }

    /// Multiplies every gradient by `factor` (a scalar tensor), for clipping without a sync.
    pub fn scale_grads(&mut self, factor: &Tensor) {
        tch::no_grad(|| {
            for param in &self.params {
                let mut grad = param.tensor.grad();
                if grad.defined() {
                    let _ = grad.g_mul_(factor);
                }
            }
        });
    }

    /// Parameters of group `group`.
    pub fn group_params(&self, group: usize) -> impl Iterator<Item = &Tensor> {
        self.params.iter().filter(move |p| p.group == group).map(|p| &p.tensor)
    }

    /// Everything needed to continue exactly, as named tensors: `<parameter>.exp_avg`,
    /// `<parameter>.exp_avg_sq` and `<parameter>.step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.moments)
            .flat_map(|(param, moments)| {
                [
                    (format!("{}.exp_avg", param.name), moments.exp_avg.shallow_clone()),
                    (format!("{}.exp_avg_sq", param.name), moments.exp_avg_sq.shallow_clone()),
                    (format!("{}.step", param.name), Tensor::from(moments.steps)),
                ]
            })
            .collect()
    }

    /// Restores a state from [`AdamW::state`]; names the first entry that is missing or
    /// has the wrong shape.
    pub fn load_state(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<(), String> {
        let entry = |name: String| tensors.get(&name).ok_or_else(|| format!("`{name}` is missing"));
        tch::no_grad(|| {
            for (param, moments) in self.params.iter().zip(&mut self.moments) {
                for (suffix, target) in [("exp_avg", &mut moments.exp_avg), ("exp_avg_sq", &mut moments.exp_avg_sq)] {
                    let name = format!("{}.{suffix}", param.name);
                    let saved = entry(name.clone())?;
                    if saved.size() != target.size() {
                        return Err(format!(
                            "`{name}` has shape {:?}, the model needs {:?}",
                            saved.size(),
                            target.size()
                        ));
                    }
                    target.copy_(saved);
                }
                moments.steps = entry(format!("{}.step", param.name))?.int64_value(&[]);
            }
            Ok(())
        })
    }

    /// One update with learning rate `lrs[group]` for each parameter whose group is not
    /// frozen (`frozen[group]`); frozen groups keep their weights and moments untouched.
    pub fn step(&mut self, lrs: &[f64], frozen: &[bool]) {
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        tch::no_grad(|| {
            for (param, moments) in self.params.iter_mut().zip(&mut self.moments) {
                let grad = param.tensor.grad();
                if !grad.defined() || frozen[param.group] {
                    continue;
                }
                let lr = lrs[param.group];
                moments.steps += 1;
                let bias_correction1 = 1.0 - beta1.powi(moments.steps as i32);
                let bias_correction2_sqrt = (1.0 - beta2.powi(moments.steps as i32)).sqrt();
                if param.decay && weight_decay != 0.0 {
                    let _ = param.tensor.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = moments.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = moments.exp_avg_sq.g_mul_scalar_(beta2);
                // tch's addcmul_/addcdiv_ take no scale, so the scales ride on one operand:
                // (sqrt(1 - b2) g)^2 = (1 - b2) g^2, and the step's -lr/bc1 divides into denom.
                // Two temporaries per parameter instead of five.
                let scaled_grad = &grad * (1.0 - beta2).sqrt();
                let _ = moments.exp_avg_sq.addcmul_(&scaled_grad, &scaled_grad);
                if lr == 0.0 {
                    continue;
                }
                let mut denom = moments.exp_avg_sq.sqrt();
                let _ = denom.g_div_scalar_(bias_correction2_sqrt);
                let _ = denom.g_add_scalar_(eps);
                let _ = denom.g_mul_scalar_(-bias_correction1 / lr);
                let _ = param.tensor.addcdiv_(&moments.exp_avg, &denom);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// One AdamW step written out by hand, element by element.
    #[test]
    fn matches_the_update_rule() {
        let config = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.5 };
        let weight = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let bias = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let mut adamw = AdamW::new(
            vec![
                OptimizedParam { name: "w".into(), tensor: weight.shallow_clone(), group: 0, decay: true },
                OptimizedParam { name: "b".into(), tensor: bias.shallow_clone(), group: 1, decay: false },
            ],
            config,
        );
        let (lr_w, lr_b) = (0.1, 0.01);
        let mut expected_w = [1.0f64, -2.0];
        let mut expected_b = 0.5f64;
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=3 {
            adamw.zero_grad();
            // loss = sum(w^2) + 3 b: grads 2w and 3.
            (weight.square().sum(Kind::Float) + &bias * 3.0).sum(Kind::Float).backward();
            adamw.step(&[lr_w, lr_b], &[false, false]);
            let grads = [2.0 * expected_w[0], 2.0 * expected_w[1], 3.0];
            let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.99f64.powi(t));
            for i in 0..3 {
                m[i] = 0.9 * m[i] + 0.1 * grads[i];
                v[i] = 0.99 * v[i] + 0.01 * grads[i] * grads[i];
                let update = (m[i] / bc1) / ((v[i] / bc2).sqrt() + 1e-8);
                if i < 2 {
                    expected_w[i] = expected_w[i] * (1.0 - lr_w * 0.5) - lr_w * update;
                } else {
                    expected_b -= lr_b * update;
                }
            }
        }
        let got_w = Vec::<f32>::try_from(&weight).unwrap();
        let got_b = Vec::<f32>::try_from(&bias).unwrap();
        for (got, want) in got_w.iter().zip(expected_w) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert!((got_b[0] as f64 - expected_b).abs() < 1e-5, "{} vs {expected_b}", got_b[0]);
    }

    #[test]
    fn frozen_groups_are_left_alone() {
        let weight = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let param = OptimizedParam { name: "w".into(), tensor: weight.shallow_clone(), group: 0, decay: true };
        let mut adamw = AdamW::new(vec![param], AdamWConfig::default());
        (&weight * 2.0).sum(Kind::Float).backward();
        adamw.step(&[0.1], &[true]);
        assert_eq!(Vec::<f32>::try_from(&weight).unwrap(), [1.0]);
        assert!(adamw.state().iter().all(|(_, m)| m.abs().sum(Kind::Float).double_value(&[]) == 0.0));
    }
}
