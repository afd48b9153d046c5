//! The daemon's core, shared by every front end (web page, HTTP API, bots): topic checks,
//! per-user limits, the prompt cache and the generation worker, behind one call,
//! [`Speeches::ask`].
//!
//! - [`backend`]: where a model's speeches are written: [`queue`], the worker thread with
//!   its bounded queue and continuous batching, or [`remote`], an OpenAI-compatible server.
//! - [`cache`]: the sled prompt cache.
//! - [`limits`]: allow/block lists, one request in flight, rate and daily quota.
//! - [`metrics`]: what `/metrics` exports.
//! - [`topic`]: what a topic may contain.

pub mod backend;
pub mod cache;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod remote;
pub mod store;
pub mod topic;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use backend::Backend;
use cache::PromptCache;
use limits::{Limits, Refusal, Slot};
use mananera_engine::{SamplingParams, StopReason};
use metrics::Metrics;
use queue::{Busy, Event};
use store::Store;

use crate::voices::{UnknownVoice, Voices};

/// Below this, sampling divides by almost nothing and the scores overflow.
const MIN_TEMPERATURE: f64 = 0.01;

/// One person's request, from any front end.
#[derive(Debug, Clone)]
pub struct Request {
    /// `web`, `api`, `discord`, `telegram`: for metrics.
    pub frontend: &'static str,
    /// `<front end>:<id>`, for the limits.
    pub user: String,
    /// As typed; checked and normalised by [`topic::clean`].
    pub topic: String,
    /// The voice asked for (a `voice` of `[[corpus.speakers]]`); `None`: `generation.voice`.
    pub voice: Option<String>,
    pub params: SamplingParams,
}

/// How a request is answered, and by which model version and voice.
pub enum Answer {
    /// From the cache, whole.
    Cached {
        topic: String,
        text: String,
        version: String,
        voice: String,
    },
    /// Being written: deltas, then `Done` or `Failed`.
    Streaming {
        topic: String,
        events: UnboundedReceiver<Event>,
        version: String,
        voice: String,
    },
}

/// Why a request was not taken; [`crate::texts`] says it to a person, in their language.
#[derive(Debug)]
pub enum Rejection {
    Invalid(Invalid),
    Refused(Refusal),
    Busy(Busy),
}

/// What is wrong with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Invalid {
    Topic(topic::Problem),
    Voice(UnknownVoice),
    /// A sampling setting out of bounds (only the API sets them): the English sentence.
    Settings(String),
}

/// Bounds on what a request may ask for, from `[serve]`.
#[derive(Debug, Clone)]
pub struct RequestBounds {
    pub max_topic_chars: usize,
    pub max_new_tokens: usize,
    pub max_temperature: f64,
}

/// One loaded model version with its generation worker (or server) and its part of the
/// prompt cache: the unit that is swapped when a new version is served.
pub struct Model {
    generator: Backend,
    cache: Option<Arc<PromptCache>>,
    version: String,
}

impl Model {
    /// `cache` is `None` when it is turned off or unusable.
    pub fn new(generator: Backend, cache: Option<PromptCache>, version: String) -> Self {
        Self {
            generator,
            cache: cache.map(Arc::new),
            version,
        }
    }

    /// The version this model's answers report (and its cache keys carry).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where its speeches are written.
    pub fn backend(&self) -> &Backend {
        &self.generator
    }
}

/// How often a replaced model is checked for having finished its last generations.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// Everything a front end needs to answer a request.
pub struct Speeches {
    /// The model new requests go to; requests already running keep the one they started on.
    model: RwLock<Arc<Model>>,
    /// Replaced models still finishing their generations.
    draining: Mutex<Vec<Arc<Model>>>,
    limits: Limits,
    /// The thread every cache read and write goes through.
    store: Store,
    metrics: Arc<Metrics>,
    bounds: RequestBounds,
    voices: Voices,
}

impl Speeches {
    /// Wires the parts together.
    pub fn new(
        model: Model,
        limits: Limits,
        store: Store,
        metrics: Arc<Metrics>,
        bounds: RequestBounds,
        voices: Voices,
    ) -> Self {
        metrics.set_model_version(&model.version);
        let speeches = Self {
            model: RwLock::new(Arc::new(model)),
            draining: Mutex::new(Vec::new()),
            limits,
            store,
            metrics,
            bounds,
            voices,
        };
        speeches.refresh_gauges();
        speeches
    }

    /// The model new requests go to.
    fn model(&self) -> Arc<Model> {
        Arc::clone(&self.model.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The model version new requests are answered by.
    pub fn version(&self) -> String {
        self.model().version.clone()
    }

    /// The model new requests go to (to follow its generation server).
    pub fn current(&self) -> Arc<Model> {
        self.model()
    }

    /// Why new requests cannot be answered now (a generation server that is down), and in
    /// how many seconds they are tried again: `/readyz` says it.
    pub fn unavailable(&self) -> Option<(String, u64)> {
        self.model().generator.unavailable()
    }

    /// Serves `model` to every new request from now on. Generations already running (or
    /// queued) finish on the model they started on, whose worker then stops and whose memory
    /// is freed; the cache keys move with the version, so no answer of the old one is served.
    /// Returns the version that was replaced.
    pub fn swap(self: &Arc<Self>, model: Model) -> String {
        let new_version = model.version.clone();
        let old = std::mem::replace(
            &mut *self.model.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(model),
        );
        self.metrics.set_model_version(&new_version);
        self.metrics.model_swaps.inc();
        let old_version = old.version.clone();
        tracing::info!(from = %old_version, to = %new_version, "now serving a new model version");
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&old));
        let this = Arc::clone(self);
        tokio::spawn(mananera_health::timed("drain-old-model", async move {
            let running = old.generator.batch_size() + old.generator.queue_depth();
            old.generator.close();
            while !old.generator.is_stopped() {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            this.draining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|m| !Arc::ptr_eq(m, &old));
            tracing::info!(version = %old.version, running_at_swap = running, "the replaced model finished its last speeches");
        }));
        old_version
    }

    /// True for users exempt from the limits, who may also see the daemon's status.
    pub fn is_admin(&self, user: &str) -> bool {
        self.limits.is_admin(user)
    }

    /// Removes cache entries that are expired or belong to other model versions. A full scan
    /// of the cache: call it off the async runtime.
    pub fn purge_stale_cache(&self) {
        if let Some(cache) = &self.model().cache {
            cache.purge_stale();
        }
    }

    /// Checks, limits, then answers from the cache or starts a generation. Never waits on
    /// the disk longer than the store's deadline (a store that does not answer is a miss).
    pub async fn ask(self: &Arc<Self>, request: Request) -> Result<Answer, Rejection> {
        let started = Instant::now();
        let frontend = request.frontend;
        let result = self.ask_inner(request, started).await;
        if let Err(rejection) = &result {
            let outcome = match rejection {
                Rejection::Invalid(_) => "invalid",
                Rejection::Busy(_) => "busy",
                Rejection::Refused(Refusal::NotAllowed) => "not_allowed",
                Rejection::Refused(Refusal::InFlight) => "in_flight",
                Rejection::Refused(Refusal::RateLimited { .. }) => "rate_limited",
                Rejection::Refused(Refusal::QuotaExhausted { .. }) => "quota",
            };
            self.metrics
                .record_request(frontend, outcome, started.elapsed().as_secs_f64());
        }
        result
    }

    async fn ask_inner(
        self: &Arc<Self>,
        request: Request,
        started: Instant,
    ) -> Result<Answer, Rejection> {
        let voice = self
            .voices
            .choose(request.voice.as_deref())
            .map_err(|v| Rejection::Invalid(Invalid::Voice(v)))?;
        let topic = topic::clean(&request.topic, self.bounds.max_topic_chars)
            .map_err(|p| Rejection::Invalid(Invalid::Topic(p)))?;
        self.check_params(&request.params)
            .map_err(|e| Rejection::Invalid(Invalid::Settings(e)))?;
        let slot = self
            .limits
            .admit(&request.user, now_ms())
            .map_err(Rejection::Refused)?;
        let mut model = self.model();
        let (worker_events, key) = loop {
            let key = model
                .cache
                .as_ref()
                .map(|c| c.key(&voice.id, &topic, &request.params));
            if let (Some(cache), Some(key)) = (&model.cache, &key)
                && let Some(text) = self.look_up(cache, key, &request.params).await
            {
                self.metrics.cache_hits.inc();
                let seconds = started.elapsed().as_secs_f64();
                self.metrics.time_to_first_token.observe(seconds);
                self.metrics
                    .record_request(request.frontend, "cached", seconds);
                return Ok(Answer::Cached {
                    topic,
                    text,
                    version: model.version.clone(),
                    voice: voice.id.clone(),
                });
            }
            match model
                .generator
                .submit(&voice.header, &topic, &request.params)
            {
                Ok(events) => break (events, key),
                // Replaced between the look-up and the submit: the new model takes it.
                Err(_) if model.generator.is_closed() && !Arc::ptr_eq(&model, &self.model()) => {
                    model = self.model();
                }
                Err(busy) => return Err(Rejection::Busy(busy)),
            }
        };
        if key.is_some() {
            self.metrics.cache_misses.inc();
        }
        let version = model.version.clone();
        let (tx, events) = unbounded_channel();
        let this = Arc::clone(self);
        let params = request.params;
        let frontend = request.frontend;
        tokio::spawn(mananera_health::timed("relay", async move {
            let stored = Stored { model, key, params };
            this.relay(worker_events, tx, slot, stored, frontend, started)
                .await;
        }));
        Ok(Answer::Streaming {
            topic,
            events,
            version,
            voice: voice.id.clone(),
        })
    }

    /// Passes the worker's events to the caller, stores the finished speech and counts the
    /// outcome. A caller that goes away drops the worker's channel, which cancels the work.
    async fn relay(
        &self,
        mut from_worker: UnboundedReceiver<Event>,
        to_caller: tokio::sync::mpsc::UnboundedSender<Event>,
        slot: Slot,
        stored: Stored,
        frontend: &'static str,
        started: Instant,
    ) {
        let mut first = true;
        let outcome = loop {
            let event = tokio::select! {
                event = from_worker.recv() => event,
                () = to_caller.closed() => break "cancelled",
            };
            let Some(event) = event else {
                break "error";
            };
            if first {
                first = false;
                self.metrics
                    .time_to_first_token
                    .observe(started.elapsed().as_secs_f64());
            }
            // The speech reaches the caller first; storing it comes after.
            let (outcome, keep) = match &event {
                Event::Delta(_) => (None, None),
                Event::Done(generation) if generation.stop_reason == StopReason::Cancelled => {
                    (Some("cancelled"), None)
                }
                Event::Done(generation) => (Some("ok"), Some(generation.text.clone())),
                Event::Failed(_) => (Some("error"), None),
            };
            let sent = to_caller.send(event).is_ok();
            if let Some(text) = keep {
                self.keep(stored, text);
                break "ok";
            }
            match (outcome, sent) {
                (Some(outcome), _) => break outcome,
                (None, false) => break "cancelled",
                (None, true) => {}
            }
        };
        drop(slot);
        self.metrics
            .record_request(frontend, outcome, started.elapsed().as_secs_f64());
    }

    /// A stored speech for `key`, read on the store's thread; `None` (a miss) when the
    /// store does not answer in time.
    async fn look_up(
        &self,
        cache: &Arc<PromptCache>,
        key: &[u8],
        params: &SamplingParams,
    ) -> Option<String> {
        let (cache, key, params) = (Arc::clone(cache), key.to_vec(), params.clone());
        self.store
            .call("cache_lookup", move || cache.lookup(&key, &params))
            .await
            .ok()
            .flatten()
    }

    /// Stores a complete speech in the cache of the model that wrote it, behind: queued on
    /// the store's thread.
    fn keep(&self, stored: Stored, text: String) {
        let Stored { model, key, params } = stored;
        let (Some(cache), Some(key)) = (model.cache.clone(), key) else {
            return;
        };
        let metrics = Arc::clone(&self.metrics);
        self.store.send("cache_store", move || {
            cache.store(&key, &params, &text);
            show_cache_size(&metrics, &cache);
        });
    }

    /// Copies the queue depth, the batch size (of every model still running, a replaced one
    /// included) and the cache's size into the metrics. Counters only: nothing is scanned.
    pub fn refresh_gauges(&self) {
        let model = self.model();
        let draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        let all = || std::iter::once(&model).chain(draining.iter());
        self.metrics
            .queue_depth
            .set(all().map(|m| m.generator.queue_depth()).sum::<usize>() as f64);
        self.metrics
            .batch_size
            .set(all().map(|m| m.generator.batch_size()).sum::<usize>() as f64);
        let up = model.generator.unavailable().is_none();
        self.metrics.backend_up.set(if up { 1.0 } else { 0.0 });
        if let Some(cache) = &model.cache {
            show_cache_size(&self.metrics, cache);
        }
    }

    fn check_params(&self, params: &SamplingParams) -> Result<(), String> {
        params.validate().map_err(|e| e.to_string())?;
        if params.max_new_tokens > self.bounds.max_new_tokens {
            return Err(format!(
                "max_new_tokens is {}, the limit is {} (serve.max_new_tokens)",
                params.max_new_tokens, self.bounds.max_new_tokens
            ));
        }
        if params.temperature > 0.0 && params.temperature < MIN_TEMPERATURE {
            return Err(format!(
                "temperature is {}: use 0 for the most likely words, or at least {MIN_TEMPERATURE}",
                params.temperature
            ));
        }
        if params.max_words > params.max_new_tokens.max(self.bounds.max_new_tokens) {
            return Err(format!(
                "max_words is {}, more than the tokens a speech may have ({}); use 0 for no word limit",
                params.max_words, self.bounds.max_new_tokens
            ));
        }
        if params.temperature > self.bounds.max_temperature {
            return Err(format!(
                "temperature is {}, the limit is {}: higher values only produce noise",
                params.temperature, self.bounds.max_temperature
            ));
        }
        if params.repetition_penalty > 10.0 {
            return Err(format!(
                "repetition_penalty is {}, use a value between 1 and 2",
                params.repetition_penalty
            ));
        }
        Ok(())
    }

    /// Finishes the running generations (up to the grace period, on every model still
    /// running) and flushes the cache.
    pub async fn shut_down(&self) {
        let model = self.model();
        let draining: Vec<Arc<Model>> = self
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let all = std::iter::once(&model).chain(draining.iter());
        futures_util::future::join_all(all.map(|m| m.generator.shut_down())).await;
        if let Some(cache) = model.cache.clone() {
            // Behind the speeches stored just before: the store runs its jobs in order.
            match self.store.call("cache_flush", move || cache.flush()).await {
                Ok(Ok(())) => tracing::info!("prompt cache flushed"),
                Ok(Err(e)) => tracing::error!(error = %e, "the prompt cache could not be flushed"),
                Err(e) => tracing::error!(error = %e, "the prompt cache could not be flushed"),
            }
        }
    }
}

/// Copies the cache's entry and byte counts into the metrics.
fn show_cache_size(metrics: &Metrics, cache: &PromptCache) {
    let stats = cache.stats();
    metrics.cache_entries.set(stats.entries as f64);
    metrics.cache_bytes.set(stats.bytes as f64);
}

/// What a finished speech is stored under: the model that wrote it, its cache key and
/// the settings it was written with.
struct Stored {
    model: Arc<Model>,
    key: Option<Vec<u8>>,
    params: SamplingParams,
}

/// Milliseconds since the Unix epoch, the clock of the cache and the limits.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
