//! What a run shows and leaves behind: JSON-lines logs of metrics and decisions, a
//! TensorBoard event file, and the progress bar on the terminal.

mod jsonl;
mod progress;
mod tensorboard;

pub use jsonl::JsonLines;
pub use progress::Progress;
pub use tensorboard::EventWriter;
