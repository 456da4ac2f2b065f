//! Swin Transformer (Liu et al. 2021) as Microsoft's reference implementation defines it
//! (`models/swin_transformer.py` of microsoft/Swin-Transformer), the file recognize-anything
//! vendors as `ram/models/swin_transformer.py` for the image encoder of RAM, RAM++ and
//! Tag2Text. Parameter names are that file's (`patch_embed.proj`, `layers.{i}.blocks.{j}.
//! attn.qkv`, `layers.{i}.downsample.reduction`, `norm`), so a released checkpoint's
//! `visual_encoder.*` tensors map one to one.
//!
//! What the reference does that a Swin elsewhere may not (timm's, say, puts patch merging at
//! the start of the next stage, under that stage's name):
//! - patch merging ends stage `i` (`layers.{i}.downsample`): it concatenates the tokens at
//!   (even row, even column), (odd, even), (even, odd), (odd, odd), normalises the 4C
//!   channels and reduces them to 2C without bias;
//! - a window as large as its stage's resolution or larger shrinks to that resolution and is
//!   not shifted (the last stage at 224 px with window 7, and at 384 px with window 12);
//! - shifted windows mask attention between the regions the roll brought together with
//!   -100 (not -inf) added before the softmax, and every window adds its head's relative
//!   position bias, read from a `(2W-1)^2 x heads` table;
//! - the encoder returns the average of the final tokens followed by the tokens, all after
//!   the final norm: `(batch, 1 + tokens, channels)`, which RAM projects with `image_proj`.
//!
//! The reference's buffers (`relative_position_index`, `attn_mask`) follow from the
//! configuration and are computed here; [`BUFFER_SUFFIXES`] names them so that a
//! checkpoint's copies can be told from parameters.

use super::checkpoint;
use super::clip::{Compute, layer_norm, linear_as_input};
use super::groups::TowerPart;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Device, Kind, Tensor, nn, nn::Module};

/// The ends of the names of the reference's buffers, which this module computes.
pub const BUFFER_SUFFIXES: [&str; 2] = ["attn.relative_position_index", "attn_mask"];

/// `nn.LayerNorm`'s default, which the reference uses throughout.
const LAYER_NORM_EPS: f64 = 1e-5;
/// What the reference adds to attention between regions a shifted window joins.
const MASKED: f64 = -100.0;

/// A Swin Transformer's shape, with the fields of RAM's `configs/swin/*.json` (and the
/// reference's defaults for those they leave out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    pub image_res: i64,
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    pub embed_dim: i64,
    pub depths: Vec<i64>,
    pub num_heads: Vec<i64>,
    pub window_size: i64,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

fn default_patch_size() -> i64 {
    4
}

fn default_mlp_ratio() -> f64 {
    4.0
}

impl SwinConfig {
    /// RAM's `config_swinB_224.json` (and `_384` with `image_res` 384, window 12).
    pub fn base(image_res: i64) -> Self {
        SwinConfig::of_size(image_res, 128, vec![4, 8, 16, 32])
    }

    /// RAM's `config_swinL_224.json` (and `_384`): the encoder of the released RAM++/RAM.
    pub fn large(image_res: i64) -> Self {
        SwinConfig::of_size(image_res, 192, vec![6, 12, 24, 48])
    }

    fn of_size(image_res: i64, embed_dim: i64, num_heads: Vec<i64>) -> Self {
        let window_size = if image_res == 384 { 12 } else { 7 };
        SwinConfig {
            image_res,
            patch_size: 4,
            embed_dim,
            depths: vec![2, 2, 18, 2],
            num_heads,
            window_size,
            mlp_ratio: 4.0,
        }
    }

    /// This encoder at `image_res` pixels a side, with the window recognize-anything's
    /// configurations pair with it (7 at 224, 12 at 384; this one's at other sizes).
    pub fn at_resolution(&self, image_res: i64) -> Result<Self, String> {
        let window_size = match image_res {
            224 => 7,
            384 => 12,
            _ => self.window_size,
        };
        let config = SwinConfig { image_res, window_size, ..self.clone() };
        config.check()?;
        Ok(config)
    }

    /// Channels of the last stage: RAM's `vision_width`.
    pub fn num_features(&self) -> i64 {
        self.embed_dim << (self.depths.len() - 1)
    }

    /// Blocks over all stages.
    pub fn block_count(&self) -> usize {
        self.depths.iter().sum::<i64>() as usize
    }

    /// Why this shape cannot be built, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return Err(format!("depths {:?} and num_heads {:?} differ in length", self.depths, self.num_heads));
        }
        let mut resolution = self.image_res / self.patch_size;
        if resolution * self.patch_size != self.image_res {
            return Err(format!("image_res {} is not a multiple of patch_size {}", self.image_res, self.patch_size));
        }
        for (stage, &heads) in self.num_heads.iter().enumerate() {
            let dim = self.embed_dim << stage;
            if heads <= 0 || dim % heads != 0 {
                return Err(format!("stage {stage}: {dim} channels do not split into {heads} heads"));
            }
            let window = self.window_size.min(resolution);
            if resolution % window != 0 {
                return Err(format!("stage {stage}: resolution {resolution} is not a multiple of window {window}"));
            }
            if stage + 1 < self.depths.len() {
                if resolution % 2 != 0 {
                    return Err(format!("stage {stage}: resolution {resolution} is odd, so it cannot merge"));
                }
                resolution /= 2;
            }
        }
        Ok(())
    }

    /// Where the parameter `name` (inside the encoder) sits, for `--group-by layer`: the
    /// patch embedding first, then the blocks counted over the stages (a stage's patch
    /// merging with its last block), then the final norm.
    pub fn tower_part(&self, name: &str) -> TowerPart {
        let mut parts = name.split('.');
        match (parts.next(), parts.next().map(str::parse::<usize>), parts.next(), parts.next()) {
            (Some("patch_embed"), ..) => TowerPart::Embeddings,
            (Some("layers"), Some(Ok(stage)), Some(kind), block) if stage < self.depths.len() => {
                let before: i64 = self.depths[..stage].iter().sum();
                match (kind, block.map(str::parse::<i64>)) {
                    ("blocks", Some(Ok(block))) => TowerPart::Block((before + block) as usize),
                    _ => TowerPart::Block((before + self.depths[stage] - 1) as usize),
                }
            }
            _ => TowerPart::After,
        }
    }
}

/// Window attention with a relative position bias (`WindowAttention`).
#[derive(Debug)]
struct WindowAttention {
    qkv: nn::Linear,
    proj: nn::Linear,
    relative_position_bias_table: Tensor,
    /// `(window^2 * window^2)` rows of the table, row-major over (query, key).
    relative_position_index: Tensor,
    heads: i64,
    window: i64,
}

impl WindowAttention {
    fn new(path: nn::Path, dim: i64, heads: i64, window: i64) -> Self {
        let table_rows = (2 * window - 1) * (2 * window - 1);
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        WindowAttention {
            qkv: nn::linear(&path / "qkv", dim, 3 * dim, Default::default()),
            proj: nn::linear(&path / "proj", dim, dim, Default::default()),
            relative_position_bias_table: path.var("relative_position_bias_table", &[table_rows, heads], init),
            relative_position_index: relative_position_index(window, path.device()),
            heads,
            window,
        }
    }

    /// The bias each head adds within a window: `(heads, window^2, window^2)`.
    fn bias(&self) -> Tensor {
        let tokens = self.window * self.window;
        self.relative_position_bias_table
            .index_select(0, &self.relative_position_index)
            .view([tokens, tokens, -1])
            .permute([2, 0, 1])
    }

    /// `windows`: `(batch, windows, tokens, channels)`; `mask`: `(windows, tokens, tokens)`.
    fn forward(&self, windows: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (batch, count, tokens, dim) = windows.size4().expect("windows are (batch, windows, tokens, channels)");
        let qkv = linear_as_input(&self.qkv, windows)
            .view([batch, count, tokens, 3, self.heads, dim / self.heads])
            .permute([3, 0, 1, 4, 2, 5]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let bias = self.bias().unsqueeze(0);
        let added = match mask {
            Some(mask) => bias + mask.unsqueeze(1),
            None => bias,
        };
        let added = added.unsqueeze(0).to_kind(q.kind());
        // The default scale is the reference's head_dim^-0.5.
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(added), 0.0, false, None, false);
        linear_as_input(&self.proj, &attended.transpose(2, 3).reshape([batch, count, tokens, dim]))
    }
}

/// For each (query, key) pair of a window, row-major, its row of the bias table.
fn relative_position_index(window: i64, device: Device) -> Tensor {
    let span = 2 * window - 1;
    let index: Vec<i64> = (0..window * window)
        .flat_map(|query| {
            (0..window * window).map(move |key| {
                let (dy, dx) = (query / window - key / window, query % window - key % window);
                (dy + window - 1) * span + dx + window - 1
            })
        })
        .collect();
    Tensor::from_slice(&index).to_device(device)
}

/// `(batch, height, width, channels)` as `(batch, windows, window^2, channels)`.
fn partition(xs: &Tensor, window: i64) -> Tensor {
    let (batch, height, width, dim) = xs.size4().expect("a feature map is (batch, height, width, channels)");
    xs.view([batch, height / window, window, width / window, window, dim]).permute([0, 1, 3, 2, 4, 5]).reshape([
        batch,
        (height / window) * (width / window),
        window * window,
        dim,
    ])
}

/// The inverse of [`partition`].
fn reverse(windows: &Tensor, window: i64, height: i64, width: i64) -> Tensor {
    let (batch, _, _, dim) = windows.size4().expect("windows are (batch, windows, tokens, channels)");
    windows
        .view([batch, height / window, width / window, window, window, dim])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([batch, height, width, dim])
}

/// The reference's mask of a shifted window: 0 within a region, -100 across regions, for
/// each window of a `resolution`-square map rolled by `shift`: `(windows, window^2, window^2)`.
fn shifted_window_mask(resolution: i64, window: i64, shift: i64, device: Device) -> Tensor {
    let region = |at: i64| {
        if at < resolution - window {
            0
        } else if at < resolution - shift {
            1
        } else {
            2
        }
    };
    let regions: Vec<f32> =
        (0..resolution).flat_map(|y| (0..resolution).map(move |x| (region(y) * 3 + region(x)) as f32)).collect();
    let map = Tensor::from_slice(&regions).view([1, resolution, resolution, 1]);
    let windows = partition(&map, window).squeeze_dim(0).squeeze_dim(-1);
    let apart = windows.unsqueeze(1).ne_tensor(&windows.unsqueeze(2));
    Tensor::zeros(apart.size(), (Kind::Float, Device::Cpu)).masked_fill(&apart, MASKED).to_device(device)
}

/// One Swin block (`SwinTransformerBlock`): (shifted) window attention and an MLP, each
/// after a layer norm and added to the residual stream.
#[derive(Debug)]
struct SwinBlock {
    norm1: nn::LayerNorm,
    attn: WindowAttention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    resolution: i64,
    window: i64,
    shift: i64,
    mask: Option<Tensor>,
}

impl SwinBlock {
    fn new(path: nn::Path, dim: i64, heads: i64, resolution: i64, config: &SwinConfig, shifted: bool) -> Self {
        let (window, shift) = if resolution <= config.window_size {
            (resolution, 0)
        } else {
            (config.window_size, if shifted { config.window_size / 2 } else { 0 })
        };
        let hidden = (dim as f64 * config.mlp_ratio) as i64;
        let mask = (shift > 0).then(|| shifted_window_mask(resolution, window, shift, path.device()));
        SwinBlock {
            norm1: layer_norm(&path / "norm1", dim, LAYER_NORM_EPS),
            attn: WindowAttention::new(&path / "attn", dim, heads, window),
            norm2: layer_norm(&path / "norm2", dim, LAYER_NORM_EPS),
            fc1: nn::linear(&path / "mlp" / "fc1", dim, hidden, Default::default()),
            fc2: nn::linear(&path / "mlp" / "fc2", hidden, dim, Default::default()),
            resolution,
            window,
            shift,
            mask,
        }
    }

    /// `xs`: `(batch, resolution^2, channels)`, float32; attention and the MLP compute in
    /// `compute`.
    fn forward(&self, xs: &Tensor, compute: Kind) -> Tensor {
        let (batch, tokens, dim) = xs.size3().expect("tokens are (batch, tokens, channels)");
        let (side, shift) = (self.resolution, self.shift);
        let mut map = self.norm1.forward(xs).to_kind(compute).view([batch, side, side, dim]);
        if shift > 0 {
            map = map.roll([-shift, -shift], [1, 2]);
        }
        let attended = self.attn.forward(&partition(&map, self.window), self.mask.as_ref());
        let mut map = reverse(&attended, self.window, side, side);
        if shift > 0 {
            map = map.roll([shift, shift], [1, 2]);
        }
        let xs = xs + map.reshape([batch, tokens, dim]).to_kind(Kind::Float);
        let hidden = linear_as_input(&self.fc1, &self.norm2.forward(&xs).to_kind(compute)).gelu("none");
        xs + linear_as_input(&self.fc2, &hidden).to_kind(Kind::Float)
    }
}

/// A block held by a checkpointed forward until its backward has run.
struct GraphBlock(Arc<SwinBlock>);

// SAFETY: as for CLIP's layers: the graph calls the block's forward one call at a time and
// that forward only reads the block's tensors, which libtorch allows from any thread.
unsafe impl Send for GraphBlock {}

impl GraphBlock {
    fn forward(&self, xs: &Tensor, compute: Kind) -> Tensor {
        self.0.forward(xs, compute)
    }
}

/// `PatchMerging`: each 2x2 of tokens becomes one of twice the channels.
#[derive(Debug)]
struct PatchMerging {
    norm: nn::LayerNorm,
    reduction: nn::Linear,
}

impl PatchMerging {
    fn new(path: nn::Path, dim: i64) -> Self {
        PatchMerging {
            norm: layer_norm(&path / "norm", 4 * dim, LAYER_NORM_EPS),
            reduction: nn::linear(
                &path / "reduction",
                4 * dim,
                2 * dim,
                nn::LinearConfig { bias: false, ..Default::default() },
            ),
        }
    }

    fn forward(&self, xs: &Tensor, resolution: i64) -> Tensor {
        let (batch, _, dim) = xs.size3().expect("tokens are (batch, tokens, channels)");
        let map = xs.view([batch, resolution, resolution, dim]);
        let pick = |row: i64, column: i64| map.slice(1, row, resolution, 2).slice(2, column, resolution, 2);
        let merged = Tensor::cat(&[pick(0, 0), pick(1, 0), pick(0, 1), pick(1, 1)], -1).view([batch, -1, 4 * dim]);
        self.reduction.forward(&self.norm.forward(&merged))
    }
}

/// A stage (`BasicLayer`): its blocks, then patch merging unless it is the last.
#[derive(Debug)]
struct Stage {
    blocks: Vec<Arc<SwinBlock>>,
    downsample: Option<PatchMerging>,
    resolution: i64,
}

/// The encoder: patch embedding, the stages, the final norm.
#[derive(Debug)]
pub struct Swin {
    proj: nn::Conv2D,
    patch_norm: nn::LayerNorm,
    stages: Vec<Stage>,
    norm: nn::LayerNorm,
    compute: Compute,
}

impl Swin {
    /// `config` must pass [`SwinConfig::check`].
    pub fn new(path: &nn::Path, config: &SwinConfig) -> Self {
        let patch = &(path / "patch_embed");
        let conv = nn::ConvConfig { stride: config.patch_size, ..Default::default() };
        let mut resolution = config.image_res / config.patch_size;
        let last = config.depths.len() - 1;
        let stages = (0..=last)
            .map(|stage| {
                let dim = config.embed_dim << stage;
                let layer = path / "layers" / stage;
                let blocks = (0..config.depths[stage])
                    .map(|block| {
                        let heads = config.num_heads[stage];
                        let path = &layer / "blocks" / block;
                        Arc::new(SwinBlock::new(path, dim, heads, resolution, config, block % 2 == 1))
                    })
                    .collect();
                let downsample = (stage < last).then(|| PatchMerging::new(&layer / "downsample", dim));
                let built = Stage { blocks, downsample, resolution };
                if stage < last {
                    resolution /= 2;
                }
                built
            })
            .collect();
        Swin {
            proj: nn::conv2d(patch / "proj", 3, config.embed_dim, config.patch_size, conv),
            patch_norm: layer_norm(patch / "norm", config.embed_dim, LAYER_NORM_EPS),
            stages,
            norm: layer_norm(path / "norm", config.num_features(), LAYER_NORM_EPS),
            compute: Compute::default(),
        }
    }

    /// Attention and MLPs computed in `kind` (weights, norms and the residual stream stay
    /// float32).
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute.kind = kind;
    }

    /// Activation checkpointing of every block while gradients are recorded.
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        self.compute.checkpointing = on;
    }

    /// The reference's buffers under its names (inside the encoder): each block's
    /// `attn.relative_position_index` (`(window^2, window^2)`, int64), and each shifted
    /// block's `attn_mask`. A checkpoint loaded strictly by the reference needs them.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut buffers = Vec::new();
        for (stage, layer) in self.stages.iter().enumerate() {
            for (number, block) in layer.blocks.iter().enumerate() {
                let prefix = format!("layers.{stage}.blocks.{number}");
                let tokens = block.window * block.window;
                let index = block.attn.relative_position_index.view([tokens, tokens]);
                buffers.push((format!("{prefix}.attn.relative_position_index"), index));
                if let Some(mask) = &block.mask {
                    buffers.push((format!("{prefix}.attn_mask"), mask.shallow_clone()));
                }
            }
        }
        buffers
    }

    /// `pixel_values`: `(batch, 3, image_res, image_res)`, normalised. Returns the average
    /// token followed by every token: `(batch, 1 + tokens, num_features)`.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let compute = self.compute;
        let checkpointing = compute.checkpointing && checkpoint::grad_enabled();
        let patches = self.proj.forward(pixel_values).flatten(2, -1).transpose(1, 2);
        let mut xs = self.patch_norm.forward(&patches);
        for stage in &self.stages {
            for block in &stage.blocks {
                xs = if checkpointing {
                    let held = GraphBlock(Arc::clone(block));
                    checkpoint::checkpointed(&xs, move |xs| held.forward(xs, compute.kind))
                } else {
                    block.forward(&xs, compute.kind)
                };
            }
            if let Some(merging) = &stage.downsample {
                xs = merging.forward(&xs, stage.resolution);
            }
        }
        let xs = self.norm.forward(&xs);
        Tensor::cat(&[xs.mean_dim(1, true, Kind::Float), xs], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relative_position_index_is_the_references() {
        // The reference for window 2: offsets (dy, dx) in [-1, 1], row (dy + 1) * 3 + dx + 1.
        let index = Vec::<i64>::try_from(relative_position_index(2, Device::Cpu)).unwrap();
        assert_eq!(index, [4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]);
    }

    #[test]
    fn a_shifted_window_masks_only_across_regions() {
        // A 4x4 map, windows of 2, shift 1: the first window holds one region; the last
        // holds four, one token each.
        let mask = shifted_window_mask(4, 2, 1, Device::Cpu);
        assert_eq!(mask.size(), [4, 4, 4]);
        assert_eq!(mask.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        let last = Vec::<f32>::try_from(mask.get(3).flatten(0, -1)).unwrap();
        let expected: Vec<f32> = (0..16).map(|i| if i / 4 == i % 4 { 0.0 } else { -100.0 }).collect();
        assert_eq!(last, expected);
    }

    #[test]
    fn names_give_blocks_their_depth_over_the_stages() {
        let config = SwinConfig::base(224);
        assert_eq!(config.tower_part("patch_embed.proj.weight"), TowerPart::Embeddings);
        assert_eq!(config.tower_part("layers.0.blocks.1.attn.qkv.weight"), TowerPart::Block(1));
        assert_eq!(config.tower_part("layers.0.downsample.reduction.weight"), TowerPart::Block(1));
        assert_eq!(config.tower_part("layers.2.blocks.17.mlp.fc2.bias"), TowerPart::Block(21));
        assert_eq!(config.tower_part("layers.3.blocks.1.norm2.weight"), TowerPart::Block(23));
        assert_eq!(config.tower_part("norm.weight"), TowerPart::After);
        assert_eq!((config.block_count(), config.num_features()), (24, 1024));
        assert!(config.check().is_ok() && SwinConfig::large(384).check().is_ok());
    }
}
