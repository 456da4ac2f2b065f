//! OWL-ViT and OWLv2 open-vocabulary detectors as Hugging Face `transformers` defines them
//! (`OwlViTForObjectDetection`, `Owlv2ForObjectDetection`): the same `config.json` fields
//! with the same defaults, the same parameter names (`owlvit.` or `owlv2.` before the CLIP
//! towers), so checkpoints move between this trainer and `transformers` unchanged.
//!
//! The towers are CLIP's ([`super::clip`]); detection adds, per image patch, a class
//! embedding scored against text queries, a box, and (OWLv2) an objectness score. Every
//! patch token is multiplied by the class token and normalised before the heads read it;
//! boxes are biased toward their patch's place on the grid.

use super::clip::{
    Activation, ClipTextConfig, ClipVisionConfig, Compute, TextPooling, TextTransformer, VisionTransformer, layer_norm,
    normalize, projection,
};
use super::groups::{GroupBy, GroupLayout, Place, TowerPart};
use super::pretrained::{self, PretrainedError};
use crate::files::FileError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Which of the two detector families a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwlVariant {
    OwlVit,
    Owlv2,
}

impl OwlVariant {
    /// `model_type` in `config.json`, and the prefix of the towers' parameter names.
    pub fn model_type(self) -> &'static str {
        match self {
            OwlVariant::OwlVit => "owlvit",
            OwlVariant::Owlv2 => "owlv2",
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            OwlVariant::OwlVit => "OwlViTForObjectDetection",
            OwlVariant::Owlv2 => "Owlv2ForObjectDetection",
        }
    }
}

/// A Hugging Face OWL-ViT or OWLv2 `config.json`. Fields a file leaves out take the
/// `transformers` defaults of its `model_type`, which differ from CLIP's (16 text positions,
/// 768-pixel images, end token 49407 read at the largest id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwlConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: i64,
    pub logit_scale_init_value: f64,
    pub model_type: String,
    pub architectures: Vec<String>,
}

impl OwlConfig {
    /// The `transformers` defaults of `variant`.
    pub fn defaults(variant: OwlVariant) -> Self {
        OwlConfig {
            text_config: ClipTextConfig {
                vocab_size: 49408,
                hidden_size: 512,
                intermediate_size: 2048,
                num_hidden_layers: 12,
                num_attention_heads: 8,
                max_position_embeddings: 16,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
                eos_token_id: 49407,
                bos_token_id: 49406,
                pad_token_id: 0,
            },
            vision_config: ClipVisionConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                num_channels: 3,
                image_size: 768,
                patch_size: if variant == OwlVariant::Owlv2 { 16 } else { 32 },
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            },
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            model_type: variant.model_type().to_string(),
            architectures: vec![variant.architecture().to_string()],
        }
    }

    /// Reads `dir/config.json`, filling what it leaves out from its `model_type`'s defaults.
    pub fn read(dir: &Path) -> Result<Self, PretrainedError> {
        let given: serde_json::Value = pretrained::read_config(dir)?;
        let path = dir.join(pretrained::CONFIG_FILE);
        let variant = match given.get("model_type").and_then(|t| t.as_str()) {
            Some("owlvit") => OwlVariant::OwlVit,
            Some("owlv2") => OwlVariant::Owlv2,
            other => {
                return Err(FileError::format(
                    &path,
                    format!("model_type {other:?} is not an OWL-ViT (`owlvit`) or OWLv2 (`owlv2`) detector"),
                )
                .into());
            }
        };
        let mut merged = serde_json::to_value(OwlConfig::defaults(variant)).expect("configs serialize");
        overlay(&mut merged, given);
        let config: OwlConfig =
            serde_json::from_value(merged).map_err(|err| FileError::format(&path, err.to_string()))?;
        if config.text_config.hidden_size != config.projection_dim {
            // The class head maps patches to the text width and scores them against projected
            // queries, so `transformers` needs the two equal as well.
            return Err(FileError::format(
                &path,
                format!(
                    "text_config.hidden_size ({}) must equal projection_dim ({}) for detection",
                    config.text_config.hidden_size, config.projection_dim
                ),
            )
            .into());
        }
        Ok(config)
    }

    pub fn variant(&self) -> OwlVariant {
        if self.model_type == "owlv2" { OwlVariant::Owlv2 } else { OwlVariant::OwlVit }
    }

    /// Patches per side of the (square) input image.
    pub fn grid_size(&self) -> i64 {
        self.vision_config.image_size / self.vision_config.patch_size
    }
}

/// Writes the fields of `given` over `base`, recursing into objects, so a nested section
/// that names one field keeps the defaults of the others.
fn overlay(base: &mut serde_json::Value, given: serde_json::Value) {
    match (base, given) {
        (serde_json::Value::Object(base), serde_json::Value::Object(given)) => {
            for (key, value) in given {
                match base.get_mut(&key) {
                    Some(slot) if slot.is_object() && value.is_object() => overlay(slot, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, given) => *base = given,
    }
}

/// `box_head` (and OWLv2's `objectness_head`): three dense layers with exact (erf) GELUs.
#[derive(Debug)]
struct PredictionHead {
    dense0: nn::Linear,
    dense1: nn::Linear,
    dense2: nn::Linear,
}

impl PredictionHead {
    fn new(path: nn::Path, width: i64, outputs: i64) -> Self {
        PredictionHead {
            dense0: nn::linear(&path / "dense0", width, width, Default::default()),
            dense1: nn::linear(&path / "dense1", width, width, Default::default()),
            dense2: nn::linear(&path / "dense2", width, outputs, Default::default()),
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = self.dense0.forward(xs).gelu("none");
        let xs = self.dense1.forward(&xs).gelu("none");
        self.dense2.forward(&xs)
    }
}

/// `class_head`: a class embedding per patch, and a learned shift and scale of its logits.
#[derive(Debug)]
struct ClassHead {
    dense0: nn::Linear,
    logit_shift: nn::Linear,
    logit_scale: nn::Linear,
}

/// The outputs of a detection pass.
#[derive(Debug)]
pub struct OwlOutput {
    /// `(batch, patches, queries)`: per patch, the logit of each text query.
    pub logits: Tensor,
    /// `(batch, patches, 4)`: normalised centre x, centre y, width, height in [0, 1].
    pub pred_boxes: Tensor,
    /// `(batch, patches)`, OWLv2 only: how likely each patch is an object, whatever its class.
    pub objectness_logits: Option<Tensor>,
}

/// `OwlViTForObjectDetection` or `Owlv2ForObjectDetection`.
#[derive(Debug)]
pub struct OwlDetector {
    text_model: TextTransformer,
    vision_model: VisionTransformer,
    text_projection: nn::Linear,
    class_head: ClassHead,
    box_head: PredictionHead,
    objectness_head: Option<PredictionHead>,
    layer_norm: nn::LayerNorm,
    /// The towers' contrastive logit scale: detection does not read it, policies watch it.
    logit_scale: Tensor,
    /// `(patches, 4)`: added to the box head's output before the sigmoid.
    box_bias: Tensor,
    /// How the towers' transformer layers run; the heads compute in float32.
    compute: Compute,
}

impl OwlDetector {
    pub fn new(root: &nn::Path, config: &OwlConfig) -> Self {
        let variant = config.variant();
        let towers = root / variant.model_type();
        let text = &config.text_config;
        let vision = &config.vision_config;
        let width = vision.hidden_size;
        // Present in every checkpoint, though detection does not read it: kept so that a
        // saved folder is whole for `transformers`.
        projection(&towers / "visual_projection", width, config.projection_dim);
        let class_head = root / "class_head";
        OwlDetector {
            text_model: TextTransformer::new(&towers / "text_model", text, TextPooling::LargestId),
            vision_model: VisionTransformer::new(&towers / "vision_model", vision, "pre_layernorm"),
            text_projection: projection(&towers / "text_projection", text.hidden_size, config.projection_dim),
            class_head: ClassHead {
                dense0: nn::linear(&class_head / "dense0", width, text.hidden_size, Default::default()),
                logit_shift: nn::linear(&class_head / "logit_shift", width, 1, Default::default()),
                logit_scale: nn::linear(&class_head / "logit_scale", width, 1, Default::default()),
            },
            box_head: PredictionHead::new(root / "box_head", width, 4),
            objectness_head: (variant == OwlVariant::Owlv2)
                .then(|| PredictionHead::new(root / "objectness_head", width, 1)),
            layer_norm: layer_norm(root / "layer_norm", width, vision.layer_norm_eps),
            logit_scale: towers.var("logit_scale", &[], nn::Init::Const(config.logit_scale_init_value)),
            box_bias: box_bias(config.grid_size(), root.device()),
            compute: Compute::default(),
        }
    }

    /// Loads a Hugging Face OWL-ViT or OWLv2 folder onto `device`, float32 whatever the
    /// file's dtype.
    pub fn from_pretrained(
        dir: &Path,
        device: Device,
    ) -> Result<(OwlConfig, nn::VarStore, OwlDetector), PretrainedError> {
        let config = OwlConfig::read(dir)?;
        let var_store = nn::VarStore::new(device);
        let model = OwlDetector::new(&var_store.root(), &config);
        pretrained::load_weights(&var_store, &pretrained::weights_in(dir))?;
        Ok((config, var_store, model))
    }

    /// Mixed precision of the towers, as [`super::clip::Clip::set_compute_kind`].
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute.kind = kind;
    }

    /// Activation checkpointing of the towers, as [`super::clip::Clip::set_grad_checkpointing`].
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        self.compute.checkpointing = on;
    }

    /// Inserts embedding rows for words added to the vocabulary at ids `at..` (see
    /// [`crate::data::clip_tokenizer::ClipTokenizer::add_words`]), each starting as the mean
    /// of the rows of `pieces`, its ids before: the variable
    /// `{model}.text_model.embeddings.new_token_embedding`.
    pub fn insert_tokens(&mut self, root: &nn::Path, config: &OwlConfig, at: i64, pieces: &[Vec<i64>]) {
        let table = self.text_model.token_table();
        let rows: Vec<Tensor> = pieces
            .iter()
            .map(|ids| {
                table.index_select(0, &Tensor::from_slice(ids).to_device(table.device())).mean_dim(0, false, None)
            })
            .collect();
        let path = root / config.variant().model_type() / "text_model";
        self.text_model.insert_tokens(&path, at, &tch::no_grad(|| Tensor::stack(&rows, 0)));
    }

    /// The token embedding with inserted rows in place, for saving under the Hugging Face
    /// name `{model}.text_model.embeddings.token_embedding.weight`; `None` without them.
    pub fn merged_token_embedding(&self) -> Option<Tensor> {
        self.text_model.merged_token_embedding()
    }

    /// L2-normalised query embeddings for `(queries, tokens)` ids: `text_embeds` of
    /// `transformers`' `OwlViTModel`.
    pub fn query_embeddings(&self, input_ids: &Tensor) -> Tensor {
        normalize(&self.text_projection.forward(&self.text_model.forward(input_ids, self.compute)))
    }

    /// `(batch, patches, hidden)`: each patch token times the class token, normalised; what
    /// every head reads.
    pub fn image_features(&self, pixel_values: &Tensor) -> Tensor {
        let tokens = self.vision_model.tokens(pixel_values, self.compute);
        let patches = tokens.size()[1] - 1;
        self.layer_norm.forward(&(tokens.narrow(1, 1, patches) * tokens.narrow(1, 0, 1)))
    }

    /// `(batch, patches, queries)` logits of `queries`, `(queries, dim)` shared by every
    /// image or `(batch, queries, dim)`. Where `query_mask` (same leading shape as the
    /// queries, true for a real query) is false the logit is float32's lowest, as
    /// `transformers` marks padded queries.
    pub fn class_logits(&self, image_features: &Tensor, queries: &Tensor, query_mask: Option<&Tensor>) -> Tensor {
        let head = &self.class_head;
        let unit = |xs: &Tensor| xs / (xs.norm_scalaropt_dim(2.0, [-1], true) + 1e-6);
        let class_embeddings = unit(&head.dense0.forward(image_features));
        let similarity = class_embeddings.matmul(&unit(queries).transpose(-1, -2));
        let shift = head.logit_shift.forward(image_features);
        let scale = head.logit_scale.forward(image_features).elu() + 1.0;
        let logits = (similarity + shift) * scale;
        match query_mask {
            None => logits,
            Some(mask) => logits.masked_fill(&mask.logical_not().unsqueeze(-2), f32::MIN as f64),
        }
    }

    /// Starts every class logit near the logit of `probability` (RetinaNet's prior for focal
    /// losses), through the class head's shift; its scale starts near 1.
    pub fn set_class_prior(&mut self, probability: f64) {
        let prior = (probability / (1.0 - probability)).ln();
        tch::no_grad(|| {
            if let Some(bias) = &mut self.class_head.logit_shift.bs {
                let _ = bias.fill_(prior);
            }
        });
    }

    /// exp(logit_scale) of the towers, as a 0-d tensor.
    pub fn logit_scale(&self) -> Tensor {
        self.logit_scale.exp()
    }

    /// `(batch, patches, 4)` boxes, normalised centre and size.
    pub fn pred_boxes(&self, image_features: &Tensor) -> Tensor {
        (self.box_head.forward(image_features) + &self.box_bias).sigmoid()
    }

    /// `(batch, patches)` objectness logits (OWLv2). As in `transformers`, the features are
    /// detached: the objectness loss trains the head only.
    pub fn objectness_logits(&self, image_features: &Tensor) -> Option<Tensor> {
        let head = self.objectness_head.as_ref()?;
        Some(head.forward(&image_features.detach()).squeeze_dim(-1))
    }

    /// Every output for `pixel_values` against `queries` (see [`OwlDetector::class_logits`]).
    pub fn detect(&self, pixel_values: &Tensor, queries: &Tensor, query_mask: Option<&Tensor>) -> OwlOutput {
        let features = self.image_features(pixel_values);
        OwlOutput {
            logits: self.class_logits(&features, queries, query_mask),
            pred_boxes: self.pred_boxes(&features),
            objectness_logits: self.objectness_logits(&features),
        }
    }
}

/// The box bias of a `grid` x `grid` patch grid: the logit of each patch's far corner
/// (`(column + 1) / grid`, `(row + 1) / grid`) for the centre, and of `1 / grid` for the size,
/// each with transformers' 1e-4 guard, rows in the patches' order.
fn box_bias(grid: i64, device: Device) -> Tensor {
    let options = (Kind::Float, device);
    let corner = Tensor::arange_start(1, grid + 1, options) / grid as f64;
    let x = corner.view([1, grid]).expand([grid, grid], false);
    let y = corner.view([grid, 1]).expand([grid, grid], false);
    let centres = Tensor::stack(&[x, y], -1).view([grid * grid, 2]).clamp(0.0, 1.0);
    let logit = |c: &Tensor| (c + 1e-4).log() - (-c + 1e-4).log1p();
    let sizes = Tensor::full([grid * grid, 2], 1.0 / grid as f64, options);
    Tensor::cat(&[logit(&centres), logit(&sizes)], -1)
}

/// The heads of detection fine-tuning, each a parameter group of its own (OWLv2's objectness
/// head last).
pub fn heads(variant: OwlVariant) -> &'static [&'static str] {
    match variant {
        OwlVariant::OwlVit => &["class_head", "box_head"],
        OwlVariant::Owlv2 => &["class_head", "box_head", "objectness_head"],
    }
}

/// Parameter groups of detection fine-tuning, each with its own learning rate: the towers
/// (or, by layer, each of their layers), then the [`heads`]; with `new_tokens`, the rows of
/// words added to the vocabulary are a last group of their own, [`NEW_TOKENS`] (see
/// [`OwlDetector::insert_tokens`]).
pub fn parameter_groups(config: &OwlConfig, by: GroupBy, new_tokens: bool) -> GroupLayout {
    let towers = [
        ("vision", config.vision_config.num_hidden_layers as usize),
        ("text", config.text_config.num_hidden_layers as usize),
    ];
    let mut heads = heads(config.variant()).to_vec();
    if new_tokens {
        heads.push(NEW_TOKENS);
    }
    GroupLayout::new(by, &towers, &heads)
}

/// The group of the embedding rows of words added to the vocabulary.
pub const NEW_TOKENS: &str = "new_tokens";

/// Where a parameter belongs by its Hugging Face name: in tower 0 (vision, with the norm
/// after it) or 1 (text, with its projection), or in one of the [`heads`]; `None` for the
/// image projection and the logit scale, which detection does not read.
pub fn parameter_place(name: &str) -> Option<Place> {
    if name.ends_with(".embeddings.new_token_embedding") {
        return None;
    }
    let towers = name.strip_prefix("owlvit.").or_else(|| name.strip_prefix("owlv2."));
    match towers {
        Some(rest) => {
            if let Some(vision) = rest.strip_prefix("vision_model.") {
                Some(Place::Tower(0, TowerPart::of(vision)))
            } else if let Some(text) = rest.strip_prefix("text_model.") {
                Some(Place::Tower(1, TowerPart::of(text)))
            } else if rest.starts_with("text_projection") {
                Some(Place::Tower(1, TowerPart::After))
            } else {
                None
            }
        }
        None if name.starts_with("layer_norm.") => Some(Place::Tower(0, TowerPart::After)),
        None if name.starts_with("class_head.") => Some(Place::Head(0)),
        None if name.starts_with("box_head.") => Some(Place::Head(1)),
        None if name.starts_with("objectness_head.") => Some(Place::Head(2)),
        None => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_config_takes_the_defaults_of_its_model_type_for_what_it_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"model_type": "owlv2", "text_config": {"hidden_size": 64}, "projection_dim": 64}"#;
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        let config = OwlConfig::read(dir.path()).unwrap();
        assert_eq!(config.variant(), OwlVariant::Owlv2);
        assert_eq!(config.text_config.hidden_size, 64);
        assert_eq!(config.text_config.max_position_embeddings, 16);
        assert_eq!(config.text_config.pad_token_id, 0);
        assert_eq!((config.vision_config.image_size, config.vision_config.patch_size), (768, 16));
        assert_eq!(config.grid_size(), 48);
    }

    #[test]
    fn a_config_of_another_model_is_refused_by_its_type() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "clip"}"#).unwrap();
        let error = OwlConfig::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("config.json") && error.contains("\"clip\""), "{error}");
    }

    #[test]
    fn box_bias_centres_each_patch_at_its_far_corner() {
        let bias = box_bias(4, Device::Cpu);
        assert_eq!(bias.size(), [16, 4]);
        let sigmoid = bias.sigmoid();
        // Patch 6 is row 1, column 2: far corner (3/4, 2/4); sizes 1/4.
        let at = |patch: i64, k: i64| sigmoid.double_value(&[patch, k]);
        assert!((at(6, 0) - 0.75).abs() < 1e-3 && (at(6, 1) - 0.5).abs() < 1e-3);
        assert!((at(6, 2) - 0.25).abs() < 1e-3 && (at(6, 3) - 0.25).abs() < 1e-3);
    }

    /// An OWL-ViT of one layer a tower, 16 wide, over 50 tokens and 16-pixel images.
    pub(crate) fn tiny_config() -> OwlConfig {
        let mut config = OwlConfig::defaults(OwlVariant::OwlVit);
        (config.text_config.vocab_size, config.text_config.hidden_size, config.text_config.intermediate_size) =
            (50, 16, 32);
        (config.text_config.num_hidden_layers, config.text_config.num_attention_heads) = (1, 2);
        let vision = &mut config.vision_config;
        (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers) = (16, 32, 1);
        (vision.num_attention_heads, vision.image_size, vision.patch_size) = (2, 16, 8);
        config.projection_dim = 16;
        config
    }

    /// Fine-tuning trains the queries too: the class logits reach the text tower.
    #[test]
    fn class_logits_carry_gradient_into_both_towers() {
        tch::manual_seed(3);
        let store = nn::VarStore::new(Device::Cpu);
        let model = OwlDetector::new(&store.root(), &tiny_config());
        let ids = Tensor::from_slice(&[1i64, 5, 49, 0, 1, 7, 49, 0]).view([2, 4]);
        let pixels = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let logits = model.class_logits(&model.image_features(&pixels), &model.query_embeddings(&ids), None);
        (logits.select(-1, 0) * 2.0 - logits.select(-1, 1)).sum(Kind::Float).backward();
        for (name, variable) in store.variables() {
            let reached = variable.grad().defined() && variable.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
            let expected =
                !["owlvit.visual_projection", "owlvit.logit_scale", "box_head"].iter().any(|p| name.starts_with(p));
            assert_eq!(reached, expected, "{name}");
        }
    }

    #[test]
    fn parameters_fall_into_the_tower_and_head_groups() {
        let place = parameter_place;
        assert_eq!(
            place("owlvit.vision_model.encoder.layers.0.mlp.fc1.weight"),
            Some(Place::Tower(0, TowerPart::Block(0)))
        );
        assert_eq!(place("owlv2.vision_model.pre_layernorm.bias"), Some(Place::Tower(0, TowerPart::Embeddings)));
        assert_eq!(place("layer_norm.weight"), Some(Place::Tower(0, TowerPart::After)));
        assert_eq!(place("owlv2.text_projection.weight"), Some(Place::Tower(1, TowerPart::After)));
        assert_eq!(place("class_head.logit_shift.bias"), Some(Place::Head(0)));
        assert_eq!(place("box_head.dense2.weight"), Some(Place::Head(1)));
        assert_eq!(place("objectness_head.dense0.weight"), Some(Place::Head(2)));
        assert_eq!(place("owlvit.visual_projection.weight"), None);
        assert_eq!(place("owlvit.logit_scale"), None);
    }
}
