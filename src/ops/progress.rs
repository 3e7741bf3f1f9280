//! Progress display: one line per running stage and an overall line (hidden when stderr is not
//! a terminal).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The progress display of a run.
pub struct Display {
    multi: MultiProgress,
    overall: ProgressBar,
}

/// One running stage's progress line.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    /// Steps that were done before this process started (a resumed stage): not in the ETA.
    resumed_at: AtomicU64,
}

impl Display {
    /// A display for `total` stages to run.
    pub fn new(total: usize) -> Display {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} stages  {msg}  [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Display { multi, overall }
    }

    /// A line for a stage that starts running.
    pub fn stage(&self, op: &str, name: &str) -> Progress {
        if self.overall.is_hidden() {
            return Progress::hidden();
        }
        let bar = self.multi.insert_before(&self.overall, ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner:.green} {prefix:.bold} {wide_msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(format!("{op} {name}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar,
            started: Instant::now(),
            resumed_at: AtomicU64::new(0),
        }
    }

    /// Updates the overall line after a stage finished.
    pub fn finished(&self, summary: &str) {
        self.overall.inc(1);
        self.overall.set_message(summary.to_string());
    }

    /// Prints a line above the progress lines.
    /// Nothing is printed when the display is hidden (the final summary says it all).
    pub fn println(&self, line: &str) {
        if !self.overall.is_hidden() {
            let _ = self.multi.println(line);
        }
    }

    /// Removes the progress lines.
    pub fn clear(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

impl Progress {
    /// A progress line that is never shown (for ops run outside a display).
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
            started: Instant::now(),
            resumed_at: AtomicU64::new(0),
        }
    }

    /// Sets the free-text part of the line.
    pub fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    /// Prints a line above the progress lines (nothing when the display is hidden).
    pub fn note(&self, line: &str) {
        if !self.bar.is_hidden() {
            self.bar.println(line);
        }
    }

    /// What a check deep in the stage `name`'s work calls to say that it waits: a line above the
    /// progress lines, naming the stage, says so (on stderr when there are no progress lines: a
    /// wait may be long, and the summary would not tell it), and the stage's line shows it.
    pub fn notifier(&self, name: &str) -> Box<dyn Fn(&str)> {
        let bar = self.bar.clone();
        let name = name.to_string();
        Box::new(move |line: &str| match bar.is_hidden() {
            true => crate::say!("⏳ {name}: {line}"),
            false => {
                bar.println(format!("⏳ {}: {line}", bar.prefix()));
                bar.set_message(line.to_string());
            }
        })
    }

    /// Says that the first `steps` were done by an earlier process (the ETA counts from here).
    pub fn resumed_at(&self, steps: u64) {
        self.resumed_at.store(steps, Ordering::Relaxed);
    }

    /// Reports `done` of `total` steps of `what` (e.g. "epoch 1/3 step"), with an estimate of
    /// the time left.
    pub fn steps(&self, what: &str, done: u64, total: u64) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let here = done.saturating_sub(self.resumed_at.load(Ordering::Relaxed));
        let eta = if here > 0 && total > done {
            let left = elapsed / here as f64 * (total - done) as f64;
            format!(
                ", ETA {}",
                humantime::format_duration(Duration::from_secs(left.round() as u64))
            )
        } else {
            String::new()
        };
        self.bar.set_message(format!("{what} {done}/{total}{eta}"));
    }

    /// Removes the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
