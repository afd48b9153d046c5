//! A progress bar on stderr for long corpus work (hidden when stderr is not a terminal), and
//! the log writer that prints log lines above it instead of through it.

use std::io::Write;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use mananera_training::scrape::Observer;

/// The bar being drawn, if any.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// `tracing`'s writer for stderr: each log line is written with the progress bar (if one is
/// drawn) lifted out of the way.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One log event, buffered until the formatter is done with it.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let bar = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Nowhere to report a failed write to stderr.
        let print = || drop(std::io::stderr().write_all(&self.0));
        match bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }
}

/// Draws queued/done pages as one bar with the latest outcome as its message.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar labelled `prefix`, with no length until work is queued.
    pub fn new(prefix: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(prefix.to_string());
        show(&bar);
        Self { bar }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        hide(&self.bar);
    }
}

/// Registers `bar` so that log lines are printed above it.
pub fn show(bar: &ProgressBar) {
    *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
}

/// Unregisters and clears `bar`.
pub fn hide(bar: &ProgressBar) {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
    bar.finish_and_clear();
}

impl Observer for Bar {
    fn queued(&self, _source: &str, count: usize) {
        self.bar.inc_length(count as u64);
    }

    fn done(&self, source: &str, url: &str, outcome: &str) {
        self.bar.inc(1);
        let page = url.rsplit('/').find(|s| !s.is_empty()).unwrap_or(url);
        let page: String = page.chars().take(40).collect();
        self.bar.set_message(format!("{source}: {outcome} {page}"));
    }
}
