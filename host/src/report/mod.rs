//! What a run shows and leaves behind: JSON-lines logs of metrics and decisions (with
//! exact non-finite values), a TensorBoard event file, PNG plots and images with boxes drawn
//! on them, and the progress bar on the terminal.

mod draw;
mod float;
mod jsonl;
mod plot;
mod progress;
mod tensorboard;

pub use draw::{DrawnBox, draw_boxes, png_bytes, tiled};
pub use float::{JsonFloat, float_from_json, float_to_json};
pub use jsonl::{JsonLines, read_records};
pub use plot::{BarChart, Chart, IMAGE_SIZE, PLOTS_DIR, PlotError, Series, plot_run, series_colour};
pub use progress::Progress;
pub use tensorboard::{EventWriter, HistogramSummary, HparamDomain, HparamValue, PrCounts, SessionStatus};
