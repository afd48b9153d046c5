//! Loopback fakes of the chat platforms, speaking their documented protocols.
#![allow(dead_code)] // each test binary uses part of these fakes

pub mod discord;
pub mod telegram;

use std::time::Duration;

use tokio::sync::Notify;

/// Re-runs `check` each time `changed` is notified until it finds something; `None` once
/// `limit` has passed. The fakes' `wait_for` is built on it.
pub async fn wait_until<T>(
    changed: &Notify,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Registered before checking, so a change between the two is not missed.
        let notified = changed.notified();
        if let Some(found) = check() {
            return Some(found);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return None;
        }
    }
}
