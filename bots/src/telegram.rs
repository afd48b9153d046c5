//! The Telegram adapter: long polling (or a webhook) with teloxide; `/mananera <tema>`
//! anywhere, plain text in private chats, replies to the bot in groups. The speech is one message edited as it is
//! written, in plain text, while the chat shows "typing…".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use teloxide::prelude::*;
use teloxide::types::{BotCommand, ChatAction, Me, MessageId, ReplyParameters, UpdateKind};
use teloxide::update_listeners::{AsUpdateStream, Polling, webhooks};
use teloxide::{ApiError, RequestError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::backoff::{Backoff, sleep_unless_stopped, stopped};
use crate::config::{TelegramConfig, Token};
use crate::port::{AdminAction, Ask, Platform, Reply, Speaker};
use crate::texts;
use crate::writer::{self, Delivery, Surface};
use mananera_health::Incident;

/// Telegram renews "typing…" for 5 s; renew a little earlier.
const TYPING_EVERY: Duration = Duration::from_secs(4);
/// One refusal notice per person per this long: a flood gets one answer, not fifty.
const NOTICE_EVERY: Duration = Duration::from_secs(5);

/// Runs the Telegram bot until `stop` turns true, retrying with backoff when Telegram or the
/// network fails. Replies being written are tracked by `tasks`.
pub async fn run(
    config: TelegramConfig,
    token: Token,
    speaker: Arc<dyn Speaker>,
    tasks: TaskTracker,
    mut stop: watch::Receiver<bool>,
) {
    let url = match reqwest_url(&config.api_url) {
        Ok(url) => url,
        Err(error) => {
            tracing::error!(%error, api_url = %config.api_url, "telegram: telegram.api_url is not a URL; the bot is off");
            return;
        }
    };
    let client = match client(&config) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "telegram: no HTTP client; the bot is off");
            return;
        }
    };
    let bot = Bot::with_client(token.expose(), client).set_api_url(url);
    let mut backoff = Backoff::new();
    let state = Arc::new(Shared {
        config: config.clone(),
        speaker,
        pacer: Pacer::default(),
        notices: Mutex::default(),
        tasks,
    });
    loop {
        let result = tokio::select! {
            result = serve(bot.clone(), Arc::clone(&state), &mut backoff) => result,
            () = stopped(&mut stop) => return,
        };
        let Err(error) = result;
        let wait = backoff.next();
        tracing::error!(
            %error,
            retry_in_s = wait.as_secs(),
            "telegram: the bot failed; check the token and the network"
        );
        if !sleep_unless_stopped(wait, &mut stop).await {
            return;
        }
    }
}

/// Failing Bot API calls (other than getUpdates), logged once while they fail.
static BOT_API: Incident = Incident::new("telegram_bot_api", "telegram's Bot API");

/// Time to connect to the Bot API.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// A call may take this long past the long-polling timeout (a poll is answered after it).
const POLL_MARGIN: Duration = Duration::from_secs(15);

/// The HTTP client: a deadline on every call, longer than the long-polling timeout (teloxide
/// keeps its client's timeout for getUpdates: one shorter than the poll makes every quiet
/// poll fail and back off).
fn client(config: &TelegramConfig) -> Result<reqwest::Client, String> {
    teloxide::net::default_reqwest_settings()
        .connect_timeout(CONNECT_WITHIN)
        .timeout(Duration::from_secs(config.poll_timeout_s) + POLL_MARGIN)
        .build()
        .map_err(|e| e.to_string())
}

fn reqwest_url(url: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(url).map_err(|e| e.to_string())
}

/// What every update's handler shares.
struct Shared {
    config: TelegramConfig,
    speaker: Arc<dyn Speaker>,
    pacer: Pacer,
    /// When each person was last sent a refusal notice.
    notices: Mutex<HashMap<String, Instant>>,
    tasks: TaskTracker,
}

/// Registers the commands, then answers updates (long polling or webhook) until that fails;
/// says why.
async fn serve(
    bot: Bot,
    state: Arc<Shared>,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible, String> {
    let me = bot.get_me().await.map_err(|e| e.to_string())?;
    let me = Arc::new(me);
    let username = me.username().to_string();
    bot.set_my_commands(vec![
        BotCommand::new("mananera", texts::SPEECH_COMMAND),
        BotCommand::new("help", texts::HELP_COMMAND),
        BotCommand::new("start", texts::START_COMMAND),
        BotCommand::new("estado", texts::STATUS_COMMAND_TELEGRAM),
    ])
    .await
    .map_err(|e| e.to_string())?;
    *backoff = Backoff::new();
    if state.config.webhook_url.is_empty() {
        tracing::info!(bot = %username, "telegram: connected, commands registered, long polling");
        let mut polling = Polling::builder(bot.clone())
            .timeout(Duration::from_secs(state.config.poll_timeout_s))
            .delete_webhook()
            .await
            .build();
        pump(polling.as_stream(), &bot, &state, &me).await;
        return Err("long polling ended".into());
    }
    let url = reqwest_url(&state.config.webhook_url)
        .map_err(|e| format!("telegram.webhook_url is not a URL: {e}"))?;
    let address: std::net::SocketAddr = state.config.webhook_listen.parse().map_err(|e| {
        format!(
            "telegram.webhook_listen {:?} is not an address like 127.0.0.1:8443: {e}",
            state.config.webhook_listen
        )
    })?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} (telegram.webhook_listen): {e}"))?;
    let options = webhooks::Options::new(address, url);
    let (mut updates, stopped, router) = webhooks::axum_to_router(bot.clone(), options)
        .await
        .map_err(|e| format!("setWebhook failed: {e}"))?;
    tracing::info!(bot = %username, %address, "telegram: connected, commands registered, webhook set");
    let server = tokio::spawn(mananera_health::timed("telegram-webhook", async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
    }));
    pump(updates.as_stream(), &bot, &state, &me).await;
    server.abort();
    Err("the webhook server ended".into())
}

/// Hands each message to its own task, so a long speech never holds up other updates.
async fn pump<E: std::fmt::Display>(
    updates: impl futures_util::Stream<Item = Result<Update, E>>,
    bot: &Bot,
    state: &Arc<Shared>,
    me: &Arc<Me>,
) {
    tokio::pin!(updates);
    let failing = Incident::new("telegram_get_updates", "telegram's getUpdates");
    while let Some(update) = updates.next().await {
        let update = match update {
            Ok(update) => {
                failing.resolved();
                update
            }
            Err(error) => {
                // Polling retries by itself with its own backoff.
                failing.failed(&error.to_string());
                continue;
            }
        };
        if let UpdateKind::Message(message) = update.kind {
            let bot = bot.clone();
            let state2 = Arc::clone(state);
            let me = Arc::clone(me);
            state
                .tasks
                .spawn(mananera_health::timed("telegram-reply", async move {
                    handle(bot, state2, &me, message).await;
                }));
        }
    }
}

/// What a message asks of the bot.
#[derive(Debug, PartialEq)]
enum Intent {
    Speech(String),
    Help,
    /// The status command and the word after it (`AdminAction::parse`).
    Admin(String),
    Ignore,
}

/// Reads a message: commands anywhere (`/mananera@bot` too), plain text only where the bot
/// is clearly being talked to.
fn intent(text: &str, private: bool, reply_to_bot: bool, bot_username: &str) -> Intent {
    let Some(command_line) = text.strip_prefix('/') else {
        return if private || reply_to_bot {
            Intent::Speech(text.to_string())
        } else {
            Intent::Ignore
        };
    };
    let (word, rest) = command_line
        .split_once(char::is_whitespace)
        .unwrap_or((command_line, ""));
    let (name, addressee) = word.split_once('@').unwrap_or((word, ""));
    if !addressee.is_empty() && !addressee.eq_ignore_ascii_case(bot_username) {
        return Intent::Ignore;
    }
    match name.to_lowercase().as_str() {
        "mananera" | "mañanera" => Intent::Speech(rest.trim().to_string()),
        "start" | "help" | "ayuda" => Intent::Help,
        "estado" | "status" => Intent::Admin(rest.trim().to_string()),
        _ if private => Intent::Help,
        _ => Intent::Ignore,
    }
}

async fn handle(bot: Bot, state: Arc<Shared>, me: &Me, message: Message) {
    let Some(text) = message.text() else {
        return;
    };
    let Some(from) = message.from.as_ref() else {
        return;
    };
    let chat = message.chat.id;
    let private = message.chat.is_private();
    let reply_to_bot = message
        .reply_to_message()
        .and_then(|m| m.from.as_ref())
        .is_some_and(|u| u.id == me.id);
    let user = format!("telegram:{}", from.id);
    let intent = intent(text, private, reply_to_bot, me.username());
    if intent == Intent::Ignore {
        return;
    }
    let config = &state.config;
    if !config.allowed_chats.is_empty() && !config.allowed_chats.contains(&chat.0) {
        if private {
            notify(&bot, &state, &user, &message, texts::CHAT_NOT_ALLOWED).await;
        }
        return;
    }
    match intent {
        Intent::Help => send_plain(&bot, &message, texts::HELP).await,
        Intent::Admin(word) => {
            let text = match AdminAction::parse(&word) {
                _ if !state.speaker.is_admin(&user) => texts::ADMINS_ONLY.to_string(),
                Some(action) => state.speaker.admin(&user, action).await,
                None => {
                    texts::unknown_action(&word, "/estado, /estado reentrenar o /estado cancelar")
                }
            };
            send_plain(&bot, &message, &text).await;
        }
        Intent::Speech(topic) if topic.trim().is_empty() => {
            send_plain(&bot, &message, texts::NO_TOPIC).await;
        }
        Intent::Speech(text) => {
            let (voice, topic) = voice_and_topic(&text, &state.speaker.voices());
            let ask = Ask {
                platform: Platform::Telegram,
                user_id: from.id.to_string(),
                chat_id: chat.to_string(),
                topic,
                voice,
            };
            match state.speaker.ask(ask).await {
                Ok(reply) => speak(&bot, &state, &message, reply).await,
                Err(refusal) => notify(&bot, &state, &user, &message, &refusal).await,
            }
        }
        Intent::Ignore => {}
    }
}

/// Reads the voice before a topic: `[voz] tema` (any word in brackets: an unknown one is
/// refused with the list), or `voz: tema` when the word is one of `voices` (otherwise the
/// colon belongs to the topic, as in «educación: el reto»).
fn voice_and_topic(text: &str, voices: &[String]) -> (Option<String>, String) {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[')
        && let Some((voice, topic)) = rest.split_once(']')
    {
        return (Some(voice.trim().to_string()), topic.trim().to_string());
    }
    if let Some((word, topic)) = text.split_once(':')
        && voices.iter().any(|v| v.eq_ignore_ascii_case(word.trim()))
    {
        return (Some(word.trim().to_string()), topic.trim().to_string());
    }
    (None, text.to_string())
}

/// Writes a speech as a reply to `message`, showing "typing…" until it is done.
async fn speak(bot: &Bot, state: &Shared, message: &Message, reply: Reply) {
    let _typing = {
        let bot = bot.clone();
        let chat = message.chat.id;
        AbortOnDrop(tokio::spawn(mananera_health::timed(
            "telegram-typing",
            async move {
                // A fixed period, however long each call takes.
                let mut every = tokio::time::interval(TYPING_EVERY);
                loop {
                    every.tick().await;
                    if let Err(error) = bot.send_chat_action(chat, ChatAction::Typing).await {
                        tracing::debug!(%error, "telegram: typing could not be shown");
                    }
                }
            },
        )))
    };
    let mut surface = Chat {
        bot: bot.clone(),
        pacer: &state.pacer,
        interval: state.config.edit_interval(),
        chat: message.chat.id,
        reply_to: message.id,
        messages: Vec::new(),
    };
    let outcome = writer::write(&mut surface, reply, state.config.edit_interval()).await;
    if outcome == writer::Outcome::Undelivered {
        tracing::warn!("telegram: a reply could not be delivered whole");
    } else {
        tracing::debug!(?outcome, "telegram: reply written");
    }
}

/// Stops a background task (the "typing…" loop) however its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a refusal, at most once per person per [`NOTICE_EVERY`].
async fn notify(bot: &Bot, state: &Shared, user: &str, message: &Message, text: &str) {
    {
        let mut notices = state.notices.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        notices.retain(|_, at| now.duration_since(*at) < NOTICE_EVERY);
        if notices.contains_key(user) {
            tracing::debug!(user, "telegram: refusal not repeated");
            return;
        }
        notices.insert(user.to_string(), now);
    }
    send_plain(bot, message, text).await;
}

/// One plain-text reply (no parse mode, so no markup can break it).
async fn send_plain(bot: &Bot, message: &Message, text: &str) {
    let sent = bot
        .send_message(message.chat.id, text)
        .reply_parameters(ReplyParameters::new(message.id).allow_sending_without_reply())
        .await;
    match sent {
        Ok(_) => BOT_API.resolved(),
        Err(error) => BOT_API.failed(&format!("a reply could not be sent: {error}")),
    }
}

/// Paces changes per chat: Telegram limits how often one chat may be written to, across
/// every reply being written there.
#[derive(Default)]
struct Pacer {
    next: Mutex<HashMap<ChatId, Instant>>,
}

impl Pacer {
    /// Waits for the chat's turn and takes it; the next turn comes `interval` later.
    async fn turn(&self, chat: ChatId, interval: Duration) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            next.retain(|_, at| *at > now);
            let at = next.get(&chat).copied().unwrap_or(now).max(now);
            next.insert(chat, at + interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Nobody writes to the chat before `until`.
    fn hold(&self, chat: ChatId, until: Instant) {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let at = next.entry(chat).or_insert(until);
        *at = (*at).max(until);
    }
}

/// The messages of one reply in one chat.
struct Chat<'a> {
    bot: Bot,
    pacer: &'a Pacer,
    interval: Duration,
    chat: ChatId,
    reply_to: MessageId,
    messages: Vec<MessageId>,
}

impl Surface for Chat<'_> {
    const LIMIT: usize = 4096;

    fn incident() -> &'static Incident {
        &BOT_API
    }

    async fn turn(&mut self) {
        self.pacer.turn(self.chat, self.interval).await;
    }

    async fn show(&mut self, index: usize, text: &str) -> Result<(), Delivery> {
        let result = match self.messages.get(index) {
            Some(&id) => self
                .bot
                .edit_message_text(self.chat, id, text)
                .await
                .map(drop),
            None => {
                let reply = ReplyParameters::new(self.reply_to).allow_sending_without_reply();
                self.bot
                    .send_message(self.chat, text)
                    .reply_parameters(reply)
                    .await
                    .map(|sent| self.messages.push(sent.id))
            }
        };
        match result {
            Ok(()) | Err(RequestError::Api(ApiError::MessageNotModified)) => Ok(()),
            Err(RequestError::RetryAfter(wait)) => {
                self.pacer.hold(self.chat, Instant::now() + wait.duration());
                Err(Delivery::RetryAfter(wait.duration()))
            }
            Err(error) => Err(Delivery::Failed(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voice_is_read_before_the_topic() {
        let voices = ["amlo".to_string(), "sheinbaum".to_string()];
        let read = |text| voice_and_topic(text, &voices);
        assert_eq!(
            read("sheinbaum: el agua"),
            (Some("sheinbaum".into()), "el agua".into())
        );
        assert_eq!(
            read(" [AMLO]  el agua"),
            (Some("AMLO".into()), "el agua".into())
        );
        assert_eq!(
            read("[fox] el agua"),
            (Some("fox".into()), "el agua".into())
        );
        assert_eq!(
            read("educación: el reto"),
            (None, "educación: el reto".into())
        );
        assert_eq!(read("el agua"), (None, "el agua".into()));
    }

    #[test]
    fn commands_plain_text_and_groups() {
        let speech = |t: &str| Intent::Speech(t.to_string());
        assert_eq!(
            intent("/mananera el tren", false, false, "bot"),
            speech("el tren")
        );
        assert_eq!(
            intent("/mañanera el tren", false, false, "bot"),
            speech("el tren")
        );
        assert_eq!(
            intent("/mananera@bot  agua ", false, false, "bot"),
            speech("agua")
        );
        assert_eq!(
            intent("/mananera@otro agua", false, false, "bot"),
            Intent::Ignore
        );
        assert_eq!(intent("el tren", true, false, "bot"), speech("el tren"));
        assert_eq!(intent("el tren", false, false, "bot"), Intent::Ignore);
        assert_eq!(intent("el tren", false, true, "bot"), speech("el tren"));
        assert_eq!(intent("/start", true, false, "bot"), Intent::Help);
        assert_eq!(
            intent("/estado", false, false, "bot"),
            Intent::Admin(String::new())
        );
        assert_eq!(
            intent("/estado reentrenar", false, false, "bot"),
            Intent::Admin("reentrenar".into())
        );
        assert_eq!(intent("/otro", false, false, "bot"), Intent::Ignore);
        assert_eq!(intent("/otro", true, false, "bot"), Intent::Help);
        assert_eq!(intent("/mananera", true, false, "bot"), speech(""));
    }
}
