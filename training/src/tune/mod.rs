//! Fine-tuning BLOOM on the corpus, in candle: LoRA (default) or every weight, AdamW with
//! warm-up and decay, gradient accumulation and clipping, validation on held-out
//! transcripts, incremental runs, resumable checkpoints, and versions that are accepted
//! only when validation perplexity does not get worse.
//!
//! - [`model`]: BLOOM from differentiable operations, with LoRA on its linear layers.
//! - [`ops`]: a frozen-weight matmul and a fused cross-entropy with their own backward;
//!   [`head`]: the frozen head and its loss in one pass, full or trimmed to a [`head::Vocabulary`].
//! - [`lora`]: trainable adapters (their PEFT files are `mananera_model::adapter`).
//! - [`optim`]: AdamW, schedules and clipping with savable state.
//! - [`data`]: tokenizing, packing and the validation split.
//! - [`run`]: one training run from corpus to version (the loop), with `plan` (the blocks),
//!   `start` (the starting models), `checkpoint` (stop and resume) and `memory` (the
//!   up-front check); [`verdict`]: whether a version may be served; [`merge`]: merged
//!   checkpoints.
//!
//! The model's files (config, checkpoint, adapters, the versions directory) are described
//! once in the `mananera-model` crate, which the serving engine shares.

mod checkpoint;
pub mod data;
pub mod head;
pub mod lora;
mod memory;
pub mod merge;
pub mod model;
pub mod ops;
pub mod optim;
mod plan;
pub mod run;
mod start;
pub mod verdict;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mananera_model::versions::Method;
pub use optim::Schedule;

/// `[training]`: how `mananera train` fine-tunes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Versions directory; empty means `$XDG_DATA_HOME/mananera/versions`.
    pub dir: String,
    pub method: Method,
    /// Tokens per training sequence.
    pub block_size: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients add up to one optimizer step.
    pub grad_accumulation: usize,
    /// Passes over the training blocks.
    pub epochs: usize,
    /// Stop after this many optimizer steps; 0 = as many as `epochs` take.
    pub max_steps: usize,
    /// Time budget of a run in minutes, loading included (0 = none): the run ends at the
    /// first step boundary past it, then validates and is accepted or rejected like any run.
    pub max_minutes: f64,
    /// Token budget of a run: trained tokens, replay included (0 = none).
    pub max_tokens: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Gradients are scaled down to this global L2 norm; 0 = no clipping.
    pub max_grad_norm: f64,
    /// Seed of the adapter's initialisation, the block order and LoRA dropout.
    pub seed: u64,
    /// Visit the training blocks in a seeded random order each epoch (otherwise in corpus order).
    pub shuffle: bool,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    /// Linear layers that get adapters: any of query_key_value, dense, dense_h_to_4h, dense_4h_to_h.
    pub lora_targets: Vec<String>,
    /// The newest transcripts held out for validation.
    pub validation_recent: usize,
    /// Share of the other transcripts held out for validation (a fixed, hashed sample).
    pub validation_fraction: f64,
    /// Cap on validation blocks (a seeded sample of them), to bound the time validation takes.
    pub max_validation_blocks: usize,
    /// Incremental runs: old tokens replayed per new token, so the model does not forget.
    pub replay_ratio: f64,
    /// A new version is accepted when its validation perplexity is at most
    /// (1 + tolerance) × the current version's.
    pub tolerance: f64,
    /// Save a resumable checkpoint every this many steps (and always when stopped); 0 = only when stopped.
    pub checkpoint_steps: usize,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            method: Method::Lora,
            block_size: 256,
            batch_size: 1,
            grad_accumulation: 8,
            epochs: 1,
            max_steps: 0,
            max_minutes: 0.0,
            max_tokens: 0,
            learning_rate: 2e-4,
            schedule: Schedule::Cosine,
            warmup_steps: 10,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            seed: 42,
            shuffle: true,
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            lora_targets: mananera_model::adapter::TARGETS
                .iter()
                .map(|t| t.to_string())
                .collect(),
            validation_recent: 1,
            validation_fraction: 0.05,
            max_validation_blocks: 64,
            replay_ratio: 1.0,
            tolerance: 0.02,
            checkpoint_steps: 200,
        }
    }
}

impl TrainingConfig {
    /// The adapter these settings describe.
    pub fn lora_spec(&self) -> mananera_model::adapter::LoraSpec {
        mananera_model::adapter::LoraSpec {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        }
    }

    /// Whether a time or token budget bounds the run: then the untrained transcripts are
    /// visited newest first, and those a run does not reach stay for the next one.
    pub fn is_budgeted(&self) -> bool {
        self.max_minutes > 0.0 || self.max_tokens > 0
    }

    /// Refuses settings that cannot train, naming the setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Config(what));
        if self.block_size < 2 {
            return bad(format!(
                "training.block_size is {}; a block needs at least 2 tokens (256 is usual)",
                self.block_size
            ));
        }
        if self.block_size > 2048 {
            return bad(format!(
                "training.block_size is {}; BLOOM was trained on at most 2048 tokens, and the \
                 activations of longer blocks would not fit in memory on a CPU; use ≤ 2048",
                self.block_size
            ));
        }
        if self.batch_size == 0 || self.grad_accumulation == 0 || self.epochs == 0 {
            return bad(
                "training.batch_size, grad_accumulation and epochs must be at least 1".into(),
            );
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "training.learning_rate is {}; it must be positive (2e-4 for LoRA, 5e-5 for full)",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("training.adam_beta1 and adam_beta2 must be in [0, 1)".into());
        }
        if !(0.0..=1.0).contains(&self.validation_fraction) {
            return bad("training.validation_fraction must be in [0, 1]".into());
        }
        if !(self.replay_ratio >= 0.0 && self.tolerance >= 0.0 && self.weight_decay >= 0.0) {
            return bad("training.replay_ratio, tolerance and weight_decay must be ≥ 0".into());
        }
        if !(self.max_minutes.is_finite() && self.max_minutes >= 0.0) {
            return bad(format!(
                "training.max_minutes is {}; give the run's time budget in minutes (300 for \
                 five hours), or 0 for none",
                self.max_minutes
            ));
        }
        let per_step = self.block_size * self.batch_size * self.grad_accumulation;
        if self.max_tokens > 0 && self.max_tokens < per_step {
            return bad(format!(
                "training.max_tokens is {}, less than one optimizer step trains ({per_step} = \
                 block_size × batch_size × grad_accumulation); raise it, or 0 for none",
                self.max_tokens
            ));
        }
        if self.max_validation_blocks == 0 {
            return bad("training.max_validation_blocks must be at least 1".into());
        }
        if self.method == Method::Lora {
            self.lora_spec().validate().map_err(TrainError::Config)?;
        }
        Ok(())
    }
}

/// Anything that stops a training run. Nothing current is changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    /// The corpus cannot make a dataset.
    #[error("{0}")]
    Data(String),
    /// The base model, an adapter or a checkpoint cannot be used.
    #[error("{0}")]
    Model(String),
    /// Another process is training into the same directory.
    #[error("another `mananera train` holds {0}; wait for it to finish (or stop it)")]
    Busy(PathBuf),
    #[error("{path}: {problem}")]
    Io { path: PathBuf, problem: String },
    /// A tensor operation failed (out of memory, mostly).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The model crate's failures keep their kind: a damaged file is the model's, a held lock
/// is busy, a missing version is a bad argument.
impl From<mananera_model::Error> for TrainError {
    fn from(e: mananera_model::Error) -> Self {
        use mananera_model::Error as E;
        match e {
            E::Checkpoint { .. } | E::Download { .. } => TrainError::Model(e.to_string()),
            E::Version(message) => TrainError::Config(message),
            E::Busy(dir) => TrainError::Busy(dir),
            E::Io { path, problem } => TrainError::Io { path, problem },
            E::Tensor(e) => TrainError::Tensor(e),
        }
    }
}

impl TrainError {
    fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            problem: e.to_string(),
        }
    }
}
