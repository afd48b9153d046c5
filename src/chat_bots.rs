//! Wires the chat bots (the `mananera-bots` crate) to the daemon: the [`Speaker`] port over
//! [`Speeches`], token discovery, and the adapters' start and stop.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use mananera_bots::{Ask, Piece, Reply, Speaker, discord, find_token, telegram};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engine::SamplingParams;
use crate::service::metrics::Metrics;
use crate::service::queue::Event;
use crate::service::{Answer, Request, Speeches};

/// How long, after the generations have finished, the bots get to show their last edits.
const FINAL_EDITS_WITHIN: Duration = Duration::from_secs(10);

/// The daemon as the bots see it.
struct Port {
    speeches: Arc<OnceLock<Arc<Speeches>>>,
    metrics: Arc<Metrics>,
    defaults: SamplingParams,
    adapters: Vec<&'static str>,
}

impl Speaker for Port {
    fn ask(&self, ask: Ask) -> Result<Reply, String> {
        let Some(speeches) = self.speeches.get() else {
            return Err(
                "El modelo todavía se está cargando; intenta de nuevo en un minuto.".into(),
            );
        };
        let request = Request {
            frontend: ask.platform.name(),
            user: ask.user(),
            topic: ask.topic,
            params: self.defaults.clone(),
        };
        match speeches.ask(request) {
            Ok(Answer::Cached { text, .. }) => Ok(Reply::Whole(text)),
            Ok(Answer::Streaming { events, .. }) => {
                let pieces = stream_of(events).map(|event| match event {
                    Event::Delta(text) => Piece::Text(text),
                    Event::Done(_) => Piece::Done,
                    Event::Failed(message) => Piece::Failed(message),
                });
                Ok(Reply::Stream(pieces.boxed()))
            }
            Err(rejection) => Err(rejection.to_string()),
        }
    }

    fn is_admin(&self, user: &str) -> bool {
        self.speeches
            .get()
            .is_some_and(|speeches| speeches.is_admin(user))
    }

    fn status(&self) -> String {
        let m = &self.metrics;
        let (hits, misses) = (m.cache_hits.get(), m.cache_misses.get());
        let ratio = if hits + misses > 0.0 {
            format!("{:.0} %", 100.0 * hits / (hits + misses))
        } else {
            "—".to_string()
        };
        if let Some(speeches) = self.speeches.get() {
            speeches.refresh_gauges();
        }
        let version = m
            .model_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!(
            "modelo: {}\nlisto: {}\ncola: {} en espera, {} escribiéndose\ncaché: {} aciertos, {} fallos ({ratio}), {} entradas\nbots: {}",
            if version.is_empty() {
                "cargando"
            } else {
                &version
            },
            if m.ready.get() > 0.0 { "sí" } else { "no" },
            m.queue_depth.get(),
            m.batch_size.get(),
            hits,
            misses,
            m.cache_entries.get(),
            self.adapters.join(", "),
        )
    }
}

/// The events of a generation as a stream.
fn stream_of(
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> impl futures_util::Stream<Item = Event> {
    futures_util::stream::poll_fn(move |cx| events.poll_recv(cx))
}

/// The running bots.
pub struct Bots {
    stop: watch::Sender<bool>,
    tasks: TaskTracker,
}

impl Bots {
    /// Starts each adapter whose token is configured. A token that cannot be read stops
    /// that adapter only (logged); the daemon and the other adapter carry on.
    pub fn start(
        config: &Config,
        speeches: Arc<OnceLock<Arc<Speeches>>>,
        metrics: Arc<Metrics>,
    ) -> Bots {
        let discord_token = token(
            "discord",
            "MANANERA_DISCORD_TOKEN",
            config.discord.token_file.as_deref(),
        );
        let telegram_token = token(
            "telegram",
            "MANANERA_TELEGRAM_TOKEN",
            config.telegram.token_file.as_deref(),
        );
        let running: Vec<&'static str> = [
            ("discord", discord_token.is_some()),
            ("telegram", telegram_token.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        let port: Arc<dyn Speaker> = Arc::new(Port {
            speeches,
            metrics,
            defaults: config.generation.clone(),
            adapters: running.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = TaskTracker::new();
        if let Some(token) = discord_token {
            tokio::spawn(discord::run(
                config.discord.clone(),
                token,
                Arc::clone(&port),
                tasks.clone(),
                stopped.clone(),
            ));
        }
        if let Some(token) = telegram_token {
            tokio::spawn(telegram::run(
                config.telegram.clone(),
                token,
                Arc::clone(&port),
                tasks.clone(),
                stopped,
            ));
        }
        let listed = if running.is_empty() {
            "none (no token configured)".to_string()
        } else {
            running.join(", ")
        };
        tracing::info!(bots = %listed, "chat bots");
        Bots { stop, tasks }
    }

    /// Stops taking new requests from the platforms.
    pub fn stop_listening(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits (a bounded time) for the replies being written to show their last text.
    pub async fn finish(&self) {
        self.tasks.close();
        if tokio::time::timeout(FINAL_EDITS_WITHIN, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                replies = self.tasks.len(),
                "some chat replies were still being shown at exit"
            );
        }
    }
}

/// A platform's token, or `None` (with the reason logged when one was configured but unusable).
fn token(
    platform: &str,
    env_var: &str,
    file: Option<&std::path::Path>,
) -> Option<mananera_bots::Token> {
    match find_token(env_var, file, &format!("{platform}-token")) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(platform, %error, "the bot's token is unusable; that bot stays off");
            None
        }
    }
}
