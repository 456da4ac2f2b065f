//! The PNG plots of a run: `plot_run` on a synthetic run folder (three loss terms 100x apart,
//! two LR groups, a null loss, evaluations), decoded back to check that every series was drawn;
//! errors that name the file and line; the generic chart on degenerate data.

use image::RgbImage;
use serde_json::json;
use std::path::Path;
use trainer::report::{Chart, IMAGE_SIZE, Series, plot_run, series_colour};

const STEPS: u64 = 200;

fn write_lines(path: &Path, lines: impl IntoIterator<Item = String>) {
    let text: String = lines.into_iter().map(|line| line + "\n").collect();
    std::fs::write(path, text).expect("the temporary folder is writable");
}

/// A run's `metrics.jsonl` as the engine writes it, with losses of magnitudes 100, 10 and 0.5;
/// at step 57 the `align` loss is not finite (JSON null).
fn metrics_line(step: u64) -> String {
    let t = step as f64 / STEPS as f64;
    let decay = 1.0 - 0.6 * t;
    let align = if step == 57 { f64::NAN } else { 10.0 * decay };
    let (tag, distill) = (100.0 * decay * decay, 0.5 + 0.1 * (step as f64 / 7.0).sin());
    let warmup = (step as f64 / 20.0).min(1.0);
    json!({
        "step": step,
        "epoch": step / 100,
        "loss": tag + align + distill,
        "losses": { "tag": tag, "align": align, "distill": distill },
        "lr": { "vision": 1e-4 * warmup, "head": 1e-3 * warmup },
        "grad_norm": 1.5,
        "logit_scale": 14.3 + 10.0 * t,
        "images_per_second": 900.0,
    })
    .to_string()
}

fn synthetic_run(dir: &Path, with_evaluations: bool) {
    write_lines(&dir.join("metrics.jsonl"), (0..STEPS).map(metrics_line));
    if with_evaluations {
        let evaluation = |step: u64| {
            let t = step as f64 / STEPS as f64;
            json!({ "step": step, "val_loss": 2.0 - t, "val_i2t_r1": 0.1 + 0.5 * t, "val_t2i_r1": 0.05 + 0.4 * t })
                .to_string()
        };
        write_lines(&dir.join("evaluations.jsonl"), (0..=STEPS).step_by(25).map(evaluation));
    }
}

fn decode(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(image.dimensions(), IMAGE_SIZE, "{}", path.display());
    image
}

/// Pixels of `colour` left of the legend column (which takes at most the right 30%), so a
/// series whose only trace is its legend swatch counts nothing.
fn plotted_pixels(image: &RgbImage, colour: [u8; 3]) -> usize {
    let plot_width = image.width() * 65 / 100;
    image.enumerate_pixels().filter(|(x, _, pixel)| *x < plot_width && pixel.0 == colour).count()
}

fn assert_series_drawn(path: &Path, series: usize) {
    let image = decode(path);
    for index in 0..series {
        let count = plotted_pixels(&image, series_colour(index));
        assert!(count > 300, "{}: series {index} has only {count} pixels in the plot", path.display());
    }
    // The next colour belongs to no series: nothing but the series draws in these colours.
    assert_eq!(plotted_pixels(&image, series_colour(series)), 0, "{}", path.display());
    // The title is text in the embedded font: dark pixels across the top rows.
    let title = image.enumerate_pixels().filter(|(_, y, p)| *y < 30 && p.0.iter().all(|c| *c < 100)).count();
    assert!(title > 100, "{}: no title drawn ({title} dark pixels)", path.display());
}

#[test]
fn a_run_is_plotted_series_by_series() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    synthetic_run(dir.path(), true);
    let written = plot_run(dir.path()).expect("the run plots");
    let plots = dir.path().join("plots");
    let expected: Vec<_> = ["losses.png", "lr.png", "logit_scale.png", "eval.png"].map(|f| plots.join(f)).into();
    assert_eq!(written, expected);
    // Three loss terms and the total; two LR groups; the scale; three evaluation metrics.
    for (path, series) in written.iter().zip([4, 2, 1, 3]) {
        assert_series_drawn(path, series);
    }
    let mut left: Vec<_> =
        std::fs::read_dir(&plots).expect("plots/").map(|e| e.expect("an entry").file_name()).collect();
    left.sort();
    assert_eq!(left, ["eval.png", "logit_scale.png", "losses.png", "lr.png"], "no temporary file is left");
}

#[test]
fn a_run_without_evaluations_has_no_eval_chart() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    synthetic_run(dir.path(), true);
    plot_run(dir.path()).expect("the run plots");
    // The folder is reused by a run that has not evaluated: its old chart goes.
    std::fs::remove_file(dir.path().join("evaluations.jsonl")).expect("evaluations.jsonl");
    let written = plot_run(dir.path()).expect("the run plots");
    assert_eq!(written.len(), 3);
    assert!(!dir.path().join("plots/eval.png").exists());
}

#[test]
fn malformed_json_names_the_file_and_line() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let metrics = dir.path().join("metrics.jsonl");
    let lines = [metrics_line(0), metrics_line(1), r#"{"step": 2, "loss": }"#.to_string(), metrics_line(3)];
    write_lines(&metrics, lines);
    let message = plot_run(dir.path()).expect_err("line 3 is not JSON").to_string();
    assert!(message.starts_with(&metrics.display().to_string()), "{message}");
    assert!(message.contains("line 3"), "{message}");

    // Valid JSON of the wrong shape is named the same way.
    write_lines(&metrics, [metrics_line(0), r#"{"loss": 1.0}"#.to_string()]);
    let message = plot_run(dir.path()).expect_err("line 2 has no step").to_string();
    assert!(message.starts_with(&metrics.display().to_string()) && message.contains("line 2"), "{message}");
    assert!(message.contains("step"), "{message}");
}

#[test]
fn missing_metrics_names_the_file() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let message = plot_run(dir.path()).expect_err("there is no metrics.jsonl").to_string();
    assert!(message.starts_with(&dir.path().join("metrics.jsonl").display().to_string()), "{message}");
}

#[test]
fn a_torn_last_line_of_a_live_run_is_left_out() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let metrics: String = (0..10).map(|step| metrics_line(step) + "\n").collect();
    std::fs::write(dir.path().join("metrics.jsonl"), metrics + r#"{"step": 10, "lo"#).expect("write");
    assert_eq!(plot_run(dir.path()).expect("the complete lines plot").len(), 3);
}

#[test]
fn a_chart_of_empty_gappy_and_single_point_series_draws() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("chart.png");
    let series = vec![
        Series::new("empty", vec![]),
        Series::new("all gaps", vec![(0.0, f64::NAN), (1.0, f64::INFINITY)]),
        Series::new("one point", vec![(3.0, 2.0)]),
    ];
    let chart = Chart::new("Degenerate", "step", "value", series);
    assert!(!chart.log_y);
    chart.write_png(&path).expect("the chart draws");
    let image = decode(&path);
    assert!(plotted_pixels(&image, series_colour(2)) > 0, "the lone point is drawn");

    let nothing = Chart::new("Nothing", "x", "y", vec![]);
    nothing.write_png(&path).expect("an empty chart draws");
    decode(&path);
}
