//! Waiting between reconnection attempts (doubling from one second up to five minutes), and
//! for the stop signal.

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

/// Sleeps `wait` unless `stop` turns true first; true when it slept the whole time.
pub async fn sleep_unless_stopped(
    wait: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = stopped(stop) => false,
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
