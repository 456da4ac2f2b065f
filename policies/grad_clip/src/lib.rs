//! `grad_clip`: clips the global gradient norm at `max_norm` (as PyTorch's
//! `clip_grad_norm_`: gradients are scaled by `min(1, max_norm / (norm + 1e-6))`), from step
//! `start` on; before it, no clipping.
//!
//! Arguments: `max_norm` (default 1.0), `start` (default 0). Owns: grad clip.

use trainer_policy_sdk::{Args, Decision, GradClip, Knobs, Observation, Policy, RunSpec, export_policy};

struct ClipGradients {
    max_norm: f64,
    start: u64,
}

impl Policy for ClipGradients {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["max_norm", "start"])?;
        let max_norm = args.f64_or("max_norm", 1.0)?;
        if max_norm <= 0.0 {
            return Err(format!("argument `max_norm`: must be > 0, got {max_norm}"));
        }
        Ok(Self { max_norm, start: args.u64_or("start", 0)? })
    }

    fn knobs(&self) -> Knobs {
        Knobs::GRAD_CLIP
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        let grad_clip = if observation.step < self.start { GradClip::Off } else { GradClip::MaxNorm(self.max_norm) };
        Decision { grad_clip: Some(grad_clip), ..Decision::keep() }
    }
}

export_policy!(ClipGradients);
