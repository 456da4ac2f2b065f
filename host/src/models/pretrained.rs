//! Hugging Face model folders: `config.json` and `model.safetensors`, read into a model's
//! variables and written back in the same layout, so checkpoints move between this trainer
//! and `transformers` unchanged. Weights stored as float16 or bfloat16 are widened to the
//! variables' float32 (the master weights), which `VarStore::load` would not do.

use crate::files::FileError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Tensor, nn};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The weights of Hugging Face folders saved before safetensors, or with
/// `safe_serialization=False`: a `torch.save` file.
pub const PYTORCH_WEIGHTS_FILE: &str = "pytorch_model.bin";

/// The weights file of the model folder `dir`: `model.safetensors`, or where only that is
/// missing, `pytorch_model.bin`.
pub fn weights_in(dir: &Path) -> PathBuf {
    let safetensors = dir.join(WEIGHTS_FILE);
    let pytorch = dir.join(PYTORCH_WEIGHTS_FILE);
    if !safetensors.is_file() && pytorch.is_file() { pytorch } else { safetensors }
}

/// The tensors of a weights file: safetensors, or a `torch.save` checkpoint (any other
/// extension: `.bin`, `.pth`, `.pt`), read by [`super::pth`].
pub fn read_tensors(file: &Path) -> Result<HashMap<String, Tensor>, PretrainedError> {
    if file.extension().is_some_and(|extension| extension == "safetensors") {
        let torch_error = |source| PretrainedError::Torch { path: file.to_path_buf(), source };
        return Ok(Tensor::read_safetensors(file).map_err(torch_error)?.into_iter().collect());
    }
    Ok(super::pth::read_state_dict(file)?.into_iter().collect())
}

#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{}: no tensor {} ({} of the {needed} the model needs are missing)",
        path.display(), quoted_names(missing), missing.len()
    )]
    Missing { path: PathBuf, missing: Vec<String>, needed: usize },
    #[error("{}: `{name}` has shape {found:?}, the model needs {expected:?}", path.display())]
    Shape { path: PathBuf, name: String, found: Vec<i64>, expected: Vec<i64> },
    #[error("{}: {source}", path.display())]
    Torch {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
}

/// Reads `dir/config.json`.
pub fn read_config<C: DeserializeOwned>(dir: &Path) -> Result<C, PretrainedError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(FileError::io(&path))?;
    Ok(serde_json::from_str(&text).map_err(|err| FileError::format(&path, err.to_string()))?)
}

/// What a load took from a file, and which variables it left as they were (freshly
/// initialised): said at start-up, because pretrained weights that silently fail to load
/// are the costliest mistake of a fine-tuning run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub file: PathBuf,
    /// Variables copied from the file.
    pub loaded: usize,
    /// Variables the file did not provide, sorted by name.
    pub fresh: Vec<String>,
    /// Tensors of the file the model does not have (e.g. `position_ids` buffers).
    pub unused: usize,
}

impl LoadReport {
    /// One line for the start-up report.
    pub fn describe(&self) -> String {
        let mut line = format!("{} tensors from {}", self.loaded, self.file.display());
        if self.unused > 0 {
            line.push_str(&format!(" ({} of its tensors unused)", self.unused));
        }
        if !self.fresh.is_empty() {
            line.push_str(&format!("; freshly initialised: {}", quoted_names(&self.fresh)));
        }
        line
    }
}

/// At most [`NAMES_SHOWN`] names in backquotes, and how many more there are.
fn quoted_names(names: &[String]) -> String {
    let mut text = names.iter().take(NAMES_SHOWN).map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    text
}

const NAMES_SHOWN: usize = 5;

/// Copies every variable of `var_store` from the tensor of the same name in `file`,
/// converted to the variable's dtype; tensors the model does not have are ignored (e.g.
/// `position_ids` buffers of older checkpoints). Every variable must be in the file.
pub fn load_weights(var_store: &nn::VarStore, file: &Path) -> Result<LoadReport, PretrainedError> {
    load_weights_named(var_store, file, |name| Some(name.to_string()), false)
}

/// Like [`load_weights`], with `file_name` giving the tensor in `file` that each variable
/// comes from; variables it maps to `None` keep their values (e.g. a new head on a
/// pretrained body), as do, with `allow_partial`, variables the file lacks. Without it, a
/// file lacking any is refused, naming the first missing tensors.
pub fn load_weights_named(
    var_store: &nn::VarStore,
    file: &Path,
    file_name: impl Fn(&str) -> Option<String>,
    allow_partial: bool,
) -> Result<LoadReport, PretrainedError> {
    load_tensors_named(var_store, file, &read_tensors(file)?, file_name, allow_partial)
}

/// Like [`load_weights_named`], from the weights of the model at `dir`: a Hugging Face
/// folder's ([`weights_in`]), or an open_clip checkpoint's (folder or file) under Hugging
/// Face's names.
pub fn load_folder_named(
    var_store: &nn::VarStore,
    dir: &Path,
    file_name: impl Fn(&str) -> Option<String>,
    allow_partial: bool,
) -> Result<LoadReport, PretrainedError> {
    if super::open_clip::is_open_clip(dir) {
        let (file, tensors) = super::open_clip::read_weights(dir)?;
        return load_tensors_named(var_store, &file, &tensors, file_name, allow_partial);
    }
    load_weights_named(var_store, &weights_in(dir), file_name, allow_partial)
}

/// Like [`load_weights_named`], from `tensors` already read from `file` (and renamed, as
/// an open_clip checkpoint's are).
pub fn load_tensors_named(
    var_store: &nn::VarStore,
    file: &Path,
    tensors: &HashMap<String, Tensor>,
    file_name: impl Fn(&str) -> Option<String>,
    allow_partial: bool,
) -> Result<LoadReport, PretrainedError> {
    let mut variables: Vec<(String, Tensor)> = var_store.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut fresh = Vec::new();
    let mut missing = Vec::new();
    let mut sources = Vec::new();
    for (variable_name, variable) in variables {
        match file_name(&variable_name) {
            None => fresh.push(variable_name),
            Some(name) => match tensors.get(&name) {
                None => {
                    missing.push(name);
                    fresh.push(variable_name);
                }
                Some(saved) if saved.size() != variable.size() => {
                    return Err(PretrainedError::Shape {
                        path: file.to_path_buf(),
                        name,
                        found: saved.size(),
                        expected: variable.size(),
                    });
                }
                Some(saved) => sources.push((variable, saved, name)),
            },
        }
    }
    // Several variables may come from one tensor (a tagger's student and teacher).
    missing.sort();
    missing.dedup();
    if !missing.is_empty() && !allow_partial {
        let mut found: Vec<&str> = sources.iter().map(|(_, _, name)| name.as_str()).collect();
        found.sort();
        found.dedup();
        let needed = missing.len() + found.len();
        return Err(PretrainedError::Missing { path: file.to_path_buf(), missing, needed });
    }
    let used: std::collections::HashSet<&str> = sources.iter().map(|(_, _, name)| name.as_str()).collect();
    let unused = tensors.keys().filter(|name| !used.contains(name.as_str())).count();
    tch::no_grad(|| {
        for (variable, saved, _) in &sources {
            variable.shallow_clone().copy_(&saved.to_kind(variable.kind()).to_device(variable.device()));
        }
    });
    fresh.sort();
    Ok(LoadReport { file: file.to_path_buf(), loaded: sources.len(), fresh, unused })
}

/// The files of a Hugging Face folder that say how inputs are made (tokenizer, image
/// preprocessing): a saved model keeps those of the folder it was fine-tuned from, so it
/// is used with the inputs it was trained on.
pub const COMPANION_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    crate::data::PREPROCESSOR_CONFIG,
];

/// Writes `config.json` and `model.safetensors` into `dir` (with the [`COMPANION_FILES`]
/// that `source`, the folder the model started from, has) through `dir.tmp` and a rename,
/// so an interrupted save never leaves half a model; a save that fails removes what it
/// staged.
pub fn save(
    dir: &Path,
    var_store: &nn::VarStore,
    config: &impl Serialize,
    source: Option<&Path>,
) -> Result<(), PretrainedError> {
    save_with(dir, var_store, config, source, |_| Ok(()))
}

/// Like [`save`], with `also` writing more files into the staged folder before it is
/// renamed (the same model in another checkpoint's layout).
pub fn save_with(
    dir: &Path,
    var_store: &nn::VarStore,
    config: &impl Serialize,
    source: Option<&Path>,
    also: impl FnOnce(&Path) -> Result<(), PretrainedError>,
) -> Result<(), PretrainedError> {
    save_staged(dir, |staging| write_staged(staging, var_store, config, source).and_then(|()| also(staging)))
}

/// Writes a model folder `dir` by `write` filling `dir.tmp`, then a rename, so an
/// interrupted save never leaves half a model; a save that fails removes what it staged.
pub fn save_staged(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), PretrainedError>,
) -> Result<(), PretrainedError> {
    let staging = dir.with_extension("tmp");
    let staged = (|| {
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(FileError::io(&staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(FileError::io(&staging))?;
        write(&staging)
    })();
    let saved = staged.and_then(|()| {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(FileError::io(dir))?;
        }
        Ok(std::fs::rename(&staging, dir).map_err(FileError::io(dir))?)
    });
    if saved.is_err() && staging.is_dir() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    saved
}

fn write_staged(
    staging: &Path,
    var_store: &nn::VarStore,
    config: &impl Serialize,
    source: Option<&Path>,
) -> Result<(), PretrainedError> {
    let io = FileError::io;
    let weights = staging.join(WEIGHTS_FILE);
    var_store.save(&weights).map_err(|source| PretrainedError::Torch { path: weights, source })?;
    let config_path = staging.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).expect("model configs serialize");
    std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;
    copy_companions(staging, source)
}

/// Copies into `dir` the [`COMPANION_FILES`] that `source` has.
pub fn copy_companions(dir: &Path, source: Option<&Path>) -> Result<(), PretrainedError> {
    let io = FileError::io;
    for name in COMPANION_FILES {
        if let Some(from) = source.map(|source| source.join(name)).filter(|from| from.is_file()) {
            std::fs::copy(&from, dir.join(name)).map_err(io(&from))?;
        }
    }
    Ok(())
}
