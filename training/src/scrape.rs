//! Discovery and fetching of new transcripts, source by source: pending links first, then
//! the archive listing (newest first, down to where the last finished walk began), then the
//! recent-links box of article pages. State is saved after every step, so a run killed at
//! any point resumes without losing or duplicating a transcript.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use url::Url;

use crate::fetch::{Fetched, Fetcher};
use crate::page::{Link, Page, PageError};
use crate::source::Source;
use crate::store::{Added, Corpus, Cursor, SourceState, StoreError, Tally, Validators, url_key};
use crate::transcript::Transcript;
use crate::{Cleaning, CorpusError};

/// `[scrape]`: the sites and what an anti-bot page looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeConfig {
    /// Page titles that mean "anti-bot challenge, not content".
    pub challenge_titles: Vec<String>,
    /// The transcript sites.
    pub sources: Vec<crate::source::SourceConfig>,
    /// Dataset archives: the whole history in one download.
    pub archives: Vec<crate::bootstrap::ArchiveSource>,
    /// Runs in a row a page may fail (timeouts, 5xx, challenge pages...) before it is set
    /// aside as skipped, so one broken page does not fail every nightly run; `--full` tries
    /// it again. 0 = never give up.
    pub give_up_after: u32,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            challenge_titles: vec![
                "Challenge Validation".into(),
                "Just a moment...".into(),
                "Attention Required!".into(),
            ],
            sources: crate::source::default_sources(),
            archives: crate::bootstrap::default_archives(),
            give_up_after: 7,
        }
    }
}

/// What `mananera scrape` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ScrapeOptions {
    /// Ignore transcripts older than this.
    pub since: Option<Date>,
    /// Re-walk everything and re-fetch known pages (conditionally).
    pub full: bool,
}

/// One failed page and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The page's address (or the imported file's path).
    pub url: String,
    /// What went wrong, for a person.
    pub reason: String,
}

/// What a run did for one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Source name.
    pub source: String,
    /// What became of the transcripts found.
    #[serde(flatten)]
    pub tally: Tally,
    /// Pages with no words of a kept speaker.
    pub skipped: usize,
    /// Pages that failed, with the reason; transient failures are retried next run.
    pub failed: Vec<Failure>,
    /// Discovery problems (listing unreachable, anti-bot page, layout change).
    pub errors: Vec<String>,
}

impl SourceReport {
    /// Whether anything went wrong for this source.
    pub fn failed(&self) -> bool {
        !self.failed.is_empty() || !self.errors.is_empty()
    }
}

/// Receives progress, e.g. to draw a progress bar.
pub trait Observer: Send + Sync {
    /// `count` more pages are queued for `source`.
    fn queued(&self, source: &str, count: usize);
    /// One queued page of `source` is done.
    fn done(&self, source: &str, url: &str, outcome: &str);
}

/// What a scrape fetches: the sites and the dataset archives.
#[derive(Debug, Clone, Default)]
pub struct Selected {
    pub sites: Vec<Source>,
    pub archives: Vec<crate::bootstrap::ArchiveSource>,
}

/// The configured sources and archives `only` selects (all enabled ones when `None`),
/// compiled.
pub fn select_sources(config: &ScrapeConfig, only: Option<&str>) -> Result<Selected, CorpusError> {
    let mut selected = Selected::default();
    let names: Vec<&str> = config
        .sources
        .iter()
        .map(|s| s.name.as_str())
        .chain(config.archives.iter().map(|a| a.name.as_str()))
        .collect();
    let mut unique = std::collections::HashSet::new();
    for &name in &names {
        if !unique.insert(name) {
            return Err(CorpusError::Config(format!(
                "scrape.sources and scrape.archives: two are named {name:?}"
            )));
        }
    }
    for c in &config.sources {
        if only.is_none_or(|only| only == c.name) {
            selected
                .sites
                .push(Source::new(c).map_err(|e| CorpusError::Config(e.to_string()))?);
        }
    }
    for a in &config.archives {
        a.parsed_url()?;
        let named = only == Some(a.name.as_str());
        if named || (only.is_none() && a.enabled) {
            selected.archives.push(a.clone());
        }
    }
    if let Some(only) = only
        && selected.sites.is_empty()
        && selected.archives.is_empty()
    {
        return Err(CorpusError::Config(format!(
            "--source {only}: no such source; configured: {}",
            names.join(", ")
        )));
    }
    Ok(selected)
}

/// Runs every source concurrently (one request at a time per host) and stores what is new
/// in `corpus`.
pub async fn scrape(
    corpus: &Mutex<Corpus>,
    selected: &Selected,
    config: &ScrapeConfig,
    fetcher: &Fetcher,
    cleaning: &Cleaning,
    options: &ScrapeOptions,
    observer: &dyn Observer,
) -> Result<Vec<SourceReport>, CorpusError> {
    // The archives first: on a fresh corpus they bring the history, and the sites' runs
    // then find those transcripts known (by date and text) instead of fetching them anew.
    let mut reports = Vec::new();
    for archive in &selected.archives {
        let run =
            crate::bootstrap::fetch_archive(archive, corpus, fetcher, cleaning, options, observer);
        reports.push(
            run.instrument(tracing::info_span!("scrape", source = %archive.name))
                .await?,
        );
    }
    let runs = selected.sites.iter().map(|source| {
        let run = Run {
            source,
            corpus,
            fetcher,
            cleaning,
            config,
            options,
            observer,
        };
        run.go()
            .instrument(tracing::info_span!("scrape", source = source.name()))
    });
    for report in futures_util::future::join_all(runs).await {
        reports.push(report?);
    }
    Ok(reports)
}

/// One source's run.
struct Run<'a> {
    source: &'a Source,
    corpus: &'a Mutex<Corpus>,
    fetcher: &'a Fetcher,
    cleaning: &'a Cleaning,
    config: &'a ScrapeConfig,
    options: &'a ScrapeOptions,
    observer: &'a dyn Observer,
}

impl Run<'_> {
    fn name(&self) -> &str {
        self.source.name()
    }

    fn corpus(&self) -> std::sync::MutexGuard<'_, Corpus> {
        self.corpus.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn go(self) -> Result<SourceReport, CorpusError> {
        let mut state = self.corpus().state(self.name())?;
        let mut report = SourceReport {
            source: self.name().to_string(),
            ..Default::default()
        };
        if self.options.full {
            state.skipped.clear();
        }
        // Links left over by an interrupted or failed run come first; each page is tried
        // at most once per run.
        let mut visited = HashSet::new();
        let pending: Vec<String> = state.pending.clone();
        self.observer.queued(self.name(), pending.len());
        for link in pending {
            match Url::parse(&link) {
                Ok(url) => {
                    visited.insert(url_key(url.as_str()));
                    self.article(&url, true, &mut state, &mut report).await?;
                }
                Err(_) => state.pending.retain(|p| *p != link),
            }
        }
        if self.source.listing.is_some() {
            self.walk_listing(&mut state, &mut report).await?;
        }
        if self.source.recent.is_some() || !self.source.seeds.is_empty() {
            self.crawl_recent(&mut state, &mut report, visited).await?;
        }
        self.corpus().flush()?;
        Ok(report)
    }

    fn save(&self, state: &SourceState) -> Result<(), StoreError> {
        self.corpus().save_state(self.name(), state)
    }

    /// Whether a link needs no visit this run: under `--full` every link is visited (known
    /// pages conditionally), otherwise known ones are not.
    fn skip(&self, url: &Url, state: &SourceState) -> bool {
        !self.options.full && self.known(url, state)
    }

    /// The HTTP validators recorded with the transcript stored for `url`.
    fn stored_validators(&self, url: &Url) -> Option<Validators> {
        let corpus = self.corpus();
        let t = corpus.read(corpus.find_url(url.as_str())?).ok()?;
        Some(Validators {
            etag: t.etag,
            last_modified: t.last_modified,
        })
    }

    /// Whether `url` needs no fetching: stored, or known to hold nothing to keep.
    fn known(&self, url: &Url, state: &SourceState) -> bool {
        self.corpus().find_url(url.as_str()).is_some()
            || state.skipped.contains_key(&url_key(url.as_str()))
    }

    /// Walks the archive listing newest first and fetches every transcript not yet stored.
    async fn walk_listing(
        &self,
        state: &mut SourceState,
        report: &mut SourceReport,
    ) -> Result<(), CorpusError> {
        let Some((start, links, next)) = &self.source.listing else {
            return Ok(());
        };
        let cursor = if self.options.full {
            None
        } else {
            state.cursor.clone()
        };
        let mut page_url = start.clone();
        let mut seen_pages = HashSet::new();
        let mut newest: Option<Cursor> = None;
        let mut first_validators = None;
        loop {
            if !seen_pages.insert(url_key(page_url.as_str())) {
                report.errors.push(format!(
                    "{page_url}: the listing's next link loops back to a page already walked"
                ));
                return Ok(());
            }
            let first = seen_pages.len() == 1;
            let validators = (first && cursor.is_some())
                .then(|| state.validators.get(&url_key(start.as_str())).cloned())
                .flatten();
            let (body, validators) = match self
                .fetcher
                .get(&page_url, &self.source.config.hosts, validators.as_ref())
                .await
            {
                Ok(Fetched::NotModified) => {
                    tracing::info!(url = %page_url, "listing unchanged since the last walk");
                    return Ok(());
                }
                Ok(Fetched::Page {
                    body, validators, ..
                }) => (body, validators),
                Err(e) => {
                    report.errors.push(format!("listing: {e}"));
                    return Ok(());
                }
            };
            if first {
                first_validators = Some(validators);
            }
            let page = Page::parse(&body);
            if let Err(e) = page.check_challenge(&self.config.challenge_titles) {
                report.errors.push(format!("listing {page_url}: {e}"));
                return Ok(());
            }
            let entries: Vec<Link> = page
                .links(links, &page_url)
                .into_iter()
                .filter(|l| self.source.is_article(&l.url))
                .collect();
            if entries.is_empty() && first {
                report.errors.push(format!(
                    "listing {page_url}: no transcript links (listing.item / listing.link matched nothing that fits article_pattern); the layout may have changed"
                ));
                return Ok(());
            }
            let next_page = page.next_link(next, &page_url);
            drop(page);
            let mut stop = Stop::No;
            let fresh: Vec<&Link> = entries
                .iter()
                .take_while(|link| {
                    if let (Some(since), Some(date)) = (self.options.since, link.date)
                        && date < since
                    {
                        stop = Stop::Since;
                        return false;
                    }
                    let key = url_key(link.url.as_str());
                    newest.get_or_insert_with(|| Cursor {
                        url: key.clone(),
                        date: link.date,
                    });
                    if let Some(c) = &cursor
                        && (c.url == key
                            || matches!((c.date, link.date), (Some(cd), Some(ld)) if ld < cd))
                    {
                        stop = Stop::Cursor;
                        return false;
                    }
                    true
                })
                .filter(|link| !self.skip(&link.url, state))
                .collect();
            self.observer.queued(self.name(), fresh.len());
            for link in fresh {
                self.article(&link.url, true, state, report).await?;
            }
            let finished = match (stop, next_page) {
                (Stop::Since, _) => return Ok(()),
                (Stop::Cursor, _) | (Stop::No, None) => true,
                (Stop::No, Some(next)) => {
                    page_url = next;
                    false
                }
            };
            if finished {
                // Only a finished walk moves the cursor: an interrupted one is walked again.
                if let Some(newest) = newest {
                    state.cursor = Some(newest);
                }
                if let Some(v) = first_validators {
                    state.validators.insert(url_key(start.as_str()), v);
                }
                self.save(state)?;
                return Ok(());
            }
        }
    }

    /// Follows the recent-links boxes from the seeds and the newest stored transcript.
    async fn crawl_recent(
        &self,
        state: &mut SourceState,
        report: &mut SourceReport,
        mut visited: HashSet<String>,
    ) -> Result<(), CorpusError> {
        let mut queue: VecDeque<(Url, bool)> = self
            .source
            .seeds
            .iter()
            .map(|u| (u.clone(), true))
            .collect();
        let newest = self
            .corpus()
            .entries()
            .into_iter()
            .rev()
            .find(|e| e.source == self.name())
            .and_then(|e| Url::parse(&e.url).ok());
        if let Some(url) = newest {
            queue.push_front((url, true));
        }
        // Links found by pages retried at the start of the run.
        queue.extend(
            state
                .pending
                .iter()
                .filter_map(|p| Url::parse(p).ok())
                .map(|u| (u, false)),
        );
        self.observer.queued(self.name(), queue.len());
        while let Some((url, discovery)) = queue.pop_front() {
            if !visited.insert(url_key(url.as_str())) {
                if discovery {
                    self.observer.done(self.name(), url.as_str(), "visited");
                }
                continue;
            }
            // Under --full a discovery page is re-read whole (its links are needed); other
            // known pages are re-checked conditionally.
            let found = if discovery && self.skip(&url, state) {
                self.discovery_page(&url, state, report).await?
            } else {
                self.article(&url, !discovery, state, report).await?
            };
            let found: Vec<Url> = found
                .into_iter()
                .filter(|u| !visited.contains(&url_key(u.as_str())))
                .collect();
            self.observer.queued(self.name(), found.len());
            queue.extend(found.into_iter().map(|u| (u, false)));
        }
        Ok(())
    }

    /// Fetches a known page only for its links (conditionally: unchanged means no new links).
    async fn discovery_page(
        &self,
        url: &Url,
        state: &mut SourceState,
        report: &mut SourceReport,
    ) -> Result<Vec<Url>, CorpusError> {
        let key = url_key(url.as_str());
        // Seeds keep their validators in the state; a stored transcript in its header.
        let validators = if self.options.full {
            None
        } else {
            state
                .validators
                .get(&key)
                .cloned()
                .or_else(|| self.stored_validators(url))
        };
        let outcome = match self
            .fetcher
            .get(url, &self.source.config.hosts, validators.as_ref())
            .await
        {
            Ok(Fetched::NotModified) => Ok(None),
            Ok(Fetched::Page {
                body, validators, ..
            }) => {
                let page = Page::parse(&body);
                match page.check_challenge(&self.config.challenge_titles) {
                    Ok(()) => Ok(Some((page, validators))),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(Some((page, validators))) => {
                let found = self.discover(&page, url, state);
                if self.source.seeds.contains(url) {
                    state.validators.insert(key, validators);
                }
                self.save(state)?;
                self.observer.done(self.name(), url.as_str(), "links read");
                Ok(found)
            }
            Ok(None) => {
                self.observer.done(self.name(), url.as_str(), "unchanged");
                Ok(Vec::new())
            }
            Err(reason) => {
                report
                    .errors
                    .push(format!("discovery page {url}: {reason}"));
                self.observer.done(self.name(), url.as_str(), "failed");
                Ok(Vec::new())
            }
        }
    }

    /// Fetches, cleans and stores one transcript page; records the outcome and returns the
    /// new transcript links the page carries.
    async fn article(
        &self,
        url: &Url,
        conditional: bool,
        state: &mut SourceState,
        report: &mut SourceReport,
    ) -> Result<Vec<Url>, CorpusError> {
        let link = url.to_string();
        if !state.pending.contains(&link) {
            state.pending.push(link.clone());
            self.save(state)?;
        }
        let validators = if self.options.full && conditional {
            self.stored_validators(url)
        } else {
            None
        };
        let mut found = Vec::new();
        let (outcome, settled) = match self
            .fetcher
            .get(url, &self.source.config.hosts, validators.as_ref())
            .await
        {
            Ok(Fetched::NotModified) => {
                report.tally.unchanged += 1;
                ("unchanged".to_string(), true)
            }
            Ok(Fetched::Page {
                url: final_url,
                body,
                validators,
            }) => {
                let page = Page::parse(&body);
                if page.check_challenge(&self.config.challenge_titles).is_ok() {
                    // Links are recorded before the transcript: a crash in between must not
                    // lose them (a stored page is not fetched again).
                    found = self.discover(&page, &final_url, state);
                    self.save(state)?;
                }
                match self.store(url, &final_url, &page, &body, validators) {
                    Ok(Stored::Added(added)) => (report.tally.record(&added).to_string(), true),
                    Ok(Stored::TooOld(date)) => (format!("older than --since ({date})"), true),
                    Ok(Stored::Skipped(reason)) => {
                        report.skipped += 1;
                        state.skipped.insert(url_key(url.as_str()), reason.clone());
                        (format!("skipped: {reason}"), true)
                    }
                    Err(StoreFailure::Page(e)) => {
                        self.failed(url, e.to_string(), Retry::Counted, state, report)
                    }
                    Err(StoreFailure::Store(e)) => return Err(e.into()),
                }
            }
            Err(e) => {
                let retry = if e.is_permanent() {
                    Retry::Never
                } else if e.is_unreachable() {
                    Retry::Uncounted
                } else {
                    Retry::Counted
                };
                self.failed(url, e.to_string(), retry, state, report)
            }
        };
        if settled {
            state.pending.retain(|p| *p != link);
        }
        if !outcome.starts_with("failed") {
            state.failures.remove(&url_key(url.as_str()));
        }
        self.save(state)?;
        tracing::info!(url = %url, outcome = %outcome, "transcript");
        self.observer.done(self.name(), url.as_str(), &outcome);
        Ok(found)
    }

    /// Records a failed page: a permanent failure, or one of the page's own repeated
    /// `give_up_after` runs in a row, sets it aside as skipped; others stay pending for the
    /// next run. Returns the outcome and whether the page is settled.
    fn failed(
        &self,
        url: &Url,
        reason: String,
        retry: Retry,
        state: &mut SourceState,
        report: &mut SourceReport,
    ) -> (String, bool) {
        // The summary names the page already.
        let reason = reason
            .strip_prefix(&format!("{url}: "))
            .map_or(reason.clone(), str::to_string);
        let key = url_key(url.as_str());
        let runs = state.failures.entry(key.clone()).or_insert(0);
        if retry == Retry::Counted {
            *runs += 1;
        }
        let limit = self.config.give_up_after;
        let permanent = retry == Retry::Never;
        let give_up = permanent || (limit > 0 && *runs >= limit);
        let reason = if give_up && !permanent {
            format!(
                "{reason} (failed {runs} runs in a row: set aside; `scrape --full` tries it again)"
            )
        } else {
            reason
        };
        report.failed.push(Failure {
            url: url.to_string(),
            reason: reason.clone(),
        });
        if give_up {
            state.failures.remove(&key);
            state.skipped.insert(key, reason.clone());
        }
        (format!("failed: {reason}"), give_up)
    }

    /// The transcript links of `page`'s recent box that are new, added to the pending list
    /// (the caller saves the state).
    fn discover(&self, page: &Page, base: &Url, state: &mut SourceState) -> Vec<Url> {
        let Some(recent) = &self.source.recent else {
            return Vec::new();
        };
        let mut found: Vec<Url> = Vec::new();
        for link in page.links(recent, base) {
            let too_old = matches!((self.options.since, link.date), (Some(s), Some(d)) if d < s);
            if self.source.is_article(&link.url)
                && !too_old
                && !self.skip(&link.url, state)
                && !found.contains(&link.url)
            {
                found.push(link.url);
            }
        }
        for url in &found {
            if !state.pending.contains(&url.to_string()) {
                state.pending.push(url.to_string());
            }
        }
        found
    }

    /// Cleans a fetched article and stores it.
    fn store(
        &self,
        link: &Url,
        final_url: &Url,
        page: &Page,
        body: &str,
        validators: Validators,
    ) -> Result<Stored, StoreFailure> {
        page.check_challenge(&self.config.challenge_titles)
            .map_err(StoreFailure::Page)?;
        let article = page
            .article(self.source, body)
            .map_err(StoreFailure::Page)?;
        if let Some(since) = self.options.since
            && article.date < since
        {
            return Ok(Stored::TooOld(article.date));
        }
        let cleaned = match self.cleaning.clean_titled(
            article.date,
            &[&article.title, final_url.as_str()],
            article.paragraphs,
        ) {
            Ok(cleaned) => cleaned,
            Err(reason) => return Ok(Stored::Skipped(reason)),
        };
        let mut aliases = Vec::new();
        for other in [Some(link), article.canonical.as_ref()]
            .into_iter()
            .flatten()
        {
            if url_key(other.as_str()) != url_key(final_url.as_str())
                && !aliases.contains(&other.to_string())
            {
                aliases.push(other.to_string());
            }
        }
        let transcript = Transcript {
            date: article.date,
            source: self.name().to_string(),
            url: final_url.to_string(),
            aliases,
            title: article.title,
            speaker: cleaned.speaker,
            etag: validators.etag,
            last_modified: validators.last_modified,
            text: cleaned.text,
        };
        Ok(Stored::Added(
            self.corpus().add(transcript).map_err(StoreFailure::Store)?,
        ))
    }
}

/// What a failure means for the next runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Gone, forbidden, too large, off the source: set aside now.
    Never,
    /// The page's own failure: counts towards `give_up_after`.
    Counted,
    /// The host could not be reached at all: says nothing about the page.
    Uncounted,
}

#[derive(Clone, Copy)]
enum Stop {
    No,
    Since,
    Cursor,
}

enum Stored {
    Added(Added),
    Skipped(String),
    /// Older than `--since`: not stored now, so a later run without the bound stores it.
    TooOld(Date),
}

enum StoreFailure {
    Page(PageError),
    Store(StoreError),
}
