//! Batched augmentation on the training device, steered by the policy's knob values:
//! random-resized crop and horizontal flip in one `affine_grid` + `grid_sample`, then
//! brightness/contrast jitter. Each sample's random numbers are a function of (seed, epoch,
//! sample index), so a run's augmentation does not depend on thread timing or on where it
//! was resumed.

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

/// The knobs, in the order policies see them.
pub const KNOBS: [KnobSpec; 3] = [
    // Smallest crop area, as a fraction of the image (RandomResizedCrop's `scale[0]`).
    KnobSpec { name: "crop_scale_min", min: 0.08, max: 1.0, default: 1.0 },
    KnobSpec { name: "flip_prob", min: 0.0, max: 1.0, default: 0.0 },
    // Brightness and contrast factors are drawn from [1 - s, 1 + s].
    KnobSpec { name: "color_jitter", min: 0.0, max: 0.9, default: 0.0 },
];

/// Separates augmentation draws from other per-sample randomness.
const AUGMENT_DRAW: u64 = 0xA06_3E47;

/// A uniform number in [0, 1) for (seed, epoch, sample, draw).
fn uniform(seed: u64, epoch: u64, sample: i64, draw: u64) -> f64 {
    (keyed(seed, &[AUGMENT_DRAW, epoch, sample as u64, draw]) >> 11) as f64 / (1u64 << 53) as f64
}

/// Augments `pixels` (`(batch, channels, height, width)`, values in [0, 1]) of the samples
/// `samples`, with knob values `values` (aligned with [`KNOBS`]).
pub fn augment(pixels: &Tensor, samples: &[i64], epoch: u64, seed: u64, values: &[f64]) -> Tensor {
    let [crop_scale_min, flip_prob, jitter] = [values[0], values[1], values[2]];
    let device = pixels.device();
    let mut out = pixels.shallow_clone();
    if crop_scale_min < 1.0 || flip_prob > 0.0 {
        out = crop_and_flip(&out, samples, epoch, seed, crop_scale_min, flip_prob, device);
    }
    if jitter > 0.0 {
        out = brightness_contrast(&out, samples, epoch, seed, jitter, device);
    }
    out
}

fn crop_and_flip(
    pixels: &Tensor,
    samples: &[i64],
    epoch: u64,
    seed: u64,
    scale_min: f64,
    flip_prob: f64,
    device: Device,
) -> Tensor {
    let (log_low, log_high) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let theta: Vec<f32> = samples
        .iter()
        .flat_map(|&sample| {
            let u = |draw| uniform(seed, epoch, sample, draw);
            let area = scale_min + (1.0 - scale_min) * u(0);
            let aspect = (log_low + (log_high - log_low) * u(1)).exp();
            // A side that would leave the image is cut to it, keeping the area.
            let (width, height) = match ((area * aspect).sqrt(), (area / aspect).sqrt()) {
                (w, _) if w > 1.0 => (1.0, area),
                (_, h) if h > 1.0 => (area, 1.0),
                sides => sides,
            };
            let center_x = (2.0 * u(2) - 1.0) * (1.0 - width);
            let center_y = (2.0 * u(3) - 1.0) * (1.0 - height);
            let flip = if u(4) < flip_prob { -1.0 } else { 1.0 };
            [flip * width, 0.0, center_x, 0.0, height, center_y].map(|v| v as f32)
        })
        .collect();
    let theta = Tensor::from_slice(&theta).view([samples.len() as i64, 2, 3]).to_device(device);
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
}
