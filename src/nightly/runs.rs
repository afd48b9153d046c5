//! The record of every nightly run (start, end, what it found, what it trained, how it
//! ended), kept in the daemon's sled store so `status`, the bots, the web page and
//! `/metrics` can show it, and so a run missed while the daemon was down is noticed.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use mananera_model::versions::Metrics;

use crate::service::store::Store;

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Running,
    /// A new version was trained, validated no worse, and is now served.
    Accepted,
    /// A new version was trained but validated worse: nothing changed.
    Rejected,
    /// No transcript the served version has not trained on.
    NothingNew,
    /// Stopped by an admin or by the daemon stopping (training resumes next run).
    Cancelled,
    /// A step failed; `error` says which and why.
    Failed,
    /// The daemon ended while the run was in progress.
    Interrupted,
}

impl Outcome {
    /// The name used in JSON, logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::NothingNew => "nothing_new",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// True when the run left work undone that the next run must pick up even if the
    /// sites have nothing new.
    pub fn left_work(self) -> bool {
        matches!(
            self,
            Outcome::Cancelled | Outcome::Failed | Outcome::Interrupted
        )
    }
}

/// The version a run trained: its id, parent and numbers (the version's `metrics.json`,
/// flattened, so a record reads `trained.perplexity_after`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trained {
    pub version: String,
    pub parent: Option<String>,
    /// Transcripts first trained on in this run.
    #[serde(default)]
    pub new_transcripts: usize,
    /// The version's `metrics.json`.
    #[serde(flatten)]
    pub metrics: Metrics,
}

impl Trained {
    /// "v0004 perplexity 21.402 → 21.118 (amlo 20.310 → 20.100, sheinbaum 23.000 → 24.100 ✗)"
    /// (or "perplejidad" for the bots): overall, then each voice's, ✗ marking a voice that
    /// got worse beyond the tolerance.
    pub fn describe(&self, perplexity: &str) -> String {
        let number = |v: f64| {
            if v.is_finite() {
                format!("{v:.3}")
            } else {
                "—".to_string()
            }
        };
        let mut line = format!(
            "{} {perplexity} {} → {}",
            self.version,
            number(self.metrics.perplexity_before),
            number(self.metrics.perplexity_after)
        );
        let voices: Vec<String> = self
            .metrics
            .voices
            .iter()
            .map(|(voice, m)| {
                let worse = if self.metrics.worse_voices.contains(voice) {
                    " ✗"
                } else {
                    ""
                };
                format!(
                    "{voice} {} → {}{worse}",
                    number(m.perplexity_before),
                    number(m.perplexity_after)
                )
            })
            .collect();
        if !voices.is_empty() {
            line.push_str(&format!(" ({})", voices.join(", ")));
        }
        line
    }
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Milliseconds since the Unix epoch at the start: the run's id and key.
    pub id: u64,
    /// `schedule`, `catch-up`, or who asked (`cli`, `api`, `discord:<id>`…).
    pub trigger: String,
    pub started: String,
    pub ended: Option<String>,
    pub outcome: Outcome,
    /// The step in progress (`scraping`, `training`, `loading the new version`) or the last.
    pub phase: String,
    /// Transcripts the scrape added.
    pub new_transcripts: u64,
    /// Sources with failed pages (the rest was stored).
    pub scrape_failures: Vec<String>,
    pub trained: Option<Trained>,
    /// The model version served after the run.
    pub serving: Option<String>,
    /// The version this run published to `publish.dir` (and the server was told of).
    #[serde(default)]
    pub published: Option<String>,
    pub error: Option<String>,
}

/// Run records in the `nightly_runs` tree, newest last. Read from memory (the tree is read
/// once, at open) and written (and flushed) behind through the [`Store`] thread, so neither
/// a status request nor a run's phase change waits on the disk.
#[derive(Clone)]
pub struct Runs {
    tree: sled::Tree,
    store: Store,
    /// Every kept record, oldest first.
    records: Arc<Mutex<Vec<RunRecord>>>,
    keep: usize,
}

impl Runs {
    /// The records of `db`, keeping the newest `keep` (unreadable ones skipped, with a
    /// warning); later writes go through `store`.
    pub fn open(db: &sled::Db, keep: usize, store: Store) -> Result<Self, sled::Error> {
        let tree = db.open_tree("nightly_runs")?;
        let records = tree
            .iter()
            .filter_map(|item| {
                let (key, value) = item.ok()?;
                match serde_json::from_slice(&value) {
                    Ok(record) => Some(record),
                    Err(error) => {
                        tracing::warn!(%error, key = ?key, "skipping an unreadable run record");
                        None
                    }
                }
            })
            .collect();
        Ok(Self {
            tree,
            store,
            records: Arc::new(Mutex::new(records)),
            keep: keep.max(1),
        })
    }

    /// How many records are kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Writes (or rewrites) `record`, dropping the oldest beyond the limit. A store that
    /// cannot be written is logged: the run itself goes on.
    pub fn put(&self, record: &RunRecord) {
        let dropped: Vec<u64> = {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            match records.iter_mut().find(|r| r.id == record.id) {
                Some(old) => *old = record.clone(),
                None => {
                    records.push(record.clone());
                    records.sort_by_key(|r| r.id);
                }
            }
            let excess = records.len().saturating_sub(self.keep);
            records.drain(..excess).map(|r| r.id).collect()
        };
        let Ok(value) = serde_json::to_vec(record) else {
            return;
        };
        let (tree, id) = (self.tree.clone(), record.id);
        self.store.send("run_record_write", move || {
            // Flushed at once (on the store's thread): a run record must survive the daemon
            // being killed a moment later, or the next start cannot tell the run was cut short.
            let result = tree.insert(id.to_be_bytes(), value).and_then(|_| {
                dropped
                    .iter()
                    .try_for_each(|old| tree.remove(old.to_be_bytes()).map(drop))?;
                tree.flush().map(drop)
            });
            if let Err(error) = result {
                tracing::error!(%error, run = id, "the run record could not be stored");
            }
        });
    }

    /// The newest `n` records, newest first.
    pub fn latest(&self, n: usize) -> Vec<RunRecord> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().rev().take(n).cloned().collect()
    }

    /// Marks runs left `running` by a daemon that ended as interrupted.
    pub fn close_interrupted(&self, now: &str) {
        for mut record in self.latest(self.keep) {
            if record.outcome == Outcome::Running {
                tracing::warn!(run = record.id, phase = %record.phase, "the last run was interrupted by the daemon stopping");
                record.outcome = Outcome::Interrupted;
                record.ended = Some(now.to_string());
                record.error = Some(format!(
                    "the daemon stopped while the run was {}",
                    record.phase
                ));
                self.put(&record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stored_before_trained_held_the_metrics_still_reads() {
        // The layout records had when `Trained` listed the numbers itself, with a diverged
        // validation written as null.
        let stored = r#"{"id":1,"trigger":"schedule","started":"2026-11-27T05:00:00Z",
            "ended":"2026-11-27T05:10:00Z","outcome":"rejected","phase":"done",
            "new_transcripts":4,"scrape_failures":[],"trained":{"version":"v0002",
            "parent":"v0001","steps":3,"tokens":96,"train_loss_first":2.5,
            "train_loss_last":2.1,"validation_loss_before":2.6,"validation_loss_after":null,
            "perplexity_before":13.4,"perplexity_after":null,"wall_s":1.5,
            "new_transcripts":4,"backlog":2,"budget_reached":true},
            "serving":"tiny+v0001-abc","error":null}"#;
        let record: RunRecord = serde_json::from_str(stored).unwrap();
        let trained = record.trained.unwrap();
        assert_eq!(
            (trained.version.as_str(), trained.parent.as_deref()),
            ("v0002", Some("v0001"))
        );
        assert_eq!((trained.metrics.steps, trained.metrics.tokens), (3, 96));
        assert_eq!(trained.metrics.perplexity_before, 13.4);
        assert!(trained.metrics.perplexity_after.is_nan());
        assert_eq!((trained.new_transcripts, trained.metrics.backlog), (4, 2));
        assert!(trained.metrics.budget_reached);
        assert_eq!(
            trained.describe("perplexity"),
            "v0002 perplexity 13.400 → —"
        );
    }

    #[test]
    fn each_voice_is_described_and_a_worse_one_marked() {
        let stored = r#"{"version":"v0003","parent":"v0002","steps":3,"tokens":96,
            "train_loss_first":2.5,"train_loss_last":2.1,"validation_loss_before":2.6,
            "validation_loss_after":2.5,"perplexity_before":13.4,"perplexity_after":12.2,
            "wall_s":1.5,"voices":{"amlo":{"train_blocks":2,"validation_blocks":1,
            "perplexity_before":12.0,"perplexity_after":13.0},"sheinbaum":{"train_blocks":5,
            "validation_blocks":1,"perplexity_before":15.0,"perplexity_after":11.5}},
            "worse_voices":["amlo"]}"#;
        let trained: Trained = serde_json::from_str(stored).unwrap();
        assert_eq!(
            trained.describe("perplexity"),
            "v0003 perplexity 13.400 → 12.200 (amlo 12.000 → 13.000 ✗, sheinbaum 15.000 → 11.500)"
        );
    }

    fn record(id: u64, outcome: Outcome) -> RunRecord {
        RunRecord {
            id,
            trigger: "schedule".into(),
            started: "2026-11-27T05:00:00Z".into(),
            ended: None,
            outcome,
            phase: "training".into(),
            new_transcripts: 1,
            scrape_failures: Vec::new(),
            trained: None,
            serving: None,
            published: None,
            error: None,
        }
    }

    #[test]
    fn records_are_kept_newest_first_up_to_the_limit_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let store = Store::start(Arc::default()).unwrap();
            let runs = Runs::open(&db, 3, store.clone()).unwrap();
            for id in [5, 1, 9, 7] {
                runs.put(&record(id, Outcome::Accepted));
            }
            let ids: Vec<u64> = runs.latest(10).iter().map(|r| r.id).collect();
            assert_eq!(ids, [9, 7, 5]);
            runs.put(&record(11, Outcome::Running));
            store.drain(std::time::Duration::from_secs(10)).unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let runs = Runs::open(&db, 3, Store::start(Arc::default()).unwrap()).unwrap();
        runs.close_interrupted("2026-11-27T06:00:00Z");
        let latest = &runs.latest(1)[0];
        assert_eq!((latest.id, latest.outcome), (11, Outcome::Interrupted));
        assert!(latest.error.as_deref().unwrap().contains("training"));
        assert_eq!(runs.latest(10).len(), 3);
    }
}
