//! What the fine-tuning tests share: the fixtures folder and the tiny base model.

use std::path::PathBuf;

use mananera_training::tune::model::{BaseCheckpoint, Shape};

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// `tests/fixtures/models/tiny-bloom-4h` as a training base.
pub fn base() -> BaseCheckpoint {
    let dir = fixtures().join("models/tiny-bloom-4h");
    BaseCheckpoint {
        shape: Shape::read(&dir.join("config.json")).unwrap(),
        config: dir.join("config.json"),
        tokenizer: dir.join("tokenizer.json"),
        weights: vec![dir.join("model.safetensors")],
    }
}
