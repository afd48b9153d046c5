//! The `mananera` command line: global options, subcommands, logging and exit codes.
//!
//! Exit codes: 0 success; 1 internal failure; 2 bad usage, settings or input;
//! 3 the model could not be found, downloaded or read; 4 some pages or sources failed
//! (the rest was done); 5 the corpus is in use by another process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands;
use crate::config::{Config, Override};
use crate::engine;

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

/// Output format of every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// JSON Lines: one object per line (`corpus export`); other commands print one line of JSON.
    Jsonl,
}

/// Where the corpus lives, for every `scrape`/`corpus` command.
#[derive(Debug, clap::Args)]
pub struct CorpusArgs {
    /// Corpus directory (corpus.dir).
    #[arg(long, value_name = "DIR")]
    pub corpus_dir: Option<PathBuf>,
}

impl CorpusArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push(
            &mut out,
            "corpus.dir",
            "--corpus-dir",
            self.corpus_dir
                .as_ref()
                .map(|d| format!("{:?}", d.display().to_string())),
        );
        out
    }
}

/// `mananera corpus` subcommands.
#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Transcripts, characters, chunks and date range per source.
    Stats {
        #[command(flatten)]
        corpus: CorpusArgs,
    },
    /// Ingest saved HTML pages of a configured source and the plain-text "mananeras" dataset.
    Import {
        /// Files or directories (searched for *.html, *.htm and *.txt).
        paths: Vec<PathBuf>,
        #[command(flatten)]
        corpus: CorpusArgs,
    },
    /// Write the clean corpus to stdout, one chunk per line (--format text) or JSON Lines
    /// with date, source, url and text (--format jsonl).
    Export {
        #[command(flatten)]
        corpus: CorpusArgs,
    },
    /// Cleaning throughput (MB/s of HTML on one core) over saved pages.
    Bench {
        /// HTML pages of a configured source.
        files: Vec<PathBuf>,
        /// Measure for at least this long.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

/// Options shared by the commands that load a model.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Hub repository id or local checkpoint directory (model.id).
    #[arg(long)]
    pub model: Option<String>,
    /// Weights in memory: none (f32), q8_0 or q4k (engine.quantization).
    #[arg(long)]
    pub quantization: Option<String>,
    /// Matrix worker threads, 0 = all cores (engine.threads).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push(
            &mut out,
            "model.id",
            "--model",
            self.model.as_ref().map(|m| format!("{m:?}")),
        );
        push(
            &mut out,
            "engine.quantization",
            "--quantization",
            self.quantization.as_ref().map(|q| format!("{q:?}")),
        );
        push(
            &mut out,
            "engine.threads",
            "--threads",
            self.threads.map(|t| t.to_string()),
        );
        out
    }
}

/// Sampling flags of `generate`, mirroring `[generation]`.
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// 0 = off.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// 1 = off.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// 1 = off.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 = no word limit.
    #[arg(long)]
    pub max_words: Option<usize>,
}

impl SamplingArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        let fields: [(&str, Option<String>); 7] = [
            ("temperature", self.temperature.map(|v| format!("{v:?}"))),
            ("top_k", self.top_k.map(|v| v.to_string())),
            ("top_p", self.top_p.map(|v| format!("{v:?}"))),
            (
                "repetition_penalty",
                self.repetition_penalty.map(|v| format!("{v:?}")),
            ),
            ("seed", self.seed.map(|v| v.to_string())),
            ("max_new_tokens", self.max_new_tokens.map(|v| v.to_string())),
            ("max_words", self.max_words.map(|v| v.to_string())),
        ];
        for (key, value) in fields {
            push(
                &mut out,
                &format!("generation.{key}"),
                &format!("--{}", key.replace('_', "-")),
                value,
            );
        }
        out
    }
}

fn push(out: &mut Vec<Override>, key: &str, flag: &str, value: Option<String>) {
    if let Some(value) = value {
        out.push(Override {
            key: key.into(),
            origin: format!("{flag} {value}"),
            value,
        });
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a speech about a topic, streaming it as it is written.
    Generate {
        /// The topic or opening words.
        topic: String,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Perplexity of a text file under the model.
    Eval {
        /// UTF-8 text file to score.
        file: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Prefill and decode speed and memory on a model of bloom-560m's shape with random weights.
    Bench(commands::bench::BenchArgs),
    /// Training speed and memory (LoRA and full) on a model of bloom-560m's shape with random weights.
    BenchTrain(commands::bench_train::BenchTrainArgs),
    /// Write the trimmed vocabulary of a corpus (for engine.vocabulary).
    Vocab {
        /// UTF-8 text files whose tokens to keep.
        corpus: Vec<PathBuf>,
        /// Where to write the vocabulary file.
        #[arg(long, short)]
        output: PathBuf,
        /// Hub repository id or local checkpoint directory whose tokenizer to use (model.id).
        #[arg(long)]
        model: Option<String>,
    },
    /// Fetch new transcripts from every configured site into the corpus.
    Scrape {
        /// Only this source (see scrape.sources).
        #[arg(long)]
        source: Option<String>,
        /// Ignore transcripts older than this day (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        since: Option<jiff::civil::Date>,
        /// Walk every listing to its end and re-fetch known pages (conditionally).
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        corpus: CorpusArgs,
    },
    /// Look at, feed and export the corpus.
    #[command(subcommand)]
    Corpus(CorpusCommand),
    /// Print the effective settings after every override.
    Config,
    /// Run the daemon: web page, HTTP API and metrics (serve.listen) over the generation
    /// service and the prompt cache.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// Address to listen on (serve.listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Write a checkpoint with random weights (bloom-560m's shape by default), for
    /// benchmarks of the daemon without a download.
    RandomModel(commands::random_model::RandomModelArgs),
    /// Look at or empty the prompt cache (while the daemon is stopped).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Fine-tune the model on the corpus ([training]) and write a new version, which becomes
    /// current if its validation perplexity is no worse than the current one's.
    Train(TrainArgs),
    /// The fine-tuned versions, their numbers, and which one is current.
    Versions,
    /// The running daemon's state: model version, queue, cache, the nightly schedule and
    /// the last runs (over the control socket).
    Status(ControlArgs),
    /// Start the nightly run (scrape, fine-tune, serve) on the running daemon now, or
    /// cancel the one in progress.
    Retrain(RetrainArgs),
    /// Make an earlier accepted version current (default: the one before the current one);
    /// a running daemon serves it at once.
    Rollback {
        /// A version id such as v0002.
        version: Option<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Write a fine-tuned version merged into its base as a plain BLOOM checkpoint
    /// (for transformers, or for model.id).
    Export {
        /// Fold the adapter into the base weights (the only export there is; adapters are
        /// already in PEFT's layout in the version directory).
        #[arg(long, required = true)]
        merge: bool,
        /// A version id (v0003) or "current".
        version: String,
        /// A new directory to write the checkpoint to.
        out: PathBuf,
        /// The base checkpoint (model.id).
        #[arg(long)]
        model: Option<String>,
    },
}

/// Flags of `mananera train`, mirroring `[training]`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Continue from the current version (weights and optimizer state) on the transcripts
    /// it has not trained on, mixed with a replay sample of older ones.
    #[arg(long, conflicts_with = "resume")]
    pub incremental: bool,
    /// Continue the run that was stopped (SIGINT/SIGTERM) from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// lora or full (training.method).
    #[arg(long)]
    pub method: Option<String>,
    /// Stop after this many optimizer steps (training.max_steps).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Passes over the training data (training.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Time budget in minutes, loading included (training.max_minutes): the run ends at
    /// the first step past it and is validated like any run.
    #[arg(long, value_parser = positive_minutes, allow_negative_numbers = true)]
    pub max_minutes: Option<f64>,
    /// Token budget: trained tokens, replay included (training.max_tokens).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens: Option<u64>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--max-minutes`: a positive number of minutes.
fn positive_minutes(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(m),
        _ => Err(format!(
            "`{text}` is not a time budget: give a positive number of minutes (300 for five \
             hours), or leave the flag out for none"
        )),
    }
}

impl TrainArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = self.model.overrides();
        push(
            &mut out,
            "training.method",
            "--method",
            self.method.as_ref().map(|m| format!("{m:?}")),
        );
        push(
            &mut out,
            "training.max_steps",
            "--max-steps",
            self.max_steps.map(|s| s.to_string()),
        );
        push(
            &mut out,
            "training.epochs",
            "--epochs",
            self.epochs.map(|s| s.to_string()),
        );
        push(
            &mut out,
            "training.max_minutes",
            "--max-minutes",
            self.max_minutes.map(|m| m.to_string()),
        );
        push(
            &mut out,
            "training.max_tokens",
            "--max-tokens",
            self.max_tokens.map(|t| t.to_string()),
        );
        out
    }
}

/// How to reach the running daemon.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The daemon's control socket (serve.control_socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl ControlArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push(
            &mut out,
            "serve.control_socket",
            "--socket",
            self.socket
                .as_ref()
                .map(|d| format!("{:?}", d.display().to_string())),
        );
        out
    }
}

/// Flags of `mananera retrain`.
#[derive(Debug, clap::Args)]
pub struct RetrainArgs {
    /// Start a run now.
    #[arg(long, required_unless_present = "cancel", conflicts_with = "cancel")]
    pub now: bool,
    /// Cancel the run in progress (its training checkpoint is resumed by the next run).
    #[arg(long)]
    pub cancel: bool,
    /// Wait for the run to end and exit by its outcome (0 accepted or nothing new, 6
    /// rejected, 130 cancelled, 1 failed).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `mananera cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entries and bytes in the prompt cache.
    Stats,
    /// Remove every cached speech.
    Clear,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Bad usage, settings or input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<engine::Error> for Failure {
    fn from(e: engine::Error) -> Self {
        let code = match e {
            engine::Error::InvalidInput(_) => 2,
            engine::Error::Checkpoint { .. } | engine::Error::Download { .. } => 3,
            engine::Error::Candle(_) | engine::Error::Internal(_) => 1,
        };
        Self {
            code,
            message: e.to_string(),
        }
    }
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.set = every_set(std::env::args_os());
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
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

fn run(cli: Cli) -> Result<(), Failure> {
    let mut overrides = cli
        .set
        .iter()
        .map(|s| Override::parse_set(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    match &cli.command {
        Command::Generate {
            model, sampling, ..
        } => {
            overrides.extend(model.overrides());
            overrides.extend(sampling.overrides());
        }
        Command::Eval { model, .. } => overrides.extend(model.overrides()),
        Command::Bench(args) => overrides.extend(args.model_overrides()),
        Command::Vocab { model, .. } => push(
            &mut overrides,
            "model.id",
            "--model",
            model.as_ref().map(|m| format!("{m:?}")),
        ),
        Command::Scrape { corpus, .. }
        | Command::Corpus(
            CorpusCommand::Stats { corpus }
            | CorpusCommand::Import { corpus, .. }
            | CorpusCommand::Export { corpus },
        ) => overrides.extend(corpus.overrides()),
        Command::Serve { model, listen } => {
            overrides.extend(model.overrides());
            push(
                &mut overrides,
                "serve.listen",
                "--listen",
                listen.as_ref().map(|l| format!("{l:?}")),
            );
        }
        Command::Train(args) => overrides.extend(args.overrides()),
        Command::Status(control)
        | Command::Retrain(RetrainArgs { control, .. })
        | Command::Rollback { control, .. } => overrides.extend(control.overrides()),
        Command::Export { model, .. } => push(
            &mut overrides,
            "model.id",
            "--model",
            model.as_ref().map(|m| format!("{m:?}")),
        ),
        Command::Corpus(CorpusCommand::Bench { .. })
        | Command::Versions
        | Command::BenchTrain(_)
        | Command::Config
        | Command::Cache(_)
        | Command::RandomModel(_) => {}
    }
    let config = Config::load(cli.config.as_deref(), &overrides).map_err(Failure::usage)?;
    let source = commands::serve::SettingsSource {
        path: cli.config.clone(),
        overrides,
    };
    configure_threads(config.engine.threads);
    match cli.command {
        Command::Generate { topic, .. } => commands::generate::run(&config, &topic, cli.format),
        Command::Eval { file, .. } => commands::eval::run(&config, &file, cli.format),
        Command::Bench(args) => commands::bench::run(&config, &args, cli.format),
        Command::Vocab { corpus, output, .. } => {
            commands::vocab::run(&config, &corpus, &output, cli.format)
        }
        Command::Scrape {
            source,
            since,
            full,
            ..
        } => {
            let options = mananera_training::scrape::ScrapeOptions { since, full };
            commands::scrape::run(&config, source.as_deref(), &options, cli.format)
        }
        Command::Corpus(command) => match command {
            CorpusCommand::Stats { .. } => commands::corpus::stats_command(&config, cli.format),
            CorpusCommand::Import { paths, .. } => {
                commands::corpus::import_command(&config, &paths, cli.format)
            }
            CorpusCommand::Export { .. } => commands::corpus::export_command(&config, cli.format),
            CorpusCommand::Bench { files, seconds } => {
                commands::corpus::bench_command(&config, &files, seconds, cli.format)
            }
        },
        Command::Config => commands::show_config(&config, cli.format),
        Command::Serve { .. } => commands::serve::run(&config, source),
        Command::Status(_) => commands::admin::status(&config, cli.format),
        Command::Retrain(args) => commands::admin::retrain(&config, &args, cli.format),
        Command::Rollback { version, .. } => {
            commands::admin::rollback(&config, version.as_deref(), cli.format)
        }
        Command::RandomModel(args) => commands::random_model::run(&args, cli.format),
        Command::Cache(command) => commands::serve::cache_command(
            &config,
            matches!(command, CacheCommand::Clear),
            cli.format,
        ),
        Command::Train(args) => commands::train::run(
            &config,
            commands::train::TrainFlags {
                incremental: args.incremental,
                resume: args.resume,
            },
            cli.format,
        ),
        Command::Versions => commands::train::versions_command(&config, cli.format),
        Command::BenchTrain(args) => commands::bench_train::run(&args, cli.format),
        Command::Export { version, out, .. } => {
            commands::train::export_command(&config, &version, &out, cli.format)
        }
    }
}

/// Logs go to stderr (stdout carries the command's output); `MANANERA_LOG` or `RUST_LOG`
/// set the filter, default `info`.
fn init_logging() {
    let filter = std::env::var("MANANERA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(commands::progress::LogWriter)
        // Colours only for a person at a terminal, not for journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Sizes the worker pool the matrix code runs on (candle and mananera's kernels share
/// rayon's global pool).
fn configure_threads(threads: usize) {
    if threads > 0 {
        // candle's own kernels read RAYON_NUM_THREADS when sizing their work split.
        // SAFETY: called before any other thread exists (start of `run`, single-threaded).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            tracing::warn!(error = %e, "could not size the thread pool");
        }
    }
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
