//! AdamW over parameter groups, written on tch tensors because tch's own optimizer can
//! neither save its state nor skip weight decay per parameter. Decoupled weight decay as
//! in Loshchilov & Hutter, with PyTorch's bias correction and epsilon placement.
//!
//! The parameters of a group that share weight decay and dtype form a bucket: their weights,
//! gradients and both moments each live in one contiguous buffer, the parameters and their
//! gradients being views into them (autograd accumulates into such a gradient in place). A
//! step is then one pass of ATen's fused AdamW kernel per bucket (the kernel of PyTorch's
//! `AdamW(fused=True)`) whatever the number of parameters, and the gradient norm, clipping
//! and a data-parallel sum each work on a few buffers. The kernel is elementwise, so each
//! element gets the same bits in a buffer as in its own tensor: the weights are those of the
//! per-tensor update, bit for bit (tested).
//!
//! Every parameter of a trained group is updated each step, as by PyTorch's AdamW for a
//! parameter whose gradient is a tensor of zeros: one that takes no part in the loss still
//! has its moments decay and its weight decay applied. (The tasks leave such parameters out
//! of the groups.)

use std::ffi::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

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

unsafe extern "C" {
    /// `host/shim/optimizer.cpp`: makes `grad` the gradient of `parameter`.
    fn trainer_set_grad(parameter: *mut C_tensor, grad: *const C_tensor);
    /// `host/shim/optimizer.cpp`: ATen's fused AdamW update of one set of buffers.
    fn trainer_fused_adamw(
        weights: *mut C_tensor,
        grads: *const C_tensor,
        exp_avg: *mut C_tensor,
        exp_avg_sq: *mut C_tensor,
        step: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        error: *mut *mut c_char,
    ) -> bool;
}

/// The moments of AdamW for one tensor of weights (or a bucket's buffer of them).
struct Moments<'a> {
    exp_avg: &'a mut Tensor,
    exp_avg_sq: &'a mut Tensor,
}

/// One AdamW update of `weights` in place, at update number `step` (from 1), with
/// `weight_decay` (0 for parameters that take none): ATen's fused kernel, whose arithmetic
/// is PyTorch's `AdamW(fused=True)`.
fn fused_adamw(
    weights: &mut Tensor,
    grads: &Tensor,
    moments: Moments,
    step: i64,
    lr: f64,
    weight_decay: f64,
    config: &AdamWConfig,
) {
    let mut error = std::ptr::null_mut();
    // SAFETY: four live tensors of one shape, dtype and device; the kernel writes the
    // weights and moments in place.
    let done = unsafe {
        trainer_fused_adamw(
            weights.as_mut_ptr(),
            grads.as_ptr(),
            moments.exp_avg.as_mut_ptr(),
            moments.exp_avg_sq.as_mut_ptr(),
            step,
            lr,
            config.beta1,
            config.beta2,
            weight_decay,
            config.eps,
            &mut error,
        )
    };
    if !done {
        // SAFETY: on failure the shim sets `error` to a malloc'ed C string.
        let message = unsafe { std::ffi::CStr::from_ptr(error) }.to_string_lossy().into_owned();
        unsafe { libc::free(error.cast()) };
        panic!("AdamW's fused kernel failed: {message}");
    }
}

/// A parameter's place in its bucket.
#[derive(Debug)]
struct Member {
    name: String,
    tensor: Tensor,
    offset: i64,
    numel: i64,
}

/// The parameters of one group with one weight decay and dtype, in contiguous buffers.
#[derive(Debug)]
struct Bucket {
    group: usize,
    decay: bool,
    members: Vec<Member>,
    weights: Tensor,
    grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates so far; per bucket, as freezing is per group, so a group unfrozen late starts
    /// with fresh bias correction instead of tiny or huge first updates.
    steps: i64,
}

impl Bucket {
    fn new(group: usize, decay: bool, params: Vec<OptimizedParam>) -> Bucket {
        let weights = tch::no_grad(|| {
            Tensor::cat(&params.iter().map(|p| p.tensor.detach().reshape([-1])).collect::<Vec<_>>(), 0)
        });
        let grads = weights.zeros_like();
        let mut offset = 0;
        let members = params
            .into_iter()
            .map(|OptimizedParam { name, mut tensor, .. }| {
                let numel = tensor.numel() as i64;
                let shape = tensor.size();
                tensor.set_data(&weights.narrow(0, offset, numel).view(shape.as_slice()));
                let grad = grads.narrow(0, offset, numel).view(shape.as_slice());
                // SAFETY: two live tensors of one shape, dtype and device.
                unsafe { trainer_set_grad(tensor.as_mut_ptr(), grad.as_ptr()) };
                let member = Member { name, tensor, offset, numel };
                offset += numel;
                member
            })
            .collect();
        Bucket {
            group,
            decay,
            members,
            exp_avg: weights.zeros_like(),
            exp_avg_sq: weights.zeros_like(),
            weights,
            grads,
            steps: 0,
        }
    }

    /// `buffer`'s part that belongs to `member`, in its shape.
    fn part(&self, buffer: &Tensor, member: &Member) -> Tensor {
        buffer.narrow(0, member.offset, member.numel).view(member.tensor.size().as_slice())
    }
}

/// The trained weights and the optimizer's state at one moment, per bucket, in host memory.
#[derive(Debug)]
pub struct OptimizerSnapshot {
    /// Each bucket's weights, first and second moments.
    buffers: Vec<[Tensor; 3]>,
    steps: Vec<i64>,
}

impl OptimizerSnapshot {
    const PARTS: [&str; 3] = ["weights", "exp_avg", "exp_avg_sq"];

    /// As named tensors, for a file: `<bucket>.weights`, `<bucket>.exp_avg`,
    /// `<bucket>.exp_avg_sq`, `<bucket>.steps`.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::new();
        for (index, (buffers, steps)) in self.buffers.iter().zip(&self.steps).enumerate() {
            for (part, buffer) in Self::PARTS.iter().zip(buffers) {
                named.push((format!("{index}.{part}"), buffer.shallow_clone()));
            }
            named.push((format!("{index}.steps"), Tensor::from(*steps)));
        }
        named
    }

    /// Read back from [`OptimizerSnapshot::named`]; names the first tensor missing.
    pub fn from_named(named: &std::collections::HashMap<String, Tensor>) -> Result<Self, String> {
        let entry = |name: String| named.get(&name).ok_or_else(|| format!("`{name}` is missing"));
        let buckets = named.len() / 4;
        let mut snapshot = OptimizerSnapshot { buffers: Vec::with_capacity(buckets), steps: Vec::new() };
        for index in 0..buckets {
            let [weights, exp_avg, exp_avg_sq] = Self::PARTS.map(|part| entry(format!("{index}.{part}")));
            snapshot.buffers.push([weights?.shallow_clone(), exp_avg?.shallow_clone(), exp_avg_sq?.shallow_clone()]);
            snapshot.steps.push(entry(format!("{index}.steps"))?.int64_value(&[]));
        }
        Ok(snapshot)
    }
}

#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    buckets: Vec<Bucket>,
}

impl AdamW {
    pub fn new(params: Vec<OptimizedParam>, config: AdamWConfig) -> Self {
        let mut keyed: Vec<((usize, bool, Kind), Vec<OptimizedParam>)> = Vec::new();
        for param in params {
            let key = (param.group, param.decay, param.tensor.kind());
            match keyed.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(param),
                None => keyed.push((key, vec![param])),
            }
        }
        let buckets = keyed.into_iter().map(|((group, decay, _), params)| Bucket::new(group, decay, params)).collect();
        AdamW { config, buckets }
    }

    pub fn zero_grad(&mut self) {
        for bucket in &mut self.buckets {
            let _ = bucket.grads.zero_();
        }
    }

    /// The L2 norm of all gradients together, as one scalar tensor (no host sync): the norm
    /// of the buffers' norms, as `torch.nn.utils.clip_grad_norm_` takes it over tensors, with
    /// no buffer-sized temporary.
    pub fn grad_norm(&self) -> Tensor {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self.buckets.iter().map(|b| b.grads.norm().to_kind(Kind::Float)).collect();
            Tensor::stack(&norms, 0).norm()
        })
    }

    /// Multiplies every gradient by `factor` (a scalar tensor), for clipping without a sync.
    pub fn scale_grads(&mut self, factor: &Tensor) {
        tch::no_grad(|| {
            for bucket in &mut self.buckets {
                let _ = bucket.grads.g_mul_(factor);
            }
        });
    }

    /// The sum of every weight, in float64, over a few buffers: equal on replicas whose
    /// weights are equal.
    pub fn weights_sum(&self) -> f64 {
        let sums: Vec<Tensor> = self.buckets.iter().map(|b| b.weights.sum(Kind::Double)).collect();
        tch::no_grad(|| Tensor::stack(&sums, 0).sum(Kind::Double)).double_value(&[])
    }

    /// The parameters of every group not `frozen`, in the buckets' order.
    pub fn trainable_params(&self, frozen: &[bool]) -> Vec<Tensor> {
        let trainable = self.buckets.iter().filter(|bucket| !frozen[bucket.group]);
        trainable.flat_map(|bucket| bucket.members.iter().map(|member| member.tensor.shallow_clone())).collect()
    }

    /// The gradient buffers of group `group` (writing them writes its parameters' gradients).
    pub fn group_grads(&self, group: usize) -> Vec<Tensor> {
        self.buckets.iter().filter(|b| b.group == group).map(|b| b.grads.shallow_clone()).collect()
    }

    /// Everything needed to continue exactly, as named tensors: `<parameter>.exp_avg`,
    /// `<parameter>.exp_avg_sq` and `<parameter>.step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.buckets
            .iter()
            .flat_map(|bucket| {
                bucket.members.iter().flat_map(move |member| {
                    [
                        (format!("{}.exp_avg", member.name), bucket.part(&bucket.exp_avg, member)),
                        (format!("{}.exp_avg_sq", member.name), bucket.part(&bucket.exp_avg_sq, member)),
                        (format!("{}.step", member.name), Tensor::from(bucket.steps)),
                    ]
                })
            })
            .collect()
    }

    /// Restores a state from [`AdamW::state`]; names the first entry that is missing or
    /// has the wrong shape.
    pub fn load_state(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<(), String> {
        let entry = |name: String| tensors.get(&name).ok_or_else(|| format!("`{name}` is missing"));
        tch::no_grad(|| {
            for bucket in &mut self.buckets {
                let mut steps = 0;
                for member in &bucket.members {
                    for (suffix, buffer) in [("exp_avg", &bucket.exp_avg), ("exp_avg_sq", &bucket.exp_avg_sq)] {
                        let name = format!("{}.{suffix}", member.name);
                        let saved = entry(name.clone())?;
                        let mut target = bucket.part(buffer, member);
                        if saved.size() != target.size() {
                            return Err(format!(
                                "`{name}` has shape {:?}, the model needs {:?}",
                                saved.size(),
                                target.size()
                            ));
                        }
                        target.copy_(saved);
                    }
                    // Checkpoints of the per-tensor optimizer counted per parameter, and
                    // left out a parameter without a gradient: the bucket goes on from the
                    // most updated of its parameters.
                    steps = steps.max(entry(format!("{}.step", member.name))?.int64_value(&[]));
                }
                bucket.steps = steps;
            }
            Ok(())
        })
    }

    /// A copy of every trained weight and of the optimizer's state, in host memory: the
    /// flat buffers of each bucket as they are, so restoring it is bit-exact.
    pub fn snapshot(&self) -> OptimizerSnapshot {
        let host_copy = |buffer: &Tensor| match buffer.device() {
            Device::Cpu => buffer.copy(),
            _ => buffer.to_device(Device::Cpu),
        };
        tch::no_grad(|| OptimizerSnapshot {
            buffers: self
                .buckets
                .iter()
                .map(|b| [host_copy(&b.weights), host_copy(&b.exp_avg), host_copy(&b.exp_avg_sq)])
                .collect(),
            steps: self.buckets.iter().map(|b| b.steps).collect(),
        })
    }

    /// Puts back the weights and state of [`AdamW::snapshot`] (of this optimizer); says
    /// what does not fit when the snapshot is of another model.
    pub fn restore(&mut self, snapshot: &OptimizerSnapshot) -> Result<(), String> {
        if snapshot.buffers.len() != self.buckets.len() {
            return Err(format!("{} buffers for {} in the model", snapshot.buffers.len(), self.buckets.len()));
        }
        for (index, (bucket, saved)) in self.buckets.iter().zip(&snapshot.buffers).enumerate() {
            if saved.iter().any(|buffer| buffer.size() != bucket.weights.size()) {
                return Err(format!(
                    "buffer {index} has shape {:?}, the model {:?}",
                    saved[0].size(),
                    bucket.weights.size()
                ));
            }
        }
        tch::no_grad(|| {
            for ((bucket, saved), &steps) in self.buckets.iter_mut().zip(&snapshot.buffers).zip(&snapshot.steps) {
                bucket.weights.copy_(&saved[0]);
                bucket.exp_avg.copy_(&saved[1]);
                bucket.exp_avg_sq.copy_(&saved[2]);
                bucket.steps = steps;
            }
        });
        Ok(())
    }

    /// One update with learning rate `lrs[group]` for each group that is not frozen
    /// (`frozen[group]`); frozen groups keep their weights and moments untouched.
    pub fn step(&mut self, lrs: &[f64], frozen: &[bool]) {
        let config = self.config;
        tch::no_grad(|| {
            for bucket in &mut self.buckets {
                if frozen[bucket.group] {
                    continue;
                }
                bucket.steps += 1;
                let weight_decay = if bucket.decay { config.weight_decay } else { 0.0 };
                let moments = Moments { exp_avg: &mut bucket.exp_avg, exp_avg_sq: &mut bucket.exp_avg_sq };
                let lr = lrs[bucket.group];
                fused_adamw(&mut bucket.weights, &bucket.grads, moments, bucket.steps, lr, weight_decay, &config);
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
    fn a_snapshot_restores_weights_moments_and_steps_bit_for_bit_and_survives_a_file() {
        let weight = Tensor::from_slice(&[1.0f32, -2.0, 0.25]).set_requires_grad(true);
        let bias = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let params = vec![
            OptimizedParam { name: "w".into(), tensor: weight.shallow_clone(), group: 0, decay: true },
            OptimizedParam { name: "b".into(), tensor: bias.shallow_clone(), group: 1, decay: false },
        ];
        let mut adamw = AdamW::new(params, AdamWConfig::default());
        let train = |adamw: &mut AdamW, steps: usize| {
            for _ in 0..steps {
                adamw.zero_grad();
                (weight.square().sum(Kind::Float) + (&bias * 3.0).sum(Kind::Float)).backward();
                adamw.step(&[0.1, 0.01], &[false, false]);
            }
        };
        train(&mut adamw, 2);
        let snapshot = adamw.snapshot();
        let before: Vec<(String, Tensor)> = adamw.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let weights_before = (weight.copy(), bias.copy());
        train(&mut adamw, 3);
        assert!(!weight.equal(&weights_before.0), "training moved the weights");
        // Through a file, as a checkpoint keeps it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshot.safetensors");
        Tensor::write_safetensors(&snapshot.named(), &file).unwrap();
        let read_back = OptimizerSnapshot::from_named(&Tensor::read_safetensors(&file).unwrap().into_iter().collect());
        adamw.restore(&read_back.unwrap()).unwrap();
        assert!(weight.equal(&weights_before.0) && bias.equal(&weights_before.1));
        for ((name, now), (_, then)) in adamw.state().iter().zip(&before) {
            assert!(now.equal(then), "{name}");
        }
        let mut other = AdamW::new(
            vec![OptimizedParam {
                name: "x".into(),
                tensor: Tensor::zeros([3], (Kind::Float, Device::Cpu)),
                group: 0,
                decay: true,
            }],
            AdamWConfig::default(),
        );
        assert!(other.restore(&snapshot).unwrap_err().contains("buffers"), "another model's snapshot is refused");
    }

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

    /// The update of one parameter as its own tensor.
    fn per_tensor_update(
        weight: &mut Tensor,
        grad: &Tensor,
        (exp_avg, exp_avg_sq): (&mut Tensor, &mut Tensor),
        step: i64,
        lr: f64,
        decay: bool,
    ) {
        let config = AdamWConfig::default();
        let weight_decay = if decay { config.weight_decay } else { 0.0 };
        fused_adamw(weight, grad, Moments { exp_avg, exp_avg_sq }, step, lr, weight_decay, &config);
    }

    #[test]
    fn buckets_give_the_per_tensor_update_bit_for_bit() {
        tch::manual_seed(3);
        // (shape, group, decay): two groups, each with decayed and undecayed parameters.
        let layout: [(&[i64], usize, bool); 5] =
            [(&[64, 48], 0, true), (&[48], 0, false), (&[7, 3, 5], 1, true), (&[1], 1, false), (&[300], 0, true)];
        let initial: Vec<Tensor> =
            layout.iter().map(|(shape, _, _)| Tensor::randn(*shape, (Kind::Float, tch::Device::Cpu))).collect();
        let params: Vec<Tensor> = initial.iter().map(|t| t.copy().set_requires_grad(true)).collect();
        let mut adamw = AdamW::new(
            params
                .iter()
                .zip(&layout)
                .enumerate()
                .map(|(i, (tensor, (_, group, decay)))| OptimizedParam {
                    name: format!("p{i}"),
                    tensor: tensor.shallow_clone(),
                    group: *group,
                    decay: *decay,
                })
                .collect(),
            AdamWConfig::default(),
        );
        let mut reference: Vec<Tensor> = initial.iter().map(Tensor::copy).collect();
        let mut moments: Vec<(Tensor, Tensor)> = initial.iter().map(|t| (t.zeros_like(), t.zeros_like())).collect();
        let mut steps = [0i64; 2];
        for step in 0..6 {
            // Group 1 is frozen for steps 2 and 3; the learning rates change every step.
            let frozen = [false, step == 2 || step == 3];
            let lrs = [1e-2 / (step + 1) as f64, 3e-3];
            let coefficients: Vec<Tensor> = initial.iter().map(|t| t.randn_like() * 1e-3).collect();
            adamw.zero_grad();
            let loss =
                params.iter().zip(&coefficients).map(|(p, c)| (p * c).sum(Kind::Float)).reduce(|a, b| a + b).unwrap();
            loss.backward();
            adamw.step(&lrs, &frozen);
            for group in 0..2 {
                steps[group] += i64::from(!frozen[group]);
            }
            tch::no_grad(|| {
                for (i, (_, group, decay)) in layout.iter().enumerate() {
                    if !frozen[*group] {
                        let (exp_avg, exp_avg_sq) = &mut moments[i];
                        let update = (exp_avg, exp_avg_sq);
                        per_tensor_update(
                            &mut reference[i],
                            &coefficients[i],
                            update,
                            steps[*group],
                            lrs[*group],
                            *decay,
                        );
                    }
                }
            });
        }
        for (i, (param, want)) in params.iter().zip(&reference).enumerate() {
            assert!(param.equal(want), "p{i} differs from the per-tensor update");
        }
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
