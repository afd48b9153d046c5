//! What `mananera scrape` and `mananera train` print with `--format json`: one type each,
//! written by the command and read back by the nightly run that ran it as a child, so the
//! two sides cannot drift apart.

use mananera_model::versions::{Method, Metrics, Status, Version};
use mananera_training::scrape::SourceReport;
use serde::{Deserialize, Serialize};

/// `scrape --format json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrapeSummary {
    /// The corpus directory scraped into.
    pub corpus_dir: String,
    /// Transcripts in the corpus after the scrape.
    pub transcripts: usize,
    /// What each source found, stored and failed.
    pub sources: Vec<SourceReport>,
}

impl ScrapeSummary {
    /// Transcripts stored for the first time, over every source.
    pub fn new_transcripts(&self) -> usize {
        self.sources.iter().map(|s| s.tally.new).sum()
    }

    /// The sources with failed pages or discovery errors.
    pub fn failed_sources(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter(|s| s.failed())
            .map(|s| s.source.clone())
            .collect()
    }
}

/// How a `train` run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOutcome {
    /// A version was written and is current now.
    Accepted,
    /// A version was written but its validation got worse; the current one stays.
    Rejected,
    /// Stopped by a signal; `train --resume` continues.
    Stopped,
    /// The current version has trained on every transcript.
    NothingNew,
}

/// `train --format json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// How the run ended.
    pub outcome: TrainOutcome,
    /// The version written (accepted or rejected).
    pub version: Option<VersionSummary>,
    /// The steps taken, and planned (a stopped run resumes there).
    pub step: Option<usize>,
    pub total_steps: Option<usize>,
    /// The current version, when there was nothing new to train.
    pub current: Option<String>,
}

/// A version as `train` reports it: its record, with counts where `version.json` lists
/// transcripts (thousands of ids on the real corpus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionSummary {
    /// `version.json`'s fields of the same names.
    pub id: String,
    pub status: Status,
    pub method: Method,
    pub parent: Option<String>,
    pub base_model: String,
    pub base_version: String,
    pub created: u64,
    /// Transcripts the version's weights have been trained on, its parents' included.
    pub transcripts: usize,
    /// Transcripts first trained on in this run.
    pub new_transcripts: usize,
    /// Held-out transcripts of this run.
    pub validation: usize,
    /// The run's numbers (`metrics.json`).
    pub metrics: Metrics,
    /// The run's settings, for the record.
    pub settings: serde_json::Value,
}

impl From<&Version> for VersionSummary {
    fn from(v: &Version) -> Self {
        Self {
            id: v.id.clone(),
            status: v.status,
            method: v.method,
            parent: v.parent.clone(),
            base_model: v.base_model.clone(),
            base_version: v.base_version.clone(),
            created: v.created,
            transcripts: v.transcripts.len(),
            new_transcripts: v.new_transcripts.len(),
            validation: v.validation.len(),
            metrics: v.metrics.clone(),
            settings: v.settings.clone(),
        }
    }
}
