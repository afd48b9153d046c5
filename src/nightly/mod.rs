//! The nightly run inside `mananera serve`: on a schedule (or when an admin asks), scrape
//! every source, fine-tune incrementally on what is new in a child process, and serve the
//! new version if it is accepted — without a restart and without dropping a speech.
//!
//! - `scheduler`: the loop that starts runs at the due times of [`crate::schedule`].
//! - `run`: a run's life (start, cancel, finish); `steps`: what it does.
//! - [`child`]: the scrape and training processes (niced, capped, killable).
//! - [`runs`]: the record of every run.

pub mod child;
mod run;
pub mod runs;
mod scheduler;
mod steps;

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::live::Live;
use crate::service::metrics::RetrainMetrics;
use crate::systemd;
use runs::{RunRecord, Runs};

/// The scheduler, the run in progress and the records.
pub struct Nightly {
    live: Arc<Live>,
    runs: Runs,
    state: Mutex<State>,
    /// Wakes the scheduler when the settings change.
    wake: Notify,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    next: Option<Timestamp>,
    /// The daemon is stopping: no run starts any more.
    stopping: bool,
}

struct Running {
    record: RunRecord,
    cancel: watch::Sender<bool>,
    /// Why it was cancelled, for the record.
    cancelled_by: Option<String>,
    finished: watch::Receiver<bool>,
}

pub use run::{NotStarted, NothingRunning};
pub use steps::RunError;

impl Nightly {
    /// Opens the run records (marking a run the last daemon left unfinished).
    pub fn new(live: Arc<Live>) -> Result<Arc<Self>, String> {
        let keep = live.config().nightly.keep_runs;
        let runs = Runs::open(live.db(), keep, live.store().clone())
            .map_err(|e| format!("the state store cannot hold run records: {e}"))?;
        runs.close_interrupted(&Timestamp::now().to_string());
        let nightly = Arc::new(Self {
            live,
            runs,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        if let Some(last) = nightly.runs.latest(1).first() {
            nightly.record_metrics(last);
        }
        Ok(nightly)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn retrain_metrics(&self) -> std::sync::MutexGuard<'_, RetrainMetrics> {
        self.live
            .metrics
            .retrain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The next scheduled run.
    pub fn next_run(&self) -> Option<Timestamp> {
        self.state().next
    }

    /// The run in progress.
    pub fn running(&self) -> Option<RunRecord> {
        self.state().running.as_ref().map(|r| r.record.clone())
    }

    /// The newest `n` runs, newest first (the one in progress included).
    pub fn history(&self, n: usize) -> Vec<RunRecord> {
        let mut runs = self.runs.latest(n);
        if let Some(running) = self.running() {
            for r in &mut runs {
                if r.id == running.id {
                    *r = running.clone();
                }
            }
        }
        runs
    }

    /// Updates the run in progress (and its stored record).
    fn update(&self, change: impl FnOnce(&mut RunRecord)) {
        let record = {
            let mut state = self.state();
            let Some(running) = state.running.as_mut() else {
                return;
            };
            change(&mut running.record);
            running.record.clone()
        };
        self.runs.put(&record);
    }

    fn phase(&self, phase: &str) {
        tracing::info!(phase, "nightly run");
        self.update(|r| r.phase = phase.to_string());
        systemd::status(&format!("nightly run: {phase}"));
    }
}
