//! The offline default of multi-label tagging: real Fashion-MNIST photographs composed into
//! 2x2 mosaics, each tagged with the classes it shows (one to four tags) and captioned with
//! their names. Mosaic `i` of a split is a pure function of (seed, split, i), so the data
//! set needs no files beyond Fashion-MNIST and any step can be rebuilt on resume.

use super::fashion_mnist::{CLASS_NAMES, LabelledImages};
use super::sampler::keyed;
use tch::{Device, Kind, Tensor};

/// Side of one tile, in pixels; a mosaic is twice as wide and high.
const TILE: i64 = 28;
/// Separates the tile draw from other per-sample randomness.
const TILE_DRAW: u64 = 0x70_5A1C;

/// A split of mosaics drawn from a set of labelled images.
#[derive(Debug)]
pub struct Mosaics {
    /// `(n, 28, 28)` `u8` tiles on the training device.
    images: Tensor,
    labels: Vec<i64>,
    /// Number of mosaics in the split.
    count: usize,
    /// Distinguishes the splits' draws.
    split: u64,
    seed: u64,
}

/// A batch of mosaics.
#[derive(Debug)]
pub struct MosaicBatch {
    /// `(batch, 1, 56, 56)` grey values in [0, 1].
    pub pixels: Tensor,
    /// `(batch, classes)` multi-hot, float.
    pub targets: Tensor,
    pub captions: Vec<String>,
}

impl Mosaics {
    /// `count` mosaics from the tiles of `source`: the images of one tile set never appear in
    /// another split's mosaics when the sources are disjoint.
    pub fn new(source: &LabelledImages, count: usize, split: u64, seed: u64, device: Device) -> Self {
        Mosaics {
            images: source.images.to_device(device),
            labels: Vec::<i64>::try_from(&source.labels).expect("labels are i64"),
            count,
            split,
            seed,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The tiles of mosaic `index`: top left, top right, bottom left, bottom right.
    fn tiles(&self, index: i64) -> [i64; 4] {
        let tiles = self.labels.len() as u64;
        [0, 1, 2, 3].map(|corner| (keyed(self.seed, &[TILE_DRAW, self.split, index as u64, corner]) % tiles) as i64)
    }

    pub fn batch(&self, indices: &[i64]) -> MosaicBatch {
        let device = self.images.device();
        let tiles: Vec<[i64; 4]> = indices.iter().map(|&index| self.tiles(index)).collect();
        let flat: Vec<i64> = tiles.iter().flatten().copied().collect();
        let batch = indices.len() as i64;
        // (batch, 2, 2, 28, 28) -> (batch, 2, 28, 2, 28) -> (batch, 56, 56)
        let pixels = self
            .images
            .index_select(0, &Tensor::from_slice(&flat).to_device(device))
            .view([batch, 2, 2, TILE, TILE])
            .permute([0, 1, 3, 2, 4])
            .reshape([batch, 1, 2 * TILE, 2 * TILE])
            .to_kind(Kind::Float)
            / 255.0;
        let mut targets = vec![0f32; indices.len() * CLASS_NAMES.len()];
        let captions = tiles
            .iter()
            .enumerate()
            .map(|(row, corners)| {
                let names = corners.map(|tile| {
                    let class = self.labels[tile as usize] as usize;
                    targets[row * CLASS_NAMES.len() + class] = 1.0;
                    CLASS_NAMES[class]
                });
                format!("a photo of a {}, a {}, a {} and a {}.", names[0], names[1], names[2], names[3])
            })
            .collect();
        let targets = Tensor::from_slice(&targets).view([batch, CLASS_NAMES.len() as i64]).to_device(device);
        MosaicBatch { pixels, targets, captions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosaics_are_tiled_tagged_and_captioned_reproducibly() {
        // Tile k is filled with the value k and has class k.
        let images = Tensor::arange(4, (Kind::Uint8, Device::Cpu)).view([4, 1, 1]).expand([4, 28, 28], false).copy();
        let source = LabelledImages { images, labels: Tensor::from_slice(&[0i64, 1, 2, 3]) };
        let mosaics = Mosaics::new(&source, 10, 0, 5, Device::Cpu);
        let batch = mosaics.batch(&[3, 7]);
        assert_eq!(batch.pixels.size(), [2, 1, 56, 56]);
        let corners = mosaics.tiles(3);
        for (corner, (y, x)) in [(0, 0), (0, 28), (28, 0), (28, 28)].into_iter().enumerate() {
            let value = batch.pixels.double_value(&[0, 0, y, x]) * 255.0;
            assert_eq!(value.round() as i64, corners[corner], "corner {corner}");
        }
        let targets = Vec::<f32>::try_from(batch.targets.get(0)).unwrap();
        for (class, target) in targets.iter().enumerate().take(4) {
            assert_eq!(*target == 1.0, corners.contains(&(class as i64)));
        }
        assert!(batch.captions[0].starts_with(&format!("a photo of a {},", CLASS_NAMES[corners[0] as usize])));
        assert_eq!(Mosaics::new(&source, 10, 0, 5, Device::Cpu).tiles(7), mosaics.tiles(7));
        assert_ne!(Mosaics::new(&source, 10, 1, 5, Device::Cpu).tiles(7), mosaics.tiles(7), "splits differ");
    }
}
