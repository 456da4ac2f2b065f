//! RandAugment as recognize-anything trains RAM++, RAM and Tag2Text: BLIP's `RandomAugment`
//! (`ram/data/randaugment.py`) with `N = 2`, `M = 5` over the op list of `ram/data/__init__.py`
//! (Identity, AutoContrast, Brightness, Sharpness, Equalize, ShearX, ShearY, TranslateX,
//! TranslateY, Rotate), batched on the training device.
//!
//! Per image, `N` ops are drawn uniformly with replacement, each then applied with
//! probability 0.5, at level `M` of 10:
//! - Brightness and Sharpness blend with black and with a 3x3 smoothing by `M / 10 * 1.8 +
//!   0.1` (so `M = 5` leaves the image as it is);
//! - ShearX/Y by `M / 10 * 0.3`, TranslateX/Y by `M` pixels (the reference's constant 10
//!   times `M / 10`, in pixels whatever the image size), Rotate by `M * 3` degrees about the
//!   point (width / 2, height / 2), each in a direction drawn per image; uncovered pixels
//!   are grey (128);
//! - AutoContrast stretches each channel to 0..255 and Equalize equalises its histogram,
//!   both as PIL does, which the reference's versions say they reproduce. Its AutoContrast
//!   does not quite: it negates the darkest level as a `u8` (`-low`, which wraps to
//!   `256 - low`), so a channel whose darkest level is not 0 turns nearly white. That slip is
//!   not reproduced.
//!
//! The table-based ops work on the 256 levels of the reference's `u8` images (the pixels are
//! rounded to them first, and the reference's truncations are kept); the geometric ops sample
//! bilinearly in OpenCV's pixel-centre coordinates without rounding the result to `u8`.
//!
//! A fractional `N` draws its last op for a share of the images (`N = 1.5`: a second op
//! for half of them), so a policy can raise it gradually. The draws are a function of
//! (seed, epoch, sample index), like the rest of [`super::augment`].

use super::augment::uniform;
use tch::{Kind, Tensor};

/// The reference's `MAX_LEVEL`: magnitudes run from 0 to this.
pub const MAX_MAGNITUDE: f64 = 10.0;
/// Separates RandAugment's draws from the crop, flip and jitter draws of the same sample.
const FIRST_DRAW: u64 = 16;
/// Draws per op slot: present, which op, applied, direction.
const DRAWS_PER_SLOT: u64 = 4;
/// The reference's fill for pixels a geometric op uncovers.
const FILL: f64 = 128.0 / 255.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Identity,
    AutoContrast,
    Brightness,
    Sharpness,
    Equalize,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
}

/// recognize-anything's op list, in its order.
const OPS: [Op; 10] = [
    Op::Identity,
    Op::AutoContrast,
    Op::Brightness,
    Op::Sharpness,
    Op::Equalize,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
];

/// One op an image gets: which, and whether its displacement goes the negative way.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Drawn {
    op: Op,
    negative: bool,
}

/// The ops `sample` gets, slot by slot (`None`: the slot draws nothing or skips its op).
fn draws(sample: i64, epoch: u64, seed: u64, ops: f64) -> Vec<Option<Drawn>> {
    (0..ops.ceil() as u64)
        .map(|slot| {
            let u = |draw| uniform(seed, epoch, sample, FIRST_DRAW + slot * DRAWS_PER_SLOT + draw);
            let present = u(0) < (ops - slot as f64).min(1.0);
            let op = OPS[((u(1) * OPS.len() as f64) as usize).min(OPS.len() - 1)];
            // The reference skips an op when its draw exceeds the probability 0.5.
            (present && u(2) <= 0.5).then_some(Drawn { op, negative: u(3) < 0.5 })
        })
        .collect()
}

/// `pixels` (`(batch, channels, height, width)` in [0, 1]) of the samples `samples`, each
/// through its `ops` random ops at `magnitude` (of [`MAX_MAGNITUDE`]).
pub fn rand_augment(pixels: &Tensor, samples: &[i64], epoch: u64, seed: u64, ops: f64, magnitude: f64) -> Tensor {
    let drawn: Vec<Vec<Option<Drawn>>> = samples.iter().map(|&sample| draws(sample, epoch, seed, ops)).collect();
    let device = pixels.device();
    let mut out = pixels.shallow_clone();
    for slot in 0..ops.ceil() as usize {
        for op in OPS.into_iter().filter(|&op| op != Op::Identity) {
            let (rows, negative): (Vec<i64>, Vec<bool>) = drawn
                .iter()
                .enumerate()
                .filter_map(|(row, slots)| slots[slot].filter(|d| d.op == op).map(|d| (row as i64, d.negative)))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let index = Tensor::from_slice(&rows).to_device(device);
            let done = apply(op, &out.index_select(0, &index), magnitude / MAX_MAGNITUDE, &negative);
            out = out.index_copy(0, &index, &done);
        }
    }
    out
}

/// `op` at `level` (the magnitude as a fraction of the maximum) on `images`, one direction
/// per image.
fn apply(op: Op, images: &Tensor, level: f64, negative: &[bool]) -> Tensor {
    let signed = |amount: f64| negative.iter().map(move |&n| if n { -amount } else { amount });
    let enhance = level * 1.8 + 0.1;
    let matrices: Vec<[f64; 6]> = match op {
        Op::Identity => return images.shallow_clone(),
        Op::AutoContrast => return from_levels(&autocontrast(&to_levels(images))),
        Op::Equalize => return from_levels(&equalize(&to_levels(images))),
        Op::Brightness => return from_levels(&(to_levels(images) * enhance).clamp(0.0, 255.0).floor()),
        Op::Sharpness => return from_levels(&sharpness(&to_levels(images), enhance)),
        // Each matrix maps an output pixel to where it samples the input (OpenCV's inverse map).
        Op::ShearX => signed(level * 0.3).map(|f| [1.0, -f, 0.0, 0.0, 1.0, 0.0]).collect(),
        Op::ShearY => signed(level * 0.3).map(|f| [1.0, 0.0, 0.0, -f, 1.0, 0.0]).collect(),
        Op::TranslateX => signed(level * 10.0).map(|o| [1.0, 0.0, o, 0.0, 1.0, 0.0]).collect(),
        Op::TranslateY => signed(level * 10.0).map(|o| [1.0, 0.0, 0.0, 0.0, 1.0, o]).collect(),
        Op::Rotate => {
            let (height, width) = (images.size()[2] as f64, images.size()[3] as f64);
            let (cx, cy) = (width / 2.0, height / 2.0);
            // `getRotationMatrix2D(centre, degrees, 1)` turns counter-clockwise on screen;
            // an output pixel samples the input turned back.
            signed(level * 30.0)
                .map(|degrees: f64| {
                    let (sin, cos) = degrees.to_radians().sin_cos();
                    [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
                })
                .collect()
        }
    };
    warp(images, &matrices)
}

fn to_levels(images: &Tensor) -> Tensor {
    (images * 255.0).round().clamp(0.0, 255.0)
}

fn from_levels(levels: &Tensor) -> Tensor {
    levels / 255.0
}

/// Each image sampled at `src = A * dst + t` (`[a00, a01, t0, a10, a11, t1]` in pixels,
/// pixel centres at whole numbers), bilinearly, grey outside the image.
fn warp(images: &Tensor, matrices: &[[f64; 6]]) -> Tensor {
    let size = images.size();
    let (height, width) = (size[2], size[3]);
    let device = images.device();
    let options = (Kind::Float, device);
    let xs = Tensor::arange(width, options).view([1, width]).expand([height, width], false);
    let ys = Tensor::arange(height, options).view([height, 1]).expand([height, width], false);
    let ones = Tensor::ones([height, width], options);
    // (height * width, 3) output pixels as [x, y, 1].
    let pixels = Tensor::stack(&[xs, ys, ones], 2).view([-1, 3]);
    let flat: Vec<f32> = matrices.iter().flatten().map(|&v| v as f32).collect();
    let theta = Tensor::from_slice(&flat).view([-1, 2, 3]).to_device(device);
    let source = pixels.matmul(&theta.transpose(1, 2));
    // `grid_sample`'s coordinates with `align_corners = false`: pixel x at (2x + 1) / W - 1.
    let scale = Tensor::from_slice(&[2.0 / width as f32, 2.0 / height as f32]).to_device(device);
    let offset = Tensor::from_slice(&[1.0 / width as f32 - 1.0, 1.0 / height as f32 - 1.0]).to_device(device);
    let grid = (source * scale + offset).view([-1, height, width, 2]);
    // Sampling the difference from grey with zero padding fills with grey.
    (images - FILL).grid_sampler(&grid.to_kind(images.kind()), 0, 0, false) + FILL
}

/// PIL's `ImageOps.autocontrast`: each channel's levels stretched so its darkest is 0 and
/// its brightest 255, in PIL's `f64` arithmetic (a flat channel stays).
fn autocontrast(levels: &Tensor) -> Tensor {
    let levels64 = levels.to_kind(Kind::Double);
    let low = levels64.amin([2i64, 3].as_slice(), true);
    let span = levels64.amax([2i64, 3].as_slice(), true) - &low;
    let span_or_one = span.clamp_min(1.0);
    let scale = span_or_one.full_like(255.0) / span_or_one;
    let offset = -(low * &scale);
    let stretched = (levels64 * scale + offset).clamp(0.0, 255.0).floor().to_kind(levels.kind());
    stretched.where_self(&span.gt(0.0), levels)
}

/// PIL's `ImageOps.equalize`, per channel: a level's new value is the count of pixels below
/// it (plus half a step) in steps of the count of all but the brightest level's pixels / 255.
fn equalize(levels: &Tensor) -> Tensor {
    let size = levels.size();
    let rows = size[0] * size[1];
    let device = levels.device();
    let values = levels.to_kind(Kind::Int64).view([rows, -1]);
    let row_offsets = Tensor::arange(rows, (Kind::Int64, device)).view([rows, 1]) * 256;
    let hist = (&values + &row_offsets).view([-1]).bincount::<Tensor>(None, rows * 256).view([rows, 256]);
    let bins = Tensor::arange(256, (Kind::Int64, device));
    let brightest = (hist.gt(0).to_kind(Kind::Int64) * &bins).amax([1i64].as_slice(), true);
    let total = hist.sum_dim_intlist([1i64].as_slice(), true, Kind::Int64);
    let step = (total - hist.gather(1, &brightest, false)).floor_divide_scalar(255);
    let below = hist.cumsum(1, Kind::Int64) - &hist;
    let table = (below + step.floor_divide_scalar(2)).floor_divide(&step.clamp_min(1)).clamp(0, 255);
    // A step of 0 (nearly one level) leaves the channel as it is.
    let table = table.where_self(&step.gt(0), &bins.view([1, 256]).expand([rows, 256], false));
    table.gather(1, &values, false).view(size.as_slice()).to_kind(levels.kind())
}

/// PIL's `ImageEnhance.Sharpness` as the reference computes it: a blend with the image
/// smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (rounded to levels), the border rows
/// and columns kept.
fn sharpness(levels: &Tensor, factor: f64) -> Tensor {
    if factor == 1.0 {
        return levels.shallow_clone();
    }
    let channels = levels.size()[1];
    let kernel = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0])
        .view([1, 1, 3, 3])
        .repeat([channels, 1, 1, 1])
        .to_device(levels.device())
        .to_kind(levels.kind())
        / 13.0;
    let padded = levels.reflection_pad2d([1, 1, 1, 1]);
    let smooth = padded.conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], channels).round();
    if factor == 0.0 {
        return smooth;
    }
    let blend = (&smooth + (levels - &smooth) * factor).clamp(0.0, 255.0).floor();
    let (height, width) = (levels.size()[2], levels.size()[3]);
    let inner = blend.narrow(2, 1, height - 2).narrow(3, 1, width - 2);
    let out = levels.copy();
    out.narrow(2, 1, height - 2).narrow(3, 1, width - 2).copy_(&inner);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn image(values: &[f32], height: i64, width: i64) -> Tensor {
        Tensor::from_slice(values).view([1, 1, height, width])
    }

    #[test]
    fn equalize_spreads_levels_as_pil_does() {
        // 512 pixels at 0, 256 at 100, 256 at 200: step = (512 + 256) / 255 = 3, so level
        // 100 becomes (1 + 512) / 3 = 171 and level 200 (1 + 768) / 3, clipped to 255.
        let values: Vec<f32> = (0..1024).map(|i| [0.0, 0.0, 100.0, 200.0][i % 4]).collect();
        let out = equalize(&image(&values, 32, 32));
        let expected: Vec<f32> = (0..1024).map(|i| [0.0, 0.0, 171.0, 255.0][i % 4]).collect();
        assert!(out.equal(&image(&expected, 32, 32)));
        // Too few pixels for a step: unchanged.
        let few = image(&[3.0, 9.0, 9.0, 40.0], 2, 2);
        assert!(equalize(&few).equal(&few));
    }

    #[test]
    fn autocontrast_stretches_each_channel_and_keeps_flat_ones() {
        let levels = Tensor::cat(&[image(&[50.0, 100.0, 150.0, 150.0], 2, 2), image(&[7.0; 4], 2, 2)], 1);
        let out = autocontrast(&levels);
        let expected = Tensor::cat(&[image(&[0.0, 127.0, 255.0, 255.0], 2, 2), image(&[7.0; 4], 2, 2)], 1);
        assert!(out.equal(&expected), "{out}");
    }

    #[test]
    fn sharpness_blends_the_inside_with_its_smoothing() {
        let mut values = vec![0.0f32; 25];
        values[12] = 130.0;
        let levels = image(&values, 5, 5);
        // The centre smooths to 130 * 5 / 13 = 50; its neighbours to 10.
        let sharper = sharpness(&levels, 1.5);
        assert_eq!(sharper.double_value(&[0, 0, 2, 2]), 50.0 + 80.0 * 1.5);
        assert_eq!(sharper.double_value(&[0, 0, 1, 2]), 0.0, "10 - 10 * 1.5 clips to 0");
        assert_eq!(sharpness(&levels, 0.1).double_value(&[0, 0, 1, 1]), (10.0 - 10.0 * 0.1f64).floor());
        assert!(sharpness(&levels, 1.0).equal(&levels));
        // The border keeps its levels.
        assert!(sharpness(&levels, 0.1).narrow(2, 0, 1).equal(&levels.narrow(2, 0, 1)));
    }

    #[test]
    fn translation_shifts_by_whole_pixels_and_fills_grey() {
        let pixels = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let out = apply(Op::TranslateX, &pixels, 0.5, &[false, true]);
        // Offset +5: output column x samples input column x + 5; -5 the other way.
        assert!(out.get(0).narrow(2, 0, 11).allclose(&pixels.get(0).narrow(2, 5, 11), 1e-5, 1e-5, false));
        assert!(out.get(1).narrow(2, 5, 11).allclose(&pixels.get(1).narrow(2, 0, 11), 1e-5, 1e-5, false));
        let grey = out.get(0).narrow(2, 12, 4);
        assert!(grey.allclose(&grey.full_like(FILL), 1e-6, 1e-6, false));
    }

    #[test]
    fn rotation_turns_counter_clockwise_about_the_centre() {
        // One bright pixel right of the centre of a grey 33 x 33 image; centre (16.5, 16.5).
        let mut values = vec![FILL as f32; 33 * 33];
        values[16 * 33 + 26] = 1.0;
        let out = apply(Op::Rotate, &image(&values, 33, 33), 1.0, &[false]);
        let brightest = out.view([-1]).argmax(0, false).int64_value(&[]);
        let (row, column) = (brightest / 33, brightest % 33);
        // (26 - 16.5, 16 - 16.5) turned 30 degrees counter-clockwise, y pointing down.
        let (sin, cos) = 30f64.to_radians().sin_cos();
        let (dx, dy) = (9.5, -0.5);
        let expected = (16.5 + cos * dx + sin * dy, 16.5 - sin * dx + cos * dy);
        assert!((column as f64 - expected.0).abs() <= 1.0 && (row as f64 - expected.1).abs() <= 1.0);
    }

    #[test]
    fn magnitude_five_leaves_brightness_and_sharpness_as_they_are() {
        let pixels = to_levels(&Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu))) / 255.0;
        for op in [Op::Brightness, Op::Sharpness] {
            assert!(apply(op, &pixels, 0.5, &[false]).allclose(&pixels, 1e-6, 1e-6, false), "{op:?}");
        }
        let darker = apply(Op::Brightness, &pixels, 0.0, &[false]);
        assert!(darker.allclose(&((to_levels(&pixels) * 0.1).floor() / 255.0), 1e-6, 1e-6, false));
    }

    #[test]
    fn draws_follow_seed_epoch_and_sample_and_the_op_count() {
        let pixels = Tensor::rand([6, 3, 16, 16], (Kind::Float, Device::Cpu));
        let samples = [3, 8, 13, 21, 34, 55];
        let out = rand_augment(&pixels, &samples, 1, 7, 2.0, 9.0);
        assert!(out.equal(&rand_augment(&pixels, &samples, 1, 7, 2.0, 9.0)));
        assert!(!out.equal(&rand_augment(&pixels, &samples, 2, 7, 2.0, 9.0)));
        assert!(!out.equal(&pixels), "some of six images get an op");
        // An image's ops do not depend on its neighbours in the batch.
        let alone = rand_augment(&pixels.narrow(0, 2, 1), &[13], 1, 7, 2.0, 9.0);
        assert!(alone.equal(&out.narrow(0, 2, 1)));
        assert!(rand_augment(&pixels, &samples, 1, 7, 0.0, 9.0).equal(&pixels));
        // Half an op: a share of 1000 images draws one.
        let drawn = (0..1000).filter(|&sample| draws(sample, 0, 7, 0.5)[0].is_some()).count();
        // Present for about half, applied for half of those.
        assert!((180..320).contains(&drawn), "{drawn}");
        let ops: std::collections::HashSet<_> =
            (0..1000).filter_map(|sample| draws(sample, 0, 7, 2.0)[1].map(|d| d.op)).map(|op| op as u8).collect();
        assert_eq!(ops.len(), OPS.len(), "every op is drawn");
    }
}
