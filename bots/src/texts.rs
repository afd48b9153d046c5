//! Everything the bots themselves say to people (Spanish, like the people who use them): the
//! commands' descriptions, access refusals, help and the admin command's answers. What the
//! daemon says about a request (refusals, limits, failures) comes through the port, already
//! in the configured language.

/// `/mañanera` (Discord) and `/mananera` (Telegram).
pub const SPEECH_COMMAND: &str = "Un discurso de la mañanera sobre un tema";
/// Discord's `tema` option.
pub const TOPIC_OPTION: &str = "El tema del discurso";
/// Discord's `voz` option.
pub const VOICE_OPTION: &str = "Quién habla (si no se elige: la primera voz)";
/// The status command (Discord).
pub const STATUS_COMMAND: &str = "Estado del servidor de discursos (solo administradores)";
/// The status command's action option (Discord).
pub const ACTION_OPTION: &str = "reentrenar ahora, o cancelar el reentrenamiento en curso";
/// The status command (Telegram's menu).
pub const STATUS_COMMAND_TELEGRAM: &str =
    "Estado del servidor; «reentrenar» o «cancelar» (solo administradores)";
/// Telegram's `/help` in the menu.
pub const HELP_COMMAND: &str = "Cómo pedir un discurso";
/// Telegram's `/start` in the menu.
pub const START_COMMAND: &str = "Empezar";
/// Telegram's answer to `/help` and `/start`.
pub const HELP: &str = "Escribe /mananera seguido de un tema (por ejemplo: /mananera el tren maya) \
y te respondo con un discurso al estilo de la mañanera. En un chat privado basta con escribir el tema. \
Para elegir quién habla, pon la voz antes del tema: /mananera sheinbaum: el agua, o /mananera [amlo] el agua.";
/// A Telegram request without a topic.
pub const NO_TOPIC: &str = "Falta el tema: /mananera <tema>";
/// A Discord guild outside `discord.allowed_guilds`.
pub const GUILD_NOT_ALLOWED: &str = "Este servidor no tiene acceso a los discursos.";
/// A Discord direct message when `discord.allow_direct_messages` is off.
pub const NO_DIRECT_MESSAGES: &str =
    "Los discursos solo están disponibles en servidores, no en mensajes directos.";
/// A Telegram chat outside `telegram.allowed_chats`.
pub const CHAT_NOT_ALLOWED: &str = "Este chat no tiene acceso a los discursos.";
/// The status command asked by someone who is not an admin.
pub const ADMINS_ONLY: &str = "Solo los administradores pueden ver el estado.";
/// A command Discord sent that this bot does not have.
pub const UNKNOWN_COMMAND: &str = "Comando desconocido.";

/// An admin action word that is none of `known`.
pub fn unknown_action(word: &str, known: &str) -> String {
    format!("No conozco «{word}»: usa {known}.")
}
