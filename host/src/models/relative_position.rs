//! Relative position bias tables resized to another window, as recognize-anything loads a
//! Swin checkpoint into an encoder of another window size (`interpolate_relative_pos_embed`
//! of `ram/models/swin_transformer.py`, taken from BEiT's fine-tuning script; RAM's loaders
//! apply it to every `relative_position_bias_table`).
//!
//! A table holds one bias per head for each offset `(dy, dx)` within a window, `2W - 1` a
//! side. The source's offsets are not spread evenly: they are placed at `0, ±1, ±(1 + q),
//! ±(1 + q + q^2), ...`, with `q` (found by bisection in [1.01, 1.5] to 1e-6) making the last
//! reach the target's largest offset, so that the near offsets keep their spacing. Each head's
//! table is then resampled at the target's whole offsets by SciPy's `interp2d(kind="cubic")`.
//! On a grid that is FITPACK's `regrid` without smoothing: the tensor product of cubic
//! interpolating splines with not-a-knot ends, which is what is computed here, one
//! interpolation matrix per axis. Points past the outermost offsets are evaluated there,
//! as FITPACK clamps them. SciPy 1.14 removed `interp2d`; its `RectBivariateSpline` computes
//! the same spline.

use tch::{Device, Kind, Tensor};

/// Why a table cannot be resized.
#[derive(Debug, thiserror::Error)]
#[error("a relative position table of {rows} rows: {problem}")]
pub struct ResizeError {
    rows: i64,
    problem: &'static str,
}

/// `table` (`((2W - 1)^2, heads)`) for windows of `window`: as it is when it already fits.
pub fn resize_table(table: &Tensor, window: i64) -> Result<Tensor, ResizeError> {
    let (rows, heads) = table.size2().map_err(|_| ResizeError { rows: -1, problem: "not two-dimensional" })?;
    let source = (rows as f64).sqrt().round() as i64;
    if source * source != rows {
        return Err(ResizeError { rows, problem: "not the square of a side" });
    }
    let target = 2 * window - 1;
    if source == target {
        return Ok(table.shallow_clone());
    }
    if source < 4 {
        return Err(ResizeError { rows, problem: "a cubic spline needs 4 offsets a side (a window of 3 or more)" });
    }
    let half = (target / 2) as f64;
    let at: Vec<f64> = (0..target).map(|i| i as f64 - half).collect();
    let weights = spline_matrix(&source_offsets(source, target), &at);
    let grids = table.to_device(Device::Cpu).to_kind(Kind::Double).transpose(0, 1).reshape([heads, source, source]);
    let resized = weights.matmul(&grids).matmul(&weights.transpose(0, 1));
    Ok(resized
        .reshape([heads, target * target])
        .transpose(0, 1)
        .contiguous()
        .to_kind(table.kind())
        .to_device(table.device()))
}

/// Where the `source` offsets a side are placed to span the `target`'s.
fn source_offsets(source: i64, target: i64) -> Vec<f64> {
    let half = source / 2;
    let reach = (target / 2) as f64;
    let progression = |q: f64| (1.0 - q.powi(half as i32)) / (1.0 - q);
    let (mut left, mut right, mut q) = (1.01f64, 1.5f64, 1.01f64);
    while right - left > 1e-6 {
        q = (left + right) / 2.0;
        if progression(q) > reach {
            right = q;
        } else {
            left = q;
        }
    }
    let mut distances = Vec::with_capacity(half as usize);
    let mut current = 1.0;
    for i in 0..half {
        distances.push(current);
        current += q.powi(i as i32 + 1);
    }
    distances.iter().rev().map(|d| -d).chain([0.0]).chain(distances.iter().copied()).collect()
}

/// `(at.len(), knots.len())`: row `i` gives the value at `at[i]` of the not-a-knot cubic
/// spline through the values at `knots` (increasing, 4 or more) as a combination of them.
fn spline_matrix(knots: &[f64], at: &[f64]) -> Tensor {
    let n = knots.len();
    let h: Vec<f64> = knots.windows(2).map(|pair| pair[1] - pair[0]).collect();
    // The second derivatives M at the knots solve `system * M = rhs * values`.
    let mut system = vec![0.0; n * n];
    let mut rhs = vec![0.0; n * n];
    // Not-a-knot: the third derivative is continuous at the second and the last-but-one knot.
    system[0] = -h[1];
    system[1] = h[0] + h[1];
    system[2] = -h[0];
    let last = (n - 1) * n;
    system[last + n - 3] = -h[n - 2];
    system[last + n - 2] = h[n - 2] + h[n - 3];
    system[last + n - 1] = -h[n - 3];
    for i in 1..n - 1 {
        let row = i * n;
        system[row + i - 1] = h[i - 1];
        system[row + i] = 2.0 * (h[i - 1] + h[i]);
        system[row + i + 1] = h[i];
        rhs[row + i - 1] = 6.0 / h[i - 1];
        rhs[row + i] = -6.0 / h[i - 1] - 6.0 / h[i];
        rhs[row + i + 1] = 6.0 / h[i];
    }
    let matrix = |values: &[f64], rows: usize| Tensor::from_slice(values).view([rows as i64, n as i64]);
    let moments = Tensor::linalg_solve(&matrix(&system, n), &matrix(&rhs, n), true);
    // On [x_k, x_k+1]: S = M_k a^3 / 6h + M_k+1 b^3 / 6h + (y_k / h - M_k h / 6) a + (y_k+1 / h - M_k+1 h / 6) b,
    // with a = x_k+1 - t and b = t - x_k.
    let mut on_values = vec![0.0; at.len() * n];
    let mut on_moments = vec![0.0; at.len() * n];
    for (row, &t) in at.iter().enumerate() {
        let t = t.clamp(knots[0], knots[n - 1]);
        let k = knots[1..n - 1].iter().take_while(|&&knot| knot <= t).count();
        let (step, a, b) = (h[k], knots[k + 1] - t, t - knots[k]);
        on_values[row * n + k] = a / step;
        on_values[row * n + k + 1] = b / step;
        on_moments[row * n + k] = a.powi(3) / (6.0 * step) - a * step / 6.0;
        on_moments[row * n + k + 1] = b.powi(3) / (6.0 * step) - b * step / 6.0;
    }
    matrix(&on_values, at.len()) + matrix(&on_moments, at.len()).matmul(&moments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spline_reproduces_cubics_and_passes_through_its_knots() {
        let knots = source_offsets(13, 23);
        let cubic = |x: f64| 0.5 * x.powi(3) - 2.0 * x * x + x - 3.0;
        let values = Tensor::from_slice(&knots.iter().map(|&x| cubic(x)).collect::<Vec<_>>());
        let at: Vec<f64> = (0..23).map(|i| i as f64 - 11.0).filter(|&t| t.abs() <= knots[12]).collect();
        let expected = Tensor::from_slice(&at.iter().map(|&x| cubic(x)).collect::<Vec<_>>());
        let got = spline_matrix(&knots, &at).matmul(&values);
        assert!(got.allclose(&expected, 1e-9, 1e-9, false), "{got} {expected}");
        let through = spline_matrix(&knots, &knots);
        assert!(through.allclose(&Tensor::eye(13, (Kind::Double, Device::Cpu)), 1e-12, 1e-12, false));
    }

    #[test]
    fn offsets_keep_unit_steps_near_the_centre_and_reach_the_targets_edge() {
        let up = source_offsets(13, 23);
        assert_eq!(up.len(), 13);
        assert_eq!(&up[5..8], &[-1.0, 0.0, 1.0]);
        assert!((up[12] - 11.0).abs() < 1e-4, "{up:?}");
        // Shrinking, the progression cannot go below 1.01: the offsets overshoot the target.
        let down = source_offsets(23, 13);
        assert!(down[22] > 6.0);
    }

    #[test]
    fn a_fitting_table_is_kept_and_a_resized_one_has_the_targets_rows() {
        let table = Tensor::randn([23 * 23, 3], (Kind::Float, Device::Cpu));
        assert!(resize_table(&table, 12).unwrap().equal(&table));
        let smaller = resize_table(&table, 7).unwrap();
        assert_eq!(smaller.size(), [13 * 13, 3]);
        assert_eq!(smaller.kind(), Kind::Float);
        assert!(resize_table(&table.narrow(0, 0, 10), 7).is_err());
    }
}
