//! Counters, gauges and histograms of the service, rendered in Prometheus' text format for
//! `/metrics`. Hand-written: a dozen series do not earn a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A value that only grows.
#[derive(Debug, Default)]
pub struct Counter(Mutex<f64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1.0);
    }

    pub fn add(&self, v: f64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += v;
    }

    pub fn get(&self) -> f64 {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters by one label's value.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    pub fn inc(&self, label: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label.to_string())
            .or_default() += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str) {
        for (value, n) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let value = value.replace(['"', '\\', '\n'], "_");
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

/// What `/metrics` shows of the daemon's own health: stalls of the async runtime, slow task
/// polls, a state store that does not answer, and generation workers that died.
#[derive(Debug, Default)]
pub struct HealthMetrics {
    /// Times the runtime did not answer the watchdog's probe in time.
    pub runtime_stalls: Counter,
    /// The longest and the latest time the runtime took to answer a probe.
    pub heartbeat_max_gap: Gauge,
    pub heartbeat_gap: Gauge,
    /// Polls of a task that held a worker thread over the slow-poll threshold, by task.
    pub slow_polls: LabeledCounter,
    /// Store calls that got no answer in time (or found its queue full), by operation.
    pub store_timeouts: LabeledCounter,
    /// Generation workers restarted after they died.
    pub generation_restarts: Counter,
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(Mutex<f64>);

impl Gauge {
    pub fn set(&self, v: f64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    pub fn get(&self) -> f64 {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Observations counted into fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<(Vec<u64>, f64, u64)>,
}

const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            bounds: SECONDS,
            state: Mutex::new((vec![0; SECONDS.len()], 0.0, 0)),
        }
    }
}

impl Histogram {
    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (count, &bound) in s.0.iter_mut().zip(self.bounds) {
            if v <= bound {
                *count += 1;
            }
        }
        s.1 += v;
        s.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let sep = if labels.is_empty() { "" } else { "," };
        for (count, bound) in s.0.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.2);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", s.1);
        let _ = writeln!(out, "{name}_count{braces} {}", s.2);
    }
}

/// Every series the daemon exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (front end, outcome).
    requests: Mutex<BTreeMap<(String, String), u64>>,
    /// Whole-request latency by front end.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Time to the first streamed text (or the cached answer).
    pub time_to_first_token: Histogram,
    pub queue_wait: Histogram,
    pub generated_tokens: Counter,
    pub decode_seconds: Counter,
    /// Tokens per second of the newest decoding step, over the whole batch.
    pub tokens_per_second: Gauge,
    pub queue_depth: Gauge,
    pub batch_size: Gauge,
    pub cancelled_in_queue: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub ready: Gauge,
    /// 0 while the generation server (`engine.backend = "openai"`) takes no request.
    pub backend_up: Gauge,
    pub model_version: Mutex<String>,
    /// Times a new model version replaced the served one without a restart.
    pub model_swaps: Counter,
    /// The nightly runs' outcomes and numbers.
    pub retrain: Mutex<RetrainMetrics>,
    pub health: HealthMetrics,
}

/// What `/metrics` shows of the nightly re-scrape and fine-tune.
#[derive(Debug, Default, Clone)]
pub struct RetrainMetrics {
    /// Finished runs by outcome.
    pub runs: BTreeMap<String, u64>,
    /// 1 while a run is in progress.
    pub running: bool,
    /// Unix seconds of the last run's start and end (0: none yet).
    pub last_start: f64,
    pub last_end: f64,
    /// New transcripts the last run found.
    pub last_new_transcripts: f64,
    /// The last trained version's validation perplexity before and after (NaN: none).
    pub last_perplexity_before: f64,
    pub last_perplexity_after: f64,
    /// Unix seconds of the next scheduled run (0: none scheduled).
    pub next_run: f64,
}

/// The incidents' ledger (platform APIs, the state store, the web listener): what is failing
/// now, and how many calls and incidents each has had. A dependency appears once it has
/// failed.
fn render_incidents(out: &mut String, head: &dyn Fn(&mut String, &str, &str, &str)) {
    let ledger = mananera_health::ledger();
    /// A series' name, type, help and value for one dependency.
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&mananera_health::Tally) -> f64,
    );
    let series: [Series; 3] = [
        (
            "mananera_incident_open",
            "gauge",
            "1 while calls to a dependency keep failing (an open incident), by dependency.",
            |t| f64::from(u8::from(t.failing_since.is_some())),
        ),
        (
            "mananera_incident_failed_calls_total",
            "counter",
            "Calls to a dependency that failed, by dependency.",
            |t| t.failed_calls as f64,
        ),
        (
            "mananera_incidents_total",
            "counter",
            "Incidents (runs of failing calls) opened, by dependency.",
            |t| t.incidents as f64,
        ),
    ];
    for (name, kind, help, value) in series {
        head(out, name, kind, help);
        for tally in &ledger {
            let _ = writeln!(
                out,
                "{name}{{dependency=\"{}\"}} {}",
                tally.id,
                value(tally)
            );
        }
    }
}

impl Metrics {
    /// Counts a finished request.
    pub fn record_request(&self, frontend: &str, outcome: &str, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((frontend.to_string(), outcome.to_string()))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(frontend.to_string())
            .or_default()
            .observe(seconds);
    }

    /// Records the model version being served.
    pub fn set_model_version(&self, version: &str) {
        *self.model_version.lock().unwrap_or_else(|p| p.into_inner()) = version.to_string();
    }

    /// Counts a decoding step of `batch` sequences that took `seconds`.
    pub fn record_step(&self, batch: usize, seconds: f64) {
        self.generated_tokens.add(batch as f64);
        self.decode_seconds.add(seconds);
        if seconds > 0.0 {
            self.tokens_per_second.set(batch as f64 / seconds);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "mananera_requests_total",
            "counter",
            "Requests by front end and outcome.",
        );
        for ((frontend, outcome), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "mananera_requests_total{{frontend=\"{frontend}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        head(
            &mut out,
            "mananera_request_duration_seconds",
            "histogram",
            "Whole-request latency.",
        );
        for (frontend, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.render(
                &mut out,
                "mananera_request_duration_seconds",
                &format!("frontend=\"{frontend}\""),
            );
        }
        head(
            &mut out,
            "mananera_time_to_first_token_seconds",
            "histogram",
            "Time until the first text reached the caller.",
        );
        self.time_to_first_token
            .render(&mut out, "mananera_time_to_first_token_seconds", "");
        head(
            &mut out,
            "mananera_queue_wait_seconds",
            "histogram",
            "Time a request waited for a place in the batch.",
        );
        self.queue_wait
            .render(&mut out, "mananera_queue_wait_seconds", "");
        let cache_total = self.cache_hits.get() + self.cache_misses.get();
        let ratio = if cache_total > 0.0 {
            self.cache_hits.get() / cache_total
        } else {
            0.0
        };
        let simple: [(&str, &str, &str, f64); 13] = [
            (
                "mananera_generated_tokens_total",
                "counter",
                "Tokens generated.",
                self.generated_tokens.get(),
            ),
            (
                "mananera_decode_seconds_total",
                "counter",
                "Time spent in decoding steps.",
                self.decode_seconds.get(),
            ),
            (
                "mananera_tokens_per_second",
                "gauge",
                "Tokens per second of the newest decoding step, whole batch.",
                self.tokens_per_second.get(),
            ),
            (
                "mananera_queue_depth",
                "gauge",
                "Requests waiting for a place in the batch.",
                self.queue_depth.get(),
            ),
            (
                "mananera_batch_size",
                "gauge",
                "Sequences in the running batch.",
                self.batch_size.get(),
            ),
            (
                "mananera_cancelled_in_queue_total",
                "counter",
                "Requests whose caller left before they started.",
                self.cancelled_in_queue.get(),
            ),
            (
                "mananera_cache_hits_total",
                "counter",
                "Requests answered from the prompt cache.",
                self.cache_hits.get(),
            ),
            (
                "mananera_cache_misses_total",
                "counter",
                "Requests the prompt cache could not answer.",
                self.cache_misses.get(),
            ),
            (
                "mananera_cache_hit_ratio",
                "gauge",
                "Hits over hits plus misses since start.",
                ratio,
            ),
            (
                "mananera_cache_entries",
                "gauge",
                "Keys in the prompt cache.",
                self.cache_entries.get(),
            ),
            (
                "mananera_cache_bytes",
                "gauge",
                "Bytes of text in the prompt cache.",
                self.cache_bytes.get(),
            ),
            (
                "mananera_ready",
                "gauge",
                "1 once the model is loaded.",
                self.ready.get(),
            ),
            (
                "mananera_backend_up",
                "gauge",
                "0 while the generation server (engine.backend = \"openai\") is down or asked us to wait; 1 otherwise.",
                self.backend_up.get(),
            ),
        ];
        for (name, kind, help, value) in simple {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        head(
            &mut out,
            "mananera_model_swaps_total",
            "counter",
            "New model versions served without a restart.",
        );
        let _ = writeln!(out, "mananera_model_swaps_total {}", self.model_swaps.get());
        self.render_retrain(&mut out, &head);
        self.render_health(&mut out, &head);
        let version = self
            .model_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        head(
            &mut out,
            "mananera_model_info",
            "gauge",
            "The model version being served.",
        );
        let _ = writeln!(
            out,
            "mananera_model_info{{version=\"{}\"}} 1",
            version.replace(['"', '\\', '\n'], "_")
        );
        out
    }

    fn render_health(&self, out: &mut String, head: &dyn Fn(&mut String, &str, &str, &str)) {
        let h = &self.health;
        let plain: [(&str, &str, &str, f64); 4] = [
            (
                "mananera_runtime_stalls_total",
                "counter",
                "Times the async runtime did not answer the watchdog's probe within the stall threshold.",
                h.runtime_stalls.get(),
            ),
            (
                "mananera_runtime_heartbeat_max_gap_seconds",
                "gauge",
                "The longest time the async runtime took to answer the watchdog's probe.",
                h.heartbeat_max_gap.get(),
            ),
            (
                "mananera_runtime_heartbeat_gap_seconds",
                "gauge",
                "The time the async runtime took to answer the latest probe.",
                h.heartbeat_gap.get(),
            ),
            (
                "mananera_generation_restarts_total",
                "counter",
                "Generation workers restarted after they died.",
                h.generation_restarts.get(),
            ),
        ];
        for (name, kind, help, value) in plain {
            head(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        head(
            out,
            "mananera_slow_polls_total",
            "counter",
            "Task polls that held an async worker thread over 100 ms, by task.",
        );
        h.slow_polls
            .render(out, "mananera_slow_polls_total", "task");
        head(
            out,
            "mananera_store_timeouts_total",
            "counter",
            "State store calls that got no answer in time, by operation.",
        );
        h.store_timeouts
            .render(out, "mananera_store_timeouts_total", "op");
        render_incidents(out, head);
    }

    fn render_retrain(&self, out: &mut String, head: &dyn Fn(&mut String, &str, &str, &str)) {
        let r = self
            .retrain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        head(
            out,
            "mananera_retrain_runs_total",
            "counter",
            "Finished nightly runs (scrape and fine-tune) by outcome.",
        );
        for (outcome, n) in &r.runs {
            let _ = writeln!(
                out,
                "mananera_retrain_runs_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        let gauges: [(&str, &str, f64); 7] = [
            (
                "mananera_retrain_running",
                "1 while a nightly run is in progress.",
                f64::from(u8::from(r.running)),
            ),
            (
                "mananera_retrain_last_start_timestamp_seconds",
                "Unix time the last run started.",
                r.last_start,
            ),
            (
                "mananera_retrain_last_end_timestamp_seconds",
                "Unix time the last run ended.",
                r.last_end,
            ),
            (
                "mananera_retrain_last_new_transcripts",
                "New transcripts the last run scraped.",
                r.last_new_transcripts,
            ),
            (
                "mananera_retrain_last_perplexity_before",
                "Validation perplexity of the served model before the last trained version.",
                r.last_perplexity_before,
            ),
            (
                "mananera_retrain_last_perplexity_after",
                "Validation perplexity of the last trained version.",
                r.last_perplexity_after,
            ),
            (
                "mananera_retrain_next_run_timestamp_seconds",
                "Unix time of the next scheduled run.",
                r.next_run,
            ),
        ];
        for (name, help, value) in gauges {
            head(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}
