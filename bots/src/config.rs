//! `[discord]` and `[telegram]`: who may use the bots, where the platforms are, and where
//! their tokens come from. Tokens never live in the config file itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[discord]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordConfig {
    /// A file holding the bot token (else `$MANANERA_DISCORD_TOKEN`, else
    /// `$CREDENTIALS_DIRECTORY/discord-token`). Without a token the adapter does not start.
    pub token_file: Option<PathBuf>,
    /// Guilds to register the commands in (instant); empty registers them globally.
    pub guilds: Vec<u64>,
    /// When not empty, only these guilds get speeches.
    pub allowed_guilds: Vec<u64>,
    /// Whether the command works in direct messages.
    pub allow_direct_messages: bool,
    /// Least time between two edits of a reply, in milliseconds.
    pub edit_interval_ms: u64,
    /// A REST proxy to send API calls to instead of discord.com (e.g. twilight-http-proxy,
    /// or a test's fake). It must do the rate limiting: serenity turns its own off.
    pub api_proxy: Option<String>,
    /// Gateway shards: `"auto"` (as many as Discord recommends for the bot's guilds) or a
    /// count. Discord requires shards past 2,500 guilds.
    pub shards: Shards,
}

/// `discord.shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shards {
    /// As many as `GET /gateway/bot` recommends.
    #[default]
    Auto,
    /// This many, all in this process.
    Count(u32),
}

impl Serialize for Shards {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shards::Auto => s.serialize_str("auto"),
            Shards::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Shards {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Word(String),
        }
        let wrong = |what: String| {
            D::Error::custom(format!(
                "discord.shards = {what}: use \"auto\" or a number of shards from 1 up"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "auto" => Ok(Shards::Auto),
            Raw::Word(w) => Err(wrong(format!("\"{w}\""))),
            Raw::Count(n) => u32::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .map(Shards::Count)
                .ok_or_else(|| wrong(n.to_string())),
        }
    }
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            guilds: Vec::new(),
            allowed_guilds: Vec::new(),
            allow_direct_messages: true,
            edit_interval_ms: 1000,
            api_proxy: None,
            shards: Shards::Auto,
        }
    }
}

/// `[telegram]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelegramConfig {
    /// A file holding the bot token (else `$MANANERA_TELEGRAM_TOKEN`, else
    /// `$CREDENTIALS_DIRECTORY/telegram-token`). Without a token the adapter does not start.
    pub token_file: Option<PathBuf>,
    /// When not empty, only these chats get speeches.
    pub allowed_chats: Vec<i64>,
    /// Least time between two edits in one chat, in milliseconds.
    pub edit_interval_ms: u64,
    /// How long one getUpdates call waits for news, in seconds.
    pub poll_timeout_s: u64,
    /// The Bot API server (a local `telegram-bot-api`, or a test's fake).
    pub api_url: String,
    /// The public HTTPS address Telegram should post updates to; empty uses long polling.
    pub webhook_url: String,
    /// Where the daemon listens for those posts (behind the reverse proxy that serves
    /// `webhook_url`).
    pub webhook_listen: String,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            allowed_chats: Vec::new(),
            edit_interval_ms: 1000,
            poll_timeout_s: 30,
            api_url: "https://api.telegram.org".to_string(),
            webhook_url: String::new(),
            webhook_listen: "127.0.0.1:8443".to_string(),
        }
    }
}

impl DiscordConfig {
    pub(crate) fn edit_interval(&self) -> Duration {
        Duration::from_millis(self.edit_interval_ms)
    }
}

impl TelegramConfig {
    pub(crate) fn edit_interval(&self) -> Duration {
        Duration::from_millis(self.edit_interval_ms)
    }
}

/// A bot token; its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The secret itself, for the platform library only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// Finds a platform's token: the environment variable, then the configured file, then
/// systemd's credentials directory. `None` when there is none anywhere.
pub fn find_token(
    env_var: &str,
    file: Option<&Path>,
    credential: &str,
) -> Result<Option<Token>, String> {
    find_secret(env_var, file, credential)
}

/// [`find_token`] for a secret the daemon checks instead of sending (the API's bearer
/// token): the same places, in the same order, with the same checks.
pub fn find_secret_text(
    env_var: &str,
    file: Option<&Path>,
    credential: &str,
) -> Result<Option<String>, String> {
    Ok(find_secret(env_var, file, credential)?.map(|token| token.0))
}

fn find_secret(
    env_var: &str,
    file: Option<&Path>,
    credential: &str,
) -> Result<Option<Token>, String> {
    if let Ok(value) = std::env::var(env_var) {
        return non_empty(value, &format!("${env_var}")).map(Some);
    }
    let from_credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|dir| PathBuf::from(dir).join(credential))
        .filter(|path| path.exists());
    let Some(path) = file.map(Path::to_path_buf).or(from_credentials) else {
        return Ok(None);
    };
    let value = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read the token file {}: {e}; check the path and its permissions",
            path.display()
        )
    })?;
    non_empty(value, &path.display().to_string()).map(Some)
}

fn non_empty(value: String, origin: &str) -> Result<Token, String> {
    let value = value.trim().to_string();
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err(format!(
            "the token in {origin} is empty or contains spaces; paste the token alone"
        ));
    }
    Ok(Token(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_found_in_a_file_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "abc.def\n").unwrap();
        let token = find_token("MANANERA_TEST_UNSET_VAR", Some(&file), "x")
            .unwrap()
            .unwrap();
        assert_eq!(token.expose(), "abc.def");
        assert!(!format!("{token:?}").contains("abc"));
        std::fs::write(&file, "  \n").unwrap();
        let err = find_token("MANANERA_TEST_UNSET_VAR", Some(&file), "x").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err =
            find_token("MANANERA_TEST_UNSET_VAR", Some(&dir.path().join("no")), "x").unwrap_err();
        assert!(err.contains("cannot read the token file"), "{err}");
    }
}
