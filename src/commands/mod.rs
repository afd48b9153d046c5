//! One module per subcommand, each with its arguments struct and that struct's [`Run`]: the
//! settings its flags override, then its work, printed as text or JSON. [`args`] holds the
//! flag groups several share. Commands never import the command line (`cli`), which
//! imports them.

pub mod admin;
pub mod args;
pub mod bench;
pub mod bench_train;
pub mod corpus;
pub mod eval;
pub mod generate;
pub mod progress;
pub mod publish;
pub mod random_model;
pub mod scrape;
pub mod serve;
pub mod train;
pub mod vocab;

use crate::config::{Config, Override};
use crate::exit::{Exit, Failure};

/// Output format of every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON document.
    Json,
    /// JSON Lines: one object per line (`corpus export`); other commands print one line of JSON.
    Jsonl,
}

/// What every subcommand runs with.
pub struct Context {
    /// The settings after every override.
    pub config: Config,
    /// How to print the result.
    pub format: Format,
    /// Where the settings came from, for a daemon that reloads them.
    pub settings: serve::SettingsSource,
}

/// A subcommand: the settings its flags override (applied before the settings are loaded),
/// then its work.
pub trait Run {
    /// `--model` and the like, as overrides of the settings they mirror.
    fn overrides(&self) -> Vec<Override> {
        Vec::new()
    }

    /// Does the work.
    fn run(&self, ctx: &Context) -> Result<(), Failure>;
}

/// `mananera config` has no flags of its own.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {}

impl Run for ConfigArgs {
    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        show_config(&ctx.config, ctx.format)
    }
}

/// `mananera config`: the effective settings, as TOML or JSON.
pub fn show_config(config: &Config, format: Format) -> Result<(), Failure> {
    let text = match format {
        Format::Json | Format::Jsonl => {
            serde_json::to_string_pretty(config).map_err(|e| Failure {
                exit: Exit::Internal,
                message: e.to_string(),
            })?
        }
        Format::Text => toml::to_string_pretty(config).map_err(|e| Failure {
            exit: Exit::Internal,
            message: e.to_string(),
        })?,
    };
    println!("{text}");
    Ok(())
}

/// The failure of a command whose async runtime could not be built.
pub(crate) fn no_runtime(e: std::io::Error) -> Failure {
    Failure {
        exit: Exit::Internal,
        message: format!("cannot start the async runtime: {e}"),
    }
}

/// Prints `value` as one JSON document on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure {
        exit: Exit::Internal,
        message: e.to_string(),
    })?;
    println!("{text}");
    Ok(())
}
