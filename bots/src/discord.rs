//! The Discord adapter: the `/mañanera tema:<…>` slash command over serenity's gateway,
//! answered by a deferred reply that is edited as the speech is written.

use std::sync::Arc;
use std::time::Duration;

use serenity::all::{
    ClientBuilder, Command, CommandDataOptionValue, CommandInteraction, CommandOptionType, Context,
    CreateAllowedMentions, CreateCommand, CreateCommandOption, CreateInteractionResponse,
    CreateInteractionResponseFollowup, CreateInteractionResponseMessage, EditInteractionResponse,
    EventHandler, GatewayIntents, GuildId, Http, HttpBuilder, Interaction, MessageId, Ready,
};
use serenity::async_trait;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::backoff::{Backoff, sleep_unless_stopped, stopped};
use crate::config::{DiscordConfig, Shards, Token};
use crate::port::{AdminAction, Ask, Platform, Speaker};
use crate::texts;
use crate::writer::{self, Delivery, Surface};
use mananera_health::Incident;

/// The command's name: Discord allows lowercase letters of any script.
pub const COMMAND: &str = "mañanera";
/// The admins' status command.
pub const STATUS_COMMAND: &str = "mañanera-estado";
/// The status command's option: what the admin wants done (`AdminAction::WORDS`).
pub const ACTION_OPTION: &str = "accion";
/// The `/mañanera` option that chooses the voice.
pub const VOICE_OPTION: &str = "voz";
/// The longest topic the command accepts.
pub const MAX_TOPIC_CHARS: u16 = 200;
/// Used when a 429 reaches us without its `retry_after` (serenity drops the body when its
/// own rate limiter is off, as it must be behind a proxy).
const UNKNOWN_RETRY_AFTER: Duration = Duration::from_secs(2);

/// A connection that lasted this long was healthy: the next failure starts the backoff over.
const HEALTHY_FOR: Duration = Duration::from_secs(60);

/// Runs the Discord bot until `stop` turns true, reconnecting with backoff when Discord or
/// the network fails. Replies being written are tracked by `tasks`.
pub async fn run(
    config: DiscordConfig,
    token: Token,
    speaker: Arc<dyn Speaker>,
    tasks: TaskTracker,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        let handler = Handler {
            config: config.clone(),
            speaker: Arc::clone(&speaker),
            tasks: tasks.clone(),
        };
        let client = match client() {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "discord: no HTTP client; the bot is off");
                return;
            }
        };
        let mut builder = HttpBuilder::new(token.expose()).client(client);
        if let Some(proxy) = &config.api_proxy {
            builder = builder.proxy(proxy.as_str()).ratelimiter_disabled(true);
        }
        let http = builder.build();
        let client = ClientBuilder::new_with_http(http, GatewayIntents::empty())
            .event_handler(handler)
            .await;
        let began = tokio::time::Instant::now();
        let result = match client {
            Ok(mut client) => {
                let shards = Arc::clone(&client.shard_manager);
                let started = async {
                    match config.shards {
                        Shards::Auto => client.start_autosharded().await,
                        Shards::Count(n) => client.start_shards(n).await,
                    }
                };
                tokio::select! {
                    result = started => result.map_err(|e| e.to_string()),
                    () = stopped(&mut stop) => {
                        shards.shutdown_all().await;
                        return;
                    }
                }
            }
            Err(e) => Err(e.to_string()),
        };
        if began.elapsed() > HEALTHY_FOR {
            backoff = Backoff::new();
        }
        let wait = backoff.next();
        match result {
            Ok(()) => tracing::warn!(
                retry_in_s = wait.as_secs(),
                "discord: the gateway connection ended; reconnecting"
            ),
            Err(error) => tracing::error!(
                %error,
                retry_in_s = wait.as_secs(),
                "discord: the bot failed; check the token and the network"
            ),
        }
        if !sleep_unless_stopped(wait, &mut stop).await {
            return;
        }
    }
}

/// Failing REST calls, logged once while they fail.
static REST: Incident = Incident::new("discord_rest", "discord's REST API");

/// Time to connect to Discord's REST API, and for a whole request (the writer gives each
/// message a shorter deadline of its own).
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
const REQUEST_WITHIN: Duration = Duration::from_secs(20);

/// The REST client, with a deadline on every call (serenity's own has none).
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(CONNECT_WITHIN)
        .timeout(REQUEST_WITHIN)
        .build()
        .map_err(|e| e.to_string())
}

/// The commands, as registered: `voices` (the default first) are the `voz` option's choices.
pub fn commands(voices: &[String]) -> Vec<CreateCommand> {
    let voice = voices.iter().fold(
        CreateCommandOption::new(CommandOptionType::String, VOICE_OPTION, texts::VOICE_OPTION),
        |option, v| option.add_string_choice(v, v),
    );
    vec![
        CreateCommand::new(COMMAND)
            .description(texts::SPEECH_COMMAND)
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "tema", texts::TOPIC_OPTION)
                    .required(true)
                    .max_length(MAX_TOPIC_CHARS),
            )
            .add_option(voice),
        CreateCommand::new(STATUS_COMMAND)
            .description(texts::STATUS_COMMAND)
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    ACTION_OPTION,
                    texts::ACTION_OPTION,
                )
                .add_string_choice("reentrenar", "reentrenar")
                .add_string_choice("cancelar", "cancelar"),
            ),
    ]
}

struct Handler {
    config: DiscordConfig,
    speaker: Arc<dyn Speaker>,
    tasks: TaskTracker,
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        let (shard, shards) = ready.shard.map_or((0, 1), |s| (s.id.0, s.total));
        tracing::info!(bot = %ready.user.name, guilds = ready.guilds.len(), shard, shards, "discord: connected");
        // Commands belong to the application, not to a shard: shard 0 registers them.
        if shard != 0 {
            return;
        }
        // Bulk overwrite: registering again (Ready fires on every new session) changes nothing.
        let result = if self.config.guilds.is_empty() {
            Command::set_global_commands(&ctx.http, commands(&self.speaker.voices()))
                .await
                .map(drop)
        } else {
            let mut result = Ok(());
            for &guild in &self.config.guilds {
                if let Err(e) = GuildId::new(guild)
                    .set_commands(&ctx.http, commands(&self.speaker.voices()))
                    .await
                {
                    result = Err(e);
                }
            }
            result
        };
        match result {
            Ok(()) => tracing::info!(
                scope = if self.config.guilds.is_empty() {
                    "global"
                } else {
                    "guilds"
                },
                "discord: commands registered"
            ),
            Err(error) => tracing::error!(%error, "discord: the commands could not be registered"),
        }
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        let Interaction::Command(command) = interaction else {
            return;
        };
        let http = Arc::clone(&ctx.http);
        let speaker = Arc::clone(&self.speaker);
        let config = self.config.clone();
        self.tasks
            .spawn(mananera_health::timed("discord-reply", async move {
                answer(http, speaker, config, command).await;
            }));
    }
}

/// Everything the bot sends carries this: no text can ping anyone.
fn no_mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
        .everyone(false)
        .all_users(false)
        .all_roles(false)
        .replied_user(false)
}

async fn answer(
    http: Arc<Http>,
    speaker: Arc<dyn Speaker>,
    config: DiscordConfig,
    command: CommandInteraction,
) {
    let user = format!("discord:{}", command.user.id);
    let notice = |text: &str| {
        CreateInteractionResponse::Message(
            CreateInteractionResponseMessage::new()
                .content(text)
                .ephemeral(true)
                .allowed_mentions(no_mentions()),
        )
    };
    let refusal = match command.guild_id {
        Some(guild)
            if !config.allowed_guilds.is_empty()
                && !config.allowed_guilds.contains(&guild.get()) =>
        {
            Some(texts::GUILD_NOT_ALLOWED)
        }
        None if !config.allow_direct_messages => Some(texts::NO_DIRECT_MESSAGES),
        _ => None,
    };
    if let Some(text) = refusal {
        respond(&http, &command, notice(text)).await;
        return;
    }
    match command.data.name.as_str() {
        STATUS_COMMAND => {
            let word = string_option(&command, ACTION_OPTION);
            let text = match AdminAction::parse(&word) {
                _ if !speaker.is_admin(&user) => texts::ADMINS_ONLY.to_string(),
                Some(action) => speaker.admin(&user, action).await,
                None => texts::unknown_action(&word, &AdminAction::WORDS.join(", ")),
            };
            respond(&http, &command, notice(&text)).await;
        }
        COMMAND => {
            let topic = string_option(&command, "tema");
            let voice = Some(string_option(&command, VOICE_OPTION)).filter(|v| !v.is_empty());
            let ask = Ask {
                platform: Platform::Discord,
                user_id: command.user.id.to_string(),
                chat_id: command.channel_id.to_string(),
                topic,
                voice,
            };
            let reply = match speaker.ask(ask).await {
                Ok(reply) => reply,
                Err(message) => {
                    respond(&http, &command, notice(&message)).await;
                    return;
                }
            };
            let deferred =
                CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
            if !respond(&http, &command, deferred).await {
                return;
            }
            let mut surface = Reply {
                http,
                command,
                followups: Vec::new(),
            };
            let outcome = writer::write(&mut surface, reply, config.edit_interval()).await;
            if outcome == writer::Outcome::Undelivered {
                tracing::warn!("discord: a reply could not be delivered whole");
            } else {
                tracing::debug!(?outcome, "discord: reply written");
            }
        }
        other => {
            tracing::warn!(command = other, "discord: unknown command");
            respond(&http, &command, notice(texts::UNKNOWN_COMMAND)).await;
        }
    }
}

/// Sends the interaction's first response; false (logged) when Discord refused it.
async fn respond(
    http: &Http,
    command: &CommandInteraction,
    response: CreateInteractionResponse,
) -> bool {
    match command.create_response(http, response).await {
        Ok(()) => {
            REST.resolved();
            true
        }
        Err(error) => {
            REST.failed(&format!("the interaction could not be answered: {error}"));
            false
        }
    }
}

/// A deferred reply and its follow-up messages.
struct Reply {
    http: Arc<Http>,
    command: CommandInteraction,
    followups: Vec<MessageId>,
}

impl Surface for Reply {
    const LIMIT: usize = 2000;

    fn incident() -> &'static Incident {
        &REST
    }

    async fn show(&mut self, index: usize, text: &str) -> Result<(), Delivery> {
        let result = if index == 0 {
            let edit = EditInteractionResponse::new()
                .content(text)
                .allowed_mentions(no_mentions());
            self.command.edit_response(&self.http, edit).await.map(drop)
        } else {
            let message = CreateInteractionResponseFollowup::new()
                .content(text)
                .allowed_mentions(no_mentions());
            match self.followups.get(index - 1) {
                Some(&id) => self
                    .command
                    .edit_followup(&self.http, id, message)
                    .await
                    .map(drop),
                None => self
                    .command
                    .create_followup(&self.http, message)
                    .await
                    .map(|sent| self.followups.push(sent.id)),
            }
        };
        result.map_err(|error| match &error {
            serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(response))
                if response.status_code.as_u16() == 429 =>
            {
                Delivery::RetryAfter(UNKNOWN_RETRY_AFTER)
            }
            _ => Delivery::Failed(error.to_string()),
        })
    }
}

/// A string option of a slash command ("" when absent).
fn string_option(command: &CommandInteraction, name: &str) -> String {
    command
        .data
        .options
        .iter()
        .find(|o| o.name == name)
        .and_then(|o| match &o.value {
            CommandDataOptionValue::String(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
