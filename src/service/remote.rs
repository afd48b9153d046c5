//! The `openai` generation backend (`engine.backend = "openai"`): speeches written by an
//! OpenAI-compatible `/v1/completions` server — vLLM, Hugging Face TGI or llama.cpp's
//! `llama-server`, usually on a GPU — while this daemon keeps the bots, the queue and limits,
//! the cache and the nightly retrain.
//!
//! It answers like the local worker ([`super::queue::Generator`]): the same [`Event`]s, the
//! same word limit, a bounded queue in front of `engine.backend_max_concurrent` requests.
//! A server that does not answer, answers slowly, fails or sends garbage turns into
//! [`Busy`] answers (cause `Backend`) until a check of its `/v1/models` succeeds again, with
//! backoff; every call has a deadline. The prompt is sent as text: the voice's header
//! followed by the topic (the local engine tokenizes the two apart).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Semaphore, watch};

use super::metrics::Metrics;
use super::queue::{Busy, BusyCause, Event, Failure};
use mananera_engine::word_limit::{Verdict, WordLimit};
use mananera_engine::{Generation, SamplingParams, StopReason, Timings};

/// The longest wait between two checks of a server that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The most of an error body that is read (and logged).
const ERROR_BODY_BYTES: usize = 2000;

/// The server's base address from `engine.backend_url`: http(s), with a host; a trailing
/// `/v1` is accepted and dropped.
pub fn base_url(setting: &str) -> Result<Url, String> {
    let bad = |why: String| {
        format!(
            "engine.backend_url = \"{setting}\": {why}; give the server's http(s) address, e.g. \"http://127.0.0.1:8000\""
        )
    };
    let mut url = Url::parse(setting.trim()).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "the scheme is {}, not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host".into()));
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/v1").unwrap_or(path).to_string();
    url.set_path(&format!("{path}/"));
    url.set_query(None);
    Ok(url)
}

/// What the backend needs from the settings, read once per served model.
#[derive(Clone)]
pub struct Settings {
    base: Url,
    /// `engine.backend_model`.
    name: String,
    token: Option<String>,
    timeout: Duration,
    idle_timeout: Duration,
    max_concurrent: usize,
    poll: Duration,
    /// `queue.capacity`: requests waiting for one of the `max_concurrent` places.
    capacity: usize,
    /// `queue.grace_s`: how long requests sent may finish on shutdown.
    grace: Duration,
    /// `engine.max_context`: the repetition penalty's window (the whole context).
    max_context: usize,
    client: reqwest::Client,
}

/// What [`Settings`] are made of: `[engine]`'s `backend_*` settings and `[queue]`'s
/// (`Config::backend_settings` gathers them). Not `Debug`: it holds the API key.
#[derive(Clone)]
pub struct Options {
    pub url: String,
    pub model: String,
    pub token: Option<String>,
    pub connect_timeout_s: u64,
    pub timeout_s: u64,
    pub idle_timeout_s: u64,
    pub max_concurrent: usize,
    pub poll_s: u64,
    pub capacity: usize,
    pub grace_s: u64,
    pub max_context: usize,
}

impl Settings {
    /// Checks the address and sets up the HTTP client.
    pub fn new(o: Options) -> Result<Self, String> {
        let base = base_url(&o.url)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(o.connect_timeout_s))
            .user_agent(concat!("mananera/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the backend's HTTP client: {e}"))?;
        Ok(Self {
            base,
            name: o.model.trim().to_string(),
            token: o.token,
            timeout: Duration::from_secs(o.timeout_s),
            idle_timeout: Duration::from_secs(o.idle_timeout_s),
            max_concurrent: o.max_concurrent,
            poll: Duration::from_secs(o.poll_s),
            capacity: o.capacity,
            grace: Duration::from_secs(o.grace_s),
            max_context: o.max_context,
            client,
        })
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Where the server is, for logs and messages.
    pub fn address(&self) -> &str {
        self.base.as_str()
    }
}

/// Why the server cannot be used now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    /// It does not answer, answers with an error, or its answer is not `/v1/models`'.
    #[error("the generation server at {url} is unavailable: {why}")]
    Unavailable { url: String, why: String },
    /// It answers but serves no model of `engine.backend_model`'s name.
    #[error(
        "engine.backend_model = \"{name}\": the server at {url} serves {served}, none of them named \"{name}\" or \"{name}-<version>\"; set engine.backend_model to the name it serves, or serve the model under that name (--served-model-name, --alias)"
    )]
    WrongModel {
        url: String,
        name: String,
        served: String,
    },
}

/// Asks the server which models it serves, and picks the id requests go to: the model served
/// as `engine.backend_model`, or as `<name>-<version>` (the newest, when several are), its
/// [`served_name`] the served version that cache keys and answers carry.
pub async fn probe(settings: &Settings) -> Result<String, ProbeError> {
    let unavailable = |why: String| ProbeError::Unavailable {
        url: settings.address().to_string(),
        why,
    };
    let response = settings
        .request(reqwest::Method::GET, "v1/models")
        .timeout(settings.timeout)
        .send()
        .await
        .map_err(|e| unavailable(describe(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(unavailable(format!("GET /v1/models answered {status}")));
    }
    #[derive(Deserialize)]
    struct Models {
        data: Vec<ModelEntry>,
    }
    #[derive(Deserialize)]
    struct ModelEntry {
        id: String,
    }
    let models: Models = response
        .json()
        .await
        .map_err(|e| unavailable(format!("its /v1/models answer is not a model list ({e})")))?;
    let ids: Vec<String> = models.data.into_iter().map(|m| m.id).collect();
    choose(&settings.name, ids.iter().cloned()).ok_or_else(|| ProbeError::WrongModel {
        url: settings.address().to_string(),
        name: settings.name.clone(),
        served: if ids.is_empty() {
            "no model".into()
        } else {
            ids.join(", ")
        },
    })
}

/// The name a server lists a model under: its id, or, for an id that is the path the server
/// loaded (TGI, `llama-server` without `--alias`), that path's last part without `.gguf`.
pub fn served_name(id: &str) -> &str {
    let last = id.trim_end_matches('/').rsplit('/').next().unwrap_or(id);
    last.strip_suffix(".gguf").unwrap_or(last)
}

/// The id of `name`'s model among `ids`: the one served as `name` itself, else the greatest
/// served as `name-…`.
fn choose(name: &str, ids: impl Iterator<Item = String>) -> Option<String> {
    let prefix = format!("{name}-");
    let mut best: Option<String> = None;
    for id in ids {
        let served = served_name(&id);
        if served == name {
            return Some(id);
        }
        if served.starts_with(&prefix) && best.as_deref().is_none_or(|b| served > served_name(b)) {
            best = Some(id);
        }
    }
    best
}

/// A short English reason for a failed call.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }
}

/// Whether the server can take requests, as the last call or check found it.
#[derive(Debug, Default)]
struct Health {
    /// Set while it is down: the reason, and when to let requests try again.
    down: Option<(String, Instant)>,
    /// Checks that failed in a row (for the backoff).
    failures: u32,
    /// It asked us to wait (429 or 503 with `Retry-After`) until then.
    busy_until: Option<Instant>,
}

struct Inner {
    settings: Settings,
    /// The model id requests name (and this model's version).
    model: String,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    running: AtomicUsize,
    closed: AtomicBool,
    health: Mutex<Health>,
    /// The model id the server reports now, when it is not `model` (a new version).
    changed: watch::Sender<Option<String>>,
    tasks: tokio_util::task::TaskTracker,
    metrics: Arc<Metrics>,
}

/// The handle front ends submit requests through when the server writes the speeches.
pub struct Remote {
    inner: Arc<Inner>,
}

impl Remote {
    /// Serves `model` (an id [`probe`] found) through the server, and starts checking it
    /// every `engine.backend_poll_s`.
    pub fn start(settings: Settings, model: String, metrics: Arc<Metrics>) -> Self {
        let inner = Arc::new(Inner {
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            settings,
            model,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            changed: watch::channel(None).0,
            tasks: tokio_util::task::TaskTracker::new(),
            metrics,
        });
        let watched = Arc::downgrade(&inner);
        tokio::spawn(mananera_health::timed(
            "backend-check",
            watch_server(watched),
        ));
        Self { inner }
    }

    /// The version answers report and cache keys carry: the model's [`served_name`].
    pub fn version(&self) -> &str {
        served_name(&self.inner.model)
    }

    /// Resolves when the server reports a model id other than this one's (a new version was
    /// published to it), with that id.
    pub fn changed(&self) -> watch::Receiver<Option<String>> {
        self.inner.changed.subscribe()
    }

    /// Why requests are refused now, if they are: the reason and the seconds to wait.
    pub fn unavailable(&self) -> Option<(String, u64)> {
        let health = self.inner.health();
        let now = Instant::now();
        if let Some((why, until)) = &health.down {
            return Some((why.clone(), seconds_until(*until, now)));
        }
        health
            .busy_until
            .filter(|until| *until > now)
            .map(|until| ("it asked us to wait".to_string(), seconds_until(until, now)))
    }

    /// Queues a request, or answers at once that the server is down or busy, or that the
    /// queue is full.
    pub fn submit(
        &self,
        header: &str,
        prompt: &str,
        params: &SamplingParams,
    ) -> Result<UnboundedReceiver<Event>, Busy> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Busy::queue(60));
        }
        if let Some((_, retry_after_s)) = self.unavailable() {
            return Err(Busy {
                retry_after_s,
                cause: BusyCause::Backend,
            });
        }
        let waiting = inner.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= inner.settings.capacity + inner.permits.available_permits() {
            inner.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy::queue(30));
        }
        let (events, rx) = unbounded_channel();
        let seed = params.seed.unwrap_or_else(rand::random);
        let prompt = format!("{header}{prompt}");
        let body = completion_body(
            &inner.model,
            &prompt,
            params,
            seed,
            inner.settings.max_context,
        );
        let job = Job {
            body,
            params: params.clone(),
            seed,
            events,
            enqueued: Instant::now(),
        };
        let tasks = inner.tasks.clone();
        let inner = Arc::clone(inner);
        let task = tasks.track_future(async move {
            let permit = tokio::select! {
                permit = Arc::clone(&inner.permits).acquire_owned() => permit.ok(),
                () = job.events.closed() => None,
            };
            inner.waiting.fetch_sub(1, Ordering::SeqCst);
            let Some(_permit) = permit else {
                inner.metrics.cancelled_in_queue.inc();
                return;
            };
            inner
                .metrics
                .queue_wait
                .observe(job.enqueued.elapsed().as_secs_f64());
            inner.running.fetch_add(1, Ordering::SeqCst);
            let events = job.events.clone();
            let outcome = write(&inner, job).await;
            inner.running.fetch_sub(1, Ordering::SeqCst);
            if let Err(failure) = outcome {
                let _ = events.send(Event::Failed(failure));
            }
        });
        tokio::spawn(mananera_health::timed("backend-request", task));
        Ok(rx)
    }

    /// Requests waiting for one of the server's places.
    pub fn queue_depth(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Requests the server is writing.
    pub fn batch_size(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// Stops taking requests; those sent finish.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.tasks.close();
    }

    /// True once [`Remote::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// True once closed and every request sent has ended.
    pub fn is_stopped(&self) -> bool {
        self.is_closed() && self.inner.tasks.is_empty()
    }

    /// Closes, then waits up to `queue.grace_s` for the requests sent; the rest are
    /// abandoned, which closes their streams on the server.
    pub async fn shut_down(&self) {
        self.close();
        let grace = self.inner.settings.grace;
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "backend requests still running after the grace period: abandoning them"
            );
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the server down for `wait` (or the backoff), with `why` for the logs and
    /// `/readyz`. Returns the seconds until requests try again.
    fn mark_down(&self, why: String, wait: Option<Duration>) -> u64 {
        let mut health = self.health();
        health.failures = health.failures.saturating_add(1);
        let wait = wait.unwrap_or_else(|| backoff(health.failures));
        if health.down.is_none() {
            tracing::warn!(url = %self.settings.address(), reason = %why, retry_in_s = wait.as_secs(), "the generation server is unavailable");
        }
        health.down = Some((why, Instant::now() + wait));
        wait.as_secs().max(1)
    }

    fn mark_up(&self) {
        let mut health = self.health();
        if health.down.take().is_some() {
            tracing::info!(url = %self.settings.address(), "the generation server answers again");
        }
        health.failures = 0;
    }
}

/// 1, 2, 4 … seconds, at most a minute.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

fn seconds_until(until: Instant, now: Instant) -> u64 {
    until
        .saturating_duration_since(now)
        .as_secs_f64()
        .ceil()
        .max(1.0) as u64
}

/// Checks the server's `/v1/models` every `engine.backend_poll_s` while it answers, and
/// with backoff while it does not, until its model is closed.
async fn watch_server(inner: std::sync::Weak<Inner>) {
    loop {
        let wait = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.closed.load(Ordering::SeqCst) {
                return;
            }
            let health = inner.health();
            match health.down {
                Some(_) => backoff(health.failures),
                None => inner.settings.poll,
            }
        };
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        match probe(&inner.settings).await {
            Ok(model) if model == inner.model => inner.mark_up(),
            Ok(model) => {
                inner.mark_up();
                inner.changed.send_if_modified(|seen| {
                    let new = seen.as_deref() != Some(&model);
                    if new {
                        tracing::info!(from = %inner.model, to = %model, "the generation server serves another model version");
                        *seen = Some(model.clone());
                    }
                    new
                });
            }
            Err(e) => {
                inner.mark_down(e.to_string(), None);
            }
        }
    }
}

/// One request on its way to the server.
struct Job {
    body: serde_json::Value,
    params: SamplingParams,
    seed: u64,
    events: UnboundedSender<Event>,
    enqueued: Instant,
}

/// The `/v1/completions` request for `prompt`. Beyond OpenAI's fields it sends those vLLM
/// (`top_k`, `repetition_penalty`, `min_tokens`) and llama.cpp (`repeat_penalty`,
/// `repeat_last_n`) read; servers ignore the fields they do not know.
fn completion_body(
    model: &str,
    prompt: &str,
    params: &SamplingParams,
    seed: u64,
    context: usize,
) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_new_tokens,
        "min_tokens": params.min_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        // -1 turns the filter off in vLLM and llama.cpp alike (0 is vLLM's error in old versions).
        "top_k": if params.top_k == 0 { -1 } else { params.top_k as i64 },
        "repetition_penalty": params.repetition_penalty,
        "repeat_penalty": params.repetition_penalty,
        // Over the whole context, as the local engine penalizes (llama.cpp's default is 64;
        // its server refuses the -1 its command line takes).
        "repeat_last_n": context,
        // llama.cpp reads a 32-bit seed.
        "seed": seed & 0x7fff_ffff,
        "stream": true,
        "stream_options": { "include_usage": true },
    })
}

/// Sends `job` and streams the server's answer to its caller; an `Err` is what its caller is
/// told. A caller that goes away drops the stream, which cancels the request on the server.
async fn write(inner: &Inner, job: Job) -> Result<(), Failure> {
    let started = Instant::now();
    let settings = &inner.settings;
    let sent = settings
        .request(reqwest::Method::POST, "v1/completions")
        .json(&job.body)
        .send();
    let response = tokio::select! {
        response = tokio::time::timeout(settings.timeout, sent) => response,
        () = job.events.closed() => return Ok(()),
    };
    let mut response = match response {
        Err(_) => {
            let why = format!(
                "no answer in {} s (engine.backend_timeout_s)",
                settings.timeout.as_secs()
            );
            return Err(backend_failure(inner.mark_down(why, None)));
        }
        Ok(Err(e)) => return Err(backend_failure(inner.mark_down(describe(&e), None))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        return Err(refused(inner, status, response).await);
    }
    let mut stream = Stream::new(job.params.max_words);
    let stop = loop {
        let chunk = tokio::select! {
            chunk = tokio::time::timeout(settings.idle_timeout, response.chunk()) => chunk,
            () = job.events.closed() => break StopReason::Cancelled,
        };
        let bytes = match chunk {
            Err(_) => {
                let why = format!(
                    "its answer stalled for {} s (engine.backend_idle_timeout_s)",
                    settings.idle_timeout.as_secs()
                );
                return Err(backend_failure(inner.mark_down(why, None)));
            }
            Ok(Err(e)) => return Err(backend_failure(inner.mark_down(describe(&e), None))),
            Ok(Ok(None)) => match stream.finish {
                Some(stop) => break stop,
                None => {
                    let why = "its answer ended before the speech did".to_string();
                    return Err(backend_failure(inner.mark_down(why, None)));
                }
            },
            Ok(Ok(Some(bytes))) => bytes,
        };
        match stream.feed(&bytes) {
            Ok(deltas) => {
                for delta in deltas {
                    inner.metrics.generated_tokens.add(1.0);
                    if job.events.send(Event::Delta(delta)).is_err() {
                        stream.finish = Some(StopReason::Cancelled);
                    }
                }
            }
            Err(why) => {
                tracing::warn!(url = %settings.address(), reason = %why, "the generation server sent an answer that is not a completion stream");
                return Err(backend_failure(inner.mark_down(why, None)));
            }
        }
        if let Some(stop) = stream.finish.filter(|_| stream.done) {
            break stop;
        }
    };
    inner.mark_up();
    let elapsed = started.elapsed().as_secs_f64();
    let new_tokens = stream.usage.unwrap_or(stream.chunks);
    let generation = Generation {
        token_ids: Vec::new(),
        text: stream.text,
        stop_reason: stop,
        seed: job.seed,
        timings: Timings {
            prompt_tokens: 0,
            new_tokens,
            prefill_ms: 0.0,
            decode_ms: elapsed * 1000.0,
            prefill_tokens_per_s: 0.0,
            decode_tokens_per_s: new_tokens as f64 / elapsed.max(1e-9),
        },
    };
    let _ = job.events.send(Event::Done(generation));
    Ok(())
}

fn backend_failure(retry_after_s: u64) -> Failure {
    Failure::Backend { retry_after_s }
}

/// What a request the server answered with an error status becomes: a prompt it refuses
/// (400/413/422) is the prompt's fault; 429, and 503 with `Retry-After`, hold new requests
/// back for that long (5 s without the header); anything else marks the server down until a
/// check of `/v1/models` succeeds.
async fn refused(inner: &Inner, status: StatusCode, response: reqwest::Response) -> Failure {
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = tokio::time::timeout(inner.settings.timeout, response.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_BYTES)]).into_owned())
        .unwrap_or_default();
    let detail = error_message(&body);
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => {
            tracing::warn!(%status, detail = %detail, "the generation server refused a prompt");
            Failure::Prompt(format!("the generation server refused it: {detail}"))
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            if status == StatusCode::TOO_MANY_REQUESTS || retry_after.is_some() =>
        {
            let wait = retry_after.unwrap_or(Duration::from_secs(5));
            inner.health().busy_until = Some(Instant::now() + wait);
            tracing::warn!(%status, retry_after_s = wait.as_secs(), detail = %detail, "the generation server asks us to wait");
            backend_failure(wait.as_secs().max(1))
        }
        _ => {
            let why = format!("it answered {status}: {detail}");
            backend_failure(inner.mark_down(why, None))
        }
    }
}

/// The message of an OpenAI-style error body (`{"error": {"message": …}}` or
/// `{"error": "…"}`, TGI's), else the body itself, shortened.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .or_else(|| v["message"].as_str())
            .map(str::to_string)
    });
    let text = message.unwrap_or_else(|| body.trim().to_string());
    let mut short: String = text.chars().take(300).collect();
    if short.is_empty() {
        short = "no detail".into();
    }
    short
}

/// A completion stream being read: server-sent events, each `data:` a JSON chunk whose
/// `choices[0].text` is the next piece of the speech, then `data: [DONE]`.
struct Stream {
    buffer: Vec<u8>,
    text: String,
    limit: Option<WordLimit>,
    /// How the speech ended, once it has.
    finish: Option<StopReason>,
    /// `[DONE]` was read (or the word limit ended the speech): nothing more is wanted.
    done: bool,
    /// Chunks that carried text, and the server's own token count when it sends one.
    chunks: usize,
    usage: Option<usize>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    text: String,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    completion_tokens: usize,
}

impl Stream {
    fn new(max_words: usize) -> Self {
        Self {
            buffer: Vec::new(),
            text: String::new(),
            limit: WordLimit::new(max_words),
            finish: None,
            done: false,
            chunks: 0,
            usage: None,
        }
    }

    /// Takes the bytes that arrived; returns the text to pass on, or why the stream is not
    /// a completion stream.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut deltas = Vec::new();
        while let Some((end, skip)) = event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let event =
                std::str::from_utf8(&event).map_err(|_| "an event is not UTF-8".to_string())?;
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            let data = data.join("\n");
            if data.trim() == "[DONE]" {
                self.done = true;
                self.finish.get_or_insert(StopReason::MaxNewTokens);
                break;
            }
            if self.done {
                continue;
            }
            let chunk: Chunk = serde_json::from_str(&data)
                .map_err(|e| format!("an event's data is not a completion chunk ({e})"))?;
            if let Some(error) = chunk.error {
                return Err(format!("it reported an error mid-answer: {error}"));
            }
            if let Some(usage) = chunk.usage {
                self.usage = Some(usage.completion_tokens);
            }
            let Some(choice) = chunk.choices.into_iter().next() else {
                continue;
            };
            if self.finish.is_some() {
                continue;
            }
            if !choice.text.is_empty() {
                self.chunks += 1;
                if let Some(delta) = self.take(choice.text) {
                    deltas.push(delta);
                }
            }
            if self.finish.is_none()
                && let Some(reason) = choice.finish_reason
            {
                self.finish = Some(match reason.as_str() {
                    "length" => StopReason::MaxNewTokens,
                    _ => StopReason::Eos,
                });
            }
        }
        Ok(deltas)
    }

    /// Applies the word limit to the next piece; `None` when nothing of it is kept.
    fn take(&mut self, piece: String) -> Option<String> {
        let verdict = self
            .limit
            .as_ref()
            .map_or(Verdict::Continue, |l| l.judge(&self.text, &piece));
        let piece = match verdict {
            Verdict::Continue => piece,
            Verdict::StopAfter => {
                self.stop_at_limit();
                piece
            }
            Verdict::StopWithin(n) => {
                self.stop_at_limit();
                piece[..n].to_string()
            }
        };
        self.text.push_str(&piece);
        (!piece.is_empty()).then_some(piece)
    }

    fn stop_at_limit(&mut self) {
        self.finish = Some(StopReason::WordLimit);
        self.done = true;
    }
}

/// Where the first complete event in `buffer` ends, and the length of the blank line after it.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| (at, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str, finish: Option<&str>) -> String {
        let value =
            serde_json::json!({"choices": [{"text": text, "index": 0, "finish_reason": finish}]});
        format!("data: {value}\n\n")
    }

    #[test]
    fn events_split_across_reads_give_the_text_in_order() {
        let mut stream = Stream::new(0);
        let all = format!(
            ": keep-alive\n\n{}{}{}data: [DONE]\n\n",
            chunk("Buenos", None),
            chunk(" días, ñ", None),
            chunk("", Some("stop"))
        );
        let mut out = Vec::new();
        for piece in all.as_bytes().chunks(7) {
            out.extend(stream.feed(piece).unwrap());
        }
        assert_eq!(out.concat(), "Buenos días, ñ");
        assert_eq!(stream.finish, Some(StopReason::Eos));
        assert!(stream.done);
    }

    #[test]
    fn the_word_limit_cuts_the_stream_as_the_local_engine_does() {
        let mut stream = Stream::new(3);
        let mut out = Vec::new();
        for word in ["uno", " dos", " tres.", " cuatro", " cinco"] {
            out.extend(stream.feed(chunk(word, None).as_bytes()).unwrap());
        }
        assert_eq!(out.concat(), "uno dos tres.");
        assert_eq!(stream.finish, Some(StopReason::WordLimit));
    }

    #[test]
    fn garbage_and_mid_stream_errors_are_refused() {
        assert!(Stream::new(0).feed(b"data: {not json\n\n").is_err());
        let error = "data: {\"error\": {\"message\": \"out of memory\"}}\n\n";
        let err = Stream::new(0).feed(error.as_bytes()).unwrap_err();
        assert!(err.contains("out of memory"), "{err}");
    }

    #[test]
    fn backend_urls_must_be_http_with_a_host_and_may_end_in_v1() {
        assert_eq!(
            base_url("http://127.0.0.1:8000/v1").unwrap().as_str(),
            "http://127.0.0.1:8000/"
        );
        assert_eq!(
            base_url("https://gpu.example/llm/").unwrap().as_str(),
            "https://gpu.example/llm/"
        );
        for bad in ["", "ftp://x/", "127.0.0.1:8000", "unix:/run/x.sock"] {
            let e = base_url(bad).unwrap_err();
            assert!(e.contains("engine.backend_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_model_is_the_name_itself_or_its_newest_version() {
        let ids = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(
            choose("m", ids(&["x", "m-v0002", "m-v0010", "m-v0003"])),
            Some("m-v0010".into())
        );
        assert_eq!(choose("m", ids(&["m-v0002", "m"])), Some("m".into()));
        assert_eq!(choose("m", ids(&["mm", "other"])), None);
        // Servers that list the path they loaded.
        let tgi = ids(&["/srv/models/m-v0004", "/srv/models/m-v0003/"]);
        assert_eq!(choose("m", tgi), Some("/srv/models/m-v0004".into()));
        let llama = ids(&["/srv/publish/v0004/m-v0004.gguf"]);
        let id = choose("m", llama).unwrap();
        assert_eq!(served_name(&id), "m-v0004");
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let s: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
