//! What a nightly run does, step by step: write the settings for the children, scrape,
//! decide whether there is anything to train, train in a child, and serve the new version.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::Nightly;
use super::child;
use super::run::History;
use super::runs::{Outcome, Trained};
use crate::config::{BackendKind, Config};
use crate::exit::{Ended, Exit};
use crate::live::{LiveError, Reloaded};
use crate::service::remote;
use crate::summary::{ScrapeSummary, TrainOutcome, TrainSummary};

/// Why a run failed; the message goes into its record for the admin.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings could not be written for the child processes.
    #[error("{0}")]
    Settings(String),
    /// A child could not start, ran past its time limit or failed.
    #[error("{0}")]
    Child(String),
    /// A child's `--format json` summary is unreadable.
    #[error("{0}")]
    Summary(String),
    /// Every source failed and nothing was left to train on.
    #[error("{0}")]
    Outage(String),
    /// The version was accepted but cannot be served.
    #[error("the new version was accepted but cannot be served: {0}")]
    Serve(LiveError),
    /// The version could not be published, or the generation server did not take it up;
    /// the old version stays served.
    #[error("{0}")]
    Publish(String),
    /// The run's task ended without an outcome (a panic).
    #[error("the run stopped unexpectedly: {0}")]
    Crashed(String),
}

/// What the scrape found.
struct Scraped {
    /// Every source failed (a network or site outage).
    outage: Option<String>,
    new: u64,
}

impl Nightly {
    /// The run's steps, knowing how the runs before it ended.
    pub(super) async fn steps(
        &self,
        cancel: watch::Receiver<bool>,
        history: History,
    ) -> Result<Outcome, RunError> {
        let config = self.live.config();
        // Two fsyncs and a stat: off the async runtime.
        let (settings, stopped_run) = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                let stopped = config
                    .versions_dir()
                    .join(mananera_model::versions::RUN)
                    .is_dir();
                write_child_config(&config).map(|path| (path, stopped))
            })
            .await
            .map_err(|e| RunError::Crashed(e.to_string()))??
        };
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
        let Some(scraped) = self
            .scrape(&config, &settings, &scrape_limits, cancel.clone())
            .await?
        else {
            return Ok(Outcome::Cancelled);
        };
        let left_work = history.last.is_some_and(Outcome::left_work) || stopped_run;
        if let Some(outage) = scraped.outage
            && !left_work
        {
            return Err(RunError::Outage(outage));
        }
        // The same transcripts with the same seed would give the same rejected version.
        if scraped.new == 0 && history.last_trained == Some(Outcome::Rejected) && !left_work {
            tracing::info!("nothing new since the rejected run: nothing to train");
            return Ok(Outcome::NothingNew);
        }
        if *cancel.borrow() {
            return Ok(Outcome::Cancelled);
        }
        // Even with nothing new from the sites, the corpus may hold transcripts the served
        // version has not trained on (a manual scrape or import); `train` says when not.
        let outcome = self
            .train(&config, &settings, &limits, cancel.clone(), stopped_run)
            .await?;
        if matches!(outcome, Outcome::Accepted | Outcome::NothingNew) {
            if config.publish.enabled()
                && !self.publish(&config, &settings, &limits, cancel).await?
            {
                return Ok(Outcome::Cancelled);
            }
            self.serve_current(outcome, &config).await?;
        }
        Ok(outcome)
    }

    /// Runs `mananera scrape` and records what it found; `None` when cancelled.
    async fn scrape(
        &self,
        config: &Config,
        settings: &std::path::Path,
        limits: &child::Limits,
        cancel: watch::Receiver<bool>,
    ) -> Result<Option<Scraped>, RunError> {
        self.phase("scraping");
        let args = ["--format", "json", "scrape"].map(String::from);
        let scrape = child::run("scrape", settings, &args, limits, cancel)
            .await
            .map_err(|e| RunError::Child(format!("the scrape could not start: {e}")))?;
        if scrape.timed_out {
            return Err(RunError::Child(format!(
                "the scrape ran past nightly.scrape_max_minutes ({} min) and was stopped",
                config.nightly.scrape_max_minutes
            )));
        }
        if scrape.cancelled {
            return Ok(None);
        }
        let (new, failures, sources) = match Ended::of(scrape.status.code()) {
            Ended::Success | Ended::Failed(Exit::Partial) => scrape_counts(&scrape.stdout)?,
            _ => {
                return Err(RunError::Child(format!(
                    "the scrape failed ({})",
                    scrape.reason(None)
                )));
            }
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
        Ok(Some(Scraped { outage, new }))
    }

    /// Runs `mananera train` (incremental, or resuming a stopped run) and records the
    /// version it wrote.
    async fn train(
        &self,
        config: &Config,
        settings: &std::path::Path,
        limits: &child::Limits,
        cancel: watch::Receiver<bool>,
        stopped_run: bool,
    ) -> Result<Outcome, RunError> {
        self.phase("training");
        let mut args: Vec<String> = vec!["--format".into(), "json".into()];
        if config.nightly.threads > 0 {
            args.push("--set".into());
            args.push(format!("engine.threads={}", config.nightly.threads));
        }
        args.push("train".into());
        if config.nightly.train_budget_minutes > 0.0 && !stopped_run {
            args.push("--max-minutes".into());
            args.push(config.nightly.train_budget_minutes.to_string());
        }
        args.push(
            if stopped_run {
                "--resume"
            } else {
                "--incremental"
            }
            .into(),
        );
        let train = child::run("train", settings, &args, limits, cancel)
            .await
            .map_err(|e| RunError::Child(format!("the training could not start: {e}")))?;
        // By exit code first: a cancel that came after the last step still ends `accepted`.
        match Ended::of(train.status.code()) {
            Ended::Success | Ended::Failed(Exit::Rejected) => {
                let (outcome, trained) = train_summary(&train.stdout)?;
                if trained.is_some() {
                    self.update(|r| r.trained = trained);
                }
                Ok(outcome)
            }
            _ if train.timed_out => {
                if let Some(running) = self.state().running.as_mut() {
                    running.cancelled_by =
                        Some("its time limit (nightly.train_max_minutes)".into());
                }
                Ok(Outcome::Cancelled)
            }
            Ended::Failed(Exit::Stopped) => Ok(Outcome::Cancelled),
            _ if train.cancelled => Ok(Outcome::Cancelled),
            _ => {
                let hint = (config.nightly.memory_max_mib > 0).then_some(
                    "if it ran out of memory, raise nightly.memory_max_mib (or set it to 0)",
                );
                Err(RunError::Child(format!(
                    "the training failed ({})",
                    train.reason(hint)
                )))
            }
        }
    }

    /// Publishes the current version if it is not published yet (`mananera publish` in a
    /// child: files, then the hook), and with the `openai` backend waits for the server to
    /// report it. `false` when cancelled.
    async fn publish(
        &self,
        config: &Config,
        settings: &std::path::Path,
        limits: &child::Limits,
        cancel: watch::Receiver<bool>,
    ) -> Result<bool, RunError> {
        let Some(dir) = config.publish_dir() else {
            return Ok(true);
        };
        let versions_dir = config.versions_dir();
        let (current, published) = tokio::task::spawn_blocking(move || {
            let current = mananera_model::versions::current(&versions_dir)
                .ok()
                .flatten()
                .map(|v| v.id);
            // Published and told: a version whose hook failed is published again.
            let published =
                crate::publish::current(&dir).filter(|id| crate::publish::told(&dir, id));
            (current, published)
        })
        .await
        .map_err(|e| RunError::Crashed(e.to_string()))?;
        let Some(current) = current else {
            return Ok(true);
        };
        if published.as_deref() != Some(current.as_str()) {
            self.phase("publishing");
            let args = ["--format", "json", "publish", current.as_str()].map(String::from);
            let publish = child::run("publish", settings, &args, limits, cancel.clone())
                .await
                .map_err(|e| RunError::Child(format!("the publish could not start: {e}")))?;
            match Ended::of(publish.status.code()) {
                Ended::Success => {}
                _ if publish.cancelled => return Ok(false),
                Ended::Failed(Exit::Partial) => {
                    return Err(RunError::Publish(format!(
                        "{current} was published but its hook failed ({}); the old version stays served",
                        publish.reason(None)
                    )));
                }
                _ => {
                    return Err(RunError::Publish(format!(
                        "{current} could not be published ({}); the old version stays served",
                        publish.reason(None)
                    )));
                }
            }
            self.update(|r| r.published = Some(current.clone()));
        }
        if config.engine.backend == BackendKind::Openai {
            return self.wait_for_server(config, &current, cancel).await;
        }
        Ok(true)
    }

    /// Waits (up to `publish.wait_s`) until the generation server reports `version` under
    /// its published name. `false` when cancelled.
    async fn wait_for_server(
        &self,
        config: &Config,
        version: &str,
        cancel: watch::Receiver<bool>,
    ) -> Result<bool, RunError> {
        let name = crate::publish::model_name(&config.engine.backend_model, version);
        self.phase(&format!(
            "waiting for the generation server to serve {name}"
        ));
        let settings = crate::live::backend_settings(config)
            .await
            .map_err(RunError::Publish)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(config.publish.wait_s);
        loop {
            let last = match remote::probe(&settings).await {
                Ok(model) if remote::served_name(&model) == name => return Ok(true),
                Ok(model) => model,
                Err(e) => format!("nothing ({e})"),
            };
            if *cancel.borrow() || self.state().stopping {
                return Ok(false);
            }
            if std::time::Instant::now() >= deadline {
                return Err(RunError::Publish(format!(
                    "the generation server at {} still serves {last} {} s after {name} was published (publish.wait_s); the old version stays served",
                    settings.address(),
                    config.publish.wait_s
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Serves the current version if it is not served yet (after an accepted run, or one
    /// whose version was accepted but not served before).
    async fn serve_current(&self, outcome: Outcome, config: &Config) -> Result<(), RunError> {
        if self.state().stopping {
            tracing::info!("the daemon is stopping: the next start serves the current version");
            return Ok(());
        }
        self.phase("loading the new version");
        match self.live.reload_model(false).await {
            Ok(Reloaded::Swapped { from, to }) => {
                tracing::info!(%from, %to, "serving the new version");
            }
            Ok(Reloaded::Unchanged { version })
                if outcome == Outcome::Accepted
                    && config.engine.backend == BackendKind::Openai
                    && !config.publish.enabled() =>
            {
                tracing::warn!(%version, "the new version is not on the generation server, which keeps serving its model: set publish.dir to publish it there");
            }
            Ok(Reloaded::Unchanged { version }) if outcome == Outcome::Accepted => {
                tracing::info!(%version, model_version = %config.model.version, "the served version stays (model.version does not follow the current version)");
            }
            Ok(Reloaded::Unchanged { .. }) => {}
            Err(e) if outcome == Outcome::Accepted => return Err(RunError::Serve(e)),
            Err(error) => tracing::warn!(%error, "the current version cannot be served"),
        }
        Ok(())
    }
}

/// The settings in force, written for the child processes (atomically, owner-only).
fn write_child_config(config: &Config) -> Result<PathBuf, RunError> {
    let dir = config.state_dir().join("nightly");
    let path = dir.join("config.toml");
    let text = toml::to_string(config).map_err(|e| {
        RunError::Settings(format!("the settings cannot be written for the run: {e}"))
    })?;
    std::fs::create_dir_all(&dir)
        .and_then(|()| mananera_model::fsio::write_atomic(&path, text.as_bytes()))
        .map_err(|e| RunError::Settings(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// The scrape child's summary: new transcripts, failed sources, and how many sources ran.
fn scrape_counts(stdout: &str) -> Result<(u64, Vec<String>, usize), RunError> {
    let summary: ScrapeSummary = serde_json::from_str(stdout.trim())
        .map_err(|e| RunError::Summary(format!("the scrape's summary is unreadable ({e})")))?;
    Ok((
        summary.new_transcripts() as u64,
        summary.failed_sources(),
        summary.sources.len(),
    ))
}

/// The outcome and the trained version's numbers, from the train child's summary.
fn train_summary(stdout: &str) -> Result<(Outcome, Option<Trained>), RunError> {
    let summary: TrainSummary = serde_json::from_str(stdout.trim())
        .map_err(|e| RunError::Summary(format!("the training's summary is unreadable ({e})")))?;
    let outcome = match summary.outcome {
        TrainOutcome::Accepted => Outcome::Accepted,
        TrainOutcome::Rejected => Outcome::Rejected,
        TrainOutcome::NothingNew => Outcome::NothingNew,
        TrainOutcome::Stopped => {
            return Err(RunError::Summary("the training ended as stopped".into()));
        }
    };
    let trained = summary.version.map(|v| Trained {
        version: v.id,
        parent: v.parent,
        new_transcripts: v.new_transcripts,
        metrics: v.metrics,
    });
    Ok((outcome, trained))
}

#[cfg(test)]
mod tests {
    use mananera_model::versions::{Method, Metrics, Status};

    use super::*;
    use crate::summary::VersionSummary;

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
                .to_string()
                .contains("unreadable")
        );
    }

    #[test]
    fn a_training_summary_with_non_finite_numbers_is_still_read() {
        let metrics = Metrics {
            steps: 3,
            tokens: 96,
            train_blocks: 3,
            validation_blocks: 1,
            train_loss_first: 2.5,
            train_loss_last: f64::NAN,
            validation_loss_before: 2.5,
            validation_loss_after: f64::INFINITY,
            perplexity_before: 12.5,
            perplexity_after: f64::NAN,
            wall_s: 1.0,
            tokens_per_s: 96.0,
            data_window: ("2024-01-02".into(), "2024-01-03".into()),
            backlog: 0,
            budget_reached: false,
            voices: [(
                "amlo".to_string(),
                mananera_model::versions::VoiceMetrics {
                    train_blocks: 3,
                    validation_blocks: 1,
                    perplexity_before: 12.5,
                    perplexity_after: f64::NAN,
                },
            )]
            .into(),
            worse_voices: vec!["amlo".into()],
        };
        // What `train --format json` prints for a diverged run (NaN is written as null).
        let printed = serde_json::to_string(&TrainSummary {
            outcome: TrainOutcome::Rejected,
            version: Some(VersionSummary {
                id: "v0002".into(),
                status: Status::Rejected,
                method: Method::Lora,
                parent: Some("v0001".into()),
                base_model: "tiny".into(),
                base_version: "tiny-000000".into(),
                created: 0,
                transcripts: 4,
                new_transcripts: 1,
                validation: 1,
                metrics,
                settings: serde_json::Value::Null,
            }),
            step: Some(3),
            total_steps: Some(3),
            current: None,
        })
        .unwrap();
        assert!(printed.contains(r#""perplexity_after":null"#), "{printed}");
        let (outcome, trained) = train_summary(&printed).unwrap();
        assert_eq!(outcome, Outcome::Rejected);
        let trained = trained.unwrap();
        assert_eq!(
            (trained.version.as_str(), trained.metrics.steps),
            ("v0002", 3)
        );
        assert_eq!(trained.metrics.perplexity_before, 12.5);
        assert!(trained.metrics.perplexity_after.is_nan());
        assert_eq!(trained.new_transcripts, 1);
        assert!(train_summary(r#"{"outcome":"odd"}"#).is_err());
    }
}
