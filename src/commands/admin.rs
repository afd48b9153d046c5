//! `mananera status`, `mananera retrain` and `mananera rollback`: admin requests to the
//! running daemon over its control socket.

use std::time::Duration;

use crate::admin::{RefusalKind, Refused, Request, Status};
use crate::commands::args::ControlArgs;
use crate::commands::{Context, Format, Run};
use crate::config::Config;
use crate::config::Override;
use crate::control::{self, ClientError};
use crate::exit::{Exit, Failure};
use crate::live::{RolledBack, rollback_offline};
use crate::nightly::runs::{Outcome, RunRecord};

/// `mananera status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// How to reach the daemon.
    #[command(flatten)]
    pub control: ControlArgs,
}

impl Run for StatusArgs {
    fn overrides(&self) -> Vec<Override> {
        self.control.overrides()
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        status(&ctx.config, ctx.format)
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
    /// How to reach the daemon.
    #[command(flatten)]
    pub control: ControlArgs,
}

impl Run for RetrainArgs {
    fn overrides(&self) -> Vec<Override> {
        self.control.overrides()
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        retrain(&ctx.config, self, ctx.format)
    }
}

/// `mananera rollback [VERSION]`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// A version id such as v0002.
    pub version: Option<String>,
    /// How to reach the daemon.
    #[command(flatten)]
    pub control: ControlArgs,
}

impl Run for RollbackArgs {
    fn overrides(&self) -> Vec<Override> {
        self.control.overrides()
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        rollback(&ctx.config, self.version.as_deref(), ctx.format)
    }
}

/// How often `retrain --wait` asks for news.
const POLL: Duration = Duration::from_millis(500);

fn ask(config: &Config, request: &Request) -> Result<serde_json::Value, Failure> {
    control::request(&control::socket_path(config), request).map_err(client_failure)
}

fn client_failure(e: ClientError) -> Failure {
    match e {
        ClientError::NoDaemon(message) | ClientError::Other(message) => Failure {
            exit: Exit::Internal,
            message,
        },
        ClientError::Refused(Refused { code, error }) => Failure {
            exit: match code {
                RefusalKind::InProgress => Exit::Busy,
                RefusalKind::NotReady | RefusalKind::NotRunning | RefusalKind::BadRequest => {
                    Exit::Usage
                }
                RefusalKind::Failed => Exit::Internal,
            },
            message: error,
        },
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|e| Failure {
        exit: Exit::Internal,
        message: format!(
            "the daemon's answer is unreadable ({e}); is it the same mananera version?"
        ),
    })
}

/// `mananera status`.
pub fn status(config: &Config, format: Format) -> Result<(), Failure> {
    let value = ask(config, &Request::Status)?;
    if format != Format::Text {
        return super::print_json(&value);
    }
    let s: Status = parse(value)?;
    println!(
        "model: {}{}",
        s.model_version.as_deref().unwrap_or("loading"),
        if s.ready { "" } else { " (not ready)" }
    );
    println!(
        "serving: model.version = \"{}\"; current version: {}",
        s.serving,
        s.current_version
            .as_deref()
            .unwrap_or("none (the base model)")
    );
    match &s.backend_unavailable {
        None => println!("generation: {}", s.backend),
        Some(why) => println!("generation: {} — unavailable: {why}", s.backend),
    }
    println!(
        "queue: {} waiting, {} being written; cache: {} hits, {} misses, {} entries",
        s.queue_depth, s.batch_size, s.cache_hits, s.cache_misses, s.cache_entries
    );
    println!(
        "nightly: {}; next run {}",
        s.schedule,
        s.next_run.as_deref().unwrap_or("not scheduled")
    );
    for f in &s.failing {
        println!(
            "failing: {} since {}, {} failed calls; newest error: {}",
            f.what, f.since, f.failed_calls, f.error
        );
    }
    if s.runs.is_empty() {
        println!("no runs yet");
    }
    for run in &s.runs {
        println!("{}", describe(run));
    }
    Ok(())
}

/// One run on one line.
fn describe(r: &RunRecord) -> String {
    let mut line = format!(
        "run {} ({}): {}",
        r.started,
        r.trigger,
        if r.outcome == Outcome::Running {
            format!("running, {}", r.phase)
        } else {
            r.outcome.name().to_string()
        }
    );
    line.push_str(&format!(", {} new transcripts", r.new_transcripts));
    if !r.scrape_failures.is_empty() {
        line.push_str(&format!(
            " (failed pages: {})",
            r.scrape_failures.join(", ")
        ));
    }
    if let Some(t) = &r.trained {
        line.push_str(&format!(", {}", t.describe("perplexity")));
        if t.metrics.backlog > 0 {
            line.push_str(&format!(", backlog: {} transcripts", t.metrics.backlog));
            if let Some(n) = crate::admin::nights(t.metrics.backlog, t.new_transcripts) {
                line.push_str(&format!(" (~{n} nights at this speed)"));
            }
        }
    }
    if let Some(v) = &r.serving {
        line.push_str(&format!(", serving {v}"));
    }
    if let Some(e) = &r.error {
        line.push_str(&format!("; {e}"));
    }
    line
}

/// `mananera retrain --now|--cancel [--wait]`.
pub fn retrain(config: &Config, args: &RetrainArgs, format: Format) -> Result<(), Failure> {
    let request = if args.cancel {
        Request::Cancel
    } else {
        Request::Retrain
    };
    let record: RunRecord = parse(ask(config, &request)?)?;
    if !args.wait {
        match format {
            Format::Text if args.cancel => {
                println!("cancelling the run started {}", record.started)
            }
            Format::Text => println!("run started {} ({})", record.started, record.id),
            _ => super::print_json(&record)?,
        }
        return Ok(());
    }
    let finished = loop {
        let status: Status = parse(ask(config, &Request::Status)?)?;
        if let Some(r) = status.runs.into_iter().find(|r| r.id == record.id)
            && r.outcome != Outcome::Running
        {
            break r;
        }
        std::thread::sleep(POLL);
    };
    match format {
        Format::Text => println!("{}", describe(&finished)),
        _ => super::print_json(&finished)?,
    }
    match finished.outcome {
        Outcome::Accepted | Outcome::NothingNew => Ok(()),
        outcome => Err(Failure {
            exit: match outcome {
                Outcome::Rejected => Exit::Rejected,
                Outcome::Cancelled => Exit::Stopped,
                _ => Exit::Internal,
            },
            message: format!(
                "the run ended {}{}",
                outcome.name(),
                finished.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        }),
    }
}

/// `mananera rollback [VERSION]`: through the daemon when one runs, else on disk only.
pub fn rollback(config: &Config, version: Option<&str>, format: Format) -> Result<(), Failure> {
    let request = Request::Rollback {
        version: version.map(str::to_string),
    };
    let done: RolledBack = match control::request(&control::socket_path(config), &request) {
        Ok(value) => parse(value)?,
        Err(ClientError::NoDaemon(_)) => {
            rollback_offline(config, version).map_err(|e| Failure::new(e.exit(), e.to_string()))?
        }
        Err(e) => return Err(client_failure(e)),
    };
    if format != Format::Text {
        return super::print_json(&done);
    }
    println!(
        "current version: {} → {}",
        done.from.as_deref().unwrap_or("none"),
        done.to
    );
    match &done.served {
        Some(crate::live::Reloaded::Swapped { to, .. }) => println!("the daemon now serves {to}"),
        Some(crate::live::Reloaded::Unchanged { version }) => {
            println!("the daemon still serves {version}")
        }
        None => println!("no daemon is running: the next start serves it"),
    }
    if let Some(note) = &done.note {
        println!("note: {note}");
    }
    Ok(())
}
