//! A progress bar on stderr for long corpus work (hidden when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use mananera_training::scrape::Observer;

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
        Self { bar }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
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
