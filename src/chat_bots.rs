//! Wires the chat bots (the `mananera-bots` crate) to the daemon: the [`Speaker`] port over
//! [`Speeches`], token discovery, and the adapters' start and stop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use mananera_bots::{AdminAction, Ask, Piece, Reply, Speaker, discord, find_token, telegram};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::Config;
use crate::language::Language;
use crate::nightly::runs::{Outcome, RunRecord};
use crate::service::queue::Event;
use crate::service::{Answer, Request};
use crate::texts;
use crate::voices::Voices;
use mananera_engine::SamplingParams;

/// How long, after the generations' grace period, the bots get to show their last edits.
const FINAL_EDITS_WITHIN: Duration = Duration::from_secs(10);

/// The daemon as the bots see it.
struct Port {
    admin: Arc<Admin>,
    defaults: SamplingParams,
    voices: Voices,
    language: Language,
    adapters: Vec<&'static str>,
}

impl Speaker for Port {
    fn ask(&self, ask: Ask) -> BoxFuture<'_, Result<Reply, String>> {
        Box::pin(self.answer(ask))
    }

    fn voices(&self) -> Vec<String> {
        self.voices.menu()
    }

    fn is_admin(&self, user: &str) -> bool {
        self.admin
            .live
            .speeches()
            .is_some_and(|speeches| speeches.is_admin(user))
    }

    fn admin<'a>(&'a self, user: &'a str, action: AdminAction) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let nightly = &self.admin.nightly;
            match action {
                AdminAction::Status => self.status().await,
                AdminAction::Retrain => match nightly.trigger(user) {
                    Ok(_) => texts::retrain_started(self.language).into(),
                    Err(refused) => texts::retrain_refused(&refused, self.language),
                },
                AdminAction::Cancel => {
                    texts::cancel_answer(nightly.cancel(user).map(drop), self.language)
                }
            }
        })
    }
}

impl Port {
    /// A request from a bot, answered by the service.
    async fn answer(&self, ask: Ask) -> Result<Reply, String> {
        let Some(speeches) = self.admin.live.speeches() else {
            return Err(texts::loading(self.language).into());
        };
        let request = Request {
            frontend: ask.platform.name(),
            user: ask.user(),
            topic: ask.topic,
            voice: ask.voice,
            params: self.defaults.clone(),
        };
        let language = self.language;
        match speeches.ask(request).await {
            Ok(Answer::Cached { text, .. }) => Ok(Reply::Whole(text)),
            Ok(Answer::Streaming { events, .. }) => {
                let pieces = stream_of(events).map(move |event| match event {
                    Event::Delta(text) => Piece::Text(text),
                    Event::Done(_) => Piece::Done,
                    Event::Failed(failure) => Piece::Failed(texts::failure(&failure, language)),
                });
                Ok(Reply::Stream(pieces.boxed()))
            }
            Err(rejection) => Err(texts::rejection(&rejection, language)),
        }
    }

    /// The daemon's state in Spanish, for the admins' status command.
    async fn status(&self) -> String {
        let s = self.admin.status().await;
        let (hits, misses) = (s.cache_hits, s.cache_misses);
        let ratio = if hits + misses > 0.0 {
            format!("{:.0} %", 100.0 * hits / (hits + misses))
        } else {
            "—".to_string()
        };
        let mut text = format!(
            "modelo: {}\nlisto: {}\ncola: {} en espera, {} escribiéndose\ncaché: {} aciertos, {} fallos ({ratio}), {} entradas\nbots: {}\nreentrenamiento: {}; próximo: {}",
            s.model_version.as_deref().unwrap_or("cargando"),
            if s.ready { "sí" } else { "no" },
            s.queue_depth,
            s.batch_size,
            hits,
            misses,
            s.cache_entries,
            self.adapters.join(", "),
            s.schedule,
            s.next_run.as_deref().unwrap_or("sin programar"),
        );
        if let Some(run) = s.runs.first() {
            text.push_str(&format!("\núltimo: {}", describe_run(run)));
        }
        for f in &s.failing {
            text.push_str(&format!(
                "\nfallando: {} desde {} ({} llamadas fallidas)",
                dependency_in_spanish(&f.dependency),
                f.since,
                f.failed_calls
            ));
        }
        text
    }
}

/// A failing dependency's name in Spanish (its machine name if it is new to this list).
fn dependency_in_spanish(id: &str) -> &str {
    match id {
        "discord_rest" => "la API REST de Discord",
        "telegram_bot_api" => "la Bot API de Telegram",
        "telegram_get_updates" => "la recepción de mensajes de Telegram (getUpdates)",
        "state_store" => "el almacén de estado",
        "web_accept" => "aceptar conexiones web",
        "web_connection_cap" => "el tope de conexiones web (serve.max_connections)",
        other => other,
    }
}

/// A run in a line of Spanish.
fn describe_run(r: &RunRecord) -> String {
    let outcome = match r.outcome {
        Outcome::Running => format!("en curso ({})", r.phase),
        Outcome::Accepted => "aceptado".into(),
        Outcome::Rejected => "rechazado (peor validación)".into(),
        Outcome::NothingNew => "nada nuevo".into(),
        Outcome::Cancelled => "cancelado".into(),
        Outcome::Failed => "falló".into(),
        Outcome::Interrupted => "interrumpido".into(),
    };
    let mut line = format!(
        "{} ({}), {outcome}, {} transcripciones nuevas",
        r.started, r.trigger, r.new_transcripts
    );
    if let Some(t) = &r.trained {
        line.push_str(&format!(", {}", t.describe("perplejidad")));
        if t.metrics.backlog > 0 {
            line.push_str(&format!(
                ", pendientes: {} transcripciones",
                t.metrics.backlog
            ));
            if let Some(n) = crate::admin::nights(t.metrics.backlog, t.new_transcripts) {
                line.push_str(&format!(" (~{n} noches más a este ritmo)"));
            }
        }
    }
    if let Some(e) = &r.error {
        line.push_str(&format!("; {e}"));
    }
    line
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
    /// Starts each adapter whose token is configured, offering `voices`. A token that cannot
    /// be read stops that adapter only (logged); the daemon and the other adapter carry on.
    pub fn start(config: &Config, admin: Arc<Admin>, voices: Voices) -> Bots {
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
            admin,
            defaults: config.generation.sampling.clone(),
            voices,
            language: config.serve.language,
            adapters: running.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = TaskTracker::new();
        if let Some(token) = discord_token {
            tokio::spawn(mananera_health::timed(
                "discord",
                discord::run(
                    config.discord.clone(),
                    token,
                    Arc::clone(&port),
                    tasks.clone(),
                    stopped.clone(),
                ),
            ));
        }
        if let Some(token) = telegram_token {
            tokio::spawn(mananera_health::timed(
                "telegram",
                telegram::run(
                    config.telegram.clone(),
                    token,
                    Arc::clone(&port),
                    tasks.clone(),
                    stopped,
                ),
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

    /// Waits for the replies being written to show their last text: while the generations
    /// finish (`grace`, run at the same time) and [`FINAL_EDITS_WITHIN`] more.
    pub async fn finish(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace + FINAL_EDITS_WITHIN, self.tasks.wait())
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
