//! When nightly runs start: the schedule loop (woken when the settings change), a run
//! missed while the daemon was down, and the very first run of a fresh deployment.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::Nightly;
use crate::schedule::{FirstRun, Schedule};

/// Longest single sleep while waiting for a due time, so a changed wall clock (suspend,
/// NTP) is noticed.
const CLOCK_CHECK: Duration = Duration::from_secs(30);

impl Nightly {
    /// Starts the scheduler (after the first model is loaded); runs a missed run now.
    pub fn start_schedule(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(mananera_health::timed("nightly-schedule", async move {
            this.catch_up();
            this.schedule_loop().await;
        }));
    }

    /// Tells the scheduler the settings changed.
    pub fn settings_changed(&self) {
        self.wake.notify_one();
    }

    fn catch_up(self: &Arc<Self>) {
        let config = self.live.config().nightly;
        let Ok(schedule) = Schedule::new(&config) else {
            return;
        };
        let Some(last) = self.runs.latest(1).into_iter().next() else {
            if config.enabled && config.first_run == FirstRun::Now {
                tracing::info!(
                    "no nightly run has ever run here: running the first one now (nightly.first_run = \"now\")"
                );
                if let Err(e) = self.trigger("first-run") {
                    tracing::warn!(error = %e, "the first run could not start");
                }
            }
            return;
        };
        if !config.enabled || !config.catch_up {
            return;
        }
        let last_start =
            Timestamp::from_millisecond(last.id as i64).unwrap_or(Timestamp::UNIX_EPOCH);
        if let Some(due) = schedule.latest_until(Timestamp::now())
            && due > last_start
        {
            tracing::info!(missed = %due, last_run = %last.started, "a scheduled run was missed while the daemon was down: running it now");
            if let Err(e) = self.trigger("catch-up") {
                tracing::warn!(error = %e, "the missed run could not start");
            }
        }
    }

    async fn schedule_loop(self: Arc<Self>) {
        loop {
            let config = self.live.config().nightly;
            let schedule = match (config.enabled, Schedule::new(&config)) {
                (true, Ok(schedule)) => schedule,
                (false, _) => {
                    tracing::info!("the nightly schedule is off (nightly.enabled = false)");
                    self.set_next(None);
                    self.wake.notified().await;
                    continue;
                }
                (true, Err(error)) => {
                    tracing::error!(%error, "the nightly schedule is unusable; fix it and reload");
                    self.set_next(None);
                    self.wake.notified().await;
                    continue;
                }
            };
            let Some(next) = schedule.next_after(Timestamp::now()) else {
                self.set_next(None);
                self.wake.notified().await;
                continue;
            };
            self.set_next(Some(next));
            tracing::info!(next = %next, schedule = schedule.describe(), "next nightly run");
            tokio::select! {
                () = sleep_until(next) => match self.trigger("schedule") {
                    Ok(_) => {}
                    Err(e) => tracing::info!(reason = %e, "skipping a scheduled run"),
                },
                () = self.wake.notified() => {}
            }
        }
    }

    fn set_next(&self, next: Option<Timestamp>) {
        self.state().next = next;
        self.retrain_metrics().next_run = next.map_or(0.0, |t| t.as_second() as f64);
    }
}

/// Sleeps until the wall clock reaches `at`.
async fn sleep_until(at: Timestamp) {
    loop {
        let left = at.duration_since(Timestamp::now());
        if left.is_zero() || left.is_negative() {
            return;
        }
        let left = Duration::try_from(left).unwrap_or(CLOCK_CHECK);
        tokio::time::sleep(left.min(CLOCK_CHECK)).await;
    }
}
