//! BERT's layers under Hugging Face's names (`attention.self.query`,
//! `crossattention.output.LayerNorm`, `intermediate.dense`, `output.dense`), post-norm as
//! BERT is, for the models built of them, as recognize-anything's `ram/models/bert.py`
//! (BLIP's) defines them:
//! - RAM++'s and RAM's Query2Label tagging head, whose layers have cross-attention only
//!   (recognize-anything deletes each layer's self-attention and the embeddings,
//!   `del_selfattention`): [`BertCrossLayer`];
//! - RAM's and Tag2Text's tag encoder, `BertModel` in its `multimodal` mode (bidirectional
//!   self-attention, then cross-attention to the image): [`BertTextModel`];
//! - their caption decoder, `BertLMHeadModel` (causal self-attention, cross-attention to the
//!   tag encoder's tokens, and the language-model head whose output weights are the word
//!   embeddings): [`BertLmHead`].
//!
//! Keys and values of cross-attention read `encoder_width` channels (recognize-anything's
//! `BertConfig.encoder_width`), which may differ from `hidden_size`. Masked positions get
//! -10000 before the softmax, as that `bert.py` adds. Dropout (0.1 in `med_config.json`) is
//! not applied.

use super::clip::{layer_norm, linear_as_input};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Kind, Tensor, nn, nn::Module};

/// What `bert.py` adds to the attention scores of masked positions.
const MASKED: f64 = -10000.0;
/// BERT's width per attention head; a checkpoint's shapes do not hold the head count.
pub const HEAD_WIDTH: i64 = 64;
/// Label smoothing of `BertLMHeadModel`'s loss in recognize-anything's `bert.py`.
const LABEL_SMOOTHING: f64 = 0.1;
/// Targets the language-model loss leaves out (PyTorch's `ignore_index`).
pub const IGNORED: i64 = -100;

/// The fields of a BERT `config.json` these layers use, with recognize-anything's
/// `encoder_width`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub layer_norm_eps: f64,
    pub encoder_width: i64,
}

impl BertConfig {
    /// RAM++'s tagging head: `configs/q2l_config.json` with `encoder_width = 512`.
    pub fn query2label() -> Self {
        BertConfig {
            hidden_size: 768,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 3072,
            layer_norm_eps: 1e-12,
            encoder_width: 512,
        }
    }
}

/// `BertAttention`: multi-head attention of the hidden states over a context, then
/// `output.dense` and the residual's layer norm.
/// The head count is not the weights': RAM's tag encoder reads the tagging head's
/// cross-attention weights with heads of its own.
#[derive(Debug)]
struct BertAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
}

impl BertAttention {
    fn new(path: nn::Path, config: &BertConfig, context_width: i64) -> Self {
        let hidden = config.hidden_size;
        let attention = &path / "self";
        BertAttention {
            query: nn::linear(&attention / "query", hidden, hidden, Default::default()),
            key: nn::linear(&attention / "key", context_width, hidden, Default::default()),
            value: nn::linear(&attention / "value", context_width, hidden, Default::default()),
            dense: nn::linear(&path / "output" / "dense", hidden, hidden, Default::default()),
            layer_norm: layer_norm(&path / "output" / "LayerNorm", hidden, config.layer_norm_eps),
        }
    }

    /// `hidden`: `(batch, queries, hidden)`, `context`: `(batch, keys, width)`, both float32;
    /// `mask`, added to the scores, broadcasts to `(batch, heads, queries, keys)`.
    fn forward(&self, hidden: &Tensor, context: &Tensor, mask: Option<&Tensor>, heads: i64, compute: Kind) -> Tensor {
        let (k, v) = self.keys_values(context, heads, compute);
        self.attend(hidden, &k, &v, mask, heads, compute)
    }

    /// The keys and values of `context`, `(batch, heads, keys, head width)` in `compute`.
    fn keys_values(&self, context: &Tensor, heads: i64, compute: Kind) -> (Tensor, Tensor) {
        let context = context.to_kind(compute);
        (
            split_heads(linear_as_input(&self.key, &context), heads),
            split_heads(linear_as_input(&self.value, &context), heads),
        )
    }

    /// `hidden` attending to keys `k` and values `v` (of [`BertAttention::keys_values`]).
    fn attend(
        &self,
        hidden: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        heads: i64,
        compute: Kind,
    ) -> Tensor {
        let q = split_heads(linear_as_input(&self.query, &hidden.to_kind(compute)), heads);
        let mask = mask.map(|mask| mask.to_kind(compute));
        let attended = Tensor::scaled_dot_product_attention(&q, k, v, mask, 0.0, false, None, false);
        let merged = attended.transpose(1, 2).flatten(2, -1);
        self.layer_norm.forward(&(linear_as_input(&self.dense, &merged).to_kind(Kind::Float) + hidden))
    }
}

/// `(batch, tokens, width)` as `(batch, heads, tokens, width / heads)`.
fn split_heads(xs: Tensor, heads: i64) -> Tensor {
    let (batch, tokens, width) = xs.size3().expect("attention inputs are (batch, tokens, channels)");
    xs.view([batch, tokens, heads, width / heads]).transpose(1, 2)
}

/// A BERT layer of cross-attention and the feed-forward block (`intermediate`, `output`).
/// Its weights may be another layer's too ([`BertCrossLayer::sharing`]).
#[derive(Debug)]
pub struct BertCrossLayer {
    blocks: Arc<CrossBlocks>,
    heads: i64,
}

#[derive(Debug)]
struct CrossBlocks {
    crossattention: BertAttention,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
}

impl BertCrossLayer {
    pub fn new(path: nn::Path, config: &BertConfig) -> Self {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        let blocks = CrossBlocks {
            crossattention: BertAttention::new(&path / "crossattention", config, config.encoder_width),
            intermediate: nn::linear(&path / "intermediate" / "dense", hidden, intermediate, Default::default()),
            output: nn::linear(&path / "output" / "dense", intermediate, hidden, Default::default()),
            output_norm: layer_norm(&path / "output" / "LayerNorm", hidden, config.layer_norm_eps),
        };
        BertCrossLayer { blocks: Arc::new(blocks), heads: config.num_attention_heads }
    }

    /// A layer of these very weights that attends with `heads` heads: what
    /// recognize-anything's `tie_encoder_decoder_weights` makes of the tag encoder's first
    /// layers, whose weights are the tagging head's.
    pub fn sharing(&self, heads: i64) -> Self {
        BertCrossLayer { blocks: self.blocks.clone(), heads }
    }

    /// `hidden` attends to `encoder` (all of it: recognize-anything's masks there are all
    /// ones); the residual stream stays float32, the rest computes in `compute`.
    pub fn forward(&self, hidden: &Tensor, encoder: &Tensor, compute: Kind) -> Tensor {
        let (k, v) = self.encoder_keys_values(encoder, compute);
        self.forward_to(hidden, &k, &v, compute)
    }

    /// The cross-attention's keys and values of `encoder`.
    fn encoder_keys_values(&self, encoder: &Tensor, compute: Kind) -> (Tensor, Tensor) {
        self.blocks.crossattention.keys_values(encoder, self.heads, compute)
    }

    /// [`BertCrossLayer::forward`] to the encoder's keys `k` and values `v`.
    fn forward_to(&self, hidden: &Tensor, k: &Tensor, v: &Tensor, compute: Kind) -> Tensor {
        let blocks = &self.blocks;
        let attended = blocks.crossattention.attend(hidden, k, v, None, self.heads, compute);
        let inner = linear_as_input(&blocks.intermediate, &attended.to_kind(compute)).gelu("none");
        blocks.output_norm.forward(&(linear_as_input(&blocks.output, &inner).to_kind(Kind::Float) + attended))
    }
}

/// A BERT text model's shape: recognize-anything's `med_config.json` (BERT-base with
/// cross-attention, its vocabulary grown by `[DEC]` and `[ENC]` to 30524).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertTextConfig {
    #[serde(flatten)]
    pub layers: BertConfig,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
}

impl BertTextConfig {
    /// `med_config.json`'s: BERT-base (12 layers of 768 with 12 heads) reading 768-wide
    /// tokens, over bert-base-uncased's vocabulary with `[DEC]` and `[ENC]`.
    pub fn med_config() -> Self {
        let layers = BertConfig {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            layer_norm_eps: 1e-12,
            encoder_width: 768,
        };
        BertTextConfig { layers, vocab_size: 30524, max_position_embeddings: 512 }
    }
}

/// `BertEmbeddings` of `bert.py`: word and absolute position embeddings (no token types),
/// then a layer norm.
#[derive(Debug)]
struct BertEmbeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    layer_norm: nn::LayerNorm,
}

impl BertEmbeddings {
    fn new(path: nn::Path, config: &BertTextConfig) -> Self {
        let hidden = config.layers.hidden_size;
        BertEmbeddings {
            word: nn::embedding(&path / "word_embeddings", config.vocab_size, hidden, Default::default()),
            position: nn::embedding(
                &path / "position_embeddings",
                config.max_position_embeddings,
                hidden,
                Default::default(),
            ),
            layer_norm: layer_norm(&path / "LayerNorm", hidden, config.layers.layer_norm_eps),
        }
    }

    /// `input_ids`: `(batch, tokens)`, at positions from `start`.
    fn forward(&self, input_ids: &Tensor, start: i64) -> Tensor {
        let tokens = input_ids.size()[1];
        let positions = Tensor::arange_start(start, start + tokens, (Kind::Int64, input_ids.device()));
        self.layer_norm.forward(&(self.word.forward(input_ids) + self.position.forward(&positions)))
    }
}

/// A BERT layer of self-attention, then cross-attention and the feed-forward block. That
/// second part may be another model's: RAM's tag encoder shares it with the tagging head in
/// its first layers.
#[derive(Debug)]
struct BertLayer {
    attention: BertAttention,
    heads: i64,
    rest: BertCrossLayer,
}

impl BertLayer {
    fn forward(&self, hidden: &Tensor, mask: &Tensor, encoder: &Tensor, compute: Kind) -> Tensor {
        let attended = self.attention.forward(hidden, hidden, Some(mask), self.heads, compute);
        self.rest.forward(&attended, encoder, compute)
    }
}

/// `bert.py`'s `BertModel` (no pooler) in its `multimodal` mode: embeddings, then layers of
/// self-attention (bidirectional, or causal for a decoder) and cross-attention to the
/// encoder's tokens, all of which are attended to.
#[derive(Debug)]
pub struct BertTextModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    causal: bool,
}

impl BertTextModel {
    /// The model at `path`; layer `i < shared.len()` takes the weights of `shared[i]` for
    /// its cross-attention and feed-forward block instead of making its own.
    pub fn new(path: &nn::Path, config: &BertTextConfig, causal: bool, shared: &[BertCrossLayer]) -> Self {
        let layers = path / "encoder" / "layer";
        let hidden = config.layers.hidden_size;
        BertTextModel {
            embeddings: BertEmbeddings::new(path / "embeddings", config),
            layers: (0..config.layers.num_hidden_layers)
                .map(|layer| {
                    let at = &layers / layer;
                    let heads = config.layers.num_attention_heads;
                    BertLayer {
                        attention: BertAttention::new(&at / "attention", &config.layers, hidden),
                        heads,
                        rest: match shared.get(layer as usize) {
                            Some(rest) => rest.sharing(heads),
                            None => BertCrossLayer::new(at, &config.layers),
                        },
                    }
                })
                .collect(),
            causal,
        }
    }

    /// The last hidden states, `(batch, tokens, hidden)`, of `input_ids` with
    /// `attention_mask` (1 for a token, 0 for padding) over `encoder` (`(batch, keys,
    /// encoder_width)`).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, encoder: &Tensor, compute: Kind) -> Tensor {
        let tokens = input_ids.size()[1];
        let mut allowed = attention_mask.to_kind(Kind::Float).unsqueeze(1).unsqueeze(1);
        if self.causal {
            let causal = Tensor::ones([tokens, tokens], (Kind::Float, input_ids.device())).tril(0);
            // Broadcast to (batch, 1, tokens, tokens), which `*=` in place cannot grow to.
            allowed = causal * allowed;
        }
        let mask = (allowed.ones_like() - allowed) * MASKED;
        let embedded = self.embeddings.forward(input_ids, 0);
        self.layers.iter().fold(embedded, |hidden, layer| layer.forward(&hidden, &mask, encoder, compute))
    }

    /// A causal model's hidden states, `(rows, new tokens, hidden)`, of `new_ids` continuing
    /// the tokens `cache` holds (none without one: then over `encoder`'s tokens), with the
    /// cache of every token so far. The same as [`BertTextModel::forward`] of the whole
    /// sequences with no padding, up to rounding.
    pub fn decode(
        &self,
        new_ids: &Tensor,
        cache: Option<DecoderCache>,
        encoder: &Tensor,
        compute: Kind,
    ) -> (Tensor, DecoderCache) {
        let start = cache.as_ref().map_or(0, |cache| cache.tokens);
        let tokens = new_ids.size()[1];
        // Query i (at position start + i) sees keys up to its own position.
        let mask = (tokens > 1).then(|| {
            let options = (Kind::Float, new_ids.device());
            let allowed = Tensor::ones([tokens, start + tokens], options).tril(start);
            (allowed.ones_like() - allowed) * MASKED
        });
        let mut hidden = self.embeddings.forward(new_ids, start);
        let previous = cache.map(|cache| cache.layers);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (index, layer) in self.layers.iter().enumerate() {
            let (k, v) = layer.attention.keys_values(&hidden, layer.heads, compute);
            let [self_k, self_v, cross_k, cross_v] = match &previous {
                Some(previous) => {
                    let [self_k, self_v, cross_k, cross_v] = &previous[index];
                    [
                        Tensor::cat(&[self_k, &k], 2),
                        Tensor::cat(&[self_v, &v], 2),
                        cross_k.shallow_clone(),
                        cross_v.shallow_clone(),
                    ]
                }
                None => {
                    let (cross_k, cross_v) = layer.rest.encoder_keys_values(encoder, compute);
                    [k, v, cross_k, cross_v]
                }
            };
            let attended = layer.attention.attend(&hidden, &self_k, &self_v, mask.as_ref(), layer.heads, compute);
            hidden = layer.rest.forward_to(&attended, &cross_k, &cross_v, compute);
            layers.push([self_k, self_v, cross_k, cross_v]);
        }
        (hidden, DecoderCache { layers, tokens: start + tokens })
    }

    /// The word embeddings, `(vocab, hidden)`.
    fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word.ws
    }
}

/// What a decoder keeps between generation steps, per layer: its self-attention's keys and
/// values of the tokens so far and its cross-attention's of the encoder's tokens, each
/// `(rows, heads, tokens, head width)`.
#[derive(Debug)]
pub struct DecoderCache {
    layers: Vec<[Tensor; 4]>,
    tokens: i64,
}

impl DecoderCache {
    /// The cache of `rows` (indices of this one's rows), in that order: the beams kept.
    pub fn rows(&self, rows: &Tensor) -> Self {
        let layers = self.layers.iter().map(|kept| kept.each_ref().map(|t| t.index_select(0, rows))).collect();
        DecoderCache { layers, tokens: self.tokens }
    }
}

/// `bert.py`'s `BertLMHeadModel`: a causal [`BertTextModel`] (`bert`) and `cls.predictions`
/// (a dense layer, GELU and layer norm, then the word embeddings as output weights, with a
/// bias of their own).
#[derive(Debug)]
pub struct BertLmHead {
    bert: BertTextModel,
    transform: nn::Linear,
    transform_norm: nn::LayerNorm,
    bias: Tensor,
}

impl BertLmHead {
    pub fn new(path: &nn::Path, config: &BertTextConfig) -> Self {
        let predictions = path / "cls" / "predictions";
        let hidden = config.layers.hidden_size;
        BertLmHead {
            bert: BertTextModel::new(&(path / "bert"), config, true, &[]),
            transform: nn::linear(&predictions / "transform" / "dense", hidden, hidden, Default::default()),
            transform_norm: layer_norm(&predictions / "transform" / "LayerNorm", hidden, config.layers.layer_norm_eps),
            bias: predictions.zeros("bias", &[config.vocab_size]),
        }
    }

    /// Each position's logits over the vocabulary for the next token, `(batch, tokens,
    /// vocab)`, of `input_ids` with `attention_mask` over `encoder`.
    pub fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor, encoder: &Tensor, compute: Kind) -> Tensor {
        self.predict(&self.bert.forward(input_ids, attention_mask, encoder, compute), compute)
    }

    /// The next token's logits after `new_ids`, `(rows, vocab)`, continuing what `cache`
    /// holds ([`BertTextModel::decode`]), with the cache of every token so far.
    pub fn decode(
        &self,
        new_ids: &Tensor,
        cache: Option<DecoderCache>,
        encoder: &Tensor,
        compute: Kind,
    ) -> (Tensor, DecoderCache) {
        let (hidden, cache) = self.bert.decode(new_ids, cache, encoder, compute);
        (self.predict(&hidden.select(1, hidden.size()[1] - 1), compute), cache)
    }

    /// `cls.predictions` of `hidden` states.
    fn predict(&self, hidden: &Tensor, compute: Kind) -> Tensor {
        let transformed = self
            .transform_norm
            .forward(&linear_as_input(&self.transform, &hidden.to_kind(compute)).to_kind(Kind::Float).gelu("none"));
        transformed.linear(self.bert.word_embeddings(), Some(&self.bias))
    }
}

/// `BertLMHeadModel`'s loss: cross-entropy of each position's `logits` for the next
/// token's label in `labels` (`(batch, tokens)`; [`IGNORED`] ones left out), with label
/// smoothing 0.1, averaged over the labels counted (`Mean`, as `bert.py`) or summed.
pub fn language_model_loss(logits: &Tensor, labels: &Tensor, reduction: tch::Reduction) -> Tensor {
    let (batch, tokens, vocab) = logits.size3().expect("logits are (batch, tokens, vocab)");
    let predicted = logits.narrow(1, 0, tokens - 1).reshape([batch * (tokens - 1), vocab]);
    let next = labels.narrow(1, 1, tokens - 1).reshape([-1]);
    predicted.to_kind(Kind::Float).cross_entropy_loss(&next, None::<Tensor>, reduction, IGNORED, LABEL_SMOOTHING)
}
