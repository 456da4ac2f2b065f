//! Batched augmentation on the training device, steered by the policy's knob values:
//! random-resized crop and horizontal flip in one `affine_grid` + `grid_sample`, then, where
//! the task offers it, RandAugment ([`super::randaugment`]), then brightness/contrast jitter.
//! Each sample's random numbers are a function of (seed, epoch, sample index), so a run's
//! augmentation does not depend on thread timing or on where it was resumed.

use super::randaugment::{self, MAX_MAGNITUDE};
use super::sampler::keyed;
use tch::{Device, Kind, Tensor};

/// An augmentation knob: name, range and the default, which means "off".
#[derive(Debug, Clone, Copy)]
pub struct KnobSpec {
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    pub default: f64,
}

/// The knobs every task offers, in the order policies see them.
pub const KNOBS: [KnobSpec; 3] = [
    // Smallest crop area, as a fraction of the image (RandomResizedCrop's `scale[0]`).
    KnobSpec { name: "crop_scale_min", min: 0.08, max: 1.0, default: 1.0 },
    KnobSpec { name: "flip_prob", min: 0.0, max: 1.0, default: 0.0 },
    // Brightness and contrast factors are drawn from [1 - s, 1 + s].
    KnobSpec { name: "color_jitter", min: 0.0, max: 0.9, default: 0.0 },
];

/// [`KNOBS`] and RandAugment's two, for tasks whose targets survive shears and rotations.
/// recognize-anything trains with 2 ops at magnitude 5.
pub const KNOBS_WITH_RANDAUGMENT: [KnobSpec; 5] = [
    KNOBS[0],
    KNOBS[1],
    KNOBS[2],
    // Ops per image (`N`); a fractional part draws one more op for that share of images.
    KnobSpec { name: "randaugment_ops", min: 0.0, max: 4.0, default: 0.0 },
    // Their magnitude (`M`, of 10); 5 leaves brightness and sharpness as they are.
    KnobSpec { name: "randaugment_magnitude", min: 0.0, max: MAX_MAGNITUDE, default: 5.0 },
];

/// Separates augmentation draws from other per-sample randomness.
const AUGMENT_DRAW: u64 = 0xA06_3E47;

/// A uniform number in [0, 1) for (seed, epoch, sample, draw).
pub(super) fn uniform(seed: u64, epoch: u64, sample: i64, draw: u64) -> f64 {
    (keyed(seed, &[AUGMENT_DRAW, epoch, sample as u64, draw]) >> 11) as f64 / (1u64 << 53) as f64
}

/// Augments `pixels` (`(batch, channels, height, width)`, values in [0, 1]) of the samples
/// `samples`, with knob values `values` (aligned with [`KNOBS`] or
/// [`KNOBS_WITH_RANDAUGMENT`]).
pub fn augment(pixels: &Tensor, samples: &[i64], epoch: u64, seed: u64, values: &[f64]) -> Tensor {
    let jitter = values[2];
    let device = pixels.device();
    let mut out = pixels.shallow_clone();
    if let Some(crops) = crops_and_flips(samples, epoch, seed, values) {
        out = crop_and_flip(&out, &crops, device);
    }
    if let [_, _, _, ops, magnitude] = *values
        && ops > 0.0
    {
        out = randaugment::rand_augment(&out, samples, epoch, seed, ops, magnitude);
    }
    if jitter > 0.0 {
        out = brightness_contrast(&out, samples, epoch, seed, jitter, device);
    }
    out
}

/// One sample's random-resized crop and flip, in the `[-1, 1]` coordinates of
/// `affine_grid`: the crop's centre and its width and height as fractions of the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropFlip {
    pub center: [f64; 2],
    pub size: [f64; 2],
    pub flip: bool,
}

impl CropFlip {
    /// The crop and flip of `sample` (RandomResizedCrop's area and aspect draws).
    fn draw(sample: i64, epoch: u64, seed: u64, scale_min: f64, flip_prob: f64) -> Self {
        let (log_low, log_high) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        let u = |draw| uniform(seed, epoch, sample, draw);
        let area = scale_min + (1.0 - scale_min) * u(0);
        let aspect = (log_low + (log_high - log_low) * u(1)).exp();
        // A side that would leave the image is cut to it, keeping the area.
        let (width, height) = match ((area * aspect).sqrt(), (area / aspect).sqrt()) {
            (w, _) if w > 1.0 => (1.0, area),
            (_, h) if h > 1.0 => (area, 1.0),
            sides => sides,
        };
        let center = [(2.0 * u(2) - 1.0) * (1.0 - width), (2.0 * u(3) - 1.0) * (1.0 - height)];
        CropFlip { center, size: [width, height], flip: u(4) < flip_prob }
    }

    /// Where a box (`[x0, y0, x1, y1]` as fractions of the image) lands in the augmented
    /// image, clipped to it; `None` when its centre falls outside the crop (the rule of
    /// SSD-style crops: an object mostly cut away is no longer a target).
    pub fn move_box(&self, xyxy: [f64; 4]) -> Option<[f64; 4]> {
        // affine_grid samples input `c + s * v` (mirrored for a flip) at output `v`.
        let to_output = |fraction: f64, axis: usize| {
            let v = (2.0 * fraction - 1.0 - self.center[axis]) / self.size[axis];
            let v = if axis == 0 && self.flip { -v } else { v };
            (v + 1.0) / 2.0
        };
        let (a, b) = (to_output(xyxy[0], 0), to_output(xyxy[2], 0));
        let (x0, x1) = (a.min(b), a.max(b));
        let (y0, y1) = (to_output(xyxy[1], 1), to_output(xyxy[3], 1));
        let inside = |low: f64, high: f64| (0.0..=1.0).contains(&((low + high) / 2.0));
        (inside(x0, x1) && inside(y0, y1)).then(|| [x0.max(0.0), y0.max(0.0), x1.min(1.0), y1.min(1.0)])
    }
}

/// Each sample's crop and flip for these knob values; `None` when the values leave images
/// as they are (what [`augment`] then does).
pub fn crops_and_flips(samples: &[i64], epoch: u64, seed: u64, values: &[f64]) -> Option<Vec<CropFlip>> {
    let [crop_scale_min, flip_prob] = [values[0], values[1]];
    (crop_scale_min < 1.0 || flip_prob > 0.0)
        .then(|| samples.iter().map(|&sample| CropFlip::draw(sample, epoch, seed, crop_scale_min, flip_prob)).collect())
}

fn crop_and_flip(pixels: &Tensor, crops: &[CropFlip], device: Device) -> Tensor {
    let theta: Vec<f32> = crops
        .iter()
        .flat_map(|crop| {
            let flip = if crop.flip { -1.0 } else { 1.0 };
            let ([center_x, center_y], [width, height]) = (crop.center, crop.size);
            [flip * width, 0.0, center_x, 0.0, height, center_y].map(|v| v as f32)
        })
        .collect();
    let theta = Tensor::from_slice(&theta).view([crops.len() as i64, 2, 3]).to_device(device);
    let grid = Tensor::affine_grid_generator(&theta, pixels.size(), false);
    // Bilinear sampling, zero padding (never reached: crops stay inside the image).
    pixels.grid_sampler(&grid, 0, 0, false)
}

fn brightness_contrast(
    pixels: &Tensor,
    samples: &[i64],
    epoch: u64,
    seed: u64,
    strength: f64,
    device: Device,
) -> Tensor {
    let factors = |draw| -> Tensor {
        let values: Vec<f32> = samples
            .iter()
            .map(|&sample| (1.0 + strength * (2.0 * uniform(seed, epoch, sample, draw) - 1.0)) as f32)
            .collect();
        Tensor::from_slice(&values).view([-1, 1, 1, 1]).to_device(device)
    };
    let mean = pixels.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
    (((pixels - &mean) * factors(5) + &mean) * factors(6)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Tensor {
        Tensor::arange(2 * 28 * 28, (Kind::Float, Device::Cpu)).view([2, 1, 28, 28]) / (2.0 * 28.0 * 28.0)
    }

    #[test]
    fn defaults_leave_images_untouched() {
        let pixels = ramp();
        let defaults: Vec<f64> = KNOBS.iter().map(|k| k.default).collect();
        assert!(augment(&pixels, &[0, 1], 0, 0, &defaults).equal(&pixels));
    }

    #[test]
    fn a_certain_flip_mirrors_each_row() {
        let pixels = ramp();
        let flipped = augment(&pixels, &[0, 1], 0, 0, &[1.0, 1.0, 0.0]);
        let mirrored = pixels.flip([3]);
        assert!(flipped.allclose(&mirrored, 1e-5, 1e-6, false));
    }

    #[test]
    fn draws_depend_on_seed_epoch_and_sample_only() {
        let pixels = ramp();
        let strong = [0.3, 0.5, 0.5];
        let a = augment(&pixels, &[4, 9], 2, 11, &strong);
        assert!(a.equal(&augment(&pixels, &[4, 9], 2, 11, &strong)));
        assert!(!a.equal(&augment(&pixels, &[4, 9], 3, 11, &strong)));
        // Sample 9's result does not depend on its batch neighbour.
        let alone = augment(&pixels.narrow(0, 1, 1), &[9], 2, 11, &strong);
        assert!(alone.equal(&a.narrow(0, 1, 1)));
    }

    /// A box follows its pixels: marked on the image, the augmented image's marked pixels
    /// lie inside the moved box.
    #[test]
    fn boxes_follow_the_crop_and_the_flip() {
        let (size, strong) = (64i64, [0.3, 0.5, 0.0]);
        let xyxy = [0.25, 0.375, 0.625, 0.75];
        let marked = Tensor::zeros([1, 1, size, size], (Kind::Float, Device::Cpu));
        let pixel = |fraction: f64| (fraction * size as f64) as i64;
        let _ = marked
            .narrow(2, pixel(xyxy[1]), pixel(xyxy[3]) - pixel(xyxy[1]))
            .narrow(3, pixel(xyxy[0]), pixel(xyxy[2]) - pixel(xyxy[0]))
            .fill_(1.0);
        let mut checked = 0;
        for sample in 0..40 {
            let crop = crops_and_flips(&[sample], 1, 5, &strong).unwrap()[0];
            let Some(moved) = crop.move_box(xyxy) else { continue };
            let out = augment(&marked, &[sample], 1, 5, &strong).squeeze();
            let on = out.gt(0.5).nonzero();
            let rows = Vec::<i64>::try_from(on.select(1, 0)).unwrap();
            let columns = Vec::<i64>::try_from(on.select(1, 1)).unwrap();
            let fraction = |p: i64| (p as f64 + 0.5) / size as f64;
            let slack = 1.5 / size as f64;
            assert!(rows.iter().all(|&r| fraction(r) >= moved[1] - slack && fraction(r) <= moved[3] + slack));
            assert!(columns.iter().all(|&c| fraction(c) >= moved[0] - slack && fraction(c) <= moved[2] + slack));
            checked += 1;
        }
        assert!(checked > 10, "most crops keep the box's centre: {checked}");
    }
}
