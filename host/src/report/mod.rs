//! What a run shows and leaves behind: JSON-lines logs of metrics and decisions, and the
//! progress bar on the terminal.

mod jsonl;
mod progress;

pub use jsonl::JsonLines;
pub use progress::Progress;
