//! The chat front ends of mananera: a Discord slash command (serenity) and a Telegram bot
//! (teloxide). They know nothing of the model: they talk to the daemon through [`Speaker`],
//! the port this crate owns, and show its text as it is written ([`writer`]).

pub mod config;
pub mod discord;
pub mod port;
pub mod telegram;
pub mod texts;
pub mod writer;

mod backoff;

pub use config::{DiscordConfig, Shards, TelegramConfig, Token, find_secret_text, find_token};
pub use port::{AdminAction, Ask, Piece, Platform, Reply, Speaker};
