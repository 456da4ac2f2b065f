//! CLIP as Hugging Face `transformers` defines it (`CLIPModel`): the same `config.json`
//! fields and the same parameter names, so a checkpoint's tensors map one to one onto
//! these variables. A ViT image tower and a causal transformer text tower, each with a
//! projection into a shared space, and a learnable logit scale.

use super::checkpoint;
use super::groups::{GroupBy, GroupLayout, Place, TowerPart};
use super::open_clip;
use super::pretrained::{self, PretrainedError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The logit scale is kept at or below this after each optimizer step, as in CLIP
/// training (open_clip clamps the parameter the same way).
pub const MAX_LOGIT_SCALE: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => xs * (xs * 1.702).sigmoid(),
            Activation::Gelu => xs.gelu("none"),
        }
    }
}

/// `text_config` of a Hugging Face CLIP `config.json`. A missing field takes the
/// `transformers` default, as `save_pretrained` may leave defaults out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// The text tower's output is read at the first occurrence of this token (or, for the
    /// legacy value 2, at the largest id, as `transformers` does).
    pub eos_token_id: i64,
    pub bos_token_id: i64,
    pub pad_token_id: i64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            bos_token_id: 49406,
            pad_token_id: 1,
        }
    }
}

/// `vision_config` of a Hugging Face CLIP `config.json`, with the `transformers` defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A Hugging Face CLIP `config.json`, with the `transformers` defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: i64,
    pub logit_scale_init_value: f64,
    pub model_type: String,
    pub architectures: Vec<String>,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            model_type: "clip".to_string(),
            architectures: vec!["CLIPModel".to_string()],
        }
    }
}

/// The configuration of a CLIP checkpoint: a Hugging Face folder's `config.json`, or an
/// open_clip checkpoint's (`arch`: the architecture of a weights file, see
/// [`open_clip::config_json`]).
pub fn read_model_config(path: &Path, arch: Option<&str>) -> Result<ClipConfig, PretrainedError> {
    if open_clip::is_open_clip(path) { open_clip::read_config(path, arch) } else { pretrained::read_config(path) }
}

impl ClipConfig {
    /// A small CLIP for 28x28 Fashion-MNIST images and short prompts: trains on a CPU in
    /// about a minute.
    pub fn tiny(vocab_size: i64, context_length: i64, bos: i64, eos: i64, pad: i64) -> Self {
        ClipConfig {
            text_config: ClipTextConfig {
                vocab_size,
                hidden_size: 64,
                intermediate_size: 256,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                max_position_embeddings: context_length,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
                eos_token_id: eos,
                bos_token_id: bos,
                pad_token_id: pad,
            },
            vision_config: ClipVisionConfig {
                hidden_size: 64,
                intermediate_size: 256,
                num_hidden_layers: 3,
                num_attention_heads: 4,
                num_channels: 3,
                image_size: 28,
                patch_size: 7,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            },
            projection_dim: 64,
            logit_scale_init_value: (1.0f64 / 0.07).ln(),
            ..ClipConfig::default()
        }
    }
}

pub(super) fn layer_norm(path: nn::Path, size: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(path, vec![size], nn::LayerNormConfig { eps, ..Default::default() })
}

pub(super) fn projection(path: nn::Path, input: i64, output: i64) -> nn::Linear {
    nn::linear(path, input, output, nn::LinearConfig { bias: false, ..Default::default() })
}

/// `layer` applied in the dtype of `xs`: float32 weights are cast for the call (an explicit
/// cast, as autocast would make), so float32 master weights still receive the gradient.
pub(super) fn linear_as_input(layer: &nn::Linear, xs: &Tensor) -> Tensor {
    let kind = xs.kind();
    if kind == layer.ws.kind() {
        return layer.forward(xs);
    }
    xs.linear(&layer.ws.to_kind(kind), layer.bs.as_ref().map(|bias| bias.to_kind(kind)))
}

#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
}

impl Attention {
    fn new(path: nn::Path, hidden: i64, num_heads: i64) -> Self {
        let linear = |name: &str| nn::linear(&path / name, hidden, hidden, Default::default());
        Attention {
            q_proj: linear("q_proj"),
            k_proj: linear("k_proj"),
            v_proj: linear("v_proj"),
            out_proj: linear("out_proj"),
            num_heads,
        }
    }

    fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let (batch, tokens, hidden) = xs.size3().expect("attention input is (batch, tokens, hidden)");
        let heads = |t: Tensor| t.view([batch, tokens, self.num_heads, hidden / self.num_heads]).transpose(1, 2);
        let q = heads(linear_as_input(&self.q_proj, xs));
        let k = heads(linear_as_input(&self.k_proj, xs));
        let v = heads(linear_as_input(&self.v_proj, xs));
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, None, false);
        linear_as_input(&self.out_proj, &attended.transpose(1, 2).reshape([batch, tokens, hidden]))
    }
}

/// The sizes a transformer encoder is built with; both towers have one.
#[derive(Debug, Clone, Copy)]
struct EncoderShape {
    layers: i64,
    hidden: i64,
    intermediate: i64,
    heads: i64,
    activation: Activation,
    eps: f64,
}

impl From<&ClipTextConfig> for EncoderShape {
    fn from(c: &ClipTextConfig) -> Self {
        EncoderShape {
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            activation: c.hidden_act,
            eps: c.layer_norm_eps,
        }
    }
}

impl From<&ClipVisionConfig> for EncoderShape {
    fn from(c: &ClipVisionConfig) -> Self {
        EncoderShape {
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            activation: c.hidden_act,
            eps: c.layer_norm_eps,
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    layer_norm2: nn::LayerNorm,
    activation: Activation,
}

impl EncoderLayer {
    fn new(path: nn::Path, shape: EncoderShape) -> Self {
        let EncoderShape { hidden, intermediate, heads, activation, eps, .. } = shape;
        EncoderLayer {
            self_attn: Attention::new(&path / "self_attn", hidden, heads),
            layer_norm1: layer_norm(&path / "layer_norm1", hidden, eps),
            fc1: nn::linear(&path / "mlp" / "fc1", hidden, intermediate, Default::default()),
            fc2: nn::linear(&path / "mlp" / "fc2", intermediate, hidden, Default::default()),
            layer_norm2: layer_norm(&path / "layer_norm2", hidden, eps),
            activation,
        }
    }

    /// The residual stream `xs` stays float32; attention and the MLP compute in `compute`.
    fn forward(&self, xs: &Tensor, causal: bool, compute: Kind) -> Tensor {
        let attended = self.self_attn.forward(&self.layer_norm1.forward(xs).to_kind(compute), causal);
        let xs = xs + attended.to_kind(Kind::Float);
        let hidden = linear_as_input(&self.fc1, &self.layer_norm2.forward(&xs).to_kind(compute));
        let mlp = linear_as_input(&self.fc2, &self.activation.apply(&hidden));
        xs + mlp.to_kind(Kind::Float)
    }
}

/// How the transformer layers run: the dtype they compute in (weights, embeddings, layer
/// norms and the loss stay float32), and whether their activations are checkpointed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Compute {
    pub kind: Kind,
    pub checkpointing: bool,
}

impl Default for Compute {
    fn default() -> Self {
        Compute { kind: Kind::Float, checkpointing: false }
    }
}

#[derive(Debug)]
struct Encoder {
    /// Shared with the autograd graph while a checkpointed forward awaits its backward.
    layers: Vec<Arc<EncoderLayer>>,
}

/// A layer held by a checkpointed block until its backward has run.
struct GraphLayer(Arc<EncoderLayer>);

// SAFETY: the graph calls the layer's forward one call at a time (once in the forward pass,
// once in backward, while the caller waits in `backward`), and that forward only reads the
// layer's tensors, which libtorch allows from any thread.
unsafe impl Send for GraphLayer {}

impl GraphLayer {
    fn forward(&self, xs: &Tensor, causal: bool, compute: Kind) -> Tensor {
        self.0.forward(xs, causal, compute)
    }
}

impl Encoder {
    fn new(path: nn::Path, shape: EncoderShape) -> Self {
        let layers = (0..shape.layers).map(|i| Arc::new(EncoderLayer::new(&path / "layers" / i, shape))).collect();
        Encoder { layers }
    }

    fn forward(&self, xs: &Tensor, causal: bool, compute: Compute) -> Tensor {
        let checkpointing = compute.checkpointing && checkpoint::grad_enabled();
        self.layers.iter().fold(xs.shallow_clone(), |xs, layer| {
            if !checkpointing {
                return layer.forward(&xs, causal, compute.kind);
            }
            let layer = GraphLayer(Arc::clone(layer));
            checkpoint::checkpointed(&xs, move |xs| layer.forward(xs, causal, compute.kind))
        })
    }
}

/// Where a text tower reads its pooled output.
#[derive(Debug, Clone, Copy)]
pub(super) enum TextPooling {
    /// At each sequence's first occurrence of this token.
    FirstEndToken(i64),
    /// At each sequence's largest id (the end token of CLIP's vocabulary).
    LargestId,
}

impl TextPooling {
    /// CLIP's rule: configs from before transformers PR #24773 say 2, and their end token
    /// is the largest id.
    fn of_clip(c: &ClipTextConfig) -> Self {
        if c.eos_token_id == 2 { TextPooling::LargestId } else { TextPooling::FirstEndToken(c.eos_token_id) }
    }
}

/// `text_model` of `CLIPModel` (and of OWL-ViT).
#[derive(Debug)]
pub(super) struct TextTransformer {
    token_embedding: nn::Embedding,
    /// Rows of words added to the vocabulary, a variable of their own so that they can train
    /// at a rate of their own, and the id of the first: they stand before the rows from it on.
    inserted_tokens: Option<(Tensor, i64)>,
    position_embedding: nn::Embedding,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
    pooling: TextPooling,
}

impl TextTransformer {
    pub(super) fn new(path: nn::Path, c: &ClipTextConfig, pooling: TextPooling) -> Self {
        let embeddings = &path / "embeddings";
        let init = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        TextTransformer {
            token_embedding: nn::embedding(&embeddings / "token_embedding", c.vocab_size, c.hidden_size, init),
            inserted_tokens: None,
            position_embedding: nn::embedding(
                &embeddings / "position_embedding",
                c.max_position_embeddings,
                c.hidden_size,
                init,
            ),
            encoder: Encoder::new(&path / "encoder", c.into()),
            final_layer_norm: layer_norm(&path / "final_layer_norm", c.hidden_size, c.layer_norm_eps),
            pooling,
        }
    }

    /// Inserts `rows` (`(words, hidden)`, their starting values) as the embeddings of ids
    /// `at..at + words`, the rows from `at` on moving after them: the variable
    /// `embeddings.new_token_embedding` under `path`.
    pub(super) fn insert_tokens(&mut self, path: &nn::Path, at: i64, rows: &Tensor) {
        let variable = (path / "embeddings").var_copy("new_token_embedding", rows);
        self.inserted_tokens = Some((variable, at));
    }

    /// The token embedding table as loaded.
    pub(super) fn token_table(&self) -> Tensor {
        self.token_embedding.ws.shallow_clone()
    }

    /// The token embedding with the inserted rows in place: what a model of the larger
    /// vocabulary holds; `None` without inserted rows.
    pub(super) fn merged_token_embedding(&self) -> Option<Tensor> {
        let (rows, at) = self.inserted_tokens.as_ref()?;
        let table = &self.token_embedding.ws;
        let after = table.size()[0] - at;
        Some(Tensor::cat(&[table.narrow(0, 0, *at), rows.shallow_clone(), table.narrow(0, *at, after)], 0))
    }

    /// The embeddings of `input_ids` with `rows` standing at ids `at..at + rows`: looked up
    /// in each table apart, since merging them would copy the whole vocabulary every step.
    fn embed_with_inserted(&self, input_ids: &Tensor, rows: &Tensor, at: i64) -> Tensor {
        let count = rows.size()[0];
        let inserted = input_ids.ge(at).logical_and(&input_ids.lt(at + count));
        // The old table's ids: those after the inserted ones shift down; inserted ones read row 0.
        let shifted = input_ids - input_ids.ge(at + count).to_kind(Kind::Int64) * count;
        let old = self.token_embedding.forward(&shifted.where_scalarother(&inserted.logical_not(), 0));
        let new = Tensor::embedding(rows, &(input_ids - at).clamp(0, count - 1), -1, false, false);
        new.where_self(&inserted.unsqueeze(-1), &old)
    }

    /// Pooled output at each sequence's end token: `(batch, hidden)`.
    pub(super) fn forward(&self, input_ids: &Tensor, compute: Compute) -> Tensor {
        let tokens = input_ids.size()[1];
        let positions = Tensor::arange(tokens, (Kind::Int64, input_ids.device()));
        let embedded = match &self.inserted_tokens {
            Some((rows, at)) => self.embed_with_inserted(input_ids, rows, *at),
            None => self.token_embedding.forward(input_ids),
        };
        let xs = embedded + self.position_embedding.forward(&positions);
        let xs = self.final_layer_norm.forward(&self.encoder.forward(&xs, true, compute));
        let eos_index = match self.pooling {
            TextPooling::LargestId => input_ids.argmax(-1, false),
            TextPooling::FirstEndToken(id) => input_ids.eq(id).to_kind(Kind::Int).argmax(-1, false),
        };
        let batch = Tensor::arange(input_ids.size()[0], (Kind::Int64, input_ids.device()));
        xs.index(&[Some(batch), Some(eos_index)])
    }
}

/// `vision_model` of `CLIPModel` (and of OWL-ViT, whose first norm is `pre_layernorm`).
#[derive(Debug)]
pub(super) struct VisionTransformer {
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: nn::Embedding,
    pre_norm: nn::LayerNorm,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
}

/// The Hugging Face name of CLIP's first vision norm (misspelled there).
pub(super) const CLIP_PRE_NORM: &str = "pre_layrnorm";

impl VisionTransformer {
    /// `pre_norm` names the layer norm before the encoder.
    pub(super) fn new(path: nn::Path, c: &ClipVisionConfig, pre_norm: &str) -> Self {
        let embeddings = &path / "embeddings";
        let patches = (c.image_size / c.patch_size).pow(2);
        let conv = nn::ConvConfig { stride: c.patch_size, bias: false, ..Default::default() };
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        VisionTransformer {
            class_embedding: embeddings.var("class_embedding", &[c.hidden_size], init),
            patch_embedding: nn::conv2d(
                &embeddings / "patch_embedding",
                c.num_channels,
                c.hidden_size,
                c.patch_size,
                conv,
            ),
            position_embedding: nn::embedding(
                &embeddings / "position_embedding",
                patches + 1,
                c.hidden_size,
                nn::EmbeddingConfig { ws_init: init, ..Default::default() },
            ),
            pre_norm: layer_norm(&path / pre_norm, c.hidden_size, c.layer_norm_eps),
            encoder: Encoder::new(&path / "encoder", c.into()),
            post_layernorm: layer_norm(&path / "post_layernorm", c.hidden_size, c.layer_norm_eps),
        }
    }

    /// Pooled output at the class token: `(batch, hidden)`.
    fn forward(&self, pixel_values: &Tensor, compute: Compute) -> Tensor {
        self.post_layernorm.forward(&self.encoder_output(pixel_values, compute).select(1, 0))
    }

    /// Every token (class token first) after the post layer norm: `(batch, tokens, hidden)`.
    pub(super) fn tokens(&self, pixel_values: &Tensor, compute: Compute) -> Tensor {
        self.post_layernorm.forward(&self.encoder_output(pixel_values, compute))
    }

    fn encoder_output(&self, pixel_values: &Tensor, compute: Compute) -> Tensor {
        let patches = self.patch_embedding.forward(pixel_values).flatten(2, -1).transpose(1, 2);
        let (batch, _, hidden) = patches.size3().expect("patch embeddings are (batch, patches, hidden)");
        let class = self.class_embedding.view([1, 1, hidden]).expand([batch, 1, hidden], false);
        let xs = Tensor::cat(&[class, patches], 1) + &self.position_embedding.ws;
        self.encoder.forward(&self.pre_norm.forward(&xs), false, compute)
    }
}

/// `CLIPModel`: both towers, their projections and the logit scale.
#[derive(Debug)]
pub struct Clip {
    text_model: TextTransformer,
    vision_model: VisionTransformer,
    text_projection: nn::Linear,
    visual_projection: nn::Linear,
    logit_scale: Tensor,
    compute: Compute,
}

impl Clip {
    pub fn new(root: &nn::Path, config: &ClipConfig) -> Self {
        let text = &config.text_config;
        let vision = &config.vision_config;
        Clip {
            text_model: TextTransformer::new(root / "text_model", text, TextPooling::of_clip(text)),
            vision_model: VisionTransformer::new(root / "vision_model", vision, CLIP_PRE_NORM),
            text_projection: projection(root / "text_projection", text.hidden_size, config.projection_dim),
            visual_projection: projection(root / "visual_projection", vision.hidden_size, config.projection_dim),
            logit_scale: root.var("logit_scale", &[], nn::Init::Const(config.logit_scale_init_value)),
            compute: Compute::default(),
        }
    }

    /// Mixed precision: `Kind::BFloat16` runs the transformer layers in bfloat16 through
    /// explicit casts; `Kind::Float` (the default) computes everything in float32.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute.kind = kind;
    }

    /// Activation checkpointing of every transformer layer of both towers while gradients
    /// are recorded: less memory for one more forward of each layer in backward.
    pub fn set_grad_checkpointing(&mut self, on: bool) {
        self.compute.checkpointing = on;
    }

    /// Loads a Hugging Face CLIP folder (`config.json`, `model.safetensors` or
    /// `pytorch_model.bin`) onto `device`, with float32 variables whatever the file's dtype.
    /// An open_clip folder or OpenAI's `.pt` ([`super::open_clip`]) loads the same way.
    pub fn from_pretrained(dir: &Path, device: Device) -> Result<(ClipConfig, nn::VarStore, Clip), PretrainedError> {
        Clip::from_checkpoint(dir, None, device)
    }

    /// Like [`Clip::from_pretrained`], also from an open_clip weights file of the
    /// architecture `arch`.
    pub fn from_checkpoint(
        path: &Path,
        arch: Option<&str>,
        device: Device,
    ) -> Result<(ClipConfig, nn::VarStore, Clip), PretrainedError> {
        let config = read_model_config(path, arch)?;
        let var_store = nn::VarStore::new(device);
        let model = Clip::new(&var_store.root(), &config);
        pretrained::load_folder_named(&var_store, path, |name| Some(name.to_string()), false)?;
        Ok((config, var_store, model))
    }

    /// L2-normalised image embeddings for `(batch, channels, height, width)` pixels.
    pub fn image_embeddings(&self, pixel_values: &Tensor) -> Tensor {
        normalize(&self.image_features(pixel_values))
    }

    /// The image embeddings before their normalisation (OpenAI CLIP's `encode_image`).
    pub fn image_features(&self, pixel_values: &Tensor) -> Tensor {
        self.visual_projection.forward(&self.vision_model.forward(pixel_values, self.compute))
    }

    /// The vision tower's tokens after its final layer norm, `(batch, tokens, hidden)`, and
    /// the L2-normalised image embeddings, from one pass.
    pub fn image_tokens_and_embeddings(&self, pixel_values: &Tensor) -> (Tensor, Tensor) {
        let tokens = self.vision_model.tokens(pixel_values, self.compute);
        let embeddings = normalize(&self.visual_projection.forward(&tokens.select(1, 0)));
        (tokens, embeddings)
    }

    /// L2-normalised text embeddings for `(batch, tokens)` ids.
    pub fn text_embeddings(&self, input_ids: &Tensor) -> Tensor {
        normalize(&self.text_projection.forward(&self.text_model.forward(input_ids, self.compute)))
    }

    /// exp(logit_scale): the inverse temperature of the contrastive logits.
    pub fn logit_scale(&self) -> Tensor {
        self.logit_scale.exp()
    }

    /// Keeps exp(logit_scale) at or below [`MAX_LOGIT_SCALE`]; called after each update.
    pub fn clamp_logit_scale(&mut self) {
        tch::no_grad(|| {
            let _ = self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE.ln());
        });
    }

    /// `logits_per_image` of `transformers`: scaled cosine similarities, `(images, texts)`.
    pub fn logits_per_image(&self, pixel_values: &Tensor, input_ids: &Tensor) -> Tensor {
        self.image_embeddings(pixel_values).matmul(&self.text_embeddings(input_ids).tr()) * self.logit_scale()
    }

    /// The symmetric InfoNCE loss of CLIP for aligned image/text pairs.
    pub fn contrastive_loss(&self, pixel_values: &Tensor, input_ids: &Tensor) -> Tensor {
        contrastive_loss(&self.image_embeddings(pixel_values), &self.text_embeddings(input_ids), &self.logit_scale())
    }
}

/// CLIP's symmetric InfoNCE loss of aligned `(batch, dim)` embeddings at inverse
/// temperature `scale`; apart from the model so that gradient accumulation and data
/// parallelism can feed it embeddings computed in pieces and on other processes.
pub fn contrastive_loss(image_embeddings: &Tensor, text_embeddings: &Tensor, scale: &Tensor) -> Tensor {
    let logits_per_image = image_embeddings.matmul(&text_embeddings.tr()) * scale;
    let targets = Tensor::arange(logits_per_image.size()[0], (Kind::Int64, logits_per_image.device()));
    let image_loss = logits_per_image.cross_entropy_for_logits(&targets);
    let text_loss = logits_per_image.tr().cross_entropy_for_logits(&targets);
    (image_loss + text_loss) / 2.0
}

/// `xs` divided by its L2 norm along the last dimension.
pub fn normalize(xs: &Tensor) -> Tensor {
    xs / xs.norm_scalaropt_dim(2.0, [-1], true)
}

/// The parts of CLIP outside its towers, each a parameter group of its own: the projections
/// into the shared space, and the logit scale.
pub const HEADS: [&str; 2] = ["projection", "logit_scale"];

/// The parameter groups of CLIP, each with its own learning rate: the two towers (or, by
/// layer, each of their layers), then [`HEADS`].
pub fn parameter_groups(config: &ClipConfig, by: GroupBy) -> GroupLayout {
    GroupLayout::new(by, &towers(config), &HEADS)
}

/// CLIP's towers, in the order of [`parameter_place`].
pub const TOWERS: [&str; 2] = ["vision", "text"];

/// CLIP's towers with their counts of blocks.
pub fn towers(config: &ClipConfig) -> [(&'static str, usize); 2] {
    let blocks = [config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers];
    [(TOWERS[0], blocks[0] as usize), (TOWERS[1], blocks[1] as usize)]
}

/// Where a parameter of CLIP belongs, by its Hugging Face name: in tower 0 (vision) or 1
/// (text), or in one of [`HEADS`].
pub fn parameter_place(name: &str) -> Place {
    if let Some(rest) = name.strip_prefix("vision_model.") {
        Place::Tower(0, TowerPart::of(rest))
    } else if let Some(rest) = name.strip_prefix("text_model.") {
        Place::Tower(1, TowerPart::of(rest))
    } else if name == "logit_scale" {
        Place::Head(1)
    } else {
        Place::Head(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words inserted into the vocabulary are looked up as if the table were merged.
    #[test]
    fn inserted_rows_read_as_the_merged_table() {
        tch::manual_seed(4);
        let config = ClipConfig::tiny(10, 6, 8, 9, 0).text_config;
        let store = nn::VarStore::new(Device::Cpu);
        let mut text = TextTransformer::new(store.root() / "text", &config, TextPooling::LargestId);
        let rows = Tensor::randn([2, config.hidden_size], (Kind::Float, Device::Cpu));
        text.insert_tokens(&(store.root() / "text"), 9, &rows);
        let ids = Tensor::from_slice(&[8i64, 3, 9, 10, 11, 0]).view([1, 6]);
        let merged = text.merged_token_embedding().unwrap();
        let expected = merged.index_select(0, &ids.view([-1])).view([1, 6, -1]);
        let (rows, at) = text.inserted_tokens.as_ref().unwrap();
        assert!(text.embed_with_inserted(&ids, rows, *at).equal(&expected));
    }

    #[test]
    fn bfloat16_compute_stays_close_to_float32_and_trains_the_float32_weights() {
        tch::manual_seed(6);
        let config = ClipConfig::tiny(20, 6, 1, 19, 0);
        let var_store = nn::VarStore::new(Device::Cpu);
        let mut model = Clip::new(&var_store.root(), &config);
        let pixels = Tensor::randn([4, 3, 28, 28], (Kind::Float, Device::Cpu));
        let ids = Tensor::from_slice(&[1i64, 5, 7, 19, 0, 0, 1, 8, 19, 0, 0, 0, 1, 3, 4, 9, 19, 0, 1, 12, 19, 0, 0, 0])
            .view([4, 6]);
        let full = tch::no_grad(|| model.logits_per_image(&pixels, &ids));
        model.set_compute_kind(Kind::BFloat16);
        let mixed = model.logits_per_image(&pixels, &ids);
        assert_eq!(mixed.kind(), Kind::Float, "embeddings and logits stay float32");
        let error = (&full - &mixed).abs().max().double_value(&[]);
        assert!(error < 0.05 * full.abs().max().double_value(&[]), "bf16 logits differ by {error}");
        let loss = model.contrastive_loss(&pixels, &ids);
        loss.backward();
        assert!(loss.double_value(&[]).is_finite());
        for (name, var) in var_store.variables() {
            assert_eq!(var.kind(), Kind::Float, "{name} stays a float32 master weight");
            assert!(var.grad().defined(), "{name} receives a gradient");
        }
    }

    /// Each variable's gradient after one backward of the contrastive loss, by name.
    fn gradients(model: &Clip, var_store: &nn::VarStore, pixels: &Tensor, ids: &Tensor) -> Vec<(String, Tensor)> {
        for var in var_store.trainable_variables() {
            let mut grad = var.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
        model.contrastive_loss(pixels, ids).backward();
        let mut grads: Vec<(String, Tensor)> = var_store
            .variables()
            .into_iter()
            .filter(|(_, var)| var.requires_grad())
            .map(|(n, v)| (n, v.grad().copy()))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        grads
    }

    #[test]
    fn checkpointed_layers_give_the_gradients_of_plain_ones() {
        tch::manual_seed(7);
        let config = ClipConfig::tiny(20, 6, 1, 19, 0);
        let var_store = nn::VarStore::new(Device::Cpu);
        let mut model = Clip::new(&var_store.root(), &config);
        let pixels = Tensor::randn([4, 3, 28, 28], (Kind::Float, Device::Cpu));
        let ids = Tensor::randint_low(2, 18, [4, 6], (Kind::Int64, Device::Cpu));
        let _ = ids.narrow(1, 5, 1).fill_(19);
        // Trained throughout, and with the embeddings frozen so that the first layer's input
        // needs no gradient while its weights do.
        for frozen_embeddings in [false, true] {
            if frozen_embeddings {
                for (name, var) in var_store.variables() {
                    if name.contains("embedding") {
                        let _ = var.set_requires_grad(false);
                    }
                }
            }
            model.set_grad_checkpointing(false);
            let plain = gradients(&model, &var_store, &pixels, &ids);
            model.set_grad_checkpointing(true);
            let checkpointed = gradients(&model, &var_store, &pixels, &ids);
            assert_eq!(plain.len(), checkpointed.len());
            for ((name, a), (_, b)) in plain.iter().zip(&checkpointed) {
                assert!(b.defined() && b.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name} has a gradient");
                assert!(a.equal(b), "{name}: gradients differ by {}", (a - b).abs().max().double_value(&[]));
            }
        }
    }
}
