//! PyTorch's own checkpoint files (`torch.save`: `.pth`, `.pt`, Hugging Face's
//! `pytorch_model.bin`), read without Python: the weights many released models ship only
//! in this format (recognize-anything's `.pth`, open_clip's and older Hugging Face `.bin`).
//!
//! The container and the pickle inside it are parsed by `pytorch-reader` (the Burn
//! project's reader, made for exactly this, which executes nothing: calls it does not know
//! become opaque values). A pickle can make Python run any function when `torch.load`
//! reads it without `weights_only=True`; a file naming one that no state dict needs
//! (`os.system`, `builtins.eval`, any class outside the few below) is refused by name, as
//! `torch.load(weights_only=True)` refuses it, so a file this reader accepts is also safe
//! for the user's own Python tools.

use super::pretrained::PretrainedError;
use crate::files::FileError;
use pytorch_reader::{DType, PickleValue, PytorchReader};
use std::path::Path;
use tch::{Kind, Tensor};

/// Where checkpoints keep their weights when not at the root: recognize-anything's
/// `{"model": ...}`, training scripts' `{"state_dict": ...}`.
const STATE_DICT_KEYS: [&str; 2] = ["model", "state_dict"];
/// Keys named when none of them holds the weights.
const KEYS_SHOWN: usize = 8;

/// Objects a checkpoint may hold besides plain values: tensors and their storages, and
/// what `torch.load(weights_only=True)` also accepts in the metadata saved beside them.
fn is_allowed(type_name: &str) -> bool {
    const TORCH: [&str; 5] = ["Tensor", "TypedStorage", "UntypedStorage", "Size", "device"];
    const NUMPY: [&str; 2] = ["numpy.core.multiarray.scalar", "numpy.dtype"];
    match type_name.strip_prefix("torch.") {
        Some(name) => TORCH.contains(&name) || dtype_kind(name).is_some(),
        None => NUMPY.contains(&type_name),
    }
}

/// libtorch's kind of a `torch.` dtype name.
fn dtype_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        _ => return None,
    })
}

fn kind_of(dtype: DType) -> Option<Kind> {
    Some(match dtype {
        DType::F64 => Kind::Double,
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
        DType::U64 | DType::U32 | DType::U16 => return None,
    })
}

/// The first object in `value` that a state dict never needs, by its Python name.
fn refused_object(value: &PickleValue) -> Option<&str> {
    match value {
        PickleValue::Unsupported(name) if !is_allowed(name) => Some(name),
        PickleValue::List(items) => items.iter().find_map(refused_object),
        PickleValue::Dict(entries) => entries.values().find_map(refused_object),
        _ => None,
    }
}

/// The attribute `nn.Module.state_dict()` sets on the dictionary it returns (each module's
/// version), pickled with its items.
const STATE_DICT_METADATA: &str = "_metadata";

/// Whether `value` is a dictionary of tensors: a state dict.
fn is_state_dict(value: &PickleValue) -> bool {
    let PickleValue::Dict(entries) = value else { return false };
    let mut tensors = entries.iter().filter(|(key, _)| key.as_str() != STATE_DICT_METADATA).peekable();
    tensors.peek().is_some()
        && tensors.all(|(_, value)| matches!(value, PickleValue::Unsupported(name) if name == "torch.Tensor"))
}

/// The tensors of the state dict in the checkpoint `file`: at its root, or under `model`
/// or `state_dict`. Tensors come back contiguous on the CPU, in the file's dtypes.
pub fn read_state_dict(file: &Path) -> Result<Vec<(String, Tensor)>, PretrainedError> {
    let format = |problem: String| PretrainedError::File(FileError::format(file, problem));
    let unreadable = |err: pytorch_reader::PytorchError| format(format!("not a PyTorch checkpoint: {err}"));
    let root = PytorchReader::read_pickle_data(file, None).map_err(unreadable)?;
    if let Some(name) = refused_object(&root) {
        return Err(format(format!(
            "holds a `{name}`, which a state dict never needs and which Python would run or build on \
             loading; this reader runs no code and refuses the file, as torch.load(weights_only=True) does"
        )));
    }
    let key = match &root {
        _ if is_state_dict(&root) => None,
        PickleValue::Dict(entries) => {
            match STATE_DICT_KEYS.iter().find(|key| entries.get(**key).is_some_and(is_state_dict)) {
                Some(key) => Some(*key),
                None => {
                    let mut keys: Vec<&str> = entries.keys().map(String::as_str).collect();
                    keys.sort();
                    let shown = keys.iter().take(KEYS_SHOWN).map(|key| format!("`{key}`")).collect::<Vec<_>>();
                    let more = keys.len().saturating_sub(KEYS_SHOWN);
                    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                    return Err(format(format!(
                        "no dictionary of tensors at its root or under `model` or `state_dict` (its keys: {}{more})",
                        shown.join(", ")
                    )));
                }
            }
        }
        _ => return Err(format("holds no dictionary of tensors".into())),
    };
    let reader = match key {
        Some(key) => PytorchReader::with_top_level_key(file, key),
        None => PytorchReader::new(file),
    }
    .map_err(unreadable)?;
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(reader.len());
    for (name, tensor) in reader.into_tensors() {
        let kind = kind_of(tensor.dtype())
            .ok_or_else(|| format(format!("`{name}`: dtype {:?} is not supported", tensor.dtype())))?;
        let bytes = tensor.read().map_err(FileError::io(file))?;
        let shape: Vec<i64> = tensor.shape().iter().map(|&dim| dim as i64).collect();
        let value = Tensor::f_from_data_size(&bytes, &shape, kind)
            .map_err(|source| PretrainedError::Torch { path: file.to_path_buf(), source })?;
        tensors.push((name, value));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}
