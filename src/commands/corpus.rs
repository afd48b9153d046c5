//! `mananera corpus stats|import|export|bench`: look at, feed and hand out the corpus.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mananera_training::bootstrap::{
    ArchiveFailure, ArchiveSource, default_archives, import_archive,
};
use mananera_training::export::{ExportFormat, SourceStats, export, stats};
use mananera_training::fetch::{FetchedFile, Fetcher};
use mananera_training::import::{ImportReport, find_files, import};
use mananera_training::page::Page;
use mananera_training::store::{Corpus, StoreError};
use mananera_training::{Cleaning, CorpusError};
use serde::Serialize;

use super::progress::Bar;
use crate::commands::args::CorpusArgs;
use crate::commands::{Context, Format, Run};
use crate::config::Config;
use crate::config::Override;
use crate::exit::{Exit, Failure};

/// `mananera corpus` subcommands.
#[derive(Debug, clap::Subcommand)]
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

impl Run for CorpusCommand {
    fn overrides(&self) -> Vec<Override> {
        match self {
            CorpusCommand::Stats { corpus }
            | CorpusCommand::Import { corpus, .. }
            | CorpusCommand::Export { corpus } => corpus.overrides(),
            CorpusCommand::Bench { .. } => Vec::new(),
        }
    }

    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let (config, format) = (&ctx.config, ctx.format);
        match self {
            CorpusCommand::Stats { .. } => stats_command(config, format),
            CorpusCommand::Import { paths, .. } => import_command(config, paths, format),
            CorpusCommand::Export { .. } => export_command(config, format),
            CorpusCommand::Bench { files, seconds } => {
                bench_command(config, files, *seconds, format)
            }
        }
    }
}

/// Opens the configured corpus directory.
pub fn open(config: &Config) -> Result<Corpus, Failure> {
    Corpus::open(&config.corpus_dir(), config.corpus.chunk_chars)
        .map_err(|e| corpus_failure(e.into()))
}

/// Exit codes: settings and inputs 2, a busy corpus 5, anything else 1.
pub fn corpus_failure(e: CorpusError) -> Failure {
    let exit = match &e {
        CorpusError::Config(_) | CorpusError::Input(_) => Exit::Usage,
        CorpusError::Store(StoreError::Locked { .. }) => Exit::Busy,
        CorpusError::Store(_) => Exit::Internal,
    };
    Failure::new(exit, e.to_string())
}

/// A dataset archive to import: a URL, or a `.tar.gz` / `.tgz` / `.zip` file.
fn is_archive(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.starts_with("https://")
        || name.starts_with("http://")
        || [".tar.gz", ".tgz", ".zip"]
            .iter()
            .any(|e| name.ends_with(e))
}

/// The bytes of an archive named on the command line, downloaded (politely, size-capped)
/// or read, with the configured archive settings that apply to it (the dataset's when its
/// URL is configured, else the defaults).
fn read_archive(config: &Config, path: &Path) -> Result<(Vec<u8>, ArchiveSource), Failure> {
    let name = path.to_string_lossy().into_owned();
    if name.ends_with(".zip") {
        return Err(Failure::usage(format!(
            "{name}: zip archives are not read; download the dataset as .tar.gz (GitHub's \
             \"Download tar.gz\", or {}) and import that",
            default_archives()[0].url
        )));
    }
    let mut settings = config
        .scrape
        .archives
        .iter()
        .find(|a| a.url == name)
        .cloned()
        .unwrap_or_else(|| ArchiveSource {
            name: name.clone(),
            url: name.clone(),
            hosts: Vec::new(),
            sha256: String::new(),
            ..default_archives().remove(0)
        });
    settings.enabled = true;
    let limit = settings.limits.max_bytes;
    if !name.starts_with("https://") && !name.starts_with("http://") {
        let size = std::fs::metadata(path)
            .map_err(|e| Failure::usage(format!("{name}: {e}; give an archive to import")))?
            .len();
        if size > limit {
            return Err(Failure::usage(format!(
                "{name} is {size} bytes, more than the {limit}-byte cap (max_bytes of \
                 [[scrape.archives]]); it is not the dataset, or raise the cap"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Failure::usage(format!("{name}: {e}")))?;
        return Ok((bytes, settings));
    }
    let url = settings.parsed_url().map_err(corpus_failure)?;
    let fetcher = Fetcher::new(&config.http).map_err(|message| Failure {
        exit: Exit::Internal,
        message,
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(super::no_runtime)?;
    match runtime.block_on(settings.download(&url, &fetcher, None)) {
        Ok(FetchedFile::File { body, .. }) => Ok((body, settings)),
        Ok(FetchedFile::NotModified) => Err(Failure {
            exit: Exit::Internal,
            message: format!("{name}: the server answered 304 to an unconditional request"),
        }),
        Err(e) => Err(Failure {
            exit: Exit::Internal,
            message: format!("the archive could not be downloaded: {e}"),
        }),
    }
}

/// `corpus stats`.
pub fn stats_command(config: &Config, format: Format) -> Result<(), Failure> {
    let corpus = open(config)?;
    let table = stats(&corpus);
    #[derive(Serialize)]
    struct Out<'a> {
        corpus_dir: String,
        sources: &'a [SourceStats],
    }
    match format {
        Format::Text => {
            println!("corpus {}", corpus.dir().display());
            println!(
                "{:<14} {:>11} {:>14} {:>9}  {:<10}  {:<10}",
                "source", "transcripts", "characters", "chunks", "first", "last"
            );
            for s in &table {
                println!(
                    "{:<14} {:>11} {:>14} {:>9}  {:<10}  {:<10}",
                    s.source, s.transcripts, s.characters, s.chunks, s.first, s.last
                );
            }
            if table.is_empty() {
                println!("(empty: run `mananera scrape` or `mananera corpus import PATH`)");
            }
            Ok(())
        }
        _ => super::print_json(&Out {
            corpus_dir: corpus.dir().display().to_string(),
            sources: &table,
        }),
    }
}

/// `corpus import PATH...`.
pub fn import_command(config: &Config, paths: &[PathBuf], format: Format) -> Result<(), Failure> {
    if paths.is_empty() {
        return Err(Failure::usage(
            "give at least one file or directory to import",
        ));
    }
    let cleaning = config.cleaning().map_err(Failure::usage)?;
    let sources = config.sources().map_err(Failure::usage)?;
    let (archives, paths): (Vec<&PathBuf>, Vec<&PathBuf>) =
        paths.iter().partition(|p| is_archive(p));
    // Every archive is downloaded or read and checked before anything is stored.
    let mut fetched = Vec::new();
    for archive in archives {
        fetched.push((archive, read_archive(config, archive)?));
    }
    let mut files = Vec::new();
    for path in paths {
        files.extend(find_files(path).map_err(corpus_failure)?);
    }
    let mut corpus = open(config)?;
    let bar = Bar::new("import");
    let started = Instant::now();
    let mut report = ImportReport::default();
    for (name, (bytes, settings)) in fetched {
        let imported = import_archive(
            &mut corpus,
            &bytes,
            &settings.sha256,
            &settings.limits,
            &cleaning,
            &bar,
        )
        .map_err(|e| match e {
            ArchiveFailure::Archive(e) => Failure {
                exit: Exit::Usage,
                message: format!("{}: {e}", name.display()),
            },
            ArchiveFailure::Corpus(e) => corpus_failure(e),
        })?;
        report.merge(imported);
    }
    report.merge(
        import(
            &mut corpus,
            &files,
            &sources,
            &config.scrape.challenge_titles,
            &cleaning,
            &bar,
        )
        .map_err(corpus_failure)?,
    );
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let mb_per_s = report.bytes as f64 / 1e6 / seconds.max(1e-9);
    match format {
        Format::Text => {
            println!(
                "imported {} files ({:.1} MB in {seconds:.2} s, {mb_per_s:.1} MB/s): {} new, {} updated, {} unchanged, {} duplicate, {} skipped, {} failed",
                report.files,
                report.bytes as f64 / 1e6,
                report.tally.new,
                report.tally.updated,
                report.tally.unchanged,
                report.tally.duplicates,
                report.skipped.len(),
                report.failed.len()
            );
            for f in &report.failed {
                println!("  failed {}: {}", f.url, f.reason);
            }
            for f in report.skipped.iter().take(20) {
                println!("  skipped {}: {}", f.url, f.reason);
            }
        }
        _ => {
            #[derive(Serialize)]
            struct Out<'a> {
                #[serde(flatten)]
                report: &'a mananera_training::import::ImportReport,
                seconds: f64,
                mb_per_s: f64,
            }
            super::print_json(&Out {
                report: &report,
                seconds,
                mb_per_s,
            })?;
        }
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            exit: Exit::Partial,
            message: format!(
                "{} file(s) could not be imported; the rest were stored",
                report.failed.len()
            ),
        })
    }
}

/// `corpus export`: chunks on stdout.
pub fn export_command(config: &Config, format: Format) -> Result<(), Failure> {
    let corpus = open(config)?;
    let format = match format {
        Format::Text => ExportFormat::Text,
        Format::Json | Format::Jsonl => ExportFormat::Jsonl,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    export(&corpus, config.corpus.chunk_chars, format, &mut out).map_err(corpus_failure)?;
    std::io::Write::flush(&mut out).map_err(|e| Failure {
        exit: Exit::Internal,
        message: format!("cannot write the export: {e}"),
    })
}

/// `corpus bench FILE...`: cleaning throughput (parse + extract + keep the speaker's words)
/// on one core, for HTML pages of a configured source.
pub fn bench_command(
    config: &Config,
    files: &[PathBuf],
    seconds: f64,
    format: Format,
) -> Result<(), Failure> {
    if files.is_empty() {
        return Err(Failure::usage(
            "give HTML pages to clean, e.g. tests/fixtures/pages/*.html",
        ));
    }
    let cleaning = config.cleaning().map_err(Failure::usage)?;
    let sources = config.sources().map_err(Failure::usage)?;
    let pages: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|text| (f.clone(), text))
                .map_err(|e| Failure::usage(format!("{}: {e}", f.display())))
        })
        .collect::<Result<_, _>>()?;
    // Check every page cleans before timing anything.
    for (path, html) in &pages {
        clean_page(path, html, &sources, &cleaning)?;
    }
    // One round cleans every page once; the machine's noise shows in the spread of rounds.
    let round_bytes: usize = pages.iter().map(|(_, html)| html.len()).sum();
    let started = Instant::now();
    let mut rates = Vec::new();
    while rates.is_empty() || started.elapsed().as_secs_f64() < seconds {
        let round = Instant::now();
        for (path, html) in &pages {
            std::hint::black_box(clean_page(path, html, &sources, &cleaning)?);
        }
        rates.push(round_bytes as f64 / 1e6 / round.elapsed().as_secs_f64());
    }
    let elapsed = started.elapsed().as_secs_f64();
    rates.sort_by(f64::total_cmp);
    #[derive(Serialize)]
    struct Out {
        pages: usize,
        rounds: usize,
        seconds: f64,
        /// Over the whole run.
        mb_per_s: f64,
        /// Median, slowest and fastest round.
        median_mb_per_s: f64,
        min_mb_per_s: f64,
        max_mb_per_s: f64,
    }
    let out = Out {
        pages: pages.len(),
        rounds: rates.len(),
        seconds: elapsed,
        mb_per_s: (round_bytes * rates.len()) as f64 / 1e6 / elapsed,
        median_mb_per_s: rates[rates.len() / 2],
        min_mb_per_s: rates[0],
        max_mb_per_s: rates[rates.len() - 1],
    };
    match format {
        Format::Text => {
            println!(
                "cleaned {} pages x {} rounds on one core: {:.1} MB/s overall; per round median {:.1}, min {:.1}, max {:.1} MB/s",
                out.pages,
                out.rounds,
                out.mb_per_s,
                out.median_mb_per_s,
                out.min_mb_per_s,
                out.max_mb_per_s
            );
            Ok(())
        }
        _ => super::print_json(&out),
    }
}

/// Parses and cleans one page with the first source whose layout it fits; returns the
/// number of characters kept.
fn clean_page(
    path: &Path,
    html: &str,
    sources: &[mananera_training::source::Source],
    cleaning: &Cleaning,
) -> Result<usize, Failure> {
    let page = Page::parse(html);
    let mut last = String::from("no source configured");
    for source in sources {
        match page.article(source, html) {
            Ok(article) => {
                return cleaning
                    .clean(article.date, article.paragraphs)
                    .map(|c| c.text.len())
                    .map_err(|e| Failure::usage(format!("{}: {e}", path.display())));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(Failure::usage(format!("{}: {last}", path.display())))
}
