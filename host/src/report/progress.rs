//! The progress bar: step, loss, learning rate and throughput. Hidden when stderr is not a
//! terminal, so logs and tests stay clean.

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    /// Nothing is shown: a data-parallel rank other than the one that reports.
    silent: bool,
}

impl Progress {
    pub fn new(total_steps: u64) -> Self {
        let bar = ProgressBar::new(total_steps);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        Progress { bar, silent: false }
    }

    pub fn silent() -> Self {
        Progress { bar: ProgressBar::hidden(), silent: true }
    }

    /// Starts the bar part-way, for a resumed run.
    pub fn set_position(&self, steps_done: u64) {
        self.bar.set_position(steps_done);
    }

    /// Shows the state after `step` steps.
    pub fn update(&self, steps_done: u64, loss: f64, lr: f64, images_per_second: f64) {
        self.bar.set_position(steps_done);
        self.bar.set_message(format!("loss {loss:.4}  lr {lr:.3e}  {images_per_second:.0} img/s"));
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.silent {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
