//! `mananera serve`: the daemon. Listens at once (so `/healthz` answers while the model
//! loads), loads the model in the background, then serves the web page, the API, the
//! metrics, the chat bots and the control socket, and runs the nightly re-scrape and
//! fine-tune, until SIGTERM or SIGINT: then it stops taking requests, cancels a nightly run
//! (its checkpoint is resumed next time), lets running speeches finish within
//! `queue.grace_s`, flushes the store and exits 0. SIGHUP re-reads the settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Admin;
use crate::chat_bots::Bots;
use crate::commands::args::{ModelArgs, push};
use crate::commands::{Context, Run};
use crate::config::Config;
use crate::config::Override;
use crate::exit::{Exit, Failure};
use crate::live::Live;
use crate::nightly::Nightly;
use crate::service::Speeches;
use crate::service::cache::PromptCache;
use crate::service::metrics::Metrics;
use crate::service::store;
use crate::web::{self, AppState};
use crate::{control, stall, systemd};
use mananera_health::timed;

/// `mananera serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (serve.listen).
    #[arg(long)]
    pub listen: Option<String>,
}

impl Run for ServeArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = self.model.overrides();
        let listen = self.listen.as_ref().map(|l| format!("{l:?}"));
        push(&mut out, "serve.listen", "--listen", listen);
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(&ctx.config, ctx.settings.clone())
    }
}

/// `mananera cache` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Entries and bytes in the prompt cache.
    Stats,
    /// Remove every cached speech.
    Clear,
}

impl Run for CacheCommand {
    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        cache_command(&ctx.config, matches!(self, CacheCommand::Clear), ctx.format)
    }
}

/// How often expired entries and those of older models are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Where the settings came from, to read them again on SIGHUP.
#[derive(Debug, Clone)]
pub struct SettingsSource {
    pub path: Option<PathBuf>,
    pub overrides: Vec<Override>,
}

/// Runs the daemon until a stop signal.
pub fn run(config: &Config, source: SettingsSource) -> Result<(), Failure> {
    let addr = config.listen_addr().map_err(Failure::usage)?;
    let api_token = config.api_token().map_err(Failure::usage)?;
    if let Some(dir) = config.publish_dir() {
        crate::publish::check_writable(&dir).map_err(Failure::usage)?;
    }
    let corpus = mananera_training::store::listed(&config.corpus_dir());
    crate::voices::check_trained(&config.corpus.speakers, &corpus).map_err(Failure::usage)?;
    if !addr.ip().is_loopback() && api_token.is_none() {
        tracing::warn!(%addr, "the API is reachable from other machines without a token (serve.api_token_file)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(super::no_runtime)?;
    runtime.block_on(serve(config.clone(), addr, api_token, source))
}

async fn serve(
    config: Config,
    addr: std::net::SocketAddr,
    api_token: Option<String>,
    source: SettingsSource,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::usage(format!(
            "cannot listen on {addr} (serve.listen): {e}; is another mananera running there?"
        ))
    })?;
    let local = listener.local_addr().map_err(|e| Failure {
        exit: Exit::Internal,
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
    let socket_path = control::socket_path(&config);
    let control_listener = control::listen(&socket_path)
        .await
        .map_err(Failure::usage)?;
    let metrics = Arc::new(Metrics::default());
    let no_thread = |what: &str, e: std::io::Error| Failure {
        exit: Exit::Internal,
        message: format!("cannot start the {what} thread: {e}"),
    };
    let store = store::Store::start(Arc::clone(&metrics)).map_err(|e| no_thread("store", e))?;
    let runtime_health = stall::spawn(Arc::clone(&metrics), store.clone())
        .map_err(|e| no_thread("stall watchdog", e))?;
    let slow = Arc::clone(&metrics);
    mananera_health::set_slow_poll_reporter(move |task, took| {
        slow.health.slow_polls.inc(task);
        tracing::warn!(
            task,
            took_ms = took.as_millis() as u64,
            "a task held an async worker thread over 100 ms"
        );
    });
    let live = Arc::new(Live::new(
        config.clone(),
        Arc::clone(&metrics),
        db.clone(),
        store.clone(),
    ));
    let nightly = Nightly::new(Arc::clone(&live)).map_err(|message| Failure {
        exit: Exit::Internal,
        message,
    })?;
    let admin = Arc::new(Admin {
        live: Arc::clone(&live),
        nightly: Arc::clone(&nightly),
    });
    let voices = config.voices().map_err(|message| Failure {
        exit: Exit::Usage,
        message,
    })?;
    let state = AppState {
        speeches: Arc::clone(&live.speeches),
        metrics: Arc::clone(&metrics),
        admin: Arc::clone(&admin),
        defaults: config.generation.sampling.clone(),
        language: config.serve.language,
        voices: voices.menu(),
        api_token,
        max_body_bytes: config.serve.max_body_bytes,
        runtime_health,
        connections: web::ConnectionLimits::from(&config.serve),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(web::serve(listener, state, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    let control = tokio::spawn(timed(
        "control",
        control::serve(control_listener, Arc::clone(&admin)),
    ));
    tracing::info!(address = %format!("http://{local}"), state_dir = %state_dir.display(), control_socket = %socket_path.display(), "listening");
    // A line on stdout for scripts and tests that start the daemon on port 0.
    println!("mananera listening on http://{local}");
    systemd::status("loading the model");
    let bots = Bots::start(&config, Arc::clone(&admin), voices);
    let reloads = tokio::spawn(timed(
        "reload",
        reload_on_hangup(source, Arc::clone(&live), Arc::clone(&nightly)),
    ));

    let mut signal = std::pin::pin!(stop_signal());
    tokio::select! {
        built = live.load_first() => {
            let built = built?;
            let version = built.version();
            metrics.ready.set(1.0);
            tracing::info!(version = %version, "ready");
            systemd::ready(&format!("serving {version}"));
            nightly.start_schedule();
            tokio::spawn(timed("purge", purge_regularly(built)));
            tokio::spawn(timed("follow-backend", Arc::clone(&live).follow_backend()));
            (&mut signal).await;
        }
        () = &mut signal => {}
    }
    // Shutdown, in order: stop taking requests (web, control socket, bots); then, at the same
    // time, let the running speeches finish (up to `queue.grace_s`, then they are cut with a
    // notice), cancel a nightly run (it checkpoints), and let the bots show every speech's
    // last text (up to the grace period plus `FINAL_EDITS_WITHIN`, even from a slow
    // platform); then wait for the web server's open answers and flush the store.
    tracing::info!("stopping: no new requests; finishing the running ones");
    systemd::stopping();
    reloads.abort();
    control.abort();
    let _ = stop_tx.send(true);
    bots.stop_listening();
    let speeches = live.speeches();
    let finish_speeches = async {
        if let Some(speeches) = &speeches {
            speeches.shut_down().await;
        }
    };
    let grace = Duration::from_secs(config.queue.grace_s);
    tokio::join!(finish_speeches, nightly.stop(), bots.finish(grace));
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the web server failed"),
        Err(e) => tracing::error!(error = %e, "the web server task failed"),
    }
    let _ = std::fs::remove_file(&socket_path);
    close_store(store, db, state_dir).await;
    tracing::info!("stopped");
    Ok(())
}

/// Lets the store's queued writes finish, then flushes it and records its size, off the
/// runtime and within [`CLOSE_WITHIN`]: a stalled disk cannot keep the daemon from exiting.
async fn close_store(store: store::Store, db: sled::Db, dir: PathBuf) {
    let closing = tokio::task::spawn_blocking(move || {
        if store.drain(CLOSE_WITHIN).is_err() {
            return Err("its queued writes did not finish in time".to_string());
        }
        store::close(&db, &dir)
    });
    match tokio::time::timeout(CLOSE_WITHIN * 2, closing).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "the state store could not be flushed"),
        Ok(Err(e)) => tracing::error!(error = %e, "the state store could not be flushed"),
        Err(_) => tracing::error!("the state store did not flush in time; exiting without it"),
    }
}

/// How long the store's last writes and flush may take at shutdown.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Re-reads the settings on each SIGHUP and puts them in force; a bad file is reported and
/// the settings in force stay.
async fn reload_on_hangup(source: SettingsSource, live: Arc<Live>, nightly: Arc<Nightly>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; settings reload only at restart");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        systemd::reloading();
        tracing::info!("SIGHUP: re-reading the settings");
        let loaded = Config::load(source.path.as_deref(), &source.overrides);
        let loaded = match loaded {
            Ok(new) => publish_dir_ok(new).await,
            Err(e) => Err(e),
        };
        match loaded {
            Err(error) => {
                tracing::error!(%error, "the settings were not reloaded; the ones in force stay");
            }
            Ok(new) => match live.replace_config(new).await {
                Ok(restart) => {
                    nightly.settings_changed();
                    if restart.is_empty() {
                        tracing::info!("settings reloaded");
                    } else {
                        tracing::warn!(settings = %restart.join(", "), "settings reloaded; these changes apply only after a restart");
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "the model the new settings name cannot be served; the settings in force stay");
                }
            },
        }
        // READY only once the model is loaded: a reload during start-up must not end it.
        match live.speeches() {
            Some(speeches) => systemd::ready(&format!("serving {}", speeches.version())),
            None => systemd::status("loading the model"),
        }
    }
}

/// `new`, unless its `publish.dir` cannot be written (checked off the runtime).
async fn publish_dir_ok(new: Config) -> Result<Config, String> {
    let Some(dir) = new.publish_dir() else {
        return Ok(new);
    };
    tokio::task::spawn_blocking(move || crate::publish::check_writable(&dir))
        .await
        .map_err(|e| format!("checking publish.dir stopped: {e}"))??;
    Ok(new)
}

/// Purges stale cache entries now and every hour.
async fn purge_regularly(speeches: Arc<Speeches>) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        every.tick().await;
        let s = Arc::clone(&speeches);
        let _ = tokio::task::spawn_blocking(move || {
            s.purge_stale_cache();
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
    format: crate::commands::Format,
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
        exit: Exit::Internal,
        message: format!("the prompt cache cannot be read: {e}"),
    })?;
    if clear {
        cache.clear().map_err(|e| Failure {
            exit: Exit::Internal,
            message: format!("the prompt cache could not be cleared: {e}"),
        })?;
    }
    let stats = cache.stats();
    store::close(&db, &dir).map_err(|e| Failure {
        exit: Exit::Internal,
        message: format!("the state store could not be written: {e}"),
    })?;
    match format {
        crate::commands::Format::Text => println!(
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
