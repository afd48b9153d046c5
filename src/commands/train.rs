//! `mananera train`, `mananera versions` and `mananera export --merge`: fine-tune the model
//! on the corpus, list what was trained, and hand a version to other tools.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use mananera_model::checkpoint::Checkpoint;
use mananera_model::gguf::{self, GgufType};
use mananera_model::versions::{self, Status, Version};
use mananera_training::tune::TrainError;
use mananera_training::tune::data::Document;
use mananera_training::tune::head::Vocabulary;
use mananera_training::tune::merge::export_merged;
use mananera_training::tune::run::{Event, Job, Outcome, train};
use serde::Serialize;

use super::corpus::open as open_corpus;
use super::print_json;
use crate::admin::nights;
use crate::commands::args::{ModelArgs, push, push_model};
use crate::commands::{Context, Format, Run};
use crate::config::Config;
use crate::config::Override;
use crate::exit::{Exit, Failure};
use crate::summary::{TrainOutcome, TrainSummary};
use mananera_engine::finetuned::Choice;
use mananera_engine::{EngineOptions, Quantization, model_version};

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
    fn overrides_of_flags(&self) -> Vec<Override> {
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

impl Run for TrainArgs {
    fn overrides(&self) -> Vec<Override> {
        self.overrides_of_flags()
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let flags = TrainFlags {
            incremental: self.incremental,
            resume: self.resume,
        };
        run(&ctx.config, flags, ctx.format)
    }
}

/// `mananera versions` has no flags of its own.
#[derive(Debug, clap::Args)]
pub struct VersionsArgs {}

impl Run for VersionsArgs {
    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        versions_command(&ctx.config, ctx.format)
    }
}

/// `mananera export --merge VERSION OUT` or `mananera export --gguf VERSION OUT.gguf`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Fold the adapter into the base weights, as a plain BLOOM checkpoint directory
    /// (adapters are already in PEFT's layout in the version directory).
    #[arg(long, required_unless_present = "gguf", conflicts_with = "gguf")]
    pub merge: bool,
    /// Write the version (merged) as one GGUF file for llama.cpp or Ollama.
    #[arg(long)]
    pub gguf: bool,
    /// The GGUF's weight matrices: f32 or f16 (quantize further with llama.cpp's
    /// llama-quantize).
    #[arg(long, value_enum, default_value_t = GgufKind::F16, requires = "gguf")]
    pub gguf_type: GgufKind,
    /// A version id (v0003), "current", or (with --gguf) "base": the base checkpoint alone.
    pub version: String,
    /// A new directory (--merge) or file (--gguf) to write.
    pub out: PathBuf,
    /// The base checkpoint (model.id).
    #[arg(long)]
    pub model: Option<String>,
}

impl Run for ExportArgs {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        push_model(&mut out, self.model.as_deref());
        out
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        match self.gguf {
            true => gguf_command(
                &ctx.config,
                &self.version,
                self.gguf_type,
                &self.out,
                ctx.format,
            ),
            false => export_command(&ctx.config, &self.version, &self.out, ctx.format),
        }
    }
}

/// The GGUF weight types `export --gguf` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GgufKind {
    F32,
    F16,
}

/// Flags of `mananera train`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainFlags {
    /// Continue from the current version on the transcripts it has not seen.
    pub incremental: bool,
    /// Continue the stopped run.
    pub resume: bool,
}

/// Exit codes: settings and data 2, an unusable model 3, a busy versions directory 5,
/// anything else 1.
pub(super) fn failure(e: TrainError) -> Failure {
    let exit = match &e {
        TrainError::Config(_) | TrainError::Data(_) => Exit::Usage,
        TrainError::Model(_) => Exit::Model,
        TrainError::Busy(_) => Exit::Busy,
        TrainError::Io { .. } | TrainError::Tensor(_) => Exit::Internal,
    };
    Failure::new(exit, e.to_string())
}

/// The base checkpoint (no fine-tuned version on top) and its content version.
pub(super) fn base(config: &Config) -> Result<(Checkpoint, String), Failure> {
    let options = EngineOptions {
        version: Choice::Base,
        quantization: Quantization::None,
        vocabulary: None,
        ..config.engine_options()
    };
    let base = Checkpoint::open(options.source.resolve()?)?;
    let version = model_version(&options)?;
    Ok((base, version))
}

/// The trimmed head training scores with: the vocabulary the engine serves
/// (`engine.vocabulary`), if one is set.
fn head_vocabulary(config: &Config, base: &Checkpoint) -> Result<Option<Vocabulary>, Failure> {
    let Some(path) = config.engine_options().vocabulary else {
        return Ok(None);
    };
    let ids = mananera_engine::vocabulary::read(&path, &base.config)?;
    let vocabulary = Vocabulary::new(ids, base.config.vocab_size).map_err(failure)?;
    tracing::info!(path = %path.display(), kept = vocabulary.ids().len(), of = base.config.vocab_size, "training the trimmed head of engine.vocabulary");
    Ok(Some(vocabulary))
}

/// Every transcript of the corpus, read while holding the corpus lock, in its speaker's
/// voice. A transcript of a speaker no `[[corpus.speakers]]` entry names is refused.
fn documents(config: &Config) -> Result<Vec<Document>, Failure> {
    let corpus = open_corpus(config)?;
    let speakers = &config.corpus.speakers;
    corpus
        .entries()
        .into_iter()
        .map(|entry| {
            let transcript = corpus.read(entry).map_err(|e| Failure {
                exit: Exit::Internal,
                message: e.to_string(),
            })?;
            let voice = speakers
                .iter()
                .find(|s| s.name == transcript.speaker)
                .ok_or_else(|| Failure {
                    exit: Exit::Usage,
                    message: format!(
                        "transcript {} is by {:?}, whom no [[corpus.speakers]] entry names; \
                         add that speaker (with a `voice` and a `header`) to train on it",
                        entry.id, transcript.speaker
                    ),
                })?;
            Ok(Document {
                id: entry.id.clone(),
                date: entry.date.to_string(),
                voice: voice.voice.clone(),
                text: transcript.text,
            })
        })
        .collect()
}

/// Sets `stop` on SIGINT or SIGTERM (a second signal exits at once).
fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(super::no_runtime)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(mut terminate) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                for _ in 0..2 {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                    if stop.swap(true, Ordering::SeqCst) {
                        tracing::warn!("second stop signal: exiting without a checkpoint");
                        std::process::exit(i32::from(Exit::Stopped.code()));
                    }
                    tracing::info!(
                        "stopping at the next step boundary (a checkpoint will be saved)"
                    );
                }
            });
        })
        .map(drop)
        .map_err(|e| Failure {
            exit: Exit::Internal,
            message: format!("cannot watch for signals: {e}"),
        })
}

/// `mananera train`.
pub fn run(config: &Config, flags: TrainFlags, format: Format) -> Result<(), Failure> {
    crate::heap::reuse_freed_buffers();
    let (base, base_version) = base(config)?;
    let vocabulary = head_vocabulary(config, &base)?;
    let documents = if flags.resume {
        Vec::new()
    } else {
        documents(config)?
    };
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let job = Job {
        base,
        base_model: config.model.id.clone(),
        base_version,
        settings: config.training.clone(),
        versions_dir: config.versions_dir(),
        incremental: flags.incremental,
        resume: flags.resume,
        stop: &stop,
        vocabulary,
        voices: config.corpus.speakers.iter().map(|s| s.voice()).collect(),
    };
    let mut reporter = Reporter::new();
    let outcome = train(&job, &documents, &mut |event| reporter.event(event));
    reporter.finish();
    let outcome = outcome.map_err(failure)?;
    let summary = match &outcome {
        Outcome::Finished(version) => TrainSummary {
            outcome: match version.status {
                Status::Accepted => TrainOutcome::Accepted,
                Status::Rejected => TrainOutcome::Rejected,
            },
            version: Some(version.as_ref().into()),
            step: Some(version.metrics.steps),
            total_steps: Some(version.metrics.steps),
            current: None,
        },
        Outcome::Stopped { step, total } => TrainSummary {
            outcome: TrainOutcome::Stopped,
            version: None,
            step: Some(*step),
            total_steps: Some(*total),
            current: None,
        },
        Outcome::NothingNew { current } => TrainSummary {
            outcome: TrainOutcome::NothingNew,
            version: None,
            step: None,
            total_steps: None,
            current: Some(current.clone()),
        },
    };
    match format {
        Format::Json | Format::Jsonl => print_json(&summary)?,
        Format::Text => print_summary(&outcome),
    }
    match outcome {
        Outcome::Finished(v) if v.status == Status::Rejected => Err(Failure {
            exit: Exit::Rejected,
            message: format!(
                "version {} was rejected: validation perplexity {:.3} against {:.3} now \
                 (training.tolerance {}); the current version is unchanged",
                v.id,
                v.metrics.perplexity_after,
                v.metrics.perplexity_before,
                config.training.tolerance
            ),
        }),
        Outcome::Stopped { .. } => Err(Failure {
            exit: Exit::Stopped,
            message: "stopped; continue with `mananera train --resume`".into(),
        }),
        _ => Ok(()),
    }
}

fn print_summary(outcome: &Outcome) {
    match outcome {
        Outcome::Finished(v) => {
            let m = &v.metrics;
            println!(
                "version {} {}: validation perplexity {:.3} → {:.3}, train loss {:.4} → {:.4}",
                v.id,
                match v.status {
                    Status::Accepted => "accepted (now current)",
                    Status::Rejected => "rejected (current unchanged)",
                },
                m.perplexity_before,
                m.perplexity_after,
                m.train_loss_first,
                m.train_loss_last
            );
            println!(
                "{} steps, {} tokens in {:.1} s ({:.0} tokens/s); {} new transcripts, data {} … {}",
                m.steps,
                m.tokens,
                m.wall_s,
                m.tokens_per_s,
                v.new_transcripts.len(),
                m.data_window.0,
                m.data_window.1
            );
            if m.budget_reached || m.backlog > 0 {
                println!(
                    "{}backlog: {} transcripts not trained yet{}",
                    if m.budget_reached {
                        "the time budget ended the run; "
                    } else {
                        ""
                    },
                    m.backlog,
                    nights(m.backlog, v.new_transcripts.len())
                        .map_or(String::new(), |n| format!(", ~{n} more runs at this speed"))
                );
            }
        }
        Outcome::Stopped { step, total } => {
            println!("stopped after step {step} of {total}; `mananera train --resume` continues");
        }
        Outcome::NothingNew { current } => {
            println!("no new transcripts since version {current}; nothing to train");
        }
    }
}

/// Draws a bar with loss, tokens/s and ETA at a terminal, and logs progress every 30 s
/// (for journald and other non-terminals).
struct Reporter {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Reporter {
    fn new() -> Self {
        Self {
            bar: None,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Phase(phase) => {
                tracing::info!(phase, "training");
                if let Some(bar) = &self.bar {
                    bar.set_message(phase);
                }
            }
            Event::Start { total } => {
                let bar = ProgressBar::new(total as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "train [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                super::progress::show(&bar);
                self.started = Instant::now();
                self.bar = Some(bar);
            }
            Event::Step {
                step,
                total,
                loss,
                lr,
                grad_norm,
                tokens,
            } => {
                let rate = tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                if let Some(bar) = &self.bar {
                    bar.set_position(step as u64);
                    bar.set_message(format!("loss {loss:.4}  {rate:.0} tok/s"));
                }
                if self.last_log.elapsed() >= Duration::from_secs(30) || step == total {
                    self.last_log = Instant::now();
                    tracing::info!(
                        step,
                        total,
                        loss,
                        lr,
                        grad_norm,
                        tokens_per_s = rate,
                        "training step"
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            super::progress::hide(bar);
        }
    }
}

/// `mananera versions`: every version, which is current, and its numbers.
pub fn versions_command(config: &Config, format: Format) -> Result<(), Failure> {
    let dir = config.versions_dir();
    let list = versions::list(&dir)?;
    let current = versions::current(&dir)?.map(|v| v.id);
    match format {
        Format::Json | Format::Jsonl => {
            #[derive(Serialize)]
            struct Out<'a> {
                dir: String,
                current: Option<&'a str>,
                versions: &'a [Version],
            }
            print_json(&Out {
                dir: dir.display().to_string(),
                current: current.as_deref(),
                versions: &list,
            })
        }
        Format::Text => {
            println!("versions {}", dir.display());
            println!(
                "{:<2}{:<7} {:<9} {:<6} {:>10} {:>10} {:>7} {:>5} {:>7}  parent",
                "", "id", "status", "method", "ppl before", "ppl after", "steps", "new", "backlog"
            );
            for v in &list {
                println!(
                    "{:<2}{:<7} {:<9} {:<6} {:>10.3} {:>10.3} {:>7} {:>5} {:>7}  {}",
                    if current.as_deref() == Some(v.id.as_str()) {
                        "*"
                    } else {
                        ""
                    },
                    v.id,
                    format!("{:?}", v.status).to_lowercase(),
                    v.method,
                    v.metrics.perplexity_before,
                    v.metrics.perplexity_after,
                    v.metrics.steps,
                    v.new_transcripts.len(),
                    v.metrics.backlog,
                    v.parent.as_deref().unwrap_or("-")
                );
            }
            if let Some(v) = list
                .iter()
                .find(|v| current.as_deref() == Some(v.id.as_str()))
                && v.metrics.backlog > 0
            {
                println!(
                    "backlog of the current version: {} transcripts{}",
                    v.metrics.backlog,
                    nights(v.metrics.backlog, v.new_transcripts.len())
                        .map_or(String::new(), |n| format!(", ~{n} nights at this speed"))
                );
            }
            if list.is_empty() {
                println!("(none yet: run `mananera train`)");
            }
            Ok(())
        }
    }
}

/// A version record by its name on the command line: an id or "current".
pub(super) fn named_version(dir: &Path, version: &str) -> Result<Version, Failure> {
    Ok(match version {
        "current" => versions::current(dir)?.ok_or_else(|| {
            Failure::usage(format!(
                "{} has no current version; train one first",
                dir.display()
            ))
        })?,
        id => versions::get(dir, id)?,
    })
}

/// `mananera export --gguf VERSION OUT`: the version folded into its base (or the base
/// alone), as a GGUF file llama.cpp loads.
pub fn gguf_command(
    config: &Config,
    version: &str,
    kind: GgufKind,
    out: &Path,
    format: Format,
) -> Result<(), Failure> {
    if out.exists() {
        return Err(Failure::usage(format!(
            "{} already exists; name a new file",
            out.display()
        )));
    }
    let (base, _) = base(config)?;
    let dir = config.versions_dir();
    let staging = tempfile::tempdir_in(
        out.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
    .map_err(|e| Failure::usage(format!("cannot write next to {}: {e}", out.display())))?;
    let (source, id) = match version {
        "base" => (base, "base".to_string()),
        name => {
            let record = named_version(&dir, name)?;
            let merged = staging.path().join("merged");
            export_merged(&base, &dir, &record, &merged).map_err(failure)?;
            (Checkpoint::local(&merged)?, record.id)
        }
    };
    let name = format!("{}+{id}", config.model.id);
    write_gguf(&source, kind, &name, out)?;
    match format {
        Format::Json | Format::Jsonl => print_json(&serde_json::json!({
            "version": id,
            "out": out.display().to_string(),
            "type": format!("{kind:?}").to_lowercase(),
        })),
        Format::Text => {
            println!("wrote {name} as GGUF ({kind:?}) to {}", out.display());
            Ok(())
        }
    }
}

/// `source` as one GGUF file named `name` inside, its matrices of type `kind`.
pub(super) fn write_gguf(
    source: &Checkpoint,
    kind: GgufKind,
    name: &str,
    out: &Path,
) -> Result<(), Failure> {
    let weights = source.read_weights()?;
    let dtype = match kind {
        GgufKind::F32 => GgufType::F32,
        GgufKind::F16 => GgufType::F16,
    };
    gguf::write(
        &source.config,
        &weights,
        &source.files.tokenizer,
        dtype,
        name,
        out,
    )
    .map_err(|e| Failure::new(Exit::Model, e.to_string()))
}

/// `mananera export --merge VERSION OUT`: the version folded into its base, as a plain
/// BLOOM checkpoint for transformers (or for `model.id`).
pub fn export_command(
    config: &Config,
    version: &str,
    out: &Path,
    format: Format,
) -> Result<(), Failure> {
    let dir = config.versions_dir();
    let record = named_version(&dir, version)?;
    let (base, _) = base(config)?;
    export_merged(&base, &dir, &record, out).map_err(failure)?;
    match format {
        Format::Json | Format::Jsonl => print_json(&serde_json::json!({
            "version": record.id,
            "out": out.display().to_string(),
        })),
        Format::Text => {
            println!(
                "wrote version {} merged with {} to {}",
                record.id,
                record.base_model,
                out.display()
            );
            Ok(())
        }
    }
}
