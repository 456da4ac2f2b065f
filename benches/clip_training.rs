//! The trainer's side of the CLIP benchmarks: a seeded CLIP and its AdamW (decay on matrices
//! only, weight decay 0.1), as the PyTorch side of `pytorch_clip_step.py` builds them.

use tch::{Device, nn};
use trainer::engine::optimizer::{AdamW, AdamWConfig, OptimizedParam};
use trainer::models::clip::{Clip, ClipConfig, parameter_groups, parameter_place};
use trainer::models::groups::GroupBy;

pub fn clip_and_adamw(config: &ClipConfig) -> (Clip, AdamW) {
    tch::manual_seed(0);
    let store = nn::VarStore::new(Device::Cpu);
    let model = Clip::new(&store.root(), config);
    let layout = parameter_groups(config, GroupBy::Part);
    let params = store
        .variables()
        .into_iter()
        .map(|(name, tensor)| {
            let group = layout.index(parameter_place(&name)).expect("every CLIP parameter has a group");
            OptimizedParam { group, decay: tensor.dim() >= 2, name, tensor }
        })
        .collect();
    (model, AdamW::new(params, AdamWConfig { weight_decay: 0.1, ..Default::default() }))
}
