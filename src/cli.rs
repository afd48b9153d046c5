//! The `mananera` command line: the global options, the subcommands, and the one dispatch
//! over them. Each subcommand's flags and work live in its module under [`crate::commands`]
//! (see [`commands::Run`]); exit codes are [`crate::exit`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{self, Context, Format, Run};
use crate::config::{Config, Override};
use crate::exit::Failure;

/// Speeches in the voice of the mañanera, from a BLOOM model.
#[derive(Debug, Parser)]
#[command(name = "mananera", version, about)]
pub struct Cli {
    /// Settings file (default: ./config.toml when present, else built-in defaults).
    #[arg(long, global = true, env = "MANANERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override any setting: --set section.key=value (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output for people (text) or programs (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. A new one is a variant here, its arguments struct in its module, and
/// that struct's [`Run`]: nothing else changes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a speech about a topic, streaming it as it is written.
    Generate(commands::generate::GenerateArgs),
    /// Perplexity of a text file under the model.
    Eval(commands::eval::EvalArgs),
    /// Prefill and decode speed and memory on a model of bloom-560m's shape with random weights.
    Bench(commands::bench::BenchArgs),
    /// Training speed and memory (LoRA and full) on a model of bloom-560m's shape with random weights.
    BenchTrain(commands::bench_train::BenchTrainArgs),
    /// Write the trimmed vocabulary of a corpus (for engine.vocabulary).
    Vocab(commands::vocab::VocabArgs),
    /// Fetch new transcripts from every configured site into the corpus.
    Scrape(commands::scrape::ScrapeArgs),
    /// Look at, feed and export the corpus.
    #[command(subcommand)]
    Corpus(commands::corpus::CorpusCommand),
    /// Print the effective settings after every override.
    Config(commands::ConfigArgs),
    /// Run the daemon: web page, HTTP API and metrics (serve.listen) over the generation
    /// service and the prompt cache.
    Serve(commands::serve::ServeArgs),
    /// Write a checkpoint with random weights (bloom-560m's shape by default), for
    /// benchmarks of the daemon without a download.
    RandomModel(commands::random_model::RandomModelArgs),
    /// Look at or empty the prompt cache (while the daemon is stopped).
    #[command(subcommand)]
    Cache(commands::serve::CacheCommand),
    /// Fine-tune the model on the corpus ([training]) and write a new version, which becomes
    /// current if its validation perplexity is no worse than the current one's.
    Train(commands::train::TrainArgs),
    /// The fine-tuned versions, their numbers, and which one is current.
    Versions(commands::train::VersionsArgs),
    /// The running daemon's state: model version, queue, cache, the nightly schedule and
    /// the last runs (over the control socket).
    Status(commands::admin::StatusArgs),
    /// Start the nightly run (scrape, fine-tune, serve) on the running daemon now, or
    /// cancel the one in progress.
    Retrain(commands::admin::RetrainArgs),
    /// Make an earlier accepted version current (default: the one before the current one);
    /// a running daemon serves it at once.
    Rollback(commands::admin::RollbackArgs),
    /// Write a fine-tuned version merged into its base as a plain BLOOM checkpoint
    /// (for transformers, or for model.id).
    Export(commands::train::ExportArgs),
    /// Write an accepted version where the generation server loads it ([publish]: the
    /// merged checkpoint, a GGUF), point publish.dir/current at it, and run the hook.
    Publish(commands::publish::PublishArgs),
}

impl Command {
    /// The subcommand as the one thing every subcommand is.
    fn into_run(self) -> Box<dyn Run> {
        match self {
            Command::Generate(args) => Box::new(args),
            Command::Eval(args) => Box::new(args),
            Command::Bench(args) => Box::new(args),
            Command::BenchTrain(args) => Box::new(args),
            Command::Vocab(args) => Box::new(args),
            Command::Scrape(args) => Box::new(args),
            Command::Corpus(args) => Box::new(args),
            Command::Config(args) => Box::new(args),
            Command::Serve(args) => Box::new(args),
            Command::RandomModel(args) => Box::new(args),
            Command::Cache(args) => Box::new(args),
            Command::Train(args) => Box::new(args),
            Command::Versions(args) => Box::new(args),
            Command::Status(args) => Box::new(args),
            Command::Retrain(args) => Box::new(args),
            Command::Rollback(args) => Box::new(args),
            Command::Export(args) => Box::new(args),
            Command::Publish(args) => Box::new(args),
        }
    }
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.set = every_set(std::env::args_os());
    crate::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.exit.code())
        }
    }
}

/// Every `--set` value in command-line order, before and after the subcommand: clap keeps
/// only the subcommand's occurrences of a global option given on both sides, which silently
/// dropped the settings given before it. (Parsing already succeeded, so each `--set` token
/// before a `--` is the option.)
fn every_set(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args
        .into_iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--set" {
            out.extend(args.next());
        } else if let Some(value) = arg.strip_prefix("--set=") {
            out.push(value.to_string());
        }
    }
    out
}

/// Settings (file, `--set`, then the subcommand's own flags), the matrix thread pool, then
/// the subcommand.
fn run(cli: Cli) -> Result<(), Failure> {
    let mut overrides = cli
        .set
        .iter()
        .map(|s| Override::parse_set(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    let command = cli.command.into_run();
    overrides.extend(command.overrides());
    let config = Config::load(cli.config.as_deref(), &overrides).map_err(Failure::usage)?;
    if config.engine.threads > 0 {
        // candle's kernels read RAYON_NUM_THREADS when sizing their work split.
        // SAFETY: still single-threaded: parsing, logging set-up and loading the settings
        // start no thread.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", config.engine.threads.to_string()) };
    }
    mananera_engine::configure_threads(config.engine.threads);
    command.run(&Context {
        config,
        format: cli.format,
        settings: commands::serve::SettingsSource {
            path: cli.config,
            overrides,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::every_set;

    #[test]
    fn settings_before_and_after_the_subcommand_all_count() {
        let args = [
            "mananera",
            "--set",
            "corpus.chunk_chars=500",
            "train",
            "--set=training.seed=7",
            "--set",
            "training.epochs=2",
            "--",
            "--set",
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            every_set(args),
            [
                "corpus.chunk_chars=500",
                "training.seed=7",
                "training.epochs=2"
            ]
        );
    }
}
