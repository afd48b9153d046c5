//! What the fine-tuning tests share: the fixtures folder, the tiny base model and a run on it.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mananera_model::checkpoint::Checkpoint;
use mananera_training::tune::TrainingConfig;
use mananera_training::tune::run::Job;

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// `tests/fixtures/models/tiny-bloom-4h` as a training base.
pub fn base() -> Checkpoint {
    Checkpoint::local(&fixtures().join("models/tiny-bloom-4h")).unwrap()
}

/// A fresh run on the tiny base into versions directory `dir`, without voices.
pub fn job<'a>(dir: &Path, settings: TrainingConfig, stop: &'a AtomicBool) -> Job<'a> {
    Job {
        base: base(),
        base_model: "tiny-bloom-4h".into(),
        base_version: "tiny-bloom-4h-000000".into(),
        settings,
        versions_dir: dir.to_path_buf(),
        incremental: false,
        resume: false,
        stop,
        vocabulary: None,
        voices: Vec::new(),
    }
}
