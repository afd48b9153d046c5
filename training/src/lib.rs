//! The mañanera corpus: scrape the official transcripts, keep only the president's words,
//! and store them as a directory of plain files; then fine-tune the model on it.
//!
//! # Layout
//! - [`source`]: a transcript site as configuration (selectors, patterns, hosts).
//! - [`fetch`]: polite HTTP (per-host pacing, robots.txt, retries, limits).
//! - [`page`]: reading a fetched page (challenge detection, links, article parts).
//! - [`turns`], [`speakers`], [`text`], [`date`]: from paragraphs to the kept speaker's words.
//! - [`segment`]: sentences and 1000-character chunks.
//! - [`store`], [`transcript`]: the corpus directory (crash-safe writes: `mananera_model::fsio`).
//! - [`scrape`]: discovery and incremental fetching; [`import`]: archives people already have;
//!   [`archive`], [`bootstrap`]: the public dataset's archive, checked whole, as a source.
//! - [`export`]: statistics and the clean corpus for other tools.
//! - [`tune`]: fine-tuning BLOOM on the corpus (LoRA or full), with versions.

pub mod archive;
pub mod bootstrap;
pub mod date;
pub mod export;
pub mod fetch;
pub mod import;
pub mod page;
pub mod scrape;
pub mod segment;
pub mod source;
pub mod speakers;
pub mod store;
pub mod text;
pub mod transcript;
pub mod tune;
pub mod turns;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::speakers::{SpeakerRule, Speakers};
use crate::turns::{Cleaner, CleaningRules, Paragraph};

/// `[corpus]`: where the corpus lives, how it is chunked, whose words it keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorpusConfig {
    /// Corpus directory; empty means `$XDG_DATA_HOME/mananera/corpus`.
    pub dir: String,
    /// Largest chunk, in characters.
    pub chunk_chars: usize,
    /// The speakers whose words are kept.
    pub speakers: Vec<SpeakerRule>,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            chunk_chars: 1000,
            speakers: speakers::default_speakers(),
        }
    }
}

impl CorpusConfig {
    /// Refuses a chunk size no sentence fits in.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_chars < 100 {
            return Err(format!(
                "corpus.chunk_chars = {}: too small to hold a sentence; use 100 or more (default 1000)",
                self.chunk_chars
            ));
        }
        Ok(())
    }
}

/// Anything that stops a corpus command.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// A setting is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    /// The corpus directory could not be read or written.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// An input to import could not be read.
    #[error("{0}")]
    Input(String),
}

/// The speaker rules and the cleaning rules, compiled: turns a dated transcript's
/// paragraphs into the kept speaker's clean text.
#[derive(Debug, Clone)]
pub struct Cleaning {
    speakers: Speakers,
    cleaner: Cleaner,
}

/// A cleaned transcript body.
#[derive(Debug, Clone, PartialEq)]
pub struct Cleaned {
    /// The kept speaker heard first.
    pub speaker: String,
    /// Paragraphs one per line, turns separated by a blank line.
    pub text: String,
}

impl Cleaning {
    /// Compiles both rule sets, naming a bad setting.
    pub fn new(speakers: &[SpeakerRule], rules: &CleaningRules) -> Result<Self, CorpusError> {
        Ok(Self {
            speakers: Speakers::new(speakers).map_err(|e| CorpusError::Config(e.to_string()))?,
            cleaner: Cleaner::new(rules).map_err(CorpusError::Config)?,
        })
    }

    /// The kept words of a transcript given on `date`, or why there are none; for a
    /// transcript whose title is not known ([`Cleaning::clean_titled`] with none).
    pub fn clean(
        &self,
        date: Date,
        paragraphs: impl IntoIterator<Item = Paragraph>,
    ) -> Result<Cleaned, String> {
        self.clean_titled(date, &[], paragraphs)
    }

    /// The kept words of a transcript given on `date`, or why there are none. `titles` are
    /// what the transcript is called: its headline and its address (whose slug,
    /// `mensaje-del-presidente-…`, often names the speaker when the headline does not).
    ///
    /// Only the speakers of the day count, by their labels; and when a title names one of
    /// them as the one speaking (their speech or message, `corpus.speakers.titles`), the
    /// paragraphs before any label and the blocks with an unknown label (`???`) are theirs.
    pub fn clean_titled(
        &self,
        date: Date,
        titles: &[&str],
        paragraphs: impl IntoIterator<Item = Paragraph>,
    ) -> Result<Cleaned, String> {
        let day = self.speakers.on(date);
        if day.is_empty() {
            return Err(format!(
                "no speaker is configured for {date} (corpus.speakers)"
            ));
        }
        let day = day.titled(titles);
        let kept = self.cleaner.keep(paragraphs, &day);
        let text = kept.text();
        match kept.speaker {
            Some(speaker) if !text.is_empty() => Ok(Cleaned {
                speaker: speaker.to_string(),
                text,
            }),
            _ => Err(format!("no words of the speakers kept on {date}")),
        }
    }
}
