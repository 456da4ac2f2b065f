//! PNG line charts of a run. [`Chart`] is the generic part (title, labelled axes with round
//! ticks, a legend, one colour per series, an optional log scale), meant for any command that
//! plots series over steps; [`plot_run`] draws a run folder's `metrics.jsonl` and
//! `evaluations.jsonl` into its `plots/`. Text uses DejaVu Sans compiled into the binary, so
//! plots render the same on machines that have no fonts installed.

use super::float::{JsonFloat, float_from_json};
use super::jsonl::read_records;
use crate::files::{FileError, write_atomically};
use image::ImageEncoder;
use image::codecs::png::PngEncoder;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Width and height of every chart, in pixels.
pub const IMAGE_SIZE: (u32, u32) = (1000, 600);

/// The folder of a run that [`plot_run`] writes into.
pub const PLOTS_DIR: &str = "plots";

/// Tableau's ten colours less its grey, which the anti-aliased black text also produces.
const PALETTE: [[u8; 3]; 9] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [188, 189, 34],
    [23, 190, 207],
];
/// The family the embedded font is registered under; plotters' own labels default to it.
pub(super) const FONT: &str = "sans-serif";
const MAX_TICKS: usize = 8;
const MARGIN: i32 = 12;
const LEGEND_SWATCH: i32 = 24;
const LEGEND_ROW: i32 = 24;
const GRID: RGBColor = RGBColor(225, 225, 225);

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A run file that cannot be read or parsed, or a PNG that cannot be written.
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: cannot draw the chart: {problem}", path.display())]
    Draw { path: PathBuf, problem: String },
}

/// One line of a chart. A non-finite point leaves a gap in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points }
    }
}

/// A line chart; series `i` is drawn in [`series_colour`]`(i)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis; values that are not positive are then left out, as gaps.
    pub log_y: bool,
}

/// Horizontal bars of values of at least 0, each with its label, the first at the top: the
/// rows of a table a person compares at a glance (a tagger's worst and best tags, a
/// histogram's bins). The axis runs to 1 (scores), or to the largest value past 1 (counts).
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub bars: Vec<(String, f64)>,
}

impl BarChart {
    /// Draws the chart into a PNG of [`IMAGE_SIZE`] at `path`, as [`Chart::write_png`] does.
    pub fn write_png(&self, path: &Path) -> Result<(), PlotError> {
        write_rendered(path, self.render())
    }

    fn render(&self) -> Result<Vec<u8>, String> {
        rendered(|root| {
            let width = IMAGE_SIZE.0;
            let rows = self.bars.len().max(1);
            let label_width = self.bars.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0) as u32;
            let end = self.bars.iter().map(|(_, value)| *value).filter(|value| value.is_finite()).fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(root)
                .caption(&self.title, (FONT, 24))
                .margin(MARGIN as u32)
                .x_label_area_size(40)
                .y_label_area_size((label_width * 8 + 16).min(width / 2))
                .build_cartesian_2d(0f64..end, (0..rows).into_segmented())
                .map_err(describe)?;
            // Row 0 is at the bottom: bar i sits in row `rows - 1 - i`.
            let label_of = |value: &SegmentValue<usize>| match value {
                SegmentValue::CenterOf(row) if *row < rows => {
                    self.bars.get(rows - 1 - row).map_or(String::new(), |(label, _)| label.clone())
                }
                _ => String::new(),
            };
            chart
                .configure_mesh()
                .disable_y_mesh()
                .light_line_style(GRID)
                .x_desc(&self.x_label)
                .y_labels(rows)
                .y_label_formatter(&label_of)
                .label_style((FONT, 14))
                .draw()
                .map_err(describe)?;
            let [r, g, b] = series_colour(0);
            let bars = self.bars.iter().enumerate().map(|(index, (_, value))| {
                let row = rows - 1 - index;
                let value = if value.is_finite() { value.clamp(0.0, end) } else { 0.0 };
                let mut bar = Rectangle::new(
                    [(0.0, SegmentValue::Exact(row)), (value, SegmentValue::Exact(row + 1))],
                    RGBColor(r, g, b).filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            });
            chart.draw_series(bars).map_err(describe)?;
            Ok(())
        })
    }
}

/// The RGB pixels, row by row, of a white image of [`IMAGE_SIZE`] that `draw` draws on.
fn rendered(draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), String>) -> Result<Vec<u8>, String> {
    register_font()?;
    let (width, height) = IMAGE_SIZE;
    let mut pixels = vec![0; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, IMAGE_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(describe)?;
        draw(&root)?;
        root.present().map_err(describe)?;
    }
    Ok(pixels)
}

/// Encodes `rendered` RGB pixels of [`IMAGE_SIZE`] as a PNG written to `path` under a
/// temporary name and renamed, so a reader never sees half of it.
fn write_rendered(path: &Path, rendered: Result<Vec<u8>, String>) -> Result<(), PlotError> {
    let failed = |problem: String| PlotError::Draw { path: path.to_path_buf(), problem };
    let pixels = rendered.map_err(failed)?;
    let mut png = Vec::new();
    let (width, height) = IMAGE_SIZE;
    PngEncoder::new(&mut png)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|error| failed(error.to_string()))?;
    Ok(write_atomically(path, &png)?)
}

/// The colour of the series at `index`, as RGB; colours repeat after nine series.
pub fn series_colour(index: usize) -> [u8; 3] {
    PALETTE[index % PALETTE.len()]
}

impl Chart {
    /// A chart whose y axis is logarithmic when every value is positive and they span more
    /// than a factor of 100 (losses whose terms differ by orders of magnitude).
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        series: Vec<Series>,
    ) -> Chart {
        let log_y = spans_decades(&series);
        Chart { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), series, log_y }
    }

    /// Draws the chart into a PNG of [`IMAGE_SIZE`] at `path`, whose folder must exist. The file
    /// is written under a temporary name and renamed, so a reader never sees half of it.
    pub fn write_png(&self, path: &Path) -> Result<(), PlotError> {
        write_rendered(path, self.render())
    }

    /// The chart as RGB pixels, row by row.
    fn render(&self) -> Result<Vec<u8>, String> {
        rendered(|root| {
            let body = root.titled(&self.title, (FONT, 24)).map_err(describe)?;
            // The legend gets a column of its own, so it never hides a line.
            let legend_width = self.legend_width(&body)?;
            let (plot, legend) = body.split_horizontally(IMAGE_SIZE.0 as i32 - legend_width);
            self.draw_lines(&plot)?;
            self.draw_legend(&legend)
        })
    }

    /// The points as drawn: y through log10 on a log axis, anything undrawable as NaN (a gap).
    fn plotted(&self, series: &Series) -> Vec<(f64, f64)> {
        let drawable = |x: f64, y: f64| x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0);
        let y_of = |y: f64| if self.log_y { y.log10() } else { y };
        series.points.iter().map(|&(x, y)| if drawable(x, y) { (x, y_of(y)) } else { (f64::NAN, f64::NAN) }).collect()
    }

    fn draw_lines(&self, area: &DrawingArea<BitMapBackend, Shift>) -> Result<(), String> {
        let lines: Vec<Vec<(f64, f64)>> = self.series.iter().map(|series| self.plotted(series)).collect();
        let drawn = || lines.iter().flatten().filter(|(x, _)| x.is_finite());
        let x = Axis::linear(extent(drawn().map(|p| p.0), 0.0, false));
        let y_extent = extent(drawn().map(|p| p.1), 0.05, self.log_y);
        let y = if self.log_y { Axis::log(y_extent) } else { Axis::linear(y_extent) };
        let mut chart = ChartBuilder::on(area)
            .margin(MARGIN)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x.clone(), y.clone())
            .map_err(describe)?;
        let (x_tick, y_tick) = (|value: &f64| x.label(*value), |value: &f64| y.label(*value));
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&x_tick)
            .y_label_formatter(&y_tick)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .bold_line_style(GRID)
            .draw()
            .map_err(describe)?;
        for (index, points) in lines.iter().enumerate() {
            let [r, g, b] = series_colour(index);
            let colour = RGBColor(r, g, b);
            for segment in points.split(|(x, _)| x.is_nan()).filter(|segment| !segment.is_empty()) {
                if let [point] = segment {
                    // A lone point between gaps would be an invisible zero-length line.
                    chart.draw_series([Circle::new(*point, 3, colour.filled())]).map_err(describe)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(segment.iter().copied(), colour.stroke_width(2)))
                        .map_err(describe)?;
                }
            }
        }
        Ok(())
    }

    fn legend_width(&self, area: &DrawingArea<BitMapBackend, Shift>) -> Result<i32, String> {
        if self.series.is_empty() {
            return Ok(0);
        }
        let style = TextStyle::from((FONT, 15));
        let mut widest = 0;
        for series in &self.series {
            widest = widest.max(area.estimate_text_size(&series.name, &style).map_err(describe)?.0 as i32);
        }
        // Long names are cut rather than squeezing the plot.
        Ok((LEGEND_SWATCH + 3 * MARGIN + widest).min(IMAGE_SIZE.0 as i32 * 3 / 10))
    }

    fn draw_legend(&self, area: &DrawingArea<BitMapBackend, Shift>) -> Result<(), String> {
        let style = TextStyle::from((FONT, 15)).pos(Pos::new(HPos::Left, VPos::Center));
        for (index, series) in self.series.iter().enumerate() {
            let [r, g, b] = series_colour(index);
            let y = 2 * MARGIN + index as i32 * LEGEND_ROW;
            let swatch = [(MARGIN, y - 2), (MARGIN + LEGEND_SWATCH, y + 2)];
            area.draw(&Rectangle::new(swatch, RGBColor(r, g, b).filled())).map_err(describe)?;
            let label_at = (2 * MARGIN + LEGEND_SWATCH, y);
            area.draw(&Text::new(series.name.as_str(), label_at, style.clone())).map_err(describe)?;
        }
        Ok(())
    }
}

fn describe(error: impl Display) -> String {
    error.to_string()
}

/// Makes the embedded font the one plotters draws text with (once per process).
pub(super) fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if registered { Ok(()) } else { Err("the embedded DejaVu Sans font does not parse".into()) }
}

/// Whether every finite value is positive and the largest is over 100 times the smallest.
fn spans_decades(series: &[Series]) -> bool {
    let values = || series.iter().flat_map(|s| &s.points).map(|p| p.1).filter(|v| v.is_finite());
    let (low, high) = values().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    low > 0.0 && high.is_finite() && high / low > 100.0
}

/// The span of `values` widened by `margin` of itself on each side; a single value gets a span
/// around it (in log space, `log` of a decade each side), and no value at all 0..1.
fn extent(values: impl Iterator<Item = f64>, margin: f64, log: bool) -> Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        return 0.0..1.0;
    }
    let pad = if high > low {
        (high - low) * margin
    } else if log {
        0.5
    } else if low == 0.0 {
        1.0
    } else {
        low.abs() * 0.1
    };
    // A margin of 0 on distinct values keeps the lines flush with the axes.
    if pad == 0.0 { low..high } else { low - pad..high + pad }
}

/// Where an axis runs (in plotted coordinates) and its labelled ticks.
#[derive(Clone)]
struct Axis {
    range: Range<f64>,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn linear(range: Range<f64>) -> Axis {
        let (positions, step) = round_ticks(range.start, range.end, MAX_TICKS);
        let labels = tick_labels(&positions.iter().map(|&t| (t, step)).collect::<Vec<_>>());
        Axis { range, ticks: positions.into_iter().zip(labels).collect() }
    }

    /// `range` holds base-10 logarithms; ticks sit at powers of ten (and at 2 and 5 times them
    /// over two decades or less), or at round values when the range holds under two of those.
    fn log(range: Range<f64>) -> Axis {
        let (first, last) = (range.start.floor() as i32, range.end.ceil() as i32);
        let mantissas: &[f64] = if last - first <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
        let stride = ((last - first) as usize).div_ceil(MAX_TICKS).max(1);
        let inside = |value: &f64| (range.start..=range.end).contains(&value.log10());
        let mut values: Vec<(f64, f64)> = (first..=last)
            .step_by(stride)
            .flat_map(|exponent| mantissas.iter().map(move |m| (m * 10f64.powi(exponent), 10f64.powi(exponent))))
            .filter(|(value, _)| inside(value))
            .collect();
        if values.len() < 2 {
            let (round, step) = round_ticks(10f64.powf(range.start), 10f64.powf(range.end), MAX_TICKS);
            values = round.into_iter().filter(|v| *v > 0.0).map(|v| (v, step)).collect();
        }
        let labels = tick_labels(&values);
        Axis { range, ticks: values.into_iter().map(|(value, _)| value.log10()).zip(labels).collect() }
    }

    /// The label of the tick at `position` (plotters asks only for the key points given).
    fn label(&self, position: f64) -> String {
        self.ticks.iter().find(|t| t.0 == position).map(|t| t.1.clone()).unwrap_or_default()
    }
}

/// A linear coordinate whose ticks are the ones chosen here. (plotters' `with_key_points`
/// would do, but it loses the default formatting its mesh requires.)
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Grid lines at the labelled ticks only; no light lines between them.
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.iter().map(|t| t.0).collect() }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// Round positions within `low..=high`: the multiples of a step of 1, 2 or 5 times a power of
/// ten, about `max` of them. Returns the positions and the step.
fn round_ticks(low: f64, high: f64, max: usize) -> (Vec<f64>, f64) {
    let rough = (high - low) / max as f64;
    if !(rough > 0.0 && rough.is_finite()) {
        return (vec![], 1.0);
    }
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|step| *step >= rough);
    let step = step.unwrap_or(10.0 * magnitude);
    // The slack keeps a bound that is a multiple of the step up to rounding error.
    let (first, last) = ((low / step - 1e-9).ceil() as i64, (high / step + 1e-9).floor() as i64);
    ((first..=last).map(|i| i as f64 * step).collect(), step)
}

/// Labels for `(value, resolution)` ticks, the resolution being the smallest difference the
/// label must show. One notation per axis: scientific when a value is very large, or small
/// and needing its digits; plain otherwise.
fn tick_labels(ticks: &[(f64, f64)]) -> Vec<String> {
    let order = |v: f64| v.abs().log10().floor() as i32;
    let scientific =
        ticks.iter().any(|&(v, resolution)| v != 0.0 && (v.abs() >= 1e6 || (v.abs() < 1e-3 && -order(resolution) > 3)));
    let label = |&(value, resolution): &(f64, f64)| {
        if value == 0.0 {
            "0".to_string()
        } else if scientific {
            let digits = (order(value) - order(resolution)).clamp(0, 6) as usize;
            format!("{value:.digits$e}")
        } else {
            format!("{value:.*}", (-order(resolution)).max(0) as usize)
        }
    };
    ticks.iter().map(label).collect()
}

/// One line of `metrics.jsonl`, as far as the plots need it.
#[derive(Deserialize)]
struct MetricsRecord {
    step: u64,
    loss: JsonFloat,
    #[serde(default)]
    losses: BTreeMap<String, JsonFloat>,
    #[serde(default)]
    lr: BTreeMap<String, JsonFloat>,
    logit_scale: JsonFloat,
}

/// One line of `evaluations.jsonl`: the step and the metrics, by name.
#[derive(Deserialize)]
struct EvaluationRecord {
    step: u64,
    #[serde(flatten)]
    values: BTreeMap<String, serde_json::Value>,
}

/// Series gathered by name, in the order the names first appear.
#[derive(Default)]
struct Gathered(Vec<Series>);

impl Gathered {
    fn push(&mut self, name: &str, step: u64, value: f64) {
        let point = (step as f64, value);
        match self.0.iter_mut().find(|series| series.name == name) {
            Some(series) => series.points.push(point),
            None => self.0.push(Series::new(name, vec![point])),
        }
    }
}

/// How many of the worst and of the best tags (or classes) `per_tag_ap.png` shows.
const TAGS_SHOWN: usize = 10;

/// The per-item tables of `eval.json` drawn as AP bars: table, the field naming a row, the
/// chart's file and what its rows are.
const AP_TABLES: [(&str, &str, &str, &str); 2] =
    [("per_tag", "tag", "per_tag_ap.png", "tags"), ("per_class", "class", "per_class_ap.png", "classes")];

/// The worst and best [`TAGS_SHOWN`] rows by AP of the `table` of `eval.json`, each named by
/// its field `name`, the best first; `None` when it has no such table. Rows without an AP
/// (nothing to find) are left out.
fn worst_and_best(eval: &serde_json::Value, table: &str, name: &str) -> Option<Vec<(String, f64)>> {
    let rows = eval.get(table)?.as_array()?;
    let mut scored: Vec<(String, f64)> =
        rows.iter().filter_map(|row| Some((row.get(name)?.as_str()?.to_string(), row.get("ap")?.as_f64()?))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    if scored.len() > 2 * TAGS_SHOWN {
        scored.drain(TAGS_SHOWN..scored.len() - TAGS_SHOWN);
    }
    Some(scored)
}

/// Draws `run_dir/metrics.jsonl` (and `run_dir/evaluations.jsonl`, when there is one) into
/// `run_dir/plots/`: `losses.png` (every loss term and the total), `lr.png` (per group),
/// `logit_scale.png`, when the run has evaluations `eval.png`, and when its `eval.json` has a
/// per-tag table `per_tag_ap.png` (the best and worst tags by AP), or a per-class one
/// `per_class_ap.png`. Returns the files written.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let metrics: Vec<MetricsRecord> = read_records(&run_dir.join("metrics.jsonl"))?;
    let evaluations_path = run_dir.join("evaluations.jsonl");
    let evaluations: Vec<EvaluationRecord> =
        if evaluations_path.exists() { read_records(&evaluations_path)? } else { Vec::new() };

    let (mut losses, mut lrs, mut scale, mut total, mut metrics_by_name) =
        (Gathered::default(), Gathered::default(), Gathered::default(), Gathered::default(), Gathered::default());
    for record in &metrics {
        for (name, value) in &record.losses {
            losses.push(name, record.step, value.0);
        }
        total.push("total", record.step, record.loss.0);
        for (group, lr) in &record.lr {
            lrs.push(group, record.step, lr.0);
        }
        scale.push("logit_scale", record.step, record.logit_scale.0);
    }
    for record in &evaluations {
        for (name, value) in &record.values {
            // Fields that are no float (labels a record may carry) are no metric.
            if let Some(value) = float_from_json(value) {
                metrics_by_name.push(name, record.step, value);
            }
        }
    }
    losses.0.extend(total.0);

    let run = run_dir.file_name().map_or_else(|| run_dir.display().to_string(), |n| n.to_string_lossy().into());
    let mut charts = vec![
        (
            "losses.png",
            Chart::new(format!("Losses (unweighted terms and weighted total): {run}"), "step", "loss", losses.0),
        ),
        ("lr.png", Chart::new(format!("Learning rate per group: {run}"), "step", "learning rate", lrs.0)),
        ("logit_scale.png", Chart::new(format!("Logit scale: {run}"), "step", "logit scale", scale.0)),
    ];
    let plots = run_dir.join(PLOTS_DIR);
    if evaluations.is_empty() {
        remove_stale(&plots.join("eval.png"))?;
    } else {
        charts.push(("eval.png", Chart::new(format!("Evaluations: {run}"), "step", "value", metrics_by_name.0)));
    }
    std::fs::create_dir_all(&plots).map_err(FileError::io(&plots))?;
    let mut written = Vec::with_capacity(charts.len());
    for (file, chart) in charts {
        let path = plots.join(file);
        chart.write_png(&path)?;
        written.push(path);
    }
    let eval_path = run_dir.join("eval.json");
    let eval: serde_json::Value = match std::fs::read_to_string(&eval_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|err| FileError::format(&eval_path, err.to_string()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
        Err(error) => return Err(FileError::io(&eval_path)(error).into()),
    };
    for (table, name, file, rows) in AP_TABLES {
        let path = plots.join(file);
        match worst_and_best(&eval, table, name) {
            Some(bars) => {
                let title = format!("Average precision of the best and worst {rows}: {run}");
                BarChart { title, x_label: "AP".into(), bars }.write_png(&path)?;
                written.push(path);
            }
            None => remove_stale(&path)?,
        }
    }
    Ok(written)
}

/// Removes the chart at `path`, if there is one: a stale chart of an earlier run in the same
/// folder would be mistaken for this one's.
fn remove_stale(path: &Path) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(FileError::io(path)(error)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_steps_inside_the_range() {
        assert_eq!(round_ticks(0.0, 199.0, 8), (vec![0.0, 50.0, 100.0, 150.0], 50.0));
        let (ticks, step) = round_ticks(0.0, 1.0, 8);
        assert_eq!(step, 0.2);
        let labels = tick_labels(&ticks.iter().map(|t| (*t, step)).collect::<Vec<_>>());
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(round_ticks(-0.05, 2.2, 8).0, [0.0, 0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    fn log_ticks_are_powers_of_ten_or_round_values_within_a_decade() {
        let labels = |axis: Axis| axis.ticks.into_iter().map(|t| t.1).collect::<Vec<_>>();
        assert_eq!(labels(Axis::log(-1.5..2.2)), ["0.1", "1", "10", "100"]);
        assert_eq!(labels(Axis::log(-0.5..0.9)), ["0.5", "1", "2", "5"]);
        assert_eq!(labels(Axis::log(-7.0..-3.0)), ["1e-7", "1e-6", "1e-5", "1e-4", "1e-3"]);
        // 20..40: no power of ten inside, so round values at their logarithms.
        let within = Axis::log(20f64.log10()..40f64.log10());
        assert_eq!(labels(within), ["20", "25", "30", "35", "40"]);
    }

    #[test]
    fn labels_show_what_the_step_resolves_in_one_notation_per_axis() {
        assert_eq!(tick_labels(&[(0.30000000000000004, 0.1), (-0.0, 0.1)]), ["0.3", "0"]);
        assert_eq!(tick_labels(&[(1500.0, 500.0), (2000.0, 500.0)]), ["1500", "2000"]);
        assert_eq!(tick_labels(&[(2e-5, 2e-5), (1.0000000000000002e-4, 2e-5)]), ["2e-5", "1.0e-4"]);
        assert_eq!(tick_labels(&[(2.5e-5, 5e-6)]), ["2.5e-5"]);
        assert_eq!(tick_labels(&[(5e5, 5e5), (1e6, 5e5)]), ["5e5", "1.0e6"]);
    }

    #[test]
    fn log_scale_only_for_positive_values_over_two_decades() {
        let chart = |values: &[f64]| {
            Chart::new(
                "",
                "",
                "",
                vec![Series::new("a", values.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect())],
            )
        };
        assert!(chart(&[100.0, 0.5, f64::NAN]).log_y);
        assert!(!chart(&[100.0, 2.0]).log_y);
        assert!(!chart(&[100.0, 0.5, 0.0]).log_y);
        assert!(!chart(&[]).log_y);
    }

    #[test]
    fn the_tag_chart_keeps_the_best_and_worst_tags_best_first() {
        let rows: Vec<serde_json::Value> =
            (0..25).map(|i| serde_json::json!({"tag": format!("t{i}"), "ap": i as f64 / 25.0})).collect();
        let mut eval = serde_json::json!({"per_tag": rows});
        eval["per_tag"][3]["ap"] = serde_json::Value::Null;
        let bars = worst_and_best(&eval, "per_tag", "tag").unwrap();
        let names: Vec<&str> = bars.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names[..2], ["t24", "t23"]);
        assert_eq!(names[names.len() - 3..], ["t2", "t1", "t0"], "t3 has no AP");
        assert_eq!(bars.len(), 2 * TAGS_SHOWN);
        assert!(worst_and_best(&serde_json::json!({"mAP": 0.5}), "per_tag", "tag").is_none());
        let path = std::env::temp_dir().join(format!("per_tag_ap-{}.png", std::process::id()));
        BarChart { title: "tags".into(), x_label: "AP".into(), bars }.write_png(&path).unwrap();
        assert_eq!(image::open(&path).unwrap().width(), IMAGE_SIZE.0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn extent_pads_values_and_widens_a_single_one() {
        assert_eq!(extent([0.0, 10.0].into_iter(), 0.05, false), -0.5..10.5);
        assert_eq!(extent([4.0].into_iter(), 0.05, false), 3.6..4.4);
        assert_eq!(extent([-2.0].into_iter(), 0.05, true), -2.5..-1.5);
        assert_eq!(extent(std::iter::empty(), 0.05, false), 0.0..1.0);
    }
}
