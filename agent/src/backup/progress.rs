//! Progress of long operations: a bar on a terminal, log lines otherwise
//! (every few seconds: rows, bytes, rate, ETA).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: String,
    total_rows: u64,
    rows: u64,
    bytes: u64,
    start: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `total_rows` = 0 when unknown.
    pub fn new(what: &str, total_rows: u64, interactive: bool) -> Progress {
        let bar = (interactive && std::io::stderr().is_terminal()).then(|| {
            // Rows are the unit; the message carries the bytes.
            let (b, template) = if total_rows > 0 {
                (
                    ProgressBar::new(total_rows),
                    "{prefix} [{bar:30}] {pos}/{len} rows {msg} {per_sec} eta {eta}",
                )
            } else {
                (
                    ProgressBar::new_spinner(),
                    "{prefix} {spinner} {pos} rows {msg} {per_sec} {elapsed}",
                )
            };
            b.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            what: what.to_string(),
            total_rows,
            rows: 0,
            bytes: 0,
            start: Instant::now(),
            last_log: Instant::now(),
            bar,
        }
    }

    pub fn add(&mut self, rows: u64, bytes: u64) {
        self.rows += rows;
        self.bytes += bytes;
        if let Some(b) = &self.bar {
            b.set_position(self.rows);
            b.set_message(format!("{:.1} MiB", self.bytes as f64 / 1048576.0));
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            self.log("progress");
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn log(&self, msg: &str) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = self.rows as f64 / secs;
        let eta = if self.total_rows > self.rows && rate > 0.0 {
            format!("{:.0}s", (self.total_rows - self.rows) as f64 / rate)
        } else {
            "-".into()
        };
        let total = match self.total_rows {
            0 => "unknown".to_string(),
            n => n.to_string(),
        };
        tracing::info!(
            what = %self.what,
            rows = self.rows,
            total_rows = %total,
            mib = format!("{:.1}", self.bytes as f64 / 1048576.0),
            rows_per_sec = format!("{rate:.0}"),
            mib_per_sec = format!("{:.1}", self.bytes as f64 / 1048576.0 / secs),
            eta = %eta,
            "{msg}"
        );
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.log("done");
    }
}
