//! The generation worker: one engine on a dedicated thread, fed by a bounded queue, decoding
//! every admitted request together. A request that arrives while others decode joins the
//! running batch at the next step (continuous batching), so total throughput grows with
//! concurrency; the batch's linear layers read the weights once for all of its sequences.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::metrics::Metrics;
use mananera_engine::generate::Sequence;
use mananera_engine::{Engine, Error, Generation, Prompt, SamplingParams};

/// `[queue]`: how much work the worker takes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests decoded together at most.
    pub max_batch: usize,
    /// Requests waiting for a place in the batch at most; past it callers are told to retry.
    pub capacity: usize,
    /// On shutdown, how long running generations may take to finish before they are cancelled.
    pub grace_s: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            capacity: 32,
            grace_s: 30,
        }
    }
}

impl QueueConfig {
    /// Refuses settings the queue cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 {
            return Err("queue.max_batch = 0: at least 1 request must be able to run".into());
        }
        Ok(())
    }
}

/// What a request's caller receives, in order: deltas, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Delta(String),
    Done(Generation),
    Failed(Failure),
}

/// Why a speech could not be written ([`crate::texts`] says it to a person).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The daemon is stopping or replacing its worker: ask again in a minute.
    Restarting,
    /// The engine refused the prompt (too long for the context): the English detail.
    Prompt(String),
    /// The model failed while starting or writing it.
    Model,
    /// The worker writing it died (it is replaced): ask again.
    WorkerLost,
    /// The generation server (`engine.backend = "openai"`) failed, was too slow or is busy:
    /// ask again in about `retry_after_s` seconds.
    Backend { retry_after_s: u64 },
}

/// No request is taken now; try again in about `retry_after_s` seconds.
#[derive(Debug, Clone, Copy)]
pub struct Busy {
    pub retry_after_s: u64,
    pub cause: BusyCause,
}

/// Why a request is not taken: the people can tell a full queue from a server that is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyCause {
    /// Every place in the batch and the queue is taken, or the queue is closing.
    Queue,
    /// The generation server does not answer, or asked us to wait.
    Backend,
}

impl Busy {
    /// A full (or closed) queue.
    pub fn queue(retry_after_s: u64) -> Self {
        Self {
            retry_after_s,
            cause: BusyCause::Queue,
        }
    }
}

struct Job {
    /// The voice's header, before the prompt.
    header: String,
    prompt: String,
    params: SamplingParams,
    events: UnboundedSender<Event>,
    enqueued: Instant,
}

struct Shared {
    waiting: AtomicUsize,
    running: AtomicUsize,
    /// Set when the shutdown grace period is over: running generations are cancelled.
    abort: AtomicBool,
    /// Moving average of a request's time in the batch, for the busy estimate.
    mean_request_s: Mutex<f64>,
    config: QueueConfig,
    metrics: Arc<Metrics>,
}

/// The handle front ends submit requests through.
pub struct Generator {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Generator {
    /// Starts the worker thread around `engine`.
    pub fn start(
        engine: Arc<Engine>,
        config: QueueConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            mean_request_s: Mutex::new(10.0),
            config,
            metrics,
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("generation".into())
            .spawn(move || supervise(&engine, &worker_shared, &rx))?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues a request (`prompt` in the voice whose header is `header`), or answers at once
    /// that the queue is full (or closed).
    pub fn submit(
        &self,
        header: &str,
        prompt: String,
        params: SamplingParams,
    ) -> Result<UnboundedReceiver<Event>, Busy> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(jobs) = jobs.as_ref() else {
            return Err(Busy::queue(60));
        };
        let waiting = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let running = self.shared.running.load(Ordering::SeqCst);
        let free_in_batch = self.shared.config.max_batch.saturating_sub(running);
        if waiting >= self.shared.config.capacity + free_in_batch {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy::queue(self.estimate_wait_s(waiting + 1)));
        }
        let (events, rx) = unbounded_channel();
        let job = Job {
            header: header.to_string(),
            prompt,
            params,
            events,
            enqueued: Instant::now(),
        };
        if jobs.send(job).is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy::queue(60));
        }
        Ok(rx)
    }

    /// Seconds until `ahead` more requests have gone through the batch, roughly.
    fn estimate_wait_s(&self, ahead: usize) -> u64 {
        let mean = *self
            .shared
            .mean_request_s
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let rounds = ahead.div_ceil(self.shared.config.max_batch.max(1));
        (rounds as f64 * mean).ceil().max(1.0) as u64
    }

    /// Requests waiting for a place in the batch.
    pub fn queue_depth(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Requests in the running batch.
    pub fn batch_size(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Stops taking requests; the worker finishes the running and queued ones, then ends.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// True once [`Generator::close`] (or the shutdown) stopped it taking requests.
    pub fn is_closed(&self) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// True once the worker has ended (after [`Generator::close`] and the last generation).
    pub fn is_stopped(&self) -> bool {
        self.worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// Stops taking requests, lets the running and queued ones finish for up to the grace
    /// period, then cancels what is left (callers get a polite message) and joins the worker.
    pub async fn shut_down(&self) {
        self.close();
        let Some(worker) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let grace = std::time::Duration::from_secs(self.shared.config.grace_s);
        let mut join = tokio::task::spawn_blocking(move || worker.join());
        if tokio::time::timeout(grace, &mut join).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "generations still running after the grace period: cancelling them"
            );
            self.shared.abort.store(true, Ordering::SeqCst);
            let _ = join.await;
        }
    }
}

/// Runs the worker, and a new one in its place whenever one dies outside the model code's
/// own guard (its requests are told, see [`Worker`]'s `Drop`), until the queue is closed.
fn supervise(engine: &Arc<Engine>, shared: &Arc<Shared>, jobs: &mpsc::Receiver<Job>) {
    loop {
        let worker = Worker::new(Arc::clone(engine), Arc::clone(shared));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run(jobs)));
        match run {
            Ok(()) => return,
            Err(_) => {
                shared.metrics.health.generation_restarts.inc();
                shared.running.store(0, Ordering::SeqCst);
                tracing::error!("the generation worker died; a new one takes the queue");
            }
        }
    }
}

/// A request in the batch.
struct Running {
    seq: Sequence,
    job: Job,
}

struct Worker {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    batch: Vec<Running>,
}

impl Worker {
    fn new(engine: Arc<Engine>, shared: Arc<Shared>) -> Self {
        Self {
            engine,
            shared,
            batch: Vec::new(),
        }
    }

    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        let mut open = true;
        while open || !self.batch.is_empty() {
            // Admit new requests: wait for one when idle, else take what is already there.
            while open && self.batch.len() < self.shared.config.max_batch {
                let job = if self.batch.is_empty() {
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => {
                            open = false;
                            break;
                        }
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                self.admit(job);
            }
            if self.shared.abort.load(Ordering::SeqCst) {
                for r in self.batch.drain(..) {
                    let _ = r.job.events.send(Event::Failed(Failure::Restarting));
                }
                // Queued requests are answered the same way.
                while let Ok(job) = jobs.try_recv() {
                    self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    let _ = job.events.send(Event::Failed(Failure::Restarting));
                }
                continue;
            }
            self.step();
        }
    }

    /// Reads a new request's prompt and adds it to the batch.
    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            self.shared.metrics.cancelled_in_queue.inc();
            return;
        }
        self.shared
            .metrics
            .queue_wait
            .observe(job.enqueued.elapsed().as_secs_f64());
        let engine = &self.engine;
        let started = guarded(|| {
            engine
                .start(
                    Prompt {
                        header: &job.header,
                        text: &job.prompt,
                    },
                    &job.params,
                )
                .and_then(|mut seq| engine.prefill(&mut seq).map(|delta| (seq, delta)))
        });
        match started {
            Ok((seq, delta)) => {
                self.shared.metrics.generated_tokens.add(1.0);
                self.batch.push(Running { seq, job });
                // Counted before the caller sees its first text, so a request that follows
                // finds the batch as it is.
                self.shared
                    .running
                    .store(self.batch.len(), Ordering::SeqCst);
                if let Some(running) = self.batch.last_mut() {
                    send_delta(running, delta);
                }
                self.retire_finished();
            }
            Err(Error::InvalidInput(message)) => {
                let _ = job.events.send(Event::Failed(Failure::Prompt(message)));
            }
            Err(e) => {
                tracing::error!(error = %e, "a request could not start");
                let _ = job.events.send(Event::Failed(Failure::Model));
            }
        }
    }

    /// One token for every sequence in the batch.
    fn step(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // Lets a test kill the worker outside the model code's guard.
        crate::failpoint::hit("generation.step");
        for r in &mut self.batch {
            if r.job.events.is_closed() {
                r.seq.cancel();
            }
        }
        self.retire_finished();
        if self.batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut seqs: Vec<&mut Sequence> = self.batch.iter_mut().map(|r| &mut r.seq).collect();
        let engine = &self.engine;
        match guarded(|| engine.step(&mut seqs)) {
            Ok(deltas) => {
                let n = self.batch.len();
                self.shared
                    .metrics
                    .record_step(n, started.elapsed().as_secs_f64());
                for (r, delta) in self.batch.iter_mut().zip(deltas) {
                    send_delta(r, delta);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = self.batch.len(), "a decoding step failed");
                for r in self.batch.drain(..) {
                    let _ = r.job.events.send(Event::Failed(Failure::Model));
                }
            }
        }
        self.retire_finished();
    }

    /// Takes the finished sequences out of the batch, then sends their results (so a
    /// caller that has its result finds the batch without it).
    fn retire_finished(&mut self) {
        let (finished, running): (Vec<Running>, Vec<Running>) =
            self.batch.drain(..).partition(|r| r.seq.is_done());
        self.batch = running;
        self.shared
            .running
            .store(self.batch.len(), Ordering::SeqCst);
        for r in finished {
            let seconds = r.job.enqueued.elapsed().as_secs_f64();
            let generation = r.seq.finish();
            let mut mean = self
                .shared
                .mean_request_s
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *mean = 0.8 * *mean + 0.2 * seconds;
            drop(mean);
            let _ = r.job.events.send(Event::Done(generation));
        }
    }
}

impl Drop for Worker {
    /// A worker that dies tells the requests it was writing, so none waits for ever.
    fn drop(&mut self) {
        for r in self.batch.drain(..) {
            let _ = r.job.events.send(Event::Failed(Failure::WorkerLost));
        }
    }
}

/// Runs model code so that a panic in it fails the requests involved instead of killing
/// the worker (and with it every later request).
fn guarded<T>(work: impl FnOnce() -> mananera_engine::Result<T>) -> mananera_engine::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::Internal(format!("the model code panicked: {what}")))
    })
}

/// Streams a delta to its caller; a caller that went away cancels its sequence.
fn send_delta(r: &mut Running, delta: String) {
    if delta.is_empty() {
        return;
    }
    if r.job.events.send(Event::Delta(delta)).is_err() {
        r.seq.cancel();
    }
}
