//! `trainer embed`: L2-normalised CLIP embeddings of images and texts, for retrieval
//! indexes, written as one safetensors file whose metadata names each row (the image's path,
//! the text), so the file is all a user needs to search with.

use crate::data::PixelNormalizer;
use crate::engine::EngineError;
use crate::files::FileError;
use crate::models::clip::Clip;
use crate::tasks::TaskKind;
use crate::tasks::inputs::{check_tokenizer_fits, load_tokenizer};
use crate::tasks::use_model::{ImageSource, for_each_batch, kind_of_folder};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Tensor names in the output file, and the metadata keys of what their rows are.
pub const IMAGE_EMBEDDINGS: &str = "image_embeddings";
pub const TEXT_EMBEDDINGS: &str = "text_embeddings";
pub const IMAGE_PATHS: &str = "images";
pub const TEXTS: &str = "texts";

/// `trainer embed`: which model, which images and texts, where to.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub model: PathBuf,
    pub images: ImageSource,
    /// One text per line.
    pub texts: Option<PathBuf>,
    pub out: PathBuf,
    pub device: Device,
}

/// What was embedded.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    pub images: usize,
    pub texts: usize,
    pub dimension: i64,
}

pub fn embed(request: &EmbedRequest) -> Result<Embedded, EngineError> {
    let dir = &request.model;
    if kind_of_folder(dir)? != TaskKind::Clip {
        return Err(EngineError::Config(format!(
            "--model {}: a tagger; embed takes a CLIP model (a clip run's final/ or a Hugging Face CLIP folder)",
            dir.display()
        )));
    }
    let (config, _store, model) = Clip::from_pretrained(dir, request.device)?;
    let dimension = config.projection_dim;
    let (files, image_rows) = if !request.images.is_given() && request.texts.is_some() {
        (Vec::new(), Vec::new())
    } else {
        let files = request.images.files()?;
        let normalizer = PixelNormalizer::for_model(Some(dir), config.vision_config.image_size, request.device)?;
        let mut rows = Vec::new();
        for_each_batch(&files, &normalizer, request.device, request.images.batch_size, |_, pixels| {
            rows.push(model.image_embeddings(pixels).to_kind(Kind::Float).to_device(Device::Cpu));
            Ok(())
        })?;
        (files, rows)
    };
    let texts = match &request.texts {
        Some(path) => read_texts(path)?,
        None => Vec::new(),
    };
    let mut text_rows = Vec::new();
    if !texts.is_empty() {
        let (tokenizer, _) = load_tokenizer(Some(dir))?;
        check_tokenizer_fits(&config, &tokenizer, dir)?;
        let context = config.text_config.max_position_embeddings.max(2) as usize;
        for chunk in texts.chunks(request.images.batch_size) {
            let ids: Vec<i64> = chunk.iter().flat_map(|text| tokenizer.tokenize(text, context)).collect();
            let ids = Tensor::from_slice(&ids).view([chunk.len() as i64, -1]).to_device(request.device);
            let embeddings = tch::no_grad(|| model.text_embeddings(&ids));
            text_rows.push(embeddings.to_kind(Kind::Float).to_device(Device::Cpu));
        }
    }
    let paths: Vec<String> = files.iter().map(|path| path.display().to_string()).collect();
    write(&request.out, dimension, &image_rows, &paths, &text_rows, &texts)?;
    Ok(Embedded { images: files.len(), texts: texts.len(), dimension })
}

/// The non-empty lines of `path`.
fn read_texts(path: &Path) -> Result<Vec<String>, EngineError> {
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    let texts: Vec<String> = text.lines().map(str::trim).filter(|line| !line.is_empty()).map(String::from).collect();
    if texts.is_empty() {
        return Err(FileError::format(path, "no texts (one per line)").into());
    }
    Ok(texts)
}

/// The embeddings as `(rows, dimension)` float32 tensors, with the names of their rows as
/// JSON lists in the metadata.
fn write(
    out: &Path,
    dimension: i64,
    image_rows: &[Tensor],
    paths: &[String],
    text_rows: &[Tensor],
    texts: &[String],
) -> Result<(), EngineError> {
    let bytes = |rows: &[Tensor]| -> Result<Vec<u8>, EngineError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let values = Vec::<f32>::try_from(Tensor::cat(rows, 0).flatten(0, -1))?;
        Ok(values.iter().flat_map(|value| value.to_le_bytes()).collect())
    };
    let (image_bytes, text_bytes) = (bytes(image_rows)?, bytes(text_rows)?);
    fn view(data: &[u8], rows: usize, dimension: i64) -> Result<TensorView<'_>, EngineError> {
        TensorView::new(Dtype::F32, vec![rows, dimension as usize], data)
            .map_err(|err| EngineError::Config(format!("embeddings of {rows} rows: {err:?}")))
    }
    let mut tensors = Vec::new();
    let mut metadata = HashMap::new();
    if !paths.is_empty() {
        tensors.push((IMAGE_EMBEDDINGS, view(&image_bytes, paths.len(), dimension)?));
        metadata.insert(IMAGE_PATHS.to_string(), serde_json::to_string(paths).expect("strings serialize"));
    }
    if !texts.is_empty() {
        tensors.push((TEXT_EMBEDDINGS, view(&text_bytes, texts.len(), dimension)?));
        metadata.insert(TEXTS.to_string(), serde_json::to_string(texts).expect("strings serialize"));
    }
    safetensors::tensor::serialize_to_file(tensors, &Some(metadata), out)
        .map_err(|err| FileError::format(out, format!("cannot write: {err:?}")).into())
}
