//! The transcript history in one download: the public "mananeras" dataset's archive as a
//! source (`[[scrape.archives]]`). A fresh corpus gets the whole history (2018 on) in
//! minutes instead of thousands of polite page fetches; afterwards the archive is fetched
//! conditionally (ETag / Last-Modified) on every scrape, so it also fills days the sites
//! missed. Its files go through the same speaker rules as `corpus import`.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::archive::{self, ArchiveLimits};
use crate::fetch::{FetchError, FetchedFile, Fetcher};
use crate::import::{DATASET_SOURCE, ImportReport, import_dataset_files};
use crate::scrape::{Observer, ScrapeOptions, SourceReport};
use crate::store::{Corpus, Validators};
use crate::{Cleaning, CorpusError};

/// One dataset archive to fetch (`[[scrape.archives]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSource {
    /// Name in reports and `scrape --source`.
    pub name: String,
    /// Fetch it (false keeps the entry but skips it).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the `.tar.gz` is.
    pub url: String,
    /// Hosts the download may be redirected to (the URL's own host is always allowed).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Expected SHA-256 of the archive (hex); empty: not checked (a repository's archive
    /// changes with every commit). Pin it to import one known snapshot.
    #[serde(default)]
    pub sha256: String,
    /// Limit on the whole download.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    #[serde(default, flatten)]
    pub limits: ArchiveLimits,
}

fn yes() -> bool {
    true
}

fn default_timeout_s() -> u64 {
    600
}

/// The public dataset (fferegrino/mananeras on GitHub, CC BY-SA 4.0), as GitHub serves its
/// main branch.
pub fn default_archives() -> Vec<ArchiveSource> {
    vec![ArchiveSource {
        name: DATASET_SOURCE.into(),
        enabled: true,
        url: "https://codeload.github.com/fferegrino/mananeras/tar.gz/refs/heads/main".into(),
        hosts: vec!["codeload.github.com".into(), "github.com".into()],
        sha256: String::new(),
        timeout_s: default_timeout_s(),
        limits: ArchiveLimits::default(),
    }]
}

impl ArchiveSource {
    /// The URL, parsed, naming the setting when it is not one.
    pub fn parsed_url(&self) -> Result<Url, CorpusError> {
        let url = Url::parse(&self.url).map_err(|e| {
            CorpusError::Config(format!(
                "scrape.archives {:?}: url {:?} is not a URL ({e})",
                self.name, self.url
            ))
        })?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(CorpusError::Config(format!(
                "scrape.archives {:?}: url {:?} must be an https:// address",
                self.name, self.url
            )));
        }
        Ok(url)
    }

    /// Downloads the archive from `url` (its [`parsed_url`](Self::parsed_url)) through
    /// `fetcher` under its own caps and time limit, sending `validators` when given (a
    /// conditional request).
    pub async fn download(
        &self,
        url: &Url,
        fetcher: &Fetcher,
        validators: Option<&Validators>,
    ) -> Result<FetchedFile, FetchError> {
        let mut hosts = self.hosts.clone();
        hosts.extend(url.host_str().map(str::to_string));
        let limit = (self.limits.max_bytes, "max_bytes of [[scrape.archives]]");
        let timeout = Duration::from_secs(self.timeout_s.max(1));
        fetcher
            .get_file(url, &hosts, validators, limit, timeout)
            .await
    }
}

/// Downloads `source` (conditionally, unless the corpus holds none of its transcripts or
/// `--full` asks), checks it whole and imports it; what failed is in the report.
pub async fn fetch_archive(
    source: &ArchiveSource,
    corpus: &Mutex<Corpus>,
    fetcher: &Fetcher,
    cleaning: &Cleaning,
    options: &ScrapeOptions,
    observer: &dyn Observer,
) -> Result<SourceReport, CorpusError> {
    let lock = || corpus.lock().unwrap_or_else(|p| p.into_inner());
    let mut report = SourceReport {
        source: source.name.clone(),
        ..Default::default()
    };
    let url = source.parsed_url()?;
    let mut state = lock().state(&source.name)?;
    let has_any = lock().entries().iter().any(|e| e.source == DATASET_SOURCE);
    let validators = state
        .validators
        .get(url.as_str())
        .filter(|_| has_any && !options.full)
        .cloned();
    let (body, validators) = match source.download(&url, fetcher, validators.as_ref()).await {
        Ok(FetchedFile::NotModified) => {
            tracing::info!(archive = %source.name, "the dataset archive has not changed");
            return Ok(report);
        }
        Ok(FetchedFile::File { body, validators }) => (body, validators),
        Err(e) => {
            report.errors.push(e.to_string());
            return Ok(report);
        }
    };
    tracing::info!(archive = %source.name, bytes = body.len(), "dataset archive downloaded");
    // Synchronous from here on: the lock is held across no await.
    let imported = import_archive(
        &mut lock(),
        &body,
        &source.sha256,
        &source.limits,
        cleaning,
        observer,
    );
    match imported {
        Ok(imported) => {
            report.tally = imported.tally;
            report.skipped = imported.skipped.len();
            report.failed = imported.failed;
            state.validators.insert(url.to_string(), validators);
            lock().save_state(&source.name, &state)?;
        }
        Err(ArchiveFailure::Archive(e)) => report.errors.push(format!("{url}: {e}")),
        Err(ArchiveFailure::Corpus(e)) => return Err(e),
    }
    Ok(report)
}

/// Why an archive was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveFailure {
    /// The archive was refused whole; nothing was stored.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The corpus could not be written.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
}

/// Checks `bytes` whole, then imports its dataset files through the speaker rules.
pub fn import_archive(
    corpus: &mut Corpus,
    bytes: &[u8],
    sha256: &str,
    limits: &ArchiveLimits,
    cleaning: &Cleaning,
    observer: &dyn Observer,
) -> Result<ImportReport, ArchiveFailure> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(archive::ArchiveError::TooLarge {
            limit: limits.max_bytes,
            at: " (max_bytes: the archive itself)".into(),
        }
        .into());
    }
    let files = archive::check(bytes, sha256, limits)?;
    observer.queued("import", files);
    let mut report = ImportReport::default();
    let mut stored = Ok(());
    archive::read_files(bytes, limits, 256, &mut |batch| {
        if stored.is_ok() {
            stored = import_dataset_files(corpus, batch, cleaning, observer, &mut report);
        }
    })?;
    stored?;
    Ok(report)
}
