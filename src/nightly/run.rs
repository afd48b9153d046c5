//! A run's life: started (by the schedule, an admin or a catch-up), cancelled, finished
//! with an outcome and its record; and what the runs before it say about the next.

use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::watch;

use super::runs::{Outcome, RunRecord};
use super::steps::RunError;
use super::{Nightly, Running};
use crate::systemd;

/// A run could not start: one is in progress (its record), or the daemon is not ready or
/// is stopping.
#[derive(Debug)]
pub enum NotStarted {
    /// This run is in progress.
    InProgress(Box<RunRecord>),
    /// The first model is still loading.
    NotReady,
    /// The daemon is stopping.
    Stopping,
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStarted::InProgress(r) => write!(
                f,
                "a run is already in progress (started {} by {}, now {}); wait for it or cancel it",
                r.started, r.trigger, r.phase
            ),
            NotStarted::NotReady => write!(
                f,
                "the daemon is still loading its model; try again when it is ready"
            ),
            NotStarted::Stopping => write!(f, "the daemon is stopping; no run starts now"),
        }
    }
}

/// There is no run in progress to cancel.
#[derive(Debug, thiserror::Error)]
#[error("no run is in progress; nothing to cancel")]
pub struct NothingRunning;

impl Nightly {
    /// Starts a run now, unless one is in progress.
    pub fn trigger(self: &Arc<Self>, trigger: &str) -> Result<RunRecord, NotStarted> {
        if self.live.speeches().is_none() {
            return Err(NotStarted::NotReady);
        }
        let (cancel, cancel_rx) = watch::channel(false);
        let (finished_tx, finished) = watch::channel(false);
        let record = {
            let mut state = self.state();
            if state.stopping {
                return Err(NotStarted::Stopping);
            }
            if let Some(running) = &state.running {
                return Err(NotStarted::InProgress(Box::new(running.record.clone())));
            }
            let now = Timestamp::now();
            let record = RunRecord {
                id: now.as_millisecond().max(0) as u64,
                trigger: trigger.to_string(),
                started: now.to_string(),
                ended: None,
                outcome: Outcome::Running,
                phase: "starting".into(),
                new_transcripts: 0,
                scrape_failures: Vec::new(),
                trained: None,
                serving: None,
                published: None,
                error: None,
            };
            state.running = Some(Running {
                record: record.clone(),
                cancel,
                cancelled_by: None,
                finished,
            });
            record
        };
        let history = History::of(&self.runs.latest(self.runs.keep()));
        self.runs.put(&record);
        {
            let mut m = self.retrain_metrics();
            m.running = true;
            m.last_start = record.id as f64 / 1000.0;
        }
        tracing::info!(run = record.id, trigger, "nightly run started");
        let this = Arc::clone(self);
        let id = record.id;
        tokio::spawn(mananera_health::timed("nightly-run", async move {
            let steps = {
                let this = Arc::clone(&this);
                tokio::spawn(mananera_health::timed("nightly-steps", async move {
                    this.steps(cancel_rx, history).await
                }))
            };
            let result = steps
                .await
                .unwrap_or_else(|e| Err(RunError::Crashed(e.to_string())));
            this.finish(id, result).await;
            let _ = finished_tx.send(true);
        }));
        Ok(record)
    }

    /// Asks the run in progress to stop (training saves a checkpoint the next run resumes).
    pub fn cancel(&self, by: &str) -> Result<RunRecord, NothingRunning> {
        let mut state = self.state();
        let running = state.running.as_mut().ok_or(NothingRunning)?;
        running.cancelled_by = Some(by.to_string());
        let _ = running.cancel.send(true);
        tracing::info!(run = running.record.id, by, "cancelling the nightly run");
        Ok(running.record.clone())
    }

    /// For the daemon's stop: no run starts any more; the one in progress is cancelled and
    /// waited for.
    pub async fn stop(&self) {
        let finished = {
            let mut state = self.state();
            state.stopping = true;
            let Some(running) = state.running.as_mut() else {
                return;
            };
            running.cancelled_by = Some("the daemon stopping".into());
            let _ = running.cancel.send(true);
            running.finished.clone()
        };
        let mut finished = finished;
        let _ = finished.wait_for(|f| *f).await;
    }

    async fn finish(&self, id: u64, result: Result<Outcome, RunError>) {
        let serving = self.live.speeches().map(|s| s.version());
        let record = {
            let mut state = self.state();
            let Some(running) = state.running.take() else {
                return;
            };
            let mut record = running.record;
            debug_assert_eq!(record.id, id);
            match result {
                Ok(Outcome::Cancelled) => {
                    record.outcome = Outcome::Cancelled;
                    record.error = Some(format!(
                        "cancelled by {} while {}",
                        running.cancelled_by.as_deref().unwrap_or("a signal"),
                        record.phase
                    ));
                }
                Ok(outcome) => record.outcome = outcome,
                Err(error) => {
                    record.outcome = Outcome::Failed;
                    record.error = Some(error.to_string());
                }
            }
            record.ended = Some(Timestamp::now().to_string());
            record.serving = serving;
            record
        };
        self.runs.put(&record);
        self.record_metrics(&record);
        if let Some(error) = &record.error {
            tracing::warn!(run = record.id, outcome = record.outcome.name(), %error, "nightly run ended");
        } else {
            tracing::info!(run = record.id, outcome = record.outcome.name(), new_transcripts = record.new_transcripts, serving = ?record.serving, "nightly run ended");
        }
        systemd::status(&format!(
            "serving {}; last nightly run {}",
            record.serving.as_deref().unwrap_or("nothing yet"),
            record.outcome.name()
        ));
    }

    /// Copies a finished run into `/metrics`.
    pub(super) fn record_metrics(&self, record: &RunRecord) {
        let mut m = self.retrain_metrics();
        m.running = record.outcome == Outcome::Running;
        m.last_start = record.id as f64 / 1000.0;
        if record.outcome != Outcome::Running {
            *m.runs.entry(record.outcome.name().to_string()).or_default() += 1;
            m.last_end = record
                .ended
                .as_deref()
                .and_then(|e| e.parse::<Timestamp>().ok())
                .map_or(0.0, |t| t.as_millisecond() as f64 / 1000.0);
        }
        m.last_new_transcripts = record.new_transcripts as f64;
        if let Some(t) = &record.trained {
            m.last_perplexity_before = t.metrics.perplexity_before;
            m.last_perplexity_after = t.metrics.perplexity_after;
        }
    }
}

/// How the runs before a new one ended.
pub(super) struct History {
    /// The previous run.
    pub(super) last: Option<Outcome>,
    /// The newest run that trained a version (accepted or rejected).
    pub(super) last_trained: Option<Outcome>,
}

impl History {
    /// From the records, newest first.
    pub(super) fn of(runs: &[RunRecord]) -> Self {
        Self {
            last: runs.first().map(|r| r.outcome),
            last_trained: runs
                .iter()
                .map(|r| r.outcome)
                .find(|o| matches!(o, Outcome::Accepted | Outcome::Rejected)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: Outcome) -> RunRecord {
        RunRecord {
            id: 1,
            trigger: "schedule".into(),
            started: String::new(),
            ended: None,
            outcome,
            phase: "done".into(),
            new_transcripts: 0,
            scrape_failures: Vec::new(),
            trained: None,
            serving: None,
            published: None,
            error: None,
        }
    }

    #[test]
    fn the_history_remembers_a_rejection_past_quiet_nights() {
        let runs = [
            run(Outcome::NothingNew),
            run(Outcome::NothingNew),
            run(Outcome::Rejected),
            run(Outcome::Accepted),
        ];
        let history = History::of(&runs);
        assert_eq!(history.last, Some(Outcome::NothingNew));
        assert_eq!(history.last_trained, Some(Outcome::Rejected));
        let fresh = History::of(&[]);
        assert_eq!((fresh.last, fresh.last_trained), (None, None));
    }
}
