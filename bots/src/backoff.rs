//! Waits between reconnection attempts: doubling from one second up to five minutes.

use std::time::Duration;

/// Exponential backoff for a platform that keeps failing.
pub struct Backoff {
    next: Duration,
}

const FIRST: Duration = Duration::from_secs(1);
const MOST: Duration = Duration::from_secs(300);

impl Backoff {
    pub fn new() -> Self {
        Self { next: FIRST }
    }

    /// How long to wait before the next attempt.
    pub fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MOST);
        wait
    }
}
