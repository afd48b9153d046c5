//! The daemon's sled store (prompt cache, user limits, run records), opened so that a damaged
//! one never stops the daemon: it is moved aside with a warning and a new, empty one takes its
//! place; and [`Store`], the thread every sled call of the running daemon goes through.
//!
//! sled reports some damage and silently drops what it cannot read for the rest (it takes
//! unreadable log segments for torn writes). So a clean shutdown also records how many keys
//! the store holds (`<dir>.clean`); a store that opens with fewer is damaged too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mananera_health::Incident;

use super::metrics::Metrics;

/// The store could not be opened, even fresh.
#[derive(Debug, thiserror::Error)]
#[error("the state store at {}: {message}", dir.display())]
pub struct StoreError {
    dir: PathBuf,
    message: String,
}

/// Opens (or creates) the store in `dir`. One that cannot be read is renamed to
/// `<dir>.corrupt-<ms>` and replaced; one locked by another process is an error.
pub fn open(dir: &Path) -> Result<sled::Db, StoreError> {
    let fail = |message: String| StoreError {
        dir: dir.to_path_buf(),
        message,
    };
    let recorded = take_clean_marker(dir);
    match open_db(dir) {
        Ok(db) => match recorded {
            Some(expected) if key_count(&db) < expected => {
                let found = key_count(&db);
                drop(db);
                let problem = format!(
                    "it held {expected} keys at the last clean shutdown but {found} now (damaged files)"
                );
                move_aside(dir, &problem).map_err(fail)?;
                open_db(dir).map_err(fail)
            }
            _ => Ok(db),
        },
        Err(first) if first.contains("lock") => Err(fail(format!(
            "in use by another process ({first}); stop the running daemon or set serve.state_dir to another directory"
        ))),
        Err(first) => {
            move_aside(dir, &first).map_err(fail)?;
            open_db(dir).map_err(fail)
        }
    }
}

/// Flushes the store and records its size for the next start's check.
pub fn close(db: &sled::Db, dir: &Path) -> Result<(), String> {
    db.flush().map_err(|e| e.to_string())?;
    let count = key_count(db).to_string();
    mananera_model::fsio::write_atomic(&marker_path(dir), count.as_bytes())
        .map_err(|e| e.to_string())
}

/// Reads and removes the clean-shutdown record: a crash before the next clean shutdown must
/// not leave an old one behind.
fn take_clean_marker(dir: &Path) -> Option<usize> {
    let path = marker_path(dir);
    let count = std::fs::read_to_string(&path).ok()?.trim().parse().ok();
    let _ = std::fs::remove_file(&path);
    count
}

fn marker_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".clean");
    dir.with_file_name(name)
}

fn key_count(db: &sled::Db) -> usize {
    db.tree_names()
        .iter()
        .filter_map(|name| db.open_tree(name).ok())
        .map(|tree| tree.len())
        .sum()
}

fn move_aside(dir: &Path, problem: &str) -> Result<(), String> {
    let aside = aside_path(dir);
    tracing::warn!(
        dir = %dir.display(),
        moved_to = %aside.display(),
        problem,
        "the state store is unreadable: moving it aside and starting an empty one"
    );
    std::fs::rename(dir, &aside).map_err(|e| {
        format!("unreadable ({problem}) and cannot be moved aside ({e}); remove it by hand")
    })
}

/// Opens sled, turning its errors and its panics on damaged files into a message.
fn open_db(dir: &Path) -> Result<sled::Db, String> {
    let dir = dir.to_path_buf();
    let opened = std::panic::catch_unwind(move || sled::Config::new().path(dir).open());
    match opened {
        // Reading every tree once catches damage that opening alone does not.
        Ok(Ok(db)) => match db.checksum() {
            Ok(_) => Ok(db),
            Err(e) => Err(e.to_string()),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sled failed while reading it (damaged files)".into()),
    }
}

fn aside_path(dir: &Path) -> PathBuf {
    let ms = super::now_ms();
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{ms}"));
    dir.with_file_name(name)
}

/// The daemon's one way to sled while it serves: every read and write runs on a thread of
/// its own, so a sled call that stalls (sled 0.34 has open reports of threads parked for
/// good under concurrent reads and writes) holds that thread and never an async worker.
/// Callers that need an answer wait a bounded time ([`Store::call`]); writes nobody waits
/// for are queued ([`Store::send`]). sled flushes its log by itself every 500 ms; the daemon
/// flushes once more at shutdown.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// Shared with the thread, which holds nothing else of the store: once every `Store`
    /// is dropped the queue closes and the thread ends.
    busy: Arc<Busy>,
    metrics: Arc<Metrics>,
    /// Open while the store does not answer in time: logged once, not once per call.
    stalled: Incident,
}

type Job = Box<dyn FnOnce() + Send>;

/// When the job running now started.
struct Busy {
    /// Milliseconds since `epoch`; 0 when idle.
    since_ms: AtomicU64,
    epoch: Instant,
}

/// Jobs waiting at most; past it a write is dropped (and counted), a read answers "stalled".
const QUEUE: usize = 4096;
/// How long a caller waits for an answer.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// The store did not answer within [`DEADLINE`] (or its queue is full): the caller goes on
/// without it (a cache miss, an uncounted write).
#[derive(Debug, thiserror::Error)]
#[error("the state store did not answer within {} s", DEADLINE.as_secs())]
pub struct Stalled;

impl Store {
    /// Starts the store's thread.
    pub fn start(metrics: Arc<Metrics>) -> std::io::Result<Store> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let busy = Arc::new(Busy {
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let worker = Arc::clone(&busy);
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                for job in queue {
                    let now = worker.epoch.elapsed().as_millis() as u64;
                    worker.since_ms.store(now.max(1), Ordering::SeqCst);
                    // A panic in one job must not end the thread that runs them all.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    worker.since_ms.store(0, Ordering::SeqCst);
                }
            })?;
        let inner = Arc::new(Inner {
            jobs,
            busy,
            metrics,
            stalled: Incident::new("state_store", "the state store"),
        });
        Ok(Store { inner })
    }

    /// Runs `work` on the store's thread and returns its answer, or [`Stalled`] after
    /// [`DEADLINE`]. `op` names the work in metrics and logs.
    pub async fn call<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, Stalled> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        if self.inner.jobs.try_send(job).is_err() {
            self.stalled(op);
            return Err(Stalled);
        }
        match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(answer)) => {
                self.inner.stalled.resolved();
                Ok(answer)
            }
            _ => {
                self.stalled(op);
                Err(Stalled)
            }
        }
    }

    /// Queues `work` without waiting for it; false (counted) when the queue is full.
    pub fn send(&self, op: &'static str, work: impl FnOnce() + Send + 'static) -> bool {
        let queued = self.inner.jobs.try_send(Box::new(work)).is_ok();
        if !queued {
            self.stalled(op);
        }
        queued
    }

    /// Blocks until every job queued before this call has run, or `within` passed. For the
    /// shutdown and tests: never call it on the async runtime.
    pub fn drain(&self, within: Duration) -> Result<(), Stalled> {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(());
        });
        self.inner.jobs.try_send(job).map_err(|_| Stalled)?;
        rx.recv_timeout(within).map_err(|_| Stalled)
    }

    /// How long the job running now has been running, if one is.
    pub fn busy_for(&self) -> Option<Duration> {
        let busy = &self.inner.busy;
        let since = busy.since_ms.load(Ordering::SeqCst);
        (since > 0).then(|| {
            busy.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(since))
        })
    }

    fn stalled(&self, op: &'static str) {
        self.inner.metrics.health.store_timeouts.inc(op);
        self.inner.stalled.failed(&format!("{op} got no answer"));
    }
}
