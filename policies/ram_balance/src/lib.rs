//! `ram_balance`: recognize-anything's loss mix for RAM and Tag2Text (`finetune.py`):
//! `loss_t2t + loss_tag / (loss_tag / loss_t2t).detach() + loss_dis`, the tag loss rescaled
//! to the caption loss's value while its gradient keeps its direction.
//!
//! The weight of the tag loss is `caption / tag` of the raw values the last step measured
//! (1 before both were finite with the tag loss above 0, and kept through a step where they
//! were not); every other loss keeps weight 1. One step late: `finetune.py` divides by the
//! ratio of the step it trains, which a policy, deciding before its step, cannot see; the
//! weighted tag loss is then the caption loss times this step's ratio over the last one's.
//!
//! Arguments: `tag` (default `tag`), `caption` (default `t2t`): the names of the two losses.
//! Owns: loss weights.

use trainer_policy_sdk::state::{StateReader, StateWriter};
use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct RamBalance {
    losses: usize,
    tag: usize,
    caption: usize,
    // State.
    ratio: f64,
}

impl Policy for RamBalance {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let args = Args::new(&spec.args, &["tag", "caption"])?;
        let position = |argument: &str, default: &str| -> Result<usize, String> {
            let name = args.str_or(argument, default);
            spec.losses.iter().position(|loss| *loss == name).ok_or_else(|| {
                format!("argument `{argument}`: this run has no loss `{name}` (its losses: {})", spec.losses.join(", "))
            })
        };
        let (tag, caption) = (position("tag", "tag")?, position("caption", "t2t")?);
        if tag == caption {
            return Err("arguments `tag` and `caption` name the same loss".into());
        }
        Ok(Self { losses: spec.losses.len(), tag, caption, ratio: 1.0 })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LOSS_WEIGHTS
    }

    fn decide(&mut self, observation: Observation) -> Decision {
        if let (Some(&tag), Some(&caption)) = (observation.losses.get(self.tag), observation.losses.get(self.caption))
            && tag.is_finite()
            && caption.is_finite()
            && tag > 0.0
        {
            self.ratio = caption / tag;
        }
        let mut weights = vec![Some(1.0); self.losses];
        weights[self.tag] = Some(self.ratio);
        Decision { loss_weights: weights, ..Decision::keep() }
    }

    fn save_state(&self) -> Vec<u8> {
        StateWriter::new().f64s(&[self.ratio]).finish()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut reader = StateReader::new(state);
        self.ratio = reader.f64s("ratio", 1)?[0];
        reader.finish()
    }
}

export_policy!(RamBalance);
