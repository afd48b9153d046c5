//! The daemon's live state: the settings in force and the model being served, and the ways
//! they change without a restart — a newly accepted version, a rollback, a SIGHUP reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use mananera_model::versions::{Status, Versions};
use serde::{Deserialize, Serialize};

use crate::config::{BackendKind, Config};
use crate::exit::{Exit, Failure};
use crate::service::backend::Backend;
use crate::service::cache::PromptCache;
use crate::service::limits::Limits;
use crate::service::metrics::Metrics;
use crate::service::queue::Generator;
use crate::service::remote::{self, ProbeError, Remote};
use crate::service::store::Store;
use crate::service::{Model, RequestBounds, Speeches};
use mananera_engine::{Engine, model_version};

/// Why a change to the current or served version failed. Admins see the message; the
/// control socket and the API get its kind (`admin::RefusalKind`). What is served stays as
/// it was (a rollback whose new version cannot be loaded has already changed `current`).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The first model is still loading.
    #[error("the first model is still loading; try again when the daemon is ready")]
    NotReady,
    /// A training run holds the versions directory.
    #[error(
        "a training run holds the versions directory {0}; wait for it or cancel it (mananera retrain --cancel)"
    )]
    Busy(PathBuf),
    /// The version asked for does not exist or is rejected, or there is none to roll back to.
    #[error("{0}")]
    BadVersion(String),
    /// The model the settings name cannot be loaded.
    #[error("{0}")]
    Load(String),
    /// The versions directory or a worker thread failed.
    #[error("{0}")]
    Failed(String),
}

impl LiveError {
    /// How `mananera rollback` exits with it.
    pub fn exit(&self) -> Exit {
        match self {
            LiveError::NotReady | LiveError::BadVersion(_) => Exit::Usage,
            LiveError::Busy(_) => Exit::Busy,
            LiveError::Load(_) => Exit::Model,
            LiveError::Failed(_) => Exit::Internal,
        }
    }

    /// A versions-directory failure, by kind.
    fn of_versions(dir: &Path, e: mananera_model::Error) -> Self {
        match e {
            mananera_model::Error::Busy(_) => LiveError::Busy(dir.to_path_buf()),
            mananera_model::Error::Version(message) => LiveError::BadVersion(message),
            other => LiveError::Failed(other.to_string()),
        }
    }
}

/// What the daemon's parts share.
pub struct Live {
    config: RwLock<Config>,
    /// Set once the first model is loaded.
    pub speeches: Arc<OnceLock<Arc<Speeches>>>,
    pub metrics: Arc<Metrics>,
    db: sled::Db,
    /// The thread the running daemon's sled calls go through.
    store: Store,
    /// One model load at a time (a retrain, a rollback and a reload may ask together).
    loading: tokio::sync::Mutex<()>,
}

/// What a model reload did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "model")]
pub enum Reloaded {
    /// The settings still name the version being served.
    Unchanged { version: String },
    /// New requests now go to `to`; running ones finish on `from`.
    Swapped { from: String, to: String },
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolledBack {
    /// The versions directory's current version before and after.
    pub from: Option<String>,
    pub to: String,
    /// `None` when the daemon is not running (the change applies at its next start).
    pub served: Option<Reloaded>,
    /// Set when `model.version` pins a version, so the rollback does not change what is
    /// served.
    pub note: Option<String>,
}

impl Live {
    /// The state of a daemon starting with `config`.
    pub fn new(config: Config, metrics: Arc<Metrics>, db: sled::Db, store: Store) -> Self {
        Self {
            config: RwLock::new(config),
            speeches: Arc::new(OnceLock::new()),
            metrics,
            db,
            store,
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The daemon's sled store.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The thread the running daemon's sled calls go through.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The service, once the first model is loaded.
    pub fn speeches(&self) -> Option<Arc<Speeches>> {
        self.speeches.get().cloned()
    }

    /// Loads the first model and builds the service around it (on a blocking thread). With
    /// the `openai` backend, waits (with backoff) until the server answers with its model.
    pub async fn load_first(&self) -> Result<Arc<Speeches>, Failure> {
        let _one = self.loading.lock().await;
        let (config, metrics, db) = (self.config(), Arc::clone(&self.metrics), self.db.clone());
        let store = self.store.clone();
        let remote = match config.engine.backend {
            BackendKind::Local => None,
            BackendKind::Openai => Some(first_remote(&config, Arc::clone(&metrics)).await?),
        };
        let speeches =
            tokio::task::spawn_blocking(move || build(&config, metrics, db, store, remote))
                .await
                .map_err(|e| Failure {
                    exit: Exit::Internal,
                    message: format!("model loading stopped: {e}"),
                })??;
        let speeches = Arc::new(speeches);
        let _ = self.speeches.set(Arc::clone(&speeches));
        Ok(speeches)
    }

    /// Follows the generation server (`engine.backend = "openai"`): when it reports another
    /// version of the model (one was published to it), that version is served, with its own
    /// cache keys. Runs for the daemon's life; with the local backend it only waits.
    pub async fn follow_backend(self: Arc<Self>) {
        const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(5);
        loop {
            let changed = self.speeches().and_then(|s| match s.current().backend() {
                Backend::Remote(r) => Some(r.changed()),
                Backend::Local(_) => None,
            });
            let Some(mut changed) = changed else {
                tokio::time::sleep(LOOK_AGAIN).await;
                continue;
            };
            tokio::select! {
                result = changed.changed() => {
                    if result.is_err() {
                        // That model was replaced: follow the new one.
                        continue;
                    }
                    match self.reload_model(false).await {
                        Ok(Reloaded::Swapped { from, to }) => {
                            tracing::info!(%from, %to, "serving the version the generation server reports");
                        }
                        Ok(Reloaded::Unchanged { .. }) => {}
                        Err(error) => {
                            tracing::error!(%error, "the generation server's new model cannot be served; the old one stays");
                            tokio::time::sleep(LOOK_AGAIN).await;
                        }
                    }
                }
                () = tokio::time::sleep(LOOK_AGAIN) => {}
            }
        }
    }

    /// Serves the model the settings name now (`model.version = "current"` follows the
    /// versions directory) if it is not the one being served, or when `force` is set
    /// (settings such as the quantization changed). The old model finishes its running
    /// generations.
    pub async fn reload_model(&self, force: bool) -> Result<Reloaded, LiveError> {
        let _one = self.loading.lock().await;
        self.reload_locked(force).await
    }

    /// [`Live::reload_model`] with `loading` held.
    async fn reload_locked(&self, force: bool) -> Result<Reloaded, LiveError> {
        let speeches = self.speeches().ok_or(LiveError::NotReady)?;
        let config = self.config();
        let (wanted, remote) = match config.engine.backend {
            BackendKind::Local => {
                let options = config.engine_options();
                let wanted = blocking(move || {
                    model_version(&options).map_err(|e| LiveError::Load(e.to_string()))
                })
                .await?;
                (wanted, None)
            }
            BackendKind::Openai => {
                let settings = backend_settings(&config).await.map_err(LiveError::Load)?;
                let model = remote::probe(&settings)
                    .await
                    .map_err(|e| LiveError::Load(e.to_string()))?;
                (
                    remote::served_name(&model).to_string(),
                    Some((settings, model)),
                )
            }
        };
        let served = speeches.version();
        if wanted == served && !force {
            return Ok(Reloaded::Unchanged { version: served });
        }
        tracing::info!(version = %wanted, "loading a model version to serve");
        let (metrics, db) = (Arc::clone(&self.metrics), self.db.clone());
        let remote = remote
            .map(|(settings, model)| Remote::start(settings, model, Arc::clone(&self.metrics)));
        let model = blocking(move || {
            load_model(&config, metrics, db, remote).map_err(|f| LiveError::Load(f.message))
        })
        .await?;
        let to = model.version().to_string();
        let from = speeches.swap(model);
        tracing::info!(%from, %to, "now serving the new version");
        let purging = Arc::clone(&speeches);
        tokio::task::spawn_blocking(move || purging.purge_stale_cache());
        Ok(Reloaded::Swapped { from, to })
    }

    /// Makes `to` (or the accepted version before the current one) current, and serves it
    /// when the settings follow the current version. One at a time, and only once the first
    /// model is loaded, so two rollbacks never step back twice.
    pub async fn rollback(&self, to: Option<String>) -> Result<RolledBack, LiveError> {
        let _one = self.loading.lock().await;
        if self.speeches().is_none() {
            return Err(LiveError::NotReady);
        }
        let config = self.config();
        let dir = config.versions_dir();
        let (from, to) = blocking(move || set_current(&dir, to.as_deref())).await?;
        let note = pinned_note(&config);
        let served = self.reload_locked(false).await?;
        Ok(RolledBack {
            from,
            to,
            served: Some(served),
            note,
        })
    }

    /// Puts `new` in force. Returns the changed settings that only apply at the next start;
    /// the model is reloaded when its settings changed, and when that fails the settings in
    /// force stay.
    pub async fn replace_config(&self, new: Config) -> Result<Vec<String>, LiveError> {
        let old = self.config();
        let changed = changed_keys(&old, &new);
        let model_changed = changed
            .iter()
            .any(|k| (k.starts_with("model.") || k.starts_with("engine.")) && applies_live(k));
        let needs_restart: Vec<String> = changed
            .iter()
            .filter(|k| !applies_live(k))
            .cloned()
            .collect();
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new;
        if self.speeches().is_some()
            && let Err(e) = self.reload_model(model_changed).await
        {
            // The model the new settings name cannot be served: keep the old settings whole.
            *self.config.write().unwrap_or_else(|p| p.into_inner()) = old;
            return Err(e);
        }
        Ok(needs_restart)
    }
}

/// Settings read afresh each time they are used: the nightly run's (its child processes
/// get the settings in force), and the model's (reloaded on change). `engine.threads` sizes
/// a pool that exists once per process; `nightly.keep_runs` is read when the records open;
/// `corpus.speakers` holds the voices the front ends offer, fixed at start.
fn applies_live(key: &str) -> bool {
    const AT_START: [&str; 3] = ["engine.threads", "nightly.keep_runs", "corpus.speakers"];
    let live_sections = [
        "nightly.",
        "training.",
        "scrape.",
        "http.",
        "corpus.",
        "cleaning.",
        "model.",
        "engine.",
    ];
    !AT_START.contains(&key) && live_sections.iter().any(|s| key.starts_with(s))
}

/// `section.key` of every setting that differs.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let table = |c: &Config| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (old, new) = (table(old), table(new));
    let mut out = Vec::new();
    for (section, value) in &new {
        match (value, old.get(section)) {
            (toml::Value::Table(n), Some(toml::Value::Table(o))) => {
                for (key, v) in n {
                    if o.get(key) != Some(v) {
                        out.push(format!("{section}.{key}"));
                    }
                }
            }
            (v, o) if o != Some(v) => out.push(section.clone()),
            _ => {}
        }
    }
    out
}

/// Why a rollback does not change what is served, when `model.version` pins a version.
fn pinned_note(config: &Config) -> Option<String> {
    (config.model.version != "current").then(|| {
        format!(
            "model.version = \"{}\" pins what is served; set it to \"current\" to serve the current version",
            config.model.version
        )
    })
}

/// Makes `to` (default: the newest accepted version older than the current one) the
/// current version of `dir`. Returns (previous current, new current).
pub fn set_current(dir: &Path, to: Option<&str>) -> Result<(Option<String>, String), LiveError> {
    let failed = |e| LiveError::of_versions(dir, e);
    let versions = Versions::open(dir).map_err(failed)?;
    let current = versions.current().map_err(failed)?;
    let from = current.as_ref().map(|v| v.id.clone());
    let to = match to {
        Some(id) => versions.get(id).map_err(failed)?.id,
        None => {
            let current = from.as_deref().ok_or_else(|| {
                LiveError::BadVersion(format!(
                    "no version is current in {}: nothing to roll back",
                    dir.display()
                ))
            })?;
            versions
                .list()
                .map_err(failed)?
                .into_iter()
                .filter(|v| v.status == Status::Accepted && v.id.as_str() < current)
                .map(|v| v.id)
                .max()
                .ok_or_else(|| {
                    LiveError::BadVersion(format!(
                        "{current} is the oldest accepted version: there is none to roll back to"
                    ))
                })?
        }
    };
    versions.set_current(&to).map_err(failed)?;
    tracing::info!(from = ?from, to = %to, "current version changed");
    Ok((from, to))
}

/// Without a running daemon: changes the current version on disk only.
pub fn rollback_offline(config: &Config, to: Option<&str>) -> Result<RolledBack, LiveError> {
    let (from, to) = set_current(&config.versions_dir(), to)?;
    Ok(RolledBack {
        from,
        to,
        served: None,
        note: pinned_note(config),
    })
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LiveError> + Send + 'static,
) -> Result<T, LiveError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LiveError::Failed(format!("the work stopped: {e}")))?
}

/// The `openai` backend's settings, its API key file read off the async runtime.
pub async fn backend_settings(config: &Config) -> Result<remote::Settings, String> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || config.backend_settings())
        .await
        .map_err(|e| format!("reading the backend settings stopped: {e}"))?
}

/// The first model of the `openai` backend: the settings' server, asked until it answers
/// with its model (a server that is down is waited for, as a local model loads; one that
/// serves another model is refused).
async fn first_remote(config: &Config, metrics: Arc<Metrics>) -> Result<Remote, Failure> {
    let settings = backend_settings(config).await.map_err(Failure::usage)?;
    let mut failures = 0u32;
    loop {
        match remote::probe(&settings).await {
            Ok(model) => {
                tracing::info!(url = %settings.address(), %model, "the generation server answers");
                return Ok(Remote::start(settings, model, metrics));
            }
            Err(wrong @ ProbeError::WrongModel { .. }) => {
                return Err(Failure::usage(wrong.to_string()));
            }
            Err(down) => {
                failures += 1;
                let wait = std::time::Duration::from_secs(1u64 << (failures - 1).min(5));
                tracing::warn!(error = %down, retry_in_s = wait.as_secs(), "waiting for the generation server");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Loads the model the settings name (or serves `remote`'s), with its worker and its part
/// of the cache.
fn load_model(
    config: &Config,
    metrics: Arc<Metrics>,
    db: sled::Db,
    remote: Option<Remote>,
) -> Result<Model, Failure> {
    let (backend, version) = match remote {
        Some(remote) => {
            let version = remote.version().to_string();
            (Backend::Remote(remote), version)
        }
        None => {
            let options = config.engine_options();
            let engine = Engine::load(&options)?;
            let version = model_version(&options)?;
            let generator = Generator::start(Arc::new(engine), config.queue.clone(), metrics)
                .map_err(|e| Failure {
                    exit: Exit::Internal,
                    message: format!("cannot start the generation thread: {e}"),
                })?;
            (Backend::Local(generator), version)
        }
    };
    let cache = if config.cache.enabled {
        match PromptCache::new(db, config.cache.clone(), &version) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(error = %e, "the prompt cache is unavailable; serving without it");
                None
            }
        }
    } else {
        None
    };
    Ok(Model::new(backend, cache, version))
}

/// Loads the model (or takes `remote`'s) and wires the service around it.
fn build(
    config: &Config,
    metrics: Arc<Metrics>,
    db: sled::Db,
    store: Store,
    remote: Option<Remote>,
) -> Result<Speeches, Failure> {
    let model = load_model(config, Arc::clone(&metrics), db.clone(), remote)?;
    let limits_tree = db.open_tree("limits").map_err(|e| Failure {
        exit: Exit::Internal,
        message: format!("the state store cannot hold user limits: {e}"),
    })?;
    let limits = Limits::new(config.limits.clone(), limits_tree, store.clone());
    let bounds = RequestBounds {
        max_topic_chars: config.serve.max_topic_chars,
        max_new_tokens: config.serve.max_new_tokens,
        max_temperature: config.serve.max_temperature,
    };
    let voices = config.voices().map_err(|message| Failure {
        exit: Exit::Usage,
        message,
    })?;
    Ok(Speeches::new(model, limits, store, metrics, bounds, voices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_settings_are_named_and_sorted_into_live_and_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.nightly.at = "07:00".into();
        new.serve.listen = "127.0.0.1:9000".into();
        new.engine.threads = 1;
        let changed = changed_keys(&old, &new);
        assert_eq!(changed.len(), 3, "{changed:?}");
        let restart: Vec<&String> = changed.iter().filter(|k| !applies_live(k)).collect();
        assert_eq!(restart, ["engine.threads", "serve.listen"]);
    }
}
