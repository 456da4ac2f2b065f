//! BERT's layers under Hugging Face's names (`crossattention.self.query`,
//! `crossattention.output.LayerNorm`, `intermediate.dense`, `output.dense`), post-norm as
//! BERT is, for the models built of them: RAM++'s Query2Label tagging head, whose layers
//! have cross-attention only (recognize-anything deletes each layer's self-attention and the
//! embeddings, `RAM_plus.del_selfattention`), and later RAM's and Tag2Text's tag encoder and
//! caption decoder. Keys and values of cross-attention read `encoder_width` channels
//! (recognize-anything's `BertConfig.encoder_width`), which may differ from `hidden_size`.

use super::clip::{layer_norm, linear_as_input};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn, nn::Module};

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
#[derive(Debug)]
struct BertAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    heads: i64,
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
            heads: config.num_attention_heads,
        }
    }

    /// `hidden`: `(batch, queries, hidden)`, `context`: `(batch, keys, width)`, both float32.
    fn forward(&self, hidden: &Tensor, context: &Tensor, compute: Kind) -> Tensor {
        let split = |xs: Tensor| {
            let (batch, tokens, width) = xs.size3().expect("attention inputs are (batch, tokens, channels)");
            xs.view([batch, tokens, self.heads, width / self.heads]).transpose(1, 2)
        };
        let (compute_hidden, compute_context) = (hidden.to_kind(compute), context.to_kind(compute));
        let q = split(linear_as_input(&self.query, &compute_hidden));
        let k = split(linear_as_input(&self.key, &compute_context));
        let v = split(linear_as_input(&self.value, &compute_context));
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let merged = attended.transpose(1, 2).flatten(2, -1);
        self.layer_norm.forward(&(linear_as_input(&self.dense, &merged).to_kind(Kind::Float) + hidden))
    }
}

/// A BERT layer of cross-attention and the feed-forward block (`intermediate`, `output`).
#[derive(Debug)]
pub struct BertCrossLayer {
    crossattention: BertAttention,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
}

impl BertCrossLayer {
    pub fn new(path: nn::Path, config: &BertConfig) -> Self {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        BertCrossLayer {
            crossattention: BertAttention::new(&path / "crossattention", config, config.encoder_width),
            intermediate: nn::linear(&path / "intermediate" / "dense", hidden, intermediate, Default::default()),
            output: nn::linear(&path / "output" / "dense", intermediate, hidden, Default::default()),
            output_norm: layer_norm(&path / "output" / "LayerNorm", hidden, config.layer_norm_eps),
        }
    }

    /// `hidden` attends to `encoder` (all of it: recognize-anything's masks there are all
    /// ones); the residual stream stays float32, the rest computes in `compute`.
    pub fn forward(&self, hidden: &Tensor, encoder: &Tensor, compute: Kind) -> Tensor {
        let attended = self.crossattention.forward(hidden, encoder, compute);
        let inner = linear_as_input(&self.intermediate, &attended.to_kind(compute)).gelu("none");
        self.output_norm.forward(&(linear_as_input(&self.output, &inner).to_kind(Kind::Float) + attended))
    }
}
