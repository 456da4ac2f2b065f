//! `llrd`: layer-wise learning-rate decay, as timm's `param_groups_layer_decay` and
//! open_clip's `--image-layer-decay`: the top of each tower trains at the full rate and
//! every layer below at `decay` times the layer above it, so the pretrained features near
//! the input move least. Needs a run with `--group-by layer`, whose groups carry their depth.
//!
//! For a group at depth `index` of its tower's `count` (0: the embeddings, `count - 1`: the
//! final norm after the last block): multiplier `decay_t ^ (count - 1 - index)`, where
//! `decay_t` is the tower's own decay if given, else `decay`. Groups outside the towers
//! (projections, heads) keep 1. The multiplier applies on top of the rate the schedule's
//! policy sets, so `--policy cosine_warmup --policy llrd:decay=0.65` decays by depth on a
//! warmup and cosine, as timm's fine-tuning recipes do.
//!
//! Arguments: `decay` (default 0.75, in (0, 1]); `<tower>=<decay>` for a tower of its own
//! (e.g. `text=0.9`). Owns: learning-rate multipliers (which any number of policies may set).

use trainer_policy_sdk::{Args, Decision, Knobs, Observation, Policy, RunSpec, export_policy};

struct LayerDecay {
    multipliers: Vec<f64>,
}

fn checked_decay(argument: &str, decay: f64) -> Result<f64, String> {
    if decay > 0.0 && decay <= 1.0 {
        Ok(decay)
    } else {
        Err(format!("argument `{argument}`: decay must be in (0, 1], got {decay}"))
    }
}

impl Policy for LayerDecay {
    fn init(spec: RunSpec) -> Result<Self, String> {
        let mut towers: Vec<&str> = Vec::new();
        for group in spec.groups.iter().filter(|group| group.depth.is_some()) {
            if !towers.contains(&group.tower.as_str()) {
                towers.push(&group.tower);
            }
        }
        if towers.is_empty() {
            return Err("no group has a depth: run with `--group-by layer`, which makes each layer a group".into());
        }
        let mut known = vec!["decay"];
        known.extend(&towers);
        let args = Args::new(&spec.args, &known)?;
        let decay = checked_decay("decay", args.f64_or("decay", 0.75)?)?;
        let mut tower_decays = Vec::with_capacity(towers.len());
        for tower in &towers {
            tower_decays.push(match args.f64_opt(tower)? {
                Some(own) => checked_decay(tower, own)?,
                None => decay,
            });
        }
        let multipliers = spec
            .groups
            .iter()
            .map(|group| match &group.depth {
                Some(depth) => {
                    let decay = towers.iter().position(|t| *t == group.tower).map_or(decay, |t| tower_decays[t]);
                    decay.powi(depth.count.saturating_sub(1 + depth.index) as i32)
                }
                None => 1.0,
            })
            .collect();
        Ok(Self { multipliers })
    }

    fn knobs(&self) -> Knobs {
        Knobs::LR_MULTIPLIERS
    }

    fn decide(&mut self, _observation: Observation) -> Decision {
        Decision { lr_multipliers: self.multipliers.iter().map(|&m| Some(m)).collect(), ..Decision::keep() }
    }
}

export_policy!(LayerDecay);
