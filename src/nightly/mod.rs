//! The nightly run inside `mananera serve`: on a schedule (or when an admin asks), scrape
//! every source, fine-tune incrementally on what is new in a child process, and serve the
//! new version if it is accepted — without a restart and without dropping a speech.
//!
//! - [`schedule`]: `[nightly]` and the due times.
//! - [`child`]: the scrape and training processes (niced, capped, killable).
//! - [`runs`]: the record of every run.

pub mod child;
pub mod runs;
pub mod schedule;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::exit::{Ended, Exit};
use crate::live::{Live, Reloaded};
use crate::service::metrics::RetrainMetrics;
use crate::systemd;
use runs::{Outcome, RunRecord, Runs, Trained};
use schedule::{FirstRun, Schedule};

/// Longest single sleep while waiting for a due time, so a changed wall clock (suspend,
/// NTP) is noticed.
const CLOCK_CHECK: Duration = Duration::from_secs(30);

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

/// A run could not start: one is in progress (its record), or the daemon is not ready or
/// is stopping.
#[derive(Debug)]
pub enum NotStarted {
    InProgress(Box<RunRecord>),
    NotReady,
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
                .unwrap_or_else(|e| Err(format!("the run stopped unexpectedly: {e}")));
            this.finish(id, result).await;
            let _ = finished_tx.send(true);
        }));
        Ok(record)
    }

    /// Asks the run in progress to stop (training saves a checkpoint the next run resumes).
    pub fn cancel(&self, by: &str) -> Result<RunRecord, String> {
        let mut state = self.state();
        let running = state
            .running
            .as_mut()
            .ok_or("no run is in progress; nothing to cancel")?;
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

    /// The run's steps, knowing how the runs before it ended.
    async fn steps(
        &self,
        cancel: watch::Receiver<bool>,
        history: History,
    ) -> Result<Outcome, String> {
        let config = self.live.config();
        let settings = write_child_config(&config)?;
        let minutes = |m: u64| (m > 0).then(|| Duration::from_secs(m * 60));
        let limits = child::Limits {
            nice: config.nightly.nice,
            memory_max_mib: config.nightly.memory_max_mib,
            stop_grace: Duration::from_secs(config.nightly.stop_grace_s),
            time_limit: minutes(config.nightly.train_max_minutes),
        };
        // The memory cap is for the training; the scrape needs little.
        let scrape_limits = child::Limits {
            memory_max_mib: 0,
            time_limit: minutes(config.nightly.scrape_max_minutes),
            ..limits.clone()
        };
        self.phase("scraping");
        let scrape_args = ["--format", "json", "scrape"].map(String::from);
        let scrape = child::run(
            "scrape",
            &settings,
            &scrape_args,
            &scrape_limits,
            cancel.clone(),
        )
        .await
        .map_err(|e| format!("the scrape could not start: {e}"))?;
        if scrape.timed_out {
            return Err(format!(
                "the scrape ran past nightly.scrape_max_minutes ({} min) and was stopped",
                config.nightly.scrape_max_minutes
            ));
        }
        if scrape.cancelled {
            return Ok(Outcome::Cancelled);
        }
        let (new, failures, sources) = match Ended::of(scrape.status.code()) {
            Ended::Success | Ended::Failed(Exit::Partial) => scrape_counts(&scrape.stdout)?,
            _ => return Err(format!("the scrape failed ({})", scrape.reason(None))),
        };
        if !failures.is_empty() {
            tracing::warn!(sources = %failures.join(", "), "some sources had failed pages; the rest was stored");
        }
        let outage = (sources > 0 && new == 0 && failures.len() == sources).then(|| {
            format!(
                "every source failed ({}); `mananera scrape` shows why (network, site layout, robots.txt)",
                failures.join(", ")
            )
        });
        self.update(|r| {
            r.new_transcripts = new;
            r.scrape_failures = failures;
            r.error.clone_from(&outage);
        });

        let stopped_run = config
            .versions_dir()
            .join(mananera_model::versions::RUN)
            .is_dir();
        let left_work = history.last.is_some_and(Outcome::left_work) || stopped_run;
        if let Some(outage) = outage
            && !left_work
        {
            return Err(outage);
        }
        // The same transcripts with the same seed would give the same rejected version.
        if new == 0 && history.last_trained == Some(Outcome::Rejected) && !left_work {
            tracing::info!("nothing new since the rejected run: nothing to train");
            return Ok(Outcome::NothingNew);
        }
        if *cancel.borrow() {
            return Ok(Outcome::Cancelled);
        }
        // Even with nothing new from the sites, the corpus may hold transcripts the served
        // version has not trained on (a manual scrape or import); `train` says when not.
        self.phase("training");
        let mut train_args: Vec<String> = vec!["--format".into(), "json".into()];
        if config.nightly.threads > 0 {
            train_args.push("--set".into());
            train_args.push(format!("engine.threads={}", config.nightly.threads));
        }
        train_args.push("train".into());
        if config.nightly.train_budget_minutes > 0.0 && !stopped_run {
            train_args.push("--max-minutes".into());
            train_args.push(config.nightly.train_budget_minutes.to_string());
        }
        train_args.push(
            if stopped_run {
                "--resume"
            } else {
                "--incremental"
            }
            .into(),
        );
        let train = child::run("train", &settings, &train_args, &limits, cancel)
            .await
            .map_err(|e| format!("the training could not start: {e}"))?;
        // By exit code first: a cancel that came after the last step still ends `accepted`.
        let outcome = match Ended::of(train.status.code()) {
            Ended::Success | Ended::Failed(Exit::Rejected) => {
                let (outcome, trained) = train_summary(&train.stdout)?;
                if trained.is_some() {
                    self.update(|r| r.trained = trained);
                }
                outcome
            }
            _ if train.timed_out => {
                if let Some(running) = self.state().running.as_mut() {
                    running.cancelled_by =
                        Some("its time limit (nightly.train_max_minutes)".into());
                }
                return Ok(Outcome::Cancelled);
            }
            Ended::Failed(Exit::Stopped) => return Ok(Outcome::Cancelled),
            _ if train.cancelled => return Ok(Outcome::Cancelled),
            _ => {
                let hint = (config.nightly.memory_max_mib > 0).then_some(
                    "if it ran out of memory, raise nightly.memory_max_mib (or set it to 0)",
                );
                return Err(format!("the training failed ({})", train.reason(hint)));
            }
        };
        if matches!(outcome, Outcome::Accepted | Outcome::NothingNew) {
            self.serve_current(outcome, &config).await?;
        }
        Ok(outcome)
    }

    /// Serves the current version if it is not served yet (after an accepted run, or one
    /// whose version was accepted but not served before).
    async fn serve_current(
        &self,
        outcome: Outcome,
        config: &crate::config::Config,
    ) -> Result<(), String> {
        if self.state().stopping {
            tracing::info!("the daemon is stopping: the next start serves the current version");
            return Ok(());
        }
        self.phase("loading the new version");
        match self.live.reload_model(false).await {
            Ok(Reloaded::Swapped { from, to }) => {
                tracing::info!(%from, %to, "serving the new version");
            }
            Ok(Reloaded::Unchanged { version }) if outcome == Outcome::Accepted => {
                tracing::info!(%version, model_version = %config.model.version, "the served version stays (model.version does not follow the current version)");
            }
            Ok(Reloaded::Unchanged { .. }) => {}
            Err(e) if outcome == Outcome::Accepted => {
                return Err(format!(
                    "the new version was accepted but cannot be served: {e}"
                ));
            }
            Err(error) => tracing::warn!(%error, "the current version cannot be served"),
        }
        Ok(())
    }

    async fn finish(&self, id: u64, result: Result<Outcome, String>) {
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
                    record.error = Some(error);
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
    fn record_metrics(&self, record: &RunRecord) {
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
            m.last_perplexity_before = t.perplexity_before.unwrap_or(f64::NAN);
            m.last_perplexity_after = t.perplexity_after.unwrap_or(f64::NAN);
        }
    }
}

/// How the runs before a new one ended.
struct History {
    /// The previous run.
    last: Option<Outcome>,
    /// The newest run that trained a version (accepted or rejected).
    last_trained: Option<Outcome>,
}

impl History {
    /// From the records, newest first.
    fn of(runs: &[RunRecord]) -> Self {
        Self {
            last: runs.first().map(|r| r.outcome),
            last_trained: runs
                .iter()
                .map(|r| r.outcome)
                .find(|o| matches!(o, Outcome::Accepted | Outcome::Rejected)),
        }
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

/// The settings in force, written for the child processes (atomically, owner-only).
fn write_child_config(config: &crate::config::Config) -> Result<PathBuf, String> {
    let dir = config.state_dir().join("nightly");
    let path = dir.join("config.toml");
    let text = toml::to_string(config)
        .map_err(|e| format!("the settings cannot be written for the run: {e}"))?;
    std::fs::create_dir_all(&dir)
        .and_then(|()| mananera_model::fsio::write_atomic(&path, text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// New transcripts, the sources with failures and the number of sources, from
/// `scrape --format json`.
fn scrape_counts(stdout: &str) -> Result<(u64, Vec<String>, usize), String> {
    #[derive(Deserialize)]
    struct Summary {
        sources: Vec<Source>,
    }
    #[derive(Deserialize)]
    struct Source {
        source: String,
        /// `Tally::new`, flattened into the source's report.
        new: u64,
        #[serde(default)]
        failed: Vec<serde_json::Value>,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    let summary: Summary = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("the scrape's summary is unreadable ({e})"))?;
    let new = summary.sources.iter().map(|s| s.new).sum();
    let failures = summary
        .sources
        .iter()
        .filter(|s| !s.failed.is_empty() || !s.errors.is_empty())
        .map(|s| s.source.clone())
        .collect();
    Ok((new, failures, summary.sources.len()))
}

/// The outcome and the trained version's numbers, from `train --format json` (read
/// leniently: a metric that is not finite is written as null).
fn train_summary(stdout: &str) -> Result<(Outcome, Option<Trained>), String> {
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("the training's summary is unreadable ({e})"))?;
    let outcome = match summary["outcome"].as_str() {
        Some("accepted") => Outcome::Accepted,
        Some("rejected") => Outcome::Rejected,
        Some("nothing_new") => Outcome::NothingNew,
        other => return Err(format!("the training ended as {other:?}")),
    };
    let version = &summary["version"];
    let trained = version["id"].as_str().map(|id| {
        let m = &version["metrics"];
        let number = |key: &str| m[key].as_f64().filter(|v| v.is_finite());
        let count = |key: &str| m[key].as_u64().unwrap_or(0) as usize;
        Trained {
            version: id.to_string(),
            parent: version["parent"].as_str().map(str::to_string),
            steps: count("steps"),
            tokens: count("tokens"),
            train_loss_first: number("train_loss_first"),
            train_loss_last: number("train_loss_last"),
            validation_loss_before: number("validation_loss_before"),
            validation_loss_after: number("validation_loss_after"),
            perplexity_before: number("perplexity_before"),
            perplexity_after: number("perplexity_after"),
            wall_s: number("wall_s"),
            new_transcripts: version["new_transcripts"].as_array().map_or(0, Vec::len),
            backlog: count("backlog"),
            budget_reached: m["budget_reached"].as_bool().unwrap_or(false),
        }
    });
    Ok((outcome, trained))
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

    #[test]
    fn a_scrape_summary_counts_new_transcripts_and_failed_sources() {
        let summary = r#"{"corpus_dir":"/c","transcripts":9,"sources":[
            {"source":"gob","new":2,"updated":0,"unchanged":1,"duplicates":0,"skipped":0,"failed":[],"errors":[]},
            {"source":"lopezobrador","new":0,"updated":0,"unchanged":0,"duplicates":0,"skipped":0,
             "failed":[{"url":"http://x","reason":"timeout"}],"errors":[]}]}"#;
        let (new, failed, sources) = scrape_counts(summary).unwrap();
        assert_eq!(
            (new, failed, sources),
            (2, vec!["lopezobrador".to_string()], 2)
        );
        assert!(
            scrape_counts("not json")
                .unwrap_err()
                .contains("unreadable")
        );
    }

    #[test]
    fn a_training_summary_with_non_finite_numbers_is_still_read() {
        let summary = r#"{"outcome":"rejected","version":{"id":"v0002","parent":"v0001",
            "metrics":{"steps":3,"tokens":96,"perplexity_before":12.5,"perplexity_after":null}}}"#;
        let (outcome, trained) = train_summary(summary).unwrap();
        assert_eq!(outcome, Outcome::Rejected);
        let trained = trained.unwrap();
        assert_eq!((trained.version.as_str(), trained.steps), ("v0002", 3));
        assert_eq!(trained.perplexity_before, Some(12.5));
        assert_eq!(trained.perplexity_after, None);
        assert!(train_summary(r#"{"outcome":"odd"}"#).is_err());
    }
}
