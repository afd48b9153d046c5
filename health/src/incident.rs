//! One log line per incident, not one per failed call: a platform that answers 5xx for an
//! hour, or a store that stalls, is logged when it starts failing (with the first error) and
//! when it works again (with how many calls failed meanwhile).

use std::sync::Mutex;

/// Whether something (a platform's API, the state store) is failing now.
pub struct Incident {
    what: &'static str,
    /// Calls failed since the incident began; `None` while all is well.
    failures: Mutex<Option<u64>>,
}

impl Incident {
    /// Incidents of `what` ("discord's REST API", "the state store").
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            failures: Mutex::new(None),
        }
    }

    /// A call failed with `error`: logged as a warning if it starts an incident, counted
    /// (debug) otherwise.
    pub fn failed(&self, error: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.as_mut() {
            None => {
                *failures = Some(1);
                tracing::warn!(what = self.what, %error, "failing; logged once until it recovers");
            }
            Some(n) => {
                *n += 1;
                tracing::debug!(what = self.what, %error, failures = *n, "still failing");
            }
        }
    }

    /// A call worked: ends the incident, if one was open, with a line saying how long it was.
    pub fn resolved(&self) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = failures.take() {
            tracing::info!(what = self.what, failed_calls = n, "working again");
        }
    }

    /// True while an incident is open.
    pub fn is_open(&self) -> bool {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_opens_once_and_closes_on_success() {
        let incident = Incident::new("test");
        assert!(!incident.is_open());
        incident.failed("boom");
        incident.failed("boom");
        assert!(incident.is_open());
        assert_eq!(*incident.failures.lock().unwrap(), Some(2));
        incident.resolved();
        assert!(!incident.is_open());
    }
}
