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
//!
//! [`write_state_dict`] writes the same format back (`torch.save({"model": state_dict})` as
//! recognize-anything saves its checkpoints), so that a fine-tuned model goes back to the
//! user's own scripts: a zip archive of raw storages and a pickle that names nothing but
//! `OrderedDict`, `_rebuild_tensor_v2` and storage types, which `torch.load` reads with
//! `weights_only=True`. Written here because no crate writes it: pickle crates serialise
//! plain data, not the persistent storage references torch's format is made of.

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

/// The torch storage class of `kind`, as `torch.save` names it.
fn storage_class(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "FloatStorage",
        Kind::Double => "DoubleStorage",
        Kind::Half => "HalfStorage",
        Kind::BFloat16 => "BFloat16Storage",
        Kind::Int64 => "LongStorage",
        Kind::Int => "IntStorage",
        Kind::Int16 => "ShortStorage",
        Kind::Int8 => "CharStorage",
        Kind::Uint8 => "ByteStorage",
        Kind::Bool => "BoolStorage",
        _ => return None,
    })
}

/// The few pickle opcodes (protocol 2) a state dict is written with.
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, code: u8) {
        self.0.push(code);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").bytes());
    }

    fn text(&mut self, text: &str) {
        self.0.push(b'X');
        self.0.extend((text.len() as u32).to_le_bytes());
        self.0.extend(text.bytes());
    }

    fn int(&mut self, value: i64) {
        match value {
            0..=0xff => self.0.extend([b'K', value as u8]),
            0x100..=0xffff => {
                self.0.push(b'M');
                self.0.extend((value as u16).to_le_bytes());
            }
            _ if i32::try_from(value).is_ok() => {
                self.0.push(b'J');
                self.0.extend((value as i32).to_le_bytes());
            }
            _ => {
                self.0.extend([0x8a, 8]);
                self.0.extend(value.to_le_bytes());
            }
        }
    }

    fn tuple_of_ints(&mut self, values: &[i64]) {
        self.op(b'(');
        for &value in values {
            self.int(value);
        }
        self.op(b't');
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
}

/// Writes `tensors` (contiguous copies of them, on the CPU) as a `torch.save` checkpoint
/// holding `{key: OrderedDict(tensors)}`.
pub fn write_state_dict(file: &Path, key: &str, tensors: &[(String, Tensor)]) -> Result<(), FileError> {
    let format = |problem: String| FileError::format(file, problem);
    let archive = file.file_stem().map_or("archive".to_string(), |stem| stem.to_string_lossy().to_string());
    let mut pickle = Pickle::default();
    pickle.0.extend([0x80, 2]);
    pickle.op(b'}');
    pickle.text(key);
    pickle.empty_ordered_dict();
    pickle.op(b'(');
    let mut storages = Vec::with_capacity(tensors.len());
    for (index, (name, tensor)) in tensors.iter().enumerate() {
        let class = storage_class(tensor.kind())
            .ok_or_else(|| format(format!("`{name}`: dtype {:?} has no torch storage", tensor.kind())))?;
        pickle.text(name);
        pickle.global("torch._utils", "_rebuild_tensor_v2");
        pickle.op(b'(');
        // The storage, by reference to its file in the archive.
        pickle.op(b'(');
        pickle.text("storage");
        pickle.global("torch", class);
        pickle.text(&index.to_string());
        pickle.text("cpu");
        pickle.int(tensor.numel() as i64);
        pickle.op(b't');
        pickle.op(b'Q');
        pickle.int(0);
        let size = tensor.size();
        pickle.tuple_of_ints(&size);
        let mut strides = vec![1i64; size.len()];
        for dim in (0..size.len().saturating_sub(1)).rev() {
            strides[dim] = strides[dim + 1] * size[dim + 1];
        }
        pickle.tuple_of_ints(&strides);
        pickle.op(0x89);
        pickle.empty_ordered_dict();
        pickle.op(b't');
        pickle.op(b'R');
        storages.push(tensor.to_device(tch::Device::Cpu).contiguous());
    }
    pickle.op(b'u');
    pickle.op(b's');
    pickle.op(b'.');

    let created = std::fs::File::create(file).map_err(FileError::io(file))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(created));
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true)
        .with_alignment(64);
    let zip_error = |err: zip::result::ZipError| format(format!("writing the checkpoint: {err}"));
    let mut put = |name: String, bytes: &[u8]| -> Result<(), FileError> {
        zip.start_file(format!("{archive}/{name}"), stored).map_err(zip_error)?;
        std::io::Write::write_all(&mut zip, bytes).map_err(FileError::io(file))
    };
    put("data.pkl".into(), &pickle.0)?;
    put("byteorder".into(), b"little")?;
    for (index, storage) in storages.iter().enumerate() {
        let mut bytes = vec![0u8; storage.numel() * storage.kind().elt_size_in_bytes()];
        storage.copy_data_u8(&mut bytes, storage.numel());
        put(format!("data/{index}"), &bytes)?;
    }
    put("version".into(), b"3\n")?;
    let writer = zip.finish().map_err(zip_error)?;
    writer.into_inner().map_err(|err| FileError::io(file)(err.into_error()))?.sync_all().map_err(FileError::io(file))
}
