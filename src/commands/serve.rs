//! `mananera serve`: the daemon. Listens at once (so `/healthz` answers while the model
//! loads), loads the model in the background, then serves the web page, the API and the
//! metrics until SIGTERM or SIGINT, when it stops taking requests, lets running ones finish
//! within `queue.grace_s`, flushes the store and exits 0. The chat bots whose tokens are
//! configured run alongside.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::chat_bots::Bots;
use crate::cli::Failure;
use crate::config::Config;
use crate::engine::{Engine, model_version};
use crate::service::cache::PromptCache;
use crate::service::limits::Limits;
use crate::service::metrics::Metrics;
use crate::service::queue::Generator;
use crate::service::{RequestBounds, Speeches, store};
use crate::web::{self, AppState};

/// How often expired entries and those of older models are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the daemon until a stop signal.
pub fn run(config: &Config) -> Result<(), Failure> {
    let addr = config.listen_addr().map_err(Failure::usage)?;
    let api_token = config.api_token().map_err(Failure::usage)?;
    if !addr.ip().is_loopback() && api_token.is_none() {
        tracing::warn!(%addr, "the API is reachable from other machines without a token (serve.api_token_file)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(super::no_runtime)?;
    runtime.block_on(serve(config.clone(), addr, api_token))
}

async fn serve(
    config: Config,
    addr: std::net::SocketAddr,
    api_token: Option<String>,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::usage(format!(
            "cannot listen on {addr} (serve.listen): {e}; is another mananera running there?"
        ))
    })?;
    let local = listener.local_addr().map_err(|e| Failure {
        code: 1,
        message: e.to_string(),
    })?;
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        Failure::usage(format!(
            "cannot create serve.state_dir {}: {e}",
            state_dir.display()
        ))
    })?;
    let db = store::open(&state_dir).map_err(|e| Failure::usage(e.to_string()))?;
    let metrics = Arc::new(Metrics::default());
    let speeches = Arc::new(OnceLock::new());
    let state = AppState {
        speeches: Arc::clone(&speeches),
        metrics: Arc::clone(&metrics),
        defaults: config.generation.clone(),
        api_token,
        max_body_bytes: config.serve.max_body_bytes,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(web::serve(listener, state, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    tracing::info!(address = %format!("http://{local}"), state_dir = %state_dir.display(), "listening");
    // A line on stdout for scripts and tests that start the daemon on port 0.
    println!("mananera listening on http://{local}");
    let bots = Bots::start(&config, Arc::clone(&speeches), Arc::clone(&metrics));

    let loading = {
        let (config, metrics, db) = (config.clone(), Arc::clone(&metrics), db.clone());
        tokio::task::spawn_blocking(move || build(&config, metrics, db))
    };
    let mut signal = std::pin::pin!(stop_signal());
    tokio::select! {
        built = loading => {
            let built = built.map_err(|e| Failure { code: 1, message: format!("model loading stopped: {e}") })??;
            let version = built.version().to_string();
            let built = Arc::new(built);
            let _ = speeches.set(Arc::clone(&built));
            metrics.ready.set(1.0);
            tracing::info!(version = %version, "ready");
            tokio::spawn(purge_regularly(Arc::clone(&built)));
            (&mut signal).await;
        }
        () = &mut signal => {}
    }
    tracing::info!("stopping: no new requests; finishing the running ones");
    let _ = stop_tx.send(true);
    bots.stop_listening();
    if let Some(speeches) = speeches.get() {
        speeches.shut_down().await;
    }
    bots.finish().await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the web server failed"),
        Err(e) => tracing::error!(error = %e, "the web server task failed"),
    }
    if let Err(e) = store::close(&db, &state_dir) {
        tracing::error!(error = %e, "the state store could not be flushed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the model and wires the service around it (runs on a blocking thread).
fn build(config: &Config, metrics: Arc<Metrics>, db: sled::Db) -> Result<Speeches, Failure> {
    let options = config.engine_options();
    let engine = Engine::load(&options)?;
    let version = model_version(&options)?;
    let cache = if config.cache.enabled {
        match PromptCache::new(db.clone(), config.cache.clone(), &version) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(error = %e, "the prompt cache is unavailable; serving without it");
                None
            }
        }
    } else {
        None
    };
    let limits_tree = db.open_tree("limits").map_err(|e| Failure {
        code: 1,
        message: format!("the state store cannot hold user limits: {e}"),
    })?;
    let limits = Limits::new(config.limits.clone(), limits_tree);
    let generator = Generator::start(Arc::new(engine), config.queue.clone(), Arc::clone(&metrics))
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start the generation thread: {e}"),
        })?;
    let bounds = RequestBounds {
        max_topic_chars: config.serve.max_topic_chars,
        max_new_tokens: config.serve.max_new_tokens,
        max_temperature: config.serve.max_temperature,
    };
    Ok(Speeches::new(
        generator, cache, limits, metrics, version, bounds,
    ))
}

/// Purges stale cache entries now and every hour.
async fn purge_regularly(speeches: Arc<Speeches>) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        every.tick().await;
        let s = Arc::clone(&speeches);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(cache) = s.cache() {
                cache.purge_stale();
            }
            s.refresh_gauges();
        })
        .await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the daemon");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// `mananera cache stats|clear`: the store must not be in use by a running daemon.
pub fn cache_command(
    config: &Config,
    clear: bool,
    format: crate::cli::Format,
) -> Result<(), Failure> {
    let dir = config.state_dir();
    if !dir.exists() {
        return Err(Failure::usage(format!(
            "no state store at {} (serve.state_dir): the daemon has not run with these settings",
            dir.display()
        )));
    }
    let db = store::open(&dir).map_err(|e| Failure::usage(e.to_string()))?;
    let cache = PromptCache::new(db.clone(), config.cache.clone(), "").map_err(|e| Failure {
        code: 1,
        message: format!("the prompt cache cannot be read: {e}"),
    })?;
    if clear {
        cache.clear().map_err(|e| Failure {
            code: 1,
            message: format!("the prompt cache could not be cleared: {e}"),
        })?;
    }
    let stats = cache.stats();
    store::close(&db, &dir).map_err(|e| Failure {
        code: 1,
        message: format!("the state store could not be written: {e}"),
    })?;
    match format {
        crate::cli::Format::Text => println!(
            "{} entries, {} bytes of text, up to {} variants per key{}",
            stats.entries,
            stats.bytes,
            stats.variants,
            if clear { " (cleared)" } else { "" }
        ),
        _ => super::print_json(&stats)?,
    }
    Ok(())
}
