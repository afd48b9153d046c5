//! What an admin can see and do on a running daemon, whichever way they ask (the control
//! socket behind `mananera status|retrain|rollback`, the HTTP API, a bot command).

use std::sync::Arc;

use mananera_model::versions;
use serde::{Deserialize, Serialize};

use crate::config::BackendKind;
use crate::live::{Live, LiveError, RolledBack};
use crate::nightly::runs::RunRecord;
use crate::nightly::{Nightly, NotStarted};
use crate::schedule::Schedule;

/// The daemon's state for people and programs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub ready: bool,
    /// The model version new requests are answered by.
    pub model_version: Option<String>,
    /// `model.version`: "current", "base" or a pinned id.
    pub serving: String,
    /// The versions directory's current version.
    pub current_version: Option<String>,
    pub queue_depth: f64,
    pub batch_size: f64,
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub cache_entries: f64,
    /// "daily at 23:00 America/Mexico_City", "off", or why it is unusable.
    pub schedule: String,
    pub next_run: Option<String>,
    pub running: Option<RunRecord>,
    /// The newest runs, newest first.
    pub runs: Vec<RunRecord>,
    /// Dependencies failing now (platform APIs, the state store, the web listener).
    #[serde(default)]
    pub failing: Vec<Failing>,
    /// Where speeches are written: "local", or "openai <url>".
    #[serde(default)]
    pub backend: String,
    /// Why the generation server takes no request now, and when it is tried again.
    #[serde(default)]
    pub backend_unavailable: Option<String>,
}

/// A dependency whose calls keep failing: an open incident.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failing {
    /// Machine name, as in `/metrics`' `dependency` label.
    pub dependency: String,
    /// What a person reads ("discord's REST API").
    pub what: String,
    /// When it began failing (RFC 3339, UTC).
    pub since: String,
    /// Calls failed since then.
    pub failed_calls: u64,
    /// The newest error.
    pub error: String,
}

/// The open incidents of the ledger.
fn failing() -> Vec<Failing> {
    mananera_health::ledger()
        .into_iter()
        .filter_map(|t| {
            let since = jiff::Timestamp::try_from(t.failing_since?).ok()?;
            Some(Failing {
                dependency: t.id.to_string(),
                what: t.what.to_string(),
                since: since.round(jiff::Unit::Second).ok()?.to_string(),
                failed_calls: t.failing_calls,
                error: t.last_error.unwrap_or_default(),
            })
        })
        .collect()
}

/// An admin request, as the control socket and the HTTP API carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Retrain,
    Cancel,
    Rollback { version: Option<String> },
}

/// Why a request was refused, for programs (the control socket's and the API's `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// A run is in progress, or holds the versions directory.
    InProgress,
    /// The daemon is loading its first model, or stopping.
    NotReady,
    /// No run is in progress to cancel.
    NotRunning,
    /// The request names a version that does not exist or cannot be current.
    BadRequest,
    /// It was tried and failed (the message says why).
    Failed,
}

/// Why a request was refused: the kind and the message for a person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refused {
    /// The kind, for programs.
    pub code: RefusalKind,
    /// Why, for a person.
    pub error: String,
}

impl From<LiveError> for Refused {
    fn from(e: LiveError) -> Self {
        let code = match e {
            LiveError::NotReady => RefusalKind::NotReady,
            LiveError::Busy(_) => RefusalKind::InProgress,
            LiveError::BadVersion(_) => RefusalKind::BadRequest,
            LiveError::Load(_) | LiveError::Failed(_) => RefusalKind::Failed,
        };
        Self {
            code,
            error: e.to_string(),
        }
    }
}

/// The admin side of a running daemon.
pub struct Admin {
    pub live: Arc<Live>,
    pub nightly: Arc<Nightly>,
}

/// Runs shown by `status`.
const STATUS_RUNS: usize = 10;

impl Admin {
    /// The daemon's state (the versions directory is read on a blocking thread).
    pub async fn status(&self) -> Status {
        let config = self.live.config();
        let m = &self.live.metrics;
        if let Some(speeches) = self.live.speeches() {
            speeches.refresh_gauges();
        }
        let schedule = match (config.nightly.enabled, Schedule::new(&config.nightly)) {
            (false, _) => "off (nightly.enabled = false)".to_string(),
            (true, Ok(s)) => s.describe().to_string(),
            (true, Err(e)) => format!("unusable: {e}"),
        };
        Status {
            ready: self.live.speeches().is_some(),
            model_version: self.live.speeches().map(|s| s.version()),
            serving: config.model.version.clone(),
            current_version: current_version(config.versions_dir()).await,
            queue_depth: m.queue_depth.get(),
            batch_size: m.batch_size.get(),
            cache_hits: m.cache_hits.get(),
            cache_misses: m.cache_misses.get(),
            cache_entries: m.cache_entries.get(),
            schedule,
            next_run: self.nightly.next_run().map(|t| t.to_string()),
            running: self.nightly.running(),
            runs: self.nightly.history(STATUS_RUNS),
            failing: failing(),
            backend: match config.engine.backend {
                BackendKind::Local => "local".into(),
                BackendKind::Openai => format!("openai {}", config.engine.backend_url),
            },
            backend_unavailable: self
                .live
                .speeches()
                .and_then(|s| s.unavailable())
                .map(|(why, retry)| format!("{why}; retrying in {retry} s")),
        }
    }

    /// Carries out `request` for `by` (`cli`, `api`, `discord:<id>`…).
    pub async fn handle(&self, request: Request, by: &str) -> Result<serde_json::Value, Refused> {
        match request {
            Request::Status => Ok(json(&self.status().await)),
            Request::Retrain => self
                .nightly
                .trigger(by)
                .map(|r| json(&r))
                .map_err(|e| Refused {
                    code: match e {
                        NotStarted::InProgress(_) => RefusalKind::InProgress,
                        NotStarted::NotReady | NotStarted::Stopping => RefusalKind::NotReady,
                    },
                    error: e.to_string(),
                }),
            Request::Cancel => self
                .nightly
                .cancel(by)
                .map(|r| json(&r))
                .map_err(|e| Refused {
                    code: RefusalKind::NotRunning,
                    error: e.to_string(),
                }),
            Request::Rollback { version } => {
                tracing::info!(by, to = ?version, "rollback asked");
                self.live
                    .rollback(version)
                    .await
                    .map(|r: RolledBack| json(&r))
                    .map_err(Refused::from)
            }
        }
    }
}

/// Runs the backlog will take if each trains as many transcripts as the last one did.
pub fn nights(backlog: usize, last_run: usize) -> Option<usize> {
    (backlog > 0 && last_run > 0).then(|| backlog.div_ceil(last_run))
}

/// The versions directory's current version, read off the async runtime.
async fn current_version(dir: std::path::PathBuf) -> Option<String> {
    tokio::task::spawn_blocking(move || versions::current(&dir).ok().flatten().map(|v| v.id))
        .await
        .ok()
        .flatten()
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
