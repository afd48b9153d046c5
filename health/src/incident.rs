//! One log line per incident, not one per failed call: a platform that answers 5xx for an
//! hour, or a store that stalls, is logged when it starts failing (with the first error) and
//! when it works again (with how many calls failed meanwhile). Every incident is also kept in
//! a process-wide ledger, so `/metrics` and status can say what is failing now and how often
//! it has failed.

use std::sync::Mutex;
use std::time::SystemTime;

/// A dependency the daemon calls (a platform's API, the state store), as a handle to its
/// entry in the ledger. Handles with the same id share one entry.
pub struct Incident {
    id: &'static str,
    what: &'static str,
}

/// What the ledger knows of one dependency.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    /// Machine name (`discord_rest`), for metric labels and JSON.
    pub id: &'static str,
    /// What a person reads ("discord's REST API").
    pub what: &'static str,
    /// When the open incident began; `None` while all is well.
    pub failing_since: Option<SystemTime>,
    /// Calls failed in the open incident.
    pub failing_calls: u64,
    /// Calls failed since the process started.
    pub failed_calls: u64,
    /// Incidents opened since the process started.
    pub incidents: u64,
    /// The newest error, kept while the incident is open.
    pub last_error: Option<String>,
}

static LEDGER: Mutex<Vec<Tally>> = Mutex::new(Vec::new());

/// Every dependency that has failed at least once in this process, in the order first seen.
pub fn ledger() -> Vec<Tally> {
    LEDGER.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Incident {
    /// Incidents of `what` ("discord's REST API", "the state store"), counted under `id`.
    pub const fn new(id: &'static str, what: &'static str) -> Self {
        Self { id, what }
    }

    /// The ledger's entry, created on first use.
    fn with<T>(&self, f: impl FnOnce(&mut Tally) -> T) -> T {
        let mut ledger = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
        let at = match ledger.iter().position(|t| t.id == self.id) {
            Some(at) => at,
            None => {
                ledger.push(Tally {
                    id: self.id,
                    what: self.what,
                    failing_since: None,
                    failing_calls: 0,
                    failed_calls: 0,
                    incidents: 0,
                    last_error: None,
                });
                ledger.len() - 1
            }
        };
        f(&mut ledger[at])
    }

    /// A call failed with `error`: logged as a warning if it starts an incident, counted
    /// (debug) otherwise.
    pub fn failed(&self, error: &str) {
        let opened = self.with(|t| {
            t.failed_calls += 1;
            t.failing_calls += 1;
            t.last_error = Some(error.to_string());
            let opened = t.failing_since.is_none();
            if opened {
                t.failing_since = Some(SystemTime::now());
                t.incidents += 1;
            }
            (opened, t.failing_calls)
        });
        match opened {
            (true, _) => {
                tracing::warn!(what = self.what, %error, "failing; logged once until it recovers")
            }
            (false, n) => tracing::debug!(what = self.what, %error, failures = n, "still failing"),
        }
    }

    /// A call worked: ends the incident, if one was open, with a line saying how many calls
    /// failed in it.
    pub fn resolved(&self) {
        let closed = self.with(|t| {
            t.failing_since.take()?;
            t.last_error = None;
            Some(std::mem::take(&mut t.failing_calls))
        });
        if let Some(n) = closed {
            tracing::info!(what = self.what, failed_calls = n, "working again");
        }
    }

    /// True while an incident is open.
    pub fn is_open(&self) -> bool {
        self.with(|t| t.failing_since.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(id: &str) -> Tally {
        ledger().into_iter().find(|t| t.id == id).unwrap()
    }

    #[test]
    fn an_incident_opens_once_closes_on_success_and_stays_counted() {
        let incident = Incident::new("test_one", "test");
        assert!(!incident.is_open());
        incident.failed("boom");
        incident.failed("bang");
        assert!(incident.is_open());
        let open = tally("test_one");
        assert!(open.failing_since.is_some());
        assert_eq!(
            (open.failing_calls, open.failed_calls, open.incidents),
            (2, 2, 1)
        );
        assert_eq!(open.last_error.as_deref(), Some("bang"));
        incident.resolved();
        assert!(!incident.is_open());
        incident.failed("again");
        incident.resolved();
        let closed = tally("test_one");
        assert_eq!(closed.failing_since, None);
        assert_eq!(closed.last_error, None);
        assert_eq!(
            (closed.failing_calls, closed.failed_calls, closed.incidents),
            (0, 3, 2)
        );
    }

    #[test]
    fn handles_with_one_id_share_an_entry() {
        let (a, b) = (
            Incident::new("test_two", "x"),
            Incident::new("test_two", "x"),
        );
        a.failed("boom");
        assert!(b.is_open());
        b.resolved();
        assert!(!a.is_open());
        assert_eq!(ledger().iter().filter(|t| t.id == "test_two").count(), 1);
    }
}
