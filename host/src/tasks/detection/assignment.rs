//! Minimum-cost assignment on a rectangular cost matrix: the Hungarian matching of ground-truth
//! boxes to distinct predictions in DETR-style training. It gives SciPy's
//! `linear_sum_assignment` results, ties included, by following its shortest augmenting path
//! method (Crouse 2016, "On implementing 2D rectangular assignment algorithms").
//! Written here because no crate fit: `pathfinding`'s `kuhn_munkres` needs `Ord` weights (no
//! floats) and more columns than rows; `lapjv` and `munkres` take square matrices only; `hungarian`
//! takes integers only; `lsap`, a float port of SciPy's solver, has had no release since 2023.

/// The largest cost magnitude taken. The solver's dual values are lengths of alternating paths,
/// sums of at most twice as many costs as there are pairs, and this keeps them far from overflow.
pub const MAX_COST: f64 = 1e150;

#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    #[error("{len} costs for a {rows} x {cols} matrix")]
    Shape { len: usize, rows: usize, cols: usize },
    #[error("cost {value} at row {row}, column {column}: costs must be finite and within ±{MAX_COST:e}")]
    Cost { row: usize, column: usize, value: f64 },
}

/// The pairing of rows with columns of `costs` (`rows x cols`, row-major) of least total cost
/// that uses every index of the smaller dimension once, each paired with a distinct index of the
/// larger one: `min(rows, cols)` `(row, column)` pairs, sorted by row. For DETR-style matching,
/// with predictions as rows and ground truths as columns, every ground truth gets its own
/// prediction. Costs are summed in `f64` whatever `C` is.
pub fn min_cost_assignment<C: Copy + Into<f64>>(
    costs: &[C],
    rows: usize,
    cols: usize,
) -> Result<Vec<(usize, usize)>, AssignmentError> {
    if rows.checked_mul(cols) != Some(costs.len()) {
        return Err(AssignmentError::Shape { len: costs.len(), rows, cols });
    }
    if costs.is_empty() {
        return Ok(Vec::new());
    }
    // The solver assigns every row of a matrix at most as tall as it is wide, and reads one
    // contiguous row per step: a tall matrix is solved transposed.
    let transposed = rows > cols;
    let (short, long) = if transposed { (cols, rows) } else { (rows, cols) };
    let mut short_by_long = vec![0.0; costs.len()];
    for (row, row_costs) in costs.chunks_exact(cols).enumerate() {
        for (column, &cost) in row_costs.iter().enumerate() {
            let value: f64 = cost.into();
            if value.is_nan() || value.abs() > MAX_COST {
                return Err(AssignmentError::Cost { row, column, value });
            }
            let at = if transposed { column * long + row } else { row * cols + column };
            short_by_long[at] = value;
        }
    }
    let column_of_row = shortest_augmenting_paths(&short_by_long, short, long);
    let mut pairs: Vec<(usize, usize)> = column_of_row
        .into_iter()
        .enumerate()
        .map(|(short_index, long_index)| if transposed { (long_index, short_index) } else { (short_index, long_index) })
        .collect();
    pairs.sort_unstable();
    Ok(pairs)
}

/// Stands for no index: the row of a column that no row holds yet, or a link not made yet.
const NONE: usize = usize::MAX;

/// The column of each row in a least-cost assignment of the `short` rows of `costs`
/// (`short x long`, row-major, `short <= long`, every cost finite). Rows are added one at a time,
/// each through the shortest path in reduced costs to a free column, Dijkstra-style; the row and
/// column potentials then change so that every reduced cost stays non-negative and those of
/// assigned pairs zero, which keeps the assignment optimal at each size.
fn shortest_augmenting_paths(costs: &[f64], short: usize, long: usize) -> Vec<usize> {
    let mut row_potential = vec![0.0; short];
    let mut column_potential = vec![0.0; long];
    let mut column_of_row = vec![NONE; short];
    let mut row_of_column = vec![NONE; long];
    let mut path_length = vec![f64::INFINITY; long];
    let mut row_before = vec![NONE; long];
    let mut visited_rows = Vec::with_capacity(short);
    let mut reached_columns = Vec::with_capacity(long);
    let mut unreached_columns = Vec::with_capacity(long);
    for start_row in 0..short {
        // Listed last column first, so that equal costs pair row i with column i, as in SciPy.
        unreached_columns.clear();
        unreached_columns.extend((0..long).rev());
        path_length.fill(f64::INFINITY);
        visited_rows.clear();
        reached_columns.clear();
        let mut row = start_row;
        let mut shortest = 0.0;
        let sink = loop {
            visited_rows.push(row);
            let row_costs = &costs[row * long..(row + 1) * long];
            let mut lowest = f64::INFINITY;
            let mut lowest_at = 0;
            for (position, &column) in unreached_columns.iter().enumerate() {
                let length = shortest + row_costs[column] - row_potential[row] - column_potential[column];
                if length < path_length[column] {
                    row_before[column] = row;
                    path_length[column] = length;
                }
                // Among equally near columns a free one ends the search at once, which matters
                // when costs take few distinct values.
                if path_length[column] < lowest || (path_length[column] == lowest && row_of_column[column] == NONE) {
                    lowest = path_length[column];
                    lowest_at = position;
                }
            }
            shortest = lowest;
            let column = unreached_columns.swap_remove(lowest_at);
            reached_columns.push(column);
            if row_of_column[column] == NONE {
                break column;
            }
            row = row_of_column[column];
        };
        row_potential[start_row] += shortest;
        for &row in &visited_rows[1..] {
            row_potential[row] += shortest - path_length[column_of_row[row]];
        }
        for &column in &reached_columns {
            column_potential[column] -= shortest - path_length[column];
        }
        let mut column = sink;
        loop {
            let row = row_before[column];
            row_of_column[column] = row;
            let previous_column = std::mem::replace(&mut column_of_row[row], column);
            if row == start_row {
                break;
            }
            column = previous_column;
        }
    }
    column_of_row
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    fn total(costs: &[f64], cols: usize, pairs: &[(usize, usize)]) -> f64 {
        pairs.iter().map(|&(row, column)| costs[row * cols + column]).sum()
    }

    /// The least total over every way of giving each index of the smaller side its own index
    /// of the larger one.
    fn brute_force_minimum(costs: &[f64], rows: usize, cols: usize) -> f64 {
        fn least_from(short_index: usize, short: usize, taken: &mut [bool], cost: &dyn Fn(usize, usize) -> f64) -> f64 {
            if short_index == short {
                return 0.0;
            }
            let mut least = f64::INFINITY;
            for long_index in 0..taken.len() {
                if !taken[long_index] {
                    taken[long_index] = true;
                    let rest = least_from(short_index + 1, short, taken, cost);
                    least = least.min(cost(short_index, long_index) + rest);
                    taken[long_index] = false;
                }
            }
            least
        }
        let cost = |short_index: usize, long_index: usize| {
            if rows <= cols { costs[short_index * cols + long_index] } else { costs[long_index * cols + short_index] }
        };
        least_from(0, rows.min(cols), &mut vec![false; rows.max(cols)], &cost)
    }

    /// `pairs` sorted by row, one per index of the smaller side, no row or column twice.
    fn assert_valid(pairs: &[(usize, usize)], rows: usize, cols: usize) {
        assert_eq!(pairs.len(), rows.min(cols), "{pairs:?}");
        assert!(pairs.windows(2).all(|pair| pair[0].0 < pair[1].0), "rows sorted and distinct: {pairs:?}");
        let mut columns: Vec<usize> = pairs.iter().map(|&(_, column)| column).collect();
        columns.sort_unstable();
        columns.dedup();
        assert_eq!(columns.len(), pairs.len(), "columns distinct: {pairs:?}");
        assert!(pairs.iter().all(|&(row, column)| row < rows && column < cols), "{pairs:?}");
    }

    /// Matrices up to 6 x 9 and 9 x 6, with costs drawn from three values (many ties), from
    /// values whose sums round (0.1 + 0.2 != 0.3), or from a continuous range.
    fn small_matrices() -> impl Strategy<Value = (Vec<f64>, usize, usize)> {
        let values = prop_oneof![
            (0..3u8).prop_map(f64::from).boxed(),
            prop::sample::select(vec![0.1, 0.2, 0.3, 0.7]).boxed(),
            (-10.0..10.0f64).boxed(),
        ];
        (0..=6usize, 0..=9usize, any::<bool>(), Just(values)).prop_flat_map(|(short, long, tall, values)| {
            let (rows, cols) = if tall { (long, short) } else { (short, long) };
            (prop::collection::vec(values, rows * cols), Just(rows), Just(cols))
        })
    }

    #[test]
    fn matches_brute_force_on_small_matrices() {
        let config = Config { cases: 600, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        runner
            .run(&small_matrices(), |(costs, rows, cols)| {
                let pairs =
                    min_cost_assignment(&costs, rows, cols).map_err(|err| TestCaseError::fail(err.to_string()))?;
                assert_valid(&pairs, rows, cols);
                let (found, least) = (total(&costs, cols, &pairs), brute_force_minimum(&costs, rows, cols));
                prop_assert!((found - least).abs() <= 1e-12, "{rows} x {cols}: {found} against {least}, {pairs:?}");
                Ok(())
            })
            .unwrap();
    }

    /// That SciPy 1.17's `linear_sum_assignment` gives `expected` on `costs` and its transpose.
    fn assert_same_as_scipy(costs: &[f64], rows: usize, cols: usize, expected: &[(usize, usize)]) {
        assert_eq!(min_cost_assignment(costs, rows, cols).unwrap(), expected, "{rows} x {cols}");
        let transposed: Vec<f64> = (0..cols).flat_map(|c| (0..rows).map(move |r| costs[r * cols + c])).collect();
        let mut swapped: Vec<(usize, usize)> = expected.iter().map(|&(row, column)| (column, row)).collect();
        swapped.sort_unstable();
        assert_eq!(min_cost_assignment(&transposed, cols, rows).unwrap(), swapped, "{cols} x {rows}");
    }

    #[test]
    fn gives_scipys_assignments() {
        assert_same_as_scipy(&[4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0], 3, 3, &[(0, 1), (1, 0), (2, 2)]);
        assert_same_as_scipy(&[10.0, 10.0, 8.0, 9.0, 8.0, 1.0, 9.0, 7.0, 4.0], 3, 3, &[(0, 0), (1, 2), (2, 1)]);
        let rectangular = [400.0, 150.0, 400.0, 1.0, 400.0, 450.0, 600.0, 2.0, 300.0, 225.0, 300.0, 3.0];
        assert_same_as_scipy(&rectangular, 3, 4, &[(0, 1), (1, 3), (2, 2)]);
        let rectangular = [10.0, 10.0, 8.0, 11.0, 9.0, 8.0, 1.0, 1.0, 9.0, 7.0, 4.0, 10.0];
        assert_same_as_scipy(&rectangular, 3, 4, &[(0, 1), (1, 3), (2, 2)]);
        // Zeros on the anti-diagonal and a row of zeros: ties everywhere.
        let ties = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        assert_same_as_scipy(&ties, 4, 3, &[(0, 2), (1, 1), (2, 0)]);
    }

    #[test]
    fn empty_single_and_constant_matrices() {
        for (rows, cols) in [(0, 0), (0, 5), (5, 0)] {
            assert_eq!(min_cost_assignment::<f64>(&[], rows, cols).unwrap(), []);
        }
        // The first of two equal minima, as SciPy picks.
        assert_eq!(min_cost_assignment(&[3.0, 1.0, 2.0, 1.0, 5.0], 1, 5).unwrap(), [(0, 1)]);
        assert_eq!(min_cost_assignment(&[3.0, 1.0, 2.0, 1.0, 5.0], 5, 1).unwrap(), [(1, 0)]);
        assert_eq!(min_cost_assignment(&[7.0], 1, 1).unwrap(), [(0, 0)]);
        assert_eq!(min_cost_assignment(&[1.0; 9], 3, 3).unwrap(), [(0, 0), (1, 1), (2, 2)]);
        assert_eq!(min_cost_assignment(&[1.0; 8], 2, 4).unwrap(), [(0, 0), (1, 1)]);
        assert_eq!(min_cost_assignment(&[1.0; 8], 4, 2).unwrap(), [(0, 0), (1, 1)]);
    }

    #[test]
    fn f32_costs_assign_as_their_f64_values() {
        let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let costs: Vec<f32> = (0..40 * 7).map(|_| rng.random_range(-1.0..1.0)).collect();
        let widened: Vec<f64> = costs.iter().map(|&cost| f64::from(cost)).collect();
        let pairs = min_cost_assignment(&costs, 40, 7).unwrap();
        assert_valid(&pairs, 40, 7);
        assert_eq!(pairs, min_cost_assignment(&widened, 40, 7).unwrap());
    }

    #[test]
    fn costs_up_to_the_limit_are_taken_and_the_rest_refused_by_place() {
        let extreme = [MAX_COST, -MAX_COST, -MAX_COST, MAX_COST];
        assert_eq!(min_cost_assignment(&extreme, 2, 2).unwrap(), [(0, 1), (1, 0)]);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -2.0 * MAX_COST] {
            let mut costs = [0.0; 6];
            costs[5] = bad;
            let err = min_cost_assignment(&costs, 3, 2).unwrap_err();
            assert!(matches!(err, AssignmentError::Cost { row: 2, column: 1, .. }), "{err}");
        }
        assert!(min_cost_assignment(&[f32::NAN], 1, 1).unwrap_err().to_string().contains("row 0, column 0"));
    }

    #[test]
    fn a_length_that_is_not_rows_times_columns_is_refused() {
        let err = min_cost_assignment(&[0.0; 5], 2, 3).unwrap_err();
        assert_eq!(err.to_string(), "5 costs for a 2 x 3 matrix");
        assert!(matches!(min_cost_assignment(&[0.0; 4], usize::MAX, 2), Err(AssignmentError::Shape { .. })));
        assert!(matches!(min_cost_assignment(&[0.0], 0, 1), Err(AssignmentError::Shape { .. })));
    }
}
