//! `mananera scrape`: fetch what is new on every transcript site into the corpus, then print
//! what happened per source.

use std::sync::Mutex;

use mananera_training::fetch::Fetcher;
use mananera_training::scrape::{ScrapeOptions, scrape, select_sources};
use mananera_training::store::Corpus;

use super::corpus::{corpus_failure, open};
use super::progress::Bar;
use crate::commands::args::CorpusArgs;
use crate::commands::{Context, Format, Run};
use crate::config::Config;
use crate::config::Override;
use crate::exit::{Exit, Failure};
use crate::summary::ScrapeSummary;

/// `mananera scrape`.
#[derive(Debug, clap::Args)]
pub struct ScrapeArgs {
    /// Only this source (see scrape.sources).
    #[arg(long)]
    pub source: Option<String>,
    /// Ignore transcripts older than this day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub since: Option<jiff::civil::Date>,
    /// Walk every listing to its end and re-fetch known pages (conditionally).
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub corpus: CorpusArgs,
}

impl Run for ScrapeArgs {
    fn overrides(&self) -> Vec<Override> {
        self.corpus.overrides()
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let options = mananera_training::scrape::ScrapeOptions {
            since: self.since,
            full: self.full,
        };
        run(&ctx.config, self.source.as_deref(), &options, ctx.format)
    }
}

/// Runs the scrape and reports; fails with [`Exit::Partial`] if any source failed (the rest
/// was still stored).
pub fn run(
    config: &Config,
    only: Option<&str>,
    options: &ScrapeOptions,
    format: Format,
) -> Result<(), Failure> {
    let sources = select_sources(&config.scrape, only).map_err(corpus_failure)?;
    let cleaning = config.cleaning().map_err(Failure::usage)?;
    let fetcher = Fetcher::new(&config.http).map_err(|message| Failure {
        exit: Exit::Internal,
        message,
    })?;
    let corpus = Mutex::new(open(config)?);
    let bar = Bar::new("scrape");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(super::no_runtime)?;
    let reports = runtime
        .block_on(scrape(
            &corpus,
            &sources,
            &config.scrape,
            &fetcher,
            &cleaning,
            options,
            &bar,
        ))
        .map_err(corpus_failure)?;
    bar.finish();
    let corpus: Corpus = corpus.into_inner().unwrap_or_else(|p| p.into_inner());
    let summary = ScrapeSummary {
        corpus_dir: corpus.dir().display().to_string(),
        transcripts: corpus.entries().len(),
        sources: reports,
    };
    match format {
        Format::Text => print_text(&summary),
        _ => super::print_json(&summary)?,
    }
    let failed = summary.failed_sources();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            exit: Exit::Partial,
            message: format!(
                "some pages or sources failed ({}); everything else was stored, and transient failures are retried on the next run",
                failed.join(", ")
            ),
        })
    }
}

fn print_text(summary: &ScrapeSummary) {
    for r in &summary.sources {
        println!(
            "{}: {} new, {} updated, {} unchanged, {} duplicate, {} skipped, {} failed",
            r.source,
            r.tally.new,
            r.tally.updated,
            r.tally.unchanged,
            r.tally.duplicates,
            r.skipped,
            r.failed.len()
        );
        for f in &r.failed {
            println!("  failed {}: {}", f.url, f.reason);
        }
        for e in &r.errors {
            println!("  error: {e}");
        }
    }
    println!(
        "corpus {}: {} transcripts",
        summary.corpus_dir, summary.transcripts
    );
}
