//! What the fine-tuning tests share: the fixtures folder and the tiny base model.

use std::path::PathBuf;

use mananera_model::checkpoint::Checkpoint;

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// `tests/fixtures/models/tiny-bloom-4h` as a training base.
pub fn base() -> Checkpoint {
    Checkpoint::local(&fixtures().join("models/tiny-bloom-4h")).unwrap()
}
