//! The one thing the bots need from the daemon, as a trait they own: a topic and a person
//! in, a stream of text out. The daemon implements it over its generation service; tests
//! may implement it over anything.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

/// Which chat platform a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Discord,
    Telegram,
}

impl Platform {
    /// The lowercase name, used in user ids (`discord:<id>`) and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Discord => "discord",
            Platform::Telegram => "telegram",
        }
    }
}

/// A request for a speech, as a chat platform delivers it.
#[derive(Debug, Clone)]
pub struct Ask {
    pub platform: Platform,
    /// The platform's id of the person asking.
    pub user_id: String,
    /// The platform's id of the chat (channel, group or private chat) it was asked in.
    pub chat_id: String,
    /// As typed; the daemon checks and normalises it.
    pub topic: String,
    /// The voice asked for, as typed (one of [`Speaker::voices`]); `None`: the default one.
    pub voice: Option<String>,
}

impl Ask {
    /// `<platform>:<user id>`, the daemon's name for this person.
    pub fn user(&self) -> String {
        format!("{}:{}", self.platform.name(), self.user_id)
    }
}

/// One piece of a speech being written.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More text, to append.
    Text(String),
    /// The speech is complete.
    Done,
    /// The speech could not be finished; the message is safe to show.
    Failed(String),
}

/// How the daemon answers a request.
pub enum Reply {
    /// The whole speech at once (from the cache).
    Whole(String),
    /// A speech being written; dropping the stream cancels it.
    Stream(BoxStream<'static, Piece>),
}

/// The daemon, as the bots see it.
pub trait Speaker: Send + Sync + 'static {
    /// Takes a request, quickly (within a bounded time): either a reply or a refusal a person
    /// can act on (busy, rate limited, bad topic…).
    fn ask(&self, ask: Ask) -> BoxFuture<'_, Result<Reply, String>>;

    /// The voices a request may name (`amlo`, `sheinbaum`), the default first: Discord
    /// offers them as the `voz` option's choices, Telegram reads them before the topic.
    fn voices(&self) -> Vec<String>;

    /// True when `user` (`<platform>:<id>`) may see the daemon's status and retrain it.
    fn is_admin(&self, user: &str) -> bool;

    /// Carries out an admin's `action` and says how it went, in a few lines (the status,
    /// or a run started, cancelled or refused).
    fn admin<'a>(&'a self, user: &'a str, action: AdminAction) -> BoxFuture<'a, String>;
}

/// What an admin asks of the daemon through a bot: `estado`, `estado reentrenar`, `estado
/// cancelar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// The daemon's state and its last nightly runs.
    Status,
    /// Start the nightly run (scrape, fine-tune, serve) now.
    Retrain,
    /// Cancel the run in progress.
    Cancel,
}

impl AdminAction {
    /// The words an admin may type after the status command (Spanish, or English).
    pub const WORDS: [&str; 3] = ["reentrenar", "cancelar", "estado"];

    /// Reads the word after the status command (none: the status).
    pub fn parse(word: &str) -> Option<Self> {
        match word.trim().to_lowercase().as_str() {
            "" | "estado" | "status" => Some(Self::Status),
            "reentrenar" | "retrain" => Some(Self::Retrain),
            "cancelar" | "cancel" => Some(Self::Cancel),
            _ => None,
        }
    }
}
