//! The directory of fine-tuned versions. Each run writes a new version directory; one of
//! them is *current* (what the daemon serves).
//!
//! ```text
//! <training.dir>/
//!   current            the current version's id (replaced atomically)
//!   v0001/             version.json, metrics.json, optimizer.safetensors and the weights:
//!                      adapter_config.json + adapter_model.safetensors (LoRA, PEFT layout)
//!                      or config.json + tokenizer.json + model.safetensors (full)
//!   run/               the checkpoint of a stopped run, for --resume
//!   .tmp-*             a version being written (removed when found later)
//!   .lock              held by the process that trains
//! ```
//! A version directory is complete before it gets its name (written under `.tmp-*`, synced,
//! renamed), and `current` only ever names complete directories, so killing the process at
//! any instant leaves the previous current version in place and loadable.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result, fsio};

/// Whether a version passed its validation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Rejected,
}

/// How a version was trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Low-rank adapters on a frozen base (the default).
    #[default]
    Lora,
    /// Every weight (the original recipe; for small models or a GPU).
    Full,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Lora => "lora",
            Method::Full => "full",
        })
    }
}

/// The numbers of one run (`metrics.json`). A number that was not finite (a diverged loss)
/// is written as `null` by JSON and read back as NaN; fields added later read as 0 from
/// older records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub steps: usize,
    pub tokens: usize,
    #[serde(default)]
    pub train_blocks: usize,
    #[serde(default)]
    pub validation_blocks: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss_first: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss_last: f64,
    /// Validation loss of the model served before this run (the current version, or the base).
    #[serde(deserialize_with = "nan_if_null")]
    pub validation_loss_before: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub validation_loss_after: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity_before: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity_after: f64,
    /// Seconds of the whole run, loading and validation included.
    #[serde(deserialize_with = "nan_if_null")]
    pub wall_s: f64,
    /// Trained tokens per second of `wall_s`.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub tokens_per_s: f64,
    /// The oldest and newest conference dates trained on.
    #[serde(default)]
    pub data_window: (String, String),
    /// Training transcripts this version has not trained on: what the next runs have left.
    #[serde(default)]
    pub backlog: usize,
    /// The run ended at its time budget (`training.max_minutes`) before its planned steps.
    #[serde(default)]
    pub budget_reached: bool,
    /// Each voice's blocks and validation perplexity (empty for runs from before voices).
    #[serde(default)]
    pub voices: BTreeMap<String, VoiceMetrics>,
    /// Voices whose validation perplexity got worse beyond the tolerance: the version was
    /// rejected for them, whatever the overall perplexity did.
    #[serde(default)]
    pub worse_voices: Vec<String>,
}

/// One voice's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceMetrics {
    pub train_blocks: usize,
    pub validation_blocks: usize,
    /// Validation perplexity of the model served before the run, on this voice's blocks.
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity_before: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub perplexity_after: f64,
}

/// A number JSON holds as `null` (serde_json writes NaN and ∞ so) read back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What `version.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub id: String,
    pub status: Status,
    pub method: Method,
    /// The version this one continued from (incremental runs).
    pub parent: Option<String>,
    /// `model.id` of the base.
    pub base_model: String,
    /// The base's content version (`<name>-<hash>`), to refuse another base.
    pub base_version: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Every transcript this version's weights have been trained on (its parents' included).
    pub transcripts: Vec<String>,
    /// The transcripts first trained on in this run.
    pub new_transcripts: Vec<String>,
    /// The held-out transcripts of this run.
    pub validation: Vec<String>,
    pub metrics: Metrics,
    /// The run's settings, for the record.
    pub settings: serde_json::Value,
}

/// An open (locked) versions directory.
pub struct Versions {
    dir: PathBuf,
    _lock: File,
}

const CURRENT: &str = "current";
const RECORD: &str = "version.json";
const METRICS: &str = "metrics.json";
/// The directory a stopped run's checkpoint lives in.
pub const RUN: &str = "run";

impl Versions {
    /// Opens `dir` (creating it), takes its lock, and removes half-written versions.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = fsio::lock_dir(dir)
            .map_err(|e| Error::io(&dir.join(".lock"), e))?
            .ok_or_else(|| Error::Busy(dir.to_path_buf()))?;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing a version that was never finished");
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current version, if any.
    pub fn current(&self) -> Result<Option<Version>> {
        current(&self.dir)
    }

    /// Every finished version, oldest first.
    pub fn list(&self) -> Result<Vec<Version>> {
        list(&self.dir)
    }

    /// The id the next version gets.
    pub fn next_id(&self) -> Result<String> {
        let last = self
            .list()?
            .iter()
            .filter_map(|v| v.id.strip_prefix('v')?.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        Ok(format!("v{:04}", last + 1))
    }

    /// A fresh staging directory for a version or a checkpoint.
    pub fn stage(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// Seals a staged version: records, syncs, names it, and if accepted makes it current.
    pub fn commit(&self, staged: tempfile::TempDir, record: &Version) -> Result<PathBuf> {
        let path = staged.path();
        fsio::write_atomic(&path.join(METRICS), pretty(&record.metrics).as_bytes())
            .map_err(|e| Error::io(path, e))?;
        fsio::write_atomic(&path.join(RECORD), pretty(record).as_bytes())
            .map_err(|e| Error::io(path, e))?;
        let target = self.dir.join(&record.id);
        let staged = staged.keep();
        std::fs::rename(&staged, &target).map_err(|e| Error::io(&target, e))?;
        sync_dir(&self.dir)?;
        if record.status == Status::Accepted {
            self.set_current(&record.id)?;
        }
        Ok(target)
    }

    /// Makes version `id` (which must exist and be accepted) current.
    pub fn set_current(&self, id: &str) -> Result<()> {
        let record = read_record(&self.dir.join(id))?;
        if record.status != Status::Accepted {
            return Err(Error::Version(format!(
                "version {id} was rejected by its validation check; only accepted versions can be current"
            )));
        }
        let path = self.dir.join(CURRENT);
        fsio::write_atomic(&path, format!("{id}\n").as_bytes()).map_err(|e| Error::io(&path, e))
    }

    /// The version `id`.
    pub fn get(&self, id: &str) -> Result<Version> {
        get(&self.dir, id)
    }
}

/// Every finished version in `dir`, oldest first, read without the lock (version
/// directories never change once named).
pub fn list(dir: &Path) -> Result<Vec<Version>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with('.') && entry.path().join(RECORD).is_file() {
            out.push(read_record(&entry.path())?);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The version `id` in `dir`.
pub fn get(dir: &Path, id: &str) -> Result<Version> {
    if id.is_empty()
        || id.contains(['/', '\\'])
        || id.starts_with('.')
        || !dir.join(id).join(RECORD).is_file()
    {
        return Err(Error::Version(format!(
            "there is no version `{id}` in {}; `mananera versions` lists them",
            dir.display()
        )));
    }
    read_record(&dir.join(id))
}

/// The current version of the versions directory `dir`, read without taking its lock (the
/// daemon reads while a trainer may hold it; `current` is always replaced atomically).
pub fn current(dir: &Path) -> Result<Option<Version>> {
    let path = dir.join(CURRENT);
    let id = match std::fs::read_to_string(&path) {
        Ok(id) => id.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
        return Err(Error::Version(format!(
            "{} names `{id}`, which is not a version; write a version id such as v0003 into it",
            path.display()
        )));
    }
    read_record(&dir.join(&id)).map(Some)
}

fn read_record(dir: &Path) -> Result<Version> {
    let path = dir.join(RECORD);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Version(format!(
            "{} is not a version record ({e}); the version directory was edited or damaged",
            path.display()
        ))
    })
}

/// Makes a rename inside `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Pretty JSON of a record.
pub fn pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("plain data serializes")
}
