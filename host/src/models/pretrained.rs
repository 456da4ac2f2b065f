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

#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: no tensor `{name}`, which the model needs", path.display())]
    Missing { path: PathBuf, name: String },
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

/// Copies every variable of `var_store` from the tensor of the same name in `file`,
/// converted to the variable's dtype; tensors the model does not have are ignored (e.g.
/// `position_ids` buffers of older checkpoints).
pub fn load_weights(var_store: &nn::VarStore, file: &Path) -> Result<(), PretrainedError> {
    load_weights_named(var_store, file, |name| Some(name.to_string()))
}

/// Like [`load_weights`], with `file_name` giving the tensor in `file` that each variable
/// comes from; variables it maps to `None` keep their values (e.g. a new head on a
/// pretrained body).
pub fn load_weights_named(
    var_store: &nn::VarStore,
    file: &Path,
    file_name: impl Fn(&str) -> Option<String>,
) -> Result<(), PretrainedError> {
    let torch_error = |source| PretrainedError::Torch { path: file.to_path_buf(), source };
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(file).map_err(torch_error)?.into_iter().collect();
    let mut variables: Vec<(String, Tensor)> = var_store.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (variable_name, mut variable) in variables {
            let Some(name) = file_name(&variable_name) else { continue };
            let saved = tensors
                .get(&name)
                .ok_or_else(|| PretrainedError::Missing { path: file.to_path_buf(), name: name.clone() })?;
            if saved.size() != variable.size() {
                return Err(PretrainedError::Shape {
                    path: file.to_path_buf(),
                    name,
                    found: saved.size(),
                    expected: variable.size(),
                });
            }
            variable.copy_(&saved.to_kind(variable.kind()).to_device(variable.device()));
        }
        Ok(())
    })
}

/// Writes `config.json` and `model.safetensors` into `dir` through `dir.tmp` and a rename,
/// so an interrupted save never leaves half a model.
pub fn save(dir: &Path, var_store: &nn::VarStore, config: &impl Serialize) -> Result<(), PretrainedError> {
    let io = FileError::io;
    let staging = dir.with_extension("tmp");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let weights = staging.join(WEIGHTS_FILE);
    var_store.save(&weights).map_err(|source| PretrainedError::Torch { path: weights, source })?;
    let config_path = staging.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).expect("model configs serialize");
    std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    Ok(std::fs::rename(&staging, dir).map_err(io(dir))?)
}
