//! Named places where the tests can make the daemon pause or panic, to prove it survives a
//! stalled disk or a dying worker. Set by `MANANERA_FAILPOINTS="name=action;…"`, where an
//! action is `sleep(MS)` or `panic`, optionally limited to the first N hits as `N*action`
//! (`store.write=1*sleep(20000)`). Debug builds only (the tests' binary): in release builds
//! [`hit`] is empty and the variable is ignored.

/// Runs the action configured for `name`, if any.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An action and how many hits it still applies to (`u64::MAX`: every one).
    struct Point {
        action: String,
        left: AtomicU64,
    }
    static POINTS: OnceLock<HashMap<String, Point>> = OnceLock::new();
    let points = POINTS.get_or_init(|| {
        let spec = std::env::var("MANANERA_FAILPOINTS").unwrap_or_default();
        spec.split(';')
            .filter_map(|entry| entry.split_once('='))
            .map(|(name, action)| {
                let (left, action) = match action.split_once('*') {
                    Some((n, action)) => (n.trim().parse().unwrap_or(u64::MAX), action),
                    None => (u64::MAX, action),
                };
                let point = Point {
                    action: action.trim().to_string(),
                    left: AtomicU64::new(left),
                };
                (name.trim().to_string(), point)
            })
            .collect()
    });
    let Some(point) = points.get(name) else {
        return;
    };
    let taken = point
        .left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if taken.is_err() {
        return;
    }
    tracing::warn!(failpoint = name, action = %point.action, "failpoint hit");
    if point.action == "panic" {
        panic!("failpoint {name}");
    }
    if let Some(ms) = point
        .action
        .strip_prefix("sleep(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|ms| ms.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Release builds have no failpoints.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
