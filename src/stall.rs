//! The stall watchdog: an OS thread of its own, outside the async runtime, that probes the
//! runtime every second by spawning a task that answers. A runtime that takes longer than
//! [`STALL_AFTER`] to run it is stalled (both worker threads held by something that blocks):
//! the watchdog logs which workers are stuck and what every thread is doing, counts it in
//! `/metrics`, turns `/healthz` to 503, and stops pinging systemd's watchdog, so that under
//! `WatchdogSec=` the service is restarted (with a core dump where `LimitCORE=` allows one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::runtime::Handle;

use crate::service::metrics::Metrics;
use crate::service::store::Store;

/// How often the runtime is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe unanswered this long is a stall.
pub const STALL_AFTER: Duration = Duration::from_secs(3);
/// `/healthz` reports a stall for this long after it ended.
const REMEMBER_STALL: Duration = Duration::from_secs(60);

/// What the watchdog found, for `/healthz`.
pub struct RuntimeHealth {
    stalled: AtomicBool,
    /// Milliseconds since `epoch` at the end of the last stall (0: none yet).
    last_stall_end_ms: AtomicU64,
    epoch: Instant,
}

impl RuntimeHealth {
    fn new() -> Self {
        Self {
            stalled: AtomicBool::new(false),
            last_stall_end_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// `None` when healthy; else why not, for `/healthz`.
    pub fn problem(&self) -> Option<String> {
        if self.stalled.load(Ordering::SeqCst) {
            return Some("the async runtime is stalled".into());
        }
        let end = self.last_stall_end_ms.load(Ordering::SeqCst);
        let ago = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(end));
        (end > 0 && ago < REMEMBER_STALL).then(|| {
            format!(
                "the async runtime was stalled {} s ago (see the log and mananera_runtime_stalls_total)",
                ago.as_secs()
            )
        })
    }
}

/// Starts the watchdog thread over the current runtime. It also pings systemd's watchdog
/// (at half `WatchdogSec=`) while the runtime answers.
pub fn spawn(metrics: Arc<Metrics>, store: Store) -> std::io::Result<Arc<RuntimeHealth>> {
    let handle = Handle::current();
    let health = Arc::new(RuntimeHealth::new());
    let shared = Arc::clone(&health);
    let systemd_every =
        sd_notify::watchdog_enabled().map(|i| (i / 2).max(Duration::from_millis(100)));
    if let Some(every) = systemd_every {
        tracing::info!(
            every_ms = every.as_millis() as u64,
            "pinging the service manager's watchdog while the runtime answers"
        );
    }
    std::thread::Builder::new()
        .name("stall-watchdog".into())
        .spawn(move || watch(&handle, &metrics, &store, &shared, systemd_every))?;
    Ok(health)
}

fn watch(
    handle: &Handle,
    metrics: &Metrics,
    store: &Store,
    health: &RuntimeHealth,
    systemd_every: Option<Duration>,
) {
    let mut last_ping: Option<Instant> = None;
    let probe_every = systemd_every.map_or(PROBE_EVERY, |e| e.min(PROBE_EVERY));
    loop {
        let sent = Instant::now();
        let before = Workers::now(handle);
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(Instant::now());
        });
        let answered = match rx.recv_timeout(STALL_AFTER) {
            Ok(at) => at,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return, // runtime gone
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                health.stalled.store(true, Ordering::SeqCst);
                metrics.health.runtime_stalls.inc();
                tracing::error!(
                    waited_ms = sent.elapsed().as_millis() as u64,
                    stuck_workers = ?before.stuck_since(&Workers::now(handle)),
                    alive_tasks = handle.metrics().num_alive_tasks(),
                    queued_tasks = handle.metrics().global_queue_depth(),
                    store_busy_ms = store.busy_for().map(|d| d.as_millis() as u64),
                    threads = %thread_states(),
                    "the async runtime did not answer: stalled (systemd's watchdog is no longer pinged)"
                );
                let Ok(at) = rx.recv() else { return };
                health.stalled.store(false, Ordering::SeqCst);
                let end = health.epoch.elapsed().as_millis() as u64;
                health.last_stall_end_ms.store(end.max(1), Ordering::SeqCst);
                tracing::warn!(
                    stalled_ms = (at - sent).as_millis() as u64,
                    "the async runtime answers again"
                );
                at
            }
        };
        let gap = (answered - sent).as_secs_f64();
        metrics.health.heartbeat_gap.set(gap);
        if gap > metrics.health.heartbeat_max_gap.get() {
            metrics.health.heartbeat_max_gap.set(gap);
        }
        if let Some(every) = systemd_every
            && last_ping.is_none_or(|at| at.elapsed() >= every)
        {
            if let Err(error) = sd_notify::notify(&[NotifyState::Watchdog]) {
                tracing::warn!(%error, "cannot ping the service manager's watchdog");
            }
            last_ping = Some(Instant::now());
        }
        std::thread::sleep(probe_every.saturating_sub(sent.elapsed()));
    }
}

/// Each worker's count of parks and unparks (stable tokio runtime metrics).
struct Workers(Vec<u64>);

impl Workers {
    fn now(handle: &Handle) -> Self {
        let m = handle.metrics();
        Self(
            (0..m.num_workers())
                .map(|w| m.worker_park_unpark_count(w))
                .collect(),
        )
    }

    /// The workers that neither parked nor woke since `self`: held in one poll.
    fn stuck_since(&self, later: &Workers) -> Vec<usize> {
        self.0
            .iter()
            .zip(&later.0)
            .enumerate()
            .filter_map(|(w, (a, b))| (a == b).then_some(w))
            .collect()
    }
}

/// Every thread of this process as `name:state:wchan`, for the stall's log line.
fn thread_states() -> String {
    threads("self")
        .iter()
        .map(|t| format!("{}:{}:{}", t.name, t.state, t.wchan))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One thread of a process, as /proc tells it.
pub struct ThreadState {
    pub tid: String,
    pub name: String,
    /// The state letter (`R` running, `S` sleeping, `D` in uninterruptible I/O…).
    pub state: String,
    /// Where it sleeps in the kernel.
    pub wchan: String,
}

/// Every thread of process `pid` (`"self"`: this one), from /proc; empty without /proc.
pub fn threads(pid: &str) -> Vec<ThreadState> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|task| {
            let path = task.path();
            let read = |name: &str| {
                std::fs::read_to_string(path.join(name))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            // `stat` is "tid (name) state …"; the name may hold spaces and parentheses.
            let state = read("stat")
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
                .unwrap_or_default();
            ThreadState {
                tid: task.file_name().to_string_lossy().into_owned(),
                name: read("comm"),
                state,
                wchan: read("wchan"),
            }
        })
        .collect()
}
