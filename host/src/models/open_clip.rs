//! open_clip's checkpoints of CLIP, read into the trainer's CLIP ([`super::clip`], Hugging
//! Face's layout) and written back: a hub folder (`open_clip_config.json` beside
//! `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`), a weights file with the
//! name of one of open_clip's built-in architectures ([`ARCHITECTURES`], its configurations
//! carried as data), an open_clip training checkpoint (`epoch_N.pt`, weights under
//! `state_dict`, `module.` prefixed when trained data-parallel), or OpenAI's TorchScript
//! archive (`ViT-B-32.pt`), whose parameters libtorch reads and whose architecture follows
//! from their shapes as open_clip's `build_model_from_openai_state_dict` finds it.
//!
//! The two layouts hold the same numbers (open_clip's `VisionTransformer` and
//! `TextTransformer` with their defaults, read from open_clip 3.3's `model.py` and
//! `transformer.py`): `nn.MultiheadAttention`'s packed `in_proj_weight` is the query, key
//! and value projections stacked in that order; `visual.proj` and `text_projection` are
//! the transposes of Hugging Face's projection weights; vision heads are `width /
//! head_width`; layer norms use eps 1e-5; the text is read at its largest token id (the
//! end token), which is Hugging Face's legacy `eos_token_id` 2. Configurations that leave
//! those defaults (a timm or Hugging Face tower, attentional pooling, layer scale, other
//! pooling, QK norm, a logit bias as in SigLIP) are refused by name.

use super::clip::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
use super::pretrained::PretrainedError;
use crate::data::images::{CentreOffset, Filter, Fit};
use crate::files::FileError;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const CONFIG_FILE: &str = "open_clip_config.json";
/// Where open_clip's folders keep the weights, in the order they are looked for.
const WEIGHTS_FILES: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];
/// `transformers`' value by which the text is read at its largest token id.
const LEGACY_EOS_TOKEN_ID: i64 = 2;

/// open_clip's built-in configurations (`model_configs/<name>.json`) of the architectures
/// users fine-tune most, by name.
const ARCHITECTURES_JSON: &str = include_str!("open_clip_architectures.json");
/// The names of [`ARCHITECTURES_JSON`], for `--model-arch`.
pub const ARCHITECTURES: [&str; 6] =
    ["ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-B-16-quickgelu", "ViT-L-14", "ViT-L-14-quickgelu"];

#[derive(Debug, Deserialize)]
struct FolderConfig {
    model_cfg: ModelCfg,
}

#[derive(Debug, Deserialize)]
struct ModelCfg {
    embed_dim: i64,
    vision_cfg: serde_json::Map<String, serde_json::Value>,
    text_cfg: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    quick_gelu: bool,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Whether `path` is an open_clip checkpoint: a folder with [`CONFIG_FILE`], or a weights
/// file (a Hugging Face model is always a folder).
pub fn is_open_clip(path: &Path) -> bool {
    path.is_file() || path.join(CONFIG_FILE).is_file()
}

/// The `open_clip_config.json` of the checkpoint at `path` (see [`is_open_clip`]): the
/// folder's own; for a file, `model_cfg` is the built-in configuration `arch` names, or for
/// OpenAI's TorchScript archive without one, the architecture its tensors' shapes give.
pub fn config_json(path: &Path, arch: Option<&str>) -> Result<serde_json::Value, PretrainedError> {
    if path.is_dir() {
        let file = path.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&file).map_err(FileError::io(&file))?;
        return Ok(serde_json::from_str(&text).map_err(|err| FileError::format(&file, err.to_string()))?);
    }
    let model_cfg = match arch {
        Some(arch) => built_in(arch).ok_or_else(|| {
            FileError::format(
                path,
                format!("--model-arch {arch}: not one of the architectures carried ({})", ARCHITECTURES.join(", ")),
            )
        })?,
        None if is_torchscript(path)? => openai_model_cfg(path, &read_weights(path)?.1)?,
        None => {
            return Err(PretrainedError::File(FileError::format(
                path,
                format!(
                    "a weights file says nothing of its architecture; name it with --model-arch ({})",
                    ARCHITECTURES.join(", ")
                ),
            )));
        }
    };
    Ok(serde_json::json!({ "model_cfg": model_cfg }))
}

fn built_in(arch: &str) -> Option<serde_json::Value> {
    let all: serde_json::Value = serde_json::from_str(ARCHITECTURES_JSON).expect("the carried configurations parse");
    all.get(arch).cloned()
}

/// Whether `file` is a TorchScript archive (`torch.jit.save`): a zip holding
/// `constants.pkl` beside the pickled module, rather than a `torch.save` state dict.
fn is_torchscript(file: &Path) -> Result<bool, FileError> {
    let opened = std::fs::File::open(file).map_err(FileError::io(file))?;
    let Ok(archive) = zip::ZipArchive::new(opened) else { return Ok(false) };
    let is_constants = |name: &str| name == "constants.pkl" || name.ends_with("/constants.pkl");
    Ok(archive.file_names().any(|name| name.is_ok_and(|name| is_constants(&name))))
}

/// The width of every attention head of OpenAI's CLIP models.
const OPENAI_HEAD_WIDTH: i64 = 64;

/// The `model_cfg` of OpenAI's CLIP whose tensors (under Hugging Face's names) are
/// `tensors`: widths, depths, patch and image sizes from their shapes, heads of width 64,
/// QuickGELU. A ResNet image tower (RN50 and kin) is refused by name.
fn openai_model_cfg(file: &Path, tensors: &HashMap<String, Tensor>) -> Result<serde_json::Value, PretrainedError> {
    let shape = |name: &str| {
        tensors.get(name).map(Tensor::size).ok_or_else(|| {
            let what = if tensors.keys().any(|key| key.starts_with("visual.layer1.")) {
                "a ResNet image tower (RN50, RN101, ...), which this trainer does not have".to_string()
            } else {
                format!("no tensor `{name}`, so not OpenAI's ViT CLIP")
            };
            PretrainedError::File(FileError::format(file, what))
        })
    };
    let layers = |prefix: &str| {
        let count = tensors.keys().filter_map(|key| key.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok());
        count.max().map_or(0, |last| last + 1)
    };
    let patch = shape("vision_model.embeddings.patch_embedding.weight")?;
    let positions = shape("vision_model.embeddings.position_embedding.weight")?[0];
    let grid = ((positions - 1) as f64).sqrt().round() as i64;
    let text_width = shape("text_model.final_layer_norm.weight")?[0];
    if patch[0] % OPENAI_HEAD_WIDTH != 0 || text_width % OPENAI_HEAD_WIDTH != 0 {
        return Err(PretrainedError::File(FileError::format(
            file,
            format!(
                "widths {} and {text_width} are not multiples of OpenAI's heads ({OPENAI_HEAD_WIDTH} wide); \
                 name the architecture with --model-arch",
                patch[0]
            ),
        )));
    }
    Ok(serde_json::json!({
        "embed_dim": shape("text_projection.weight")?[0],
        "quick_gelu": true,
        "vision_cfg": {
            "image_size": patch[3] * grid,
            "layers": layers("vision_model.encoder.layers."),
            "width": patch[0],
            "patch_size": patch[3],
        },
        "text_cfg": {
            "context_length": shape("text_model.embeddings.position_embedding.weight")?[0],
            "vocab_size": shape("text_model.embeddings.token_embedding.weight")?[0],
            "width": text_width,
            "heads": text_width / OPENAI_HEAD_WIDTH,
            "layers": layers("text_model.encoder.layers."),
        },
    }))
}

/// open_clip's `preprocess_cfg`: how its models' images are made (its defaults: OpenAI's
/// statistics, bicubic, shortest side).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub fit: Fit,
    pub filter: Filter,
}

/// The `preprocess_cfg` of the checkpoint at `path` when it is open_clip's (`None`
/// otherwise), for images of `image_size`. Modes the trainer does not make (`longest`, which
/// pads) are refused by name.
pub fn preprocess(path: &Path, image_size: i64) -> Result<Option<Preprocess>, FileError> {
    if !is_open_clip(path) {
        return Ok(None);
    }
    let file = path.join(CONFIG_FILE);
    let config: serde_json::Value = if path.is_dir() {
        let text = std::fs::read_to_string(&file).map_err(FileError::io(&file))?;
        serde_json::from_str(&text).map_err(|err| FileError::format(&file, err.to_string()))?
    } else {
        serde_json::Value::Null
    };
    let cfg = &config["preprocess_cfg"];
    let bad = |what: String| FileError::format(&file, format!("preprocess_cfg: {what}"));
    let triple = |name: &str, default: [f32; 3]| -> Result<[f32; 3], FileError> {
        match &cfg[name] {
            serde_json::Value::Null => Ok(default),
            value => {
                serde_json::from_value(value.clone()).map_err(|_| bad(format!("{name} = {value} is not 3 numbers")))
            }
        }
    };
    let mean = triple("mean", crate::data::CLIP_MEAN)?;
    let std = triple("std", crate::data::CLIP_STD)?;
    if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(bad("std must be positive".into()));
    }
    let fit = match cfg["resize_mode"].as_str().unwrap_or("shortest") {
        "shortest" => Fit::Shortest(CentreOffset::RoundHalfEven),
        "squash" => Fit::Squash,
        other => return Err(bad(format!("resize_mode `{other}` is not one this trainer makes (shortest, squash)"))),
    };
    let filter = match cfg["interpolation"].as_str().unwrap_or("bicubic") {
        "bicubic" => Filter::Bicubic,
        "bilinear" => Filter::Bilinear,
        other => return Err(bad(format!("interpolation `{other}` is not one this trainer makes (bicubic, bilinear)"))),
    };
    let size_fits = match &cfg["size"] {
        serde_json::Value::Null => true,
        serde_json::Value::Array(sides) => sides.iter().all(|side| side.as_i64() == Some(image_size)),
        side => side.as_i64() == Some(image_size),
    };
    if !size_fits {
        return Err(bad(format!("size {} is not the model's image size {image_size}", cfg["size"])));
    }
    Ok(Some(Preprocess { mean, std, fit, filter }))
}

/// A field of an open_clip tower's configuration, or its default.
fn field(section: &serde_json::Map<String, serde_json::Value>, name: &str, default: f64) -> f64 {
    section.get(name).and_then(serde_json::Value::as_f64).unwrap_or(default)
}

/// The first field of `section` set to other than the default this reader implements.
fn unsupported(
    section: &serde_json::Map<String, serde_json::Value>,
    defaults: &[(&str, serde_json::Value)],
) -> Option<String> {
    defaults.iter().find_map(|(name, default)| {
        let value = section.get(*name)?;
        // `0` and `0.0` are one default to open_clip's Python.
        let same = value == default || value.as_f64().is_some_and(|number| Some(number) == default.as_f64());
        (!same && !value.is_null()).then(|| format!("{name} = {value}"))
    })
}

/// The trainer's CLIP configuration of the open_clip checkpoint at `path` (see
/// [`config_json`]).
pub fn read_config(path: &Path, arch: Option<&str>) -> Result<ClipConfig, PretrainedError> {
    use serde_json::json;
    let config = config_json(path, arch)?;
    let path = if path.is_dir() { path.join(CONFIG_FILE) } else { path.to_path_buf() };
    let config: FolderConfig =
        serde_json::from_value(config).map_err(|err| FileError::format(&path, err.to_string()))?;
    let ModelCfg { embed_dim, vision_cfg: vision, text_cfg: text, quick_gelu, other } = config.model_cfg;
    let refuse = |part: &str, what: String| {
        PretrainedError::File(FileError::format(
            &path,
            format!("{part}: {what} is an architecture this trainer does not have (it trains open_clip's ViT CLIP)"),
        ))
    };
    let tower_defaults = [
        ("ls_init_value", json!(null)),
        ("final_ln_after_pool", json!(false)),
        ("qk_norm", json!(false)),
        ("scaled_cosine_attn", json!(false)),
        ("scale_heads", json!(false)),
        ("scale_attn", json!(false)),
        ("scale_attn_inner", json!(false)),
        ("scale_fc", json!(false)),
        ("block_type", json!(null)),
        ("act_kwargs", json!(null)),
        ("norm_kwargs", json!(null)),
    ];
    let vision_defaults = [
        ("timm_model_name", json!(null)),
        ("attentional_pool", json!(false)),
        ("no_ln_pre", json!(false)),
        ("pos_embed_type", json!("learnable")),
        ("pool_type", json!("tok")),
        ("patch_dropout", json!(0.0)),
    ];
    let text_defaults = [
        ("hf_model_name", json!(null)),
        ("embed_cls", json!(false)),
        ("no_causal_mask", json!(false)),
        ("pool_type", json!("argmax")),
        ("proj_bias", json!(false)),
        ("proj_type", json!("linear")),
    ];
    for (part, section, defaults) in
        [("vision_cfg", &vision, &vision_defaults[..]), ("text_cfg", &text, &text_defaults[..])]
    {
        if let Some(what) = unsupported(section, defaults).or_else(|| unsupported(section, &tower_defaults)) {
            return Err(refuse(part, what));
        }
    }
    if let Some(what) =
        unsupported(&other, &[("init_logit_bias", json!(null)), ("nonscalar_logit_scale", json!(false))])
    {
        return Err(refuse("model_cfg", what));
    }
    let activation = if quick_gelu { Activation::QuickGelu } else { Activation::Gelu };
    let vision_width = field(&vision, "width", 768.0) as i64;
    let text_width = field(&text, "width", 512.0) as i64;
    let vision_config = ClipVisionConfig {
        hidden_size: vision_width,
        intermediate_size: (vision_width as f64 * field(&vision, "mlp_ratio", 4.0)) as i64,
        num_hidden_layers: field(&vision, "layers", 12.0) as i64,
        num_attention_heads: vision_width / field(&vision, "head_width", 64.0) as i64,
        num_channels: 3,
        image_size: field(&vision, "image_size", 224.0) as i64,
        patch_size: field(&vision, "patch_size", 16.0) as i64,
        hidden_act: activation,
        layer_norm_eps: 1e-5,
    };
    let text_config = ClipTextConfig {
        vocab_size: field(&text, "vocab_size", 49408.0) as i64,
        hidden_size: text_width,
        intermediate_size: (text_width as f64 * field(&text, "mlp_ratio", 4.0)) as i64,
        num_hidden_layers: field(&text, "layers", 12.0) as i64,
        num_attention_heads: field(&text, "heads", 8.0) as i64,
        max_position_embeddings: field(&text, "context_length", 77.0) as i64,
        hidden_act: activation,
        layer_norm_eps: 1e-5,
        eos_token_id: LEGACY_EOS_TOKEN_ID,
        ..ClipTextConfig::default()
    };
    Ok(ClipConfig { text_config, vision_config, projection_dim: embed_dim, ..ClipConfig::default() })
}

/// The `open_clip_config.json` of a model of `config` (trained from scratch or from a
/// Hugging Face folder), or why open_clip's CLIP cannot be that model.
pub fn config_of(config: &ClipConfig) -> Result<serde_json::Value, String> {
    let (vision, text) = (&config.vision_config, &config.text_config);
    if vision.hidden_act != text.hidden_act {
        return Err("its towers use different activations; open_clip's use one".into());
    }
    if [vision.layer_norm_eps, text.layer_norm_eps].iter().any(|eps| *eps != 1e-5) {
        return Err("its layer norms' eps is not open_clip's 1e-5".into());
    }
    if text.eos_token_id != LEGACY_EOS_TOKEN_ID && text.eos_token_id != text.vocab_size - 1 {
        return Err(format!(
            "its text is read at token {}, not at the largest id as open_clip reads it",
            text.eos_token_id
        ));
    }
    if vision.hidden_size % vision.num_attention_heads != 0 {
        return Err("its vision width is not a multiple of its heads".into());
    }
    Ok(serde_json::json!({ "model_cfg": {
        "embed_dim": config.projection_dim,
        "quick_gelu": vision.hidden_act == Activation::QuickGelu,
        "vision_cfg": {
            "image_size": vision.image_size,
            "layers": vision.num_hidden_layers,
            "width": vision.hidden_size,
            "head_width": vision.hidden_size / vision.num_attention_heads,
            "mlp_ratio": vision.intermediate_size as f64 / vision.hidden_size as f64,
            "patch_size": vision.patch_size,
        },
        "text_cfg": {
            "context_length": text.max_position_embeddings,
            "vocab_size": text.vocab_size,
            "width": text.hidden_size,
            "heads": text.num_attention_heads,
            "layers": text.num_hidden_layers,
            "mlp_ratio": text.intermediate_size as f64 / text.hidden_size as f64,
        },
    }}))
}

/// The weights file of the open_clip checkpoint at `path`: itself when a file.
pub fn weights_file(dir: &Path) -> PathBuf {
    if dir.is_file() {
        return dir.to_path_buf();
    }
    let found = WEIGHTS_FILES.iter().map(|name| dir.join(name)).find(|path| path.is_file());
    found.unwrap_or_else(|| dir.join(WEIGHTS_FILES[0]))
}

/// Tensors named alike but for their prefix: open_clip's, then Hugging Face's.
const RENAMED: [(&str, &str); 12] = [
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("logit_scale", "logit_scale"),
];
/// The projections, each the other's transpose.
const PROJECTIONS: [(&str, &str); 2] =
    [("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight")];
/// The towers' transformer blocks, by the prefix before a block's index.
const TOWERS: [(&str, &str); 2] = [
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
];
/// A block's tensors named alike but for their prefix.
const BLOCK_RENAMED: [(&str, &str); 5] = [
    ("attn.out_proj.", "self_attn.out_proj."),
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
];
/// `nn.MultiheadAttention`'s packed input projection, by its suffix, and the three it packs.
const PACKED: &str = "attn.in_proj_";
const QUERY_KEY_VALUE: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

/// Which checkpoint's names a name is in.
#[derive(Clone, Copy)]
enum Names {
    OpenClip,
    HuggingFace,
}

/// A block's tensor: its tower's prefixes (open_clip's, Hugging Face's), its index and the
/// rest of its name, from its name in `names`.
fn in_block(name: &str, names: Names) -> Option<(&'static str, &'static str, &str, &str)> {
    TOWERS.iter().find_map(|&(open_clip, hugging_face)| {
        let prefix = match names {
            Names::OpenClip => open_clip,
            Names::HuggingFace => hugging_face,
        };
        let (index, rest) = name.strip_prefix(prefix)?.split_once('.')?;
        index.parse::<usize>().ok()?;
        Some((open_clip, hugging_face, index, rest))
    })
}

/// The tensors of the open_clip checkpoint at `path` under the trainer's (Hugging Face's)
/// names, and the file they came from; tensors it has no place for keep their own names,
/// so the load reports them unused.
pub fn read_weights(path: &Path) -> Result<(PathBuf, HashMap<String, Tensor>), PretrainedError> {
    let file = weights_file(path);
    let tensors = if is_torchscript(&file)? {
        let torch_error = |source| PretrainedError::Torch { path: file.clone(), source };
        let module = tch::CModule::load(&file).map_err(torch_error)?;
        module.named_parameters().map_err(torch_error)?
    } else {
        super::pretrained::read_tensors(&file)?.into_iter().collect()
    };
    let mut out = HashMap::new();
    for (name, tensor) in tensors {
        // open_clip's training checkpoints of a data-parallel run keep DDP's prefix.
        let name = name.strip_prefix("module.").map(str::to_string).unwrap_or(name);
        if let Some((_, to)) = RENAMED.iter().find(|(from, _)| *from == name) {
            out.insert(to.to_string(), tensor);
        } else if let Some((_, to)) = PROJECTIONS.iter().find(|(from, _)| *from == name) {
            out.insert(to.to_string(), tensor.tr().contiguous());
        } else if let Some((_, to, index, rest)) = in_block(&name, Names::OpenClip) {
            if let Some(kind) = rest.strip_prefix(PACKED) {
                for (part, chunk) in QUERY_KEY_VALUE.iter().zip(tensor.chunk(3, 0)) {
                    out.insert(format!("{to}{index}.self_attn.{part}.{kind}"), chunk.contiguous());
                }
            } else if let Some((from, into)) = BLOCK_RENAMED.iter().find(|(from, _)| rest.starts_with(from)) {
                out.insert(format!("{to}{index}.{into}{}", &rest[from.len()..]), tensor);
            } else {
                out.insert(name, tensor);
            }
        } else {
            out.insert(name, tensor);
        }
    }
    Ok((file, out))
}

/// `var_store`'s tensors under open_clip's names, the packed projections packed again.
fn open_clip_tensors(var_store: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let variables = var_store.variables();
    let mut out = Vec::with_capacity(variables.len());
    for (name, tensor) in &variables {
        let tensor = tensor.detach();
        if let Some((from, _)) = RENAMED.iter().find(|(_, to)| to == name) {
            out.push((from.to_string(), tensor));
        } else if let Some((from, _)) = PROJECTIONS.iter().find(|(_, to)| to == name) {
            out.push((from.to_string(), tensor.tr().contiguous()));
        } else if let Some((from, to, index, rest)) = in_block(name, Names::HuggingFace) {
            if let Some(kind) = rest.strip_prefix("self_attn.q_proj.") {
                let parts = QUERY_KEY_VALUE.map(|part| &variables[&format!("{to}{index}.self_attn.{part}.{kind}")]);
                out.push((format!("{from}{index}.{PACKED}{kind}"), Tensor::cat(&parts, 0).detach()));
            } else if let Some((original, into)) = BLOCK_RENAMED.iter().find(|(_, into)| rest.starts_with(into)) {
                out.push((format!("{from}{index}.{original}{}", &rest[into.len()..]), tensor));
            } else if !(rest.starts_with("self_attn.k_proj.") || rest.starts_with("self_attn.v_proj.")) {
                out.push((name.clone(), tensor));
            }
        } else {
            // No variable should get here; open_clip's strict load would name it.
            out.push((name.clone(), tensor));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes `var_store`'s weights into `dir` as an open_clip hub folder holds them
/// (`open_clip_config.json` with `config`, the configuration of the checkpoint the model
/// started from; `open_clip_model.safetensors`), so that open_clip loads the fine-tuned
/// model as it loaded the one it started from.
pub fn write_folder(
    dir: &Path,
    var_store: &tch::nn::VarStore,
    config: &serde_json::Value,
) -> Result<(), PretrainedError> {
    let config_file = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).expect("JSON values serialize");
    std::fs::write(&config_file, text + "\n").map_err(FileError::io(&config_file))?;
    let weights = dir.join(WEIGHTS_FILES[0]);
    Tensor::write_safetensors(&open_clip_tensors(var_store), &weights)
        .map_err(|source| PretrainedError::Torch { path: weights, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_default_written_as_an_integer_is_still_the_default() {
        let section = |value: serde_json::Value| value.as_object().unwrap().clone();
        let defaults = [("patch_dropout", json!(0.0)), ("pool_type", json!("tok"))];
        assert_eq!(unsupported(&section(json!({"patch_dropout": 0, "pool_type": "tok"})), &defaults), None);
        assert_eq!(
            unsupported(&section(json!({"patch_dropout": 0.5})), &defaults).as_deref(),
            Some("patch_dropout = 0.5")
        );
        assert_eq!(
            unsupported(&section(json!({"pool_type": "avg"})), &defaults).as_deref(),
            Some("pool_type = \"avg\"")
        );
    }
}
