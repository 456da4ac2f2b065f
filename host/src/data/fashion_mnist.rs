//! Fashion-MNIST, the default data set that works offline: 70,000 real 28x28 grey images
//! of ten named clothing classes, read from the IDX files of Debian's
//! `dataset-fashion-mnist` (gzip-compressed or not).

use crate::files::FileError;
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where Debian's `dataset-fashion-mnist` installs the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The ten classes, in label order, worded for captions.
pub const CLASS_NAMES: [&str; 10] =
    ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Images with one class label each, kept on the CPU as `u8`.
#[derive(Debug)]
pub struct LabelledImages {
    /// `(count, 28, 28)`, `u8`.
    pub images: Tensor,
    /// `(count,)`, `i64`, each below `CLASS_NAMES.len()`.
    pub labels: Tensor,
}

impl LabelledImages {
    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Images `start..start + count`, sharing storage with these.
    pub fn slice(&self, start: i64, count: i64) -> LabelledImages {
        LabelledImages { images: self.images.narrow(0, start, count), labels: self.labels.narrow(0, start, count) }
    }
}

/// The last training images are held out for mid-run evaluation, so that a run never
/// evaluates on what it trained on.
pub const VALIDATION_IMAGES: i64 = 5000;

/// Reads one split from `dir`.
pub fn load(dir: &Path, split: Split) -> Result<LabelledImages, FileError> {
    let prefix = split.file_prefix();
    let (image_path, image_dims, pixels) = read_idx(dir, &format!("{prefix}-images-idx3-ubyte"), 3)?;
    let (label_path, label_dims, labels) = read_idx(dir, &format!("{prefix}-labels-idx1-ubyte"), 1)?;
    if label_dims[0] != image_dims[0] {
        let problem = format!("{} labels for {} images in {}", label_dims[0], image_dims[0], image_path.display());
        return Err(FileError::format(&label_path, problem));
    }
    if let Some(bad) = labels.iter().find(|&&label| label as usize >= CLASS_NAMES.len()) {
        return Err(FileError::format(&label_path, format!("label {bad} is not a class (0-9)")));
    }
    let shape: Vec<i64> = image_dims.iter().map(|&d| d as i64).collect();
    let labels: Vec<i64> = labels.into_iter().map(i64::from).collect();
    Ok(LabelledImages {
        images: Tensor::from_slice(&pixels).view(shape.as_slice()),
        labels: Tensor::from_slice(&labels),
    })
}

/// Reads an IDX file of unsigned bytes with `rank` dimensions, from `<name>.gz` or `<name>`.
fn read_idx(dir: &Path, name: &str, rank: usize) -> Result<(PathBuf, Vec<usize>, Vec<u8>), FileError> {
    let gz = dir.join(format!("{name}.gz"));
    let (path, bytes) = if gz.exists() {
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&gz).and_then(|file| GzDecoder::new(file).read_to_end(&mut bytes));
        read.map_err(FileError::io(&gz))?;
        (gz, bytes)
    } else {
        let plain = dir.join(name);
        let bytes = std::fs::read(&plain).map_err(FileError::io(&plain))?;
        (plain, bytes)
    };
    let format_error = |problem: String| FileError::format(&path, problem);
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(format_error(format!("{} bytes is too short for an IDX header", bytes.len())));
    }
    // Magic: two zero bytes, the element type (0x08 = unsigned byte), the rank.
    if bytes[..4] != [0, 0, 0x08, rank as u8] {
        return Err(format_error(format!("not an IDX file of unsigned bytes with {rank} dimensions")));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|be| u32::from_be_bytes([be[0], be[1], be[2], be[3]]) as usize).collect();
    let expected = dims.iter().product::<usize>();
    let data = bytes[header..].to_vec();
    if data.len() != expected {
        return Err(format_error(format!("header promises {expected} bytes of data, file has {}", data.len())));
    }
    Ok((path, dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn reads_plain_idx_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "t10k-images-idx3-ubyte", &[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 1, 2, 3, 4]);
        write(dir.path(), "t10k-labels-idx1-ubyte", &[0, 0, 8, 1, 0, 0, 0, 2, 9, 0]);
        let data = load(dir.path(), Split::Test).unwrap();
        assert_eq!(data.images.size(), [2, 1, 2]);
        assert_eq!(Vec::<i64>::try_from(&data.labels).unwrap(), [9, 0]);
    }

    #[test]
    fn truncated_and_mismatched_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "t10k-images-idx3-ubyte", &[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 1, 2, 3]);
        write(dir.path(), "t10k-labels-idx1-ubyte", &[0, 0, 8, 1, 0, 0, 0, 2, 9, 0]);
        let err = load(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(err.contains("t10k-images-idx3-ubyte") && err.contains("promises 4 bytes"), "{err}");

        write(dir.path(), "t10k-images-idx3-ubyte", &[0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 7]);
        let err = load(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(err.contains("t10k-labels-idx1-ubyte") && err.contains("2 labels for 1 images"), "{err}");
    }

    #[test]
    fn a_missing_directory_names_the_file() {
        let err = load(Path::new("/nonexistent/fmnist"), Split::Train).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/fmnist/train-images-idx3-ubyte"), "{err}");
    }
}
