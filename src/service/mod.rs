//! The daemon's core, shared by every front end (web page, HTTP API, bots): topic checks,
//! per-user limits, the prompt cache and the generation worker, behind one call,
//! [`Speeches::ask`].
//!
//! - [`queue`]: the worker thread, its bounded queue and continuous batching.
//! - [`cache`]: the sled prompt cache.
//! - [`limits`]: allow/block lists, one request in flight, rate and daily quota.
//! - [`metrics`]: what `/metrics` exports.
//! - [`topic`]: what a topic may contain.

pub mod cache;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod store;
pub mod topic;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::engine::{Generation, SamplingParams, StopReason};
use cache::PromptCache;
use limits::{Limits, Refusal, Slot};
use metrics::Metrics;
use queue::{Busy, Event, Generator};

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
    pub params: SamplingParams,
}

/// How a request is answered.
pub enum Answer {
    /// From the cache, whole.
    Cached { topic: String, text: String },
    /// Being written: deltas, then `Done` or `Failed`.
    Streaming {
        topic: String,
        events: UnboundedReceiver<Event>,
    },
}

/// Why a request was not taken, each with a message a person can act on.
#[derive(Debug)]
pub enum Rejection {
    Invalid(String),
    Refused(Refusal),
    Busy(Busy),
}

/// Bounds on what a request may ask for, from `[serve]`.
#[derive(Debug, Clone)]
pub struct RequestBounds {
    pub max_topic_chars: usize,
    pub max_new_tokens: usize,
    pub max_temperature: f64,
}

/// Everything a front end needs to answer a request.
pub struct Speeches {
    generator: Generator,
    cache: Option<PromptCache>,
    limits: Limits,
    metrics: Arc<Metrics>,
    version: String,
    bounds: RequestBounds,
}

impl Speeches {
    /// Wires the parts together; `cache` is `None` when it is turned off or unusable.
    pub fn new(
        generator: Generator,
        cache: Option<PromptCache>,
        limits: Limits,
        metrics: Arc<Metrics>,
        version: String,
        bounds: RequestBounds,
    ) -> Self {
        *metrics
            .model_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = version.clone();
        let speeches = Self {
            generator,
            cache,
            limits,
            metrics,
            version,
            bounds,
        };
        speeches.refresh_gauges();
        speeches
    }

    /// The model version every answer comes from.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// True for users exempt from the limits, who may also see the daemon's status.
    pub fn is_admin(&self, user: &str) -> bool {
        self.limits.is_admin(user)
    }

    /// The prompt cache, when there is one.
    pub fn cache(&self) -> Option<&PromptCache> {
        self.cache.as_ref()
    }

    /// Checks, limits, then answers from the cache or starts a generation.
    pub fn ask(self: &Arc<Self>, request: Request) -> Result<Answer, Rejection> {
        let started = Instant::now();
        let frontend = request.frontend;
        let result = self.ask_inner(request, started);
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

    fn ask_inner(
        self: &Arc<Self>,
        request: Request,
        started: Instant,
    ) -> Result<Answer, Rejection> {
        let topic = topic::clean(&request.topic, self.bounds.max_topic_chars)
            .map_err(Rejection::Invalid)?;
        self.check_params(&request.params)
            .map_err(Rejection::Invalid)?;
        let slot = self
            .limits
            .admit(&request.user, now_ms())
            .map_err(Rejection::Refused)?;
        let key = self.cache.as_ref().map(|c| c.key(&topic, &request.params));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(text) = cache.lookup(key, &request.params) {
                self.metrics.cache_hits.inc();
                let seconds = started.elapsed().as_secs_f64();
                self.metrics.time_to_first_token.observe(seconds);
                self.metrics
                    .record_request(request.frontend, "cached", seconds);
                return Ok(Answer::Cached { topic, text });
            }
            self.metrics.cache_misses.inc();
        }
        let worker_events = self
            .generator
            .submit(topic.clone(), request.params.clone())
            .map_err(Rejection::Busy)?;
        let (tx, events) = unbounded_channel();
        let this = Arc::clone(self);
        let params = request.params;
        let frontend = request.frontend;
        tokio::spawn(async move {
            this.relay(worker_events, tx, slot, key, params, frontend, started)
                .await;
        });
        Ok(Answer::Streaming { topic, events })
    }

    /// Passes the worker's events to the caller, stores the finished speech and counts the
    /// outcome. A caller that goes away drops the worker's channel, which cancels the work.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        mut from_worker: UnboundedReceiver<Event>,
        to_caller: tokio::sync::mpsc::UnboundedSender<Event>,
        slot: Slot,
        key: Option<Vec<u8>>,
        params: SamplingParams,
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
            let outcome = match &event {
                Event::Delta(_) => None,
                Event::Done(generation) => {
                    self.keep(key.as_deref(), &params, generation);
                    Some(if generation.stop_reason == StopReason::Cancelled {
                        "cancelled"
                    } else {
                        "ok"
                    })
                }
                Event::Failed(_) => Some("error"),
            };
            let sent = to_caller.send(event).is_ok();
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

    /// Stores a complete speech in the cache (never a cancelled one).
    fn keep(&self, key: Option<&[u8]>, params: &SamplingParams, generation: &Generation) {
        if generation.stop_reason == StopReason::Cancelled {
            return;
        }
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.store(key, params, &generation.text);
            self.refresh_gauges();
        }
    }

    /// Copies the queue depth, the batch size and the cache's size into the metrics.
    pub fn refresh_gauges(&self) {
        self.metrics
            .queue_depth
            .set(self.generator.queue_depth() as f64);
        self.metrics
            .batch_size
            .set(self.generator.batch_size() as f64);
        if let Some(cache) = &self.cache {
            let stats = cache.stats();
            self.metrics.cache_entries.set(stats.entries as f64);
            self.metrics.cache_bytes.set(stats.bytes as f64);
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

    /// Finishes the running generations (up to the grace period) and flushes the cache.
    pub async fn shut_down(&self) {
        self.generator.shut_down().await;
        if let Some(cache) = &self.cache {
            match cache.flush() {
                Ok(()) => tracing::info!("prompt cache flushed"),
                Err(e) => tracing::error!(error = %e, "the prompt cache could not be flushed"),
            }
        }
    }
}

/// The message a person reads for a rejection.
impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Invalid(message) => write!(f, "{message}"),
            Rejection::Busy(busy) => write!(
                f,
                "the server is busy writing other speeches; try again in about {} s",
                busy.retry_after_s
            ),
            Rejection::Refused(Refusal::NotAllowed) => {
                write!(f, "you are not allowed to ask this server for speeches")
            }
            Rejection::Refused(Refusal::InFlight) => write!(
                f,
                "your previous speech is still being written; wait for it to finish"
            ),
            Rejection::Refused(Refusal::RateLimited { retry_after_s }) => write!(
                f,
                "too many requests in the last minute; try again in {retry_after_s} s"
            ),
            Rejection::Refused(Refusal::QuotaExhausted { resets_in_s }) => write!(
                f,
                "you have used today's quota of speeches; it resets in {} h {} min (midnight UTC)",
                resets_in_s / 3600,
                resets_in_s % 3600 / 60
            ),
        }
    }
}

/// Milliseconds since the Unix epoch, the clock of the cache and the limits.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
