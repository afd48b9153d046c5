//! Why a model file could not be used. Callers tell the cases apart: a broken checkpoint is
//! the model's fault, a busy directory is worth waiting for, a missing version is a typo.

use std::path::{Path, PathBuf};

/// Everything reading or writing the model's files can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint, adapter or version file is missing, unreadable, corrupt or disagrees
    /// with `config.json`.
    #[error("{path}: {problem}\n  how to fix: {fix}")]
    Checkpoint {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// The model could not be fetched from the Hugging Face Hub.
    #[error(
        "could not download {file} of {repo} (revision {revision}): {reason}\n  how to fix: {fix}"
    )]
    Download {
        repo: String,
        revision: String,
        file: String,
        reason: String,
        fix: String,
    },
    /// A version was named that does not exist or cannot be made current.
    #[error("{0}")]
    Version(String),
    /// Another process is training into the same versions directory.
    #[error("another `mananera train` holds {0}; wait for it to finish (or stop it)")]
    Busy(PathBuf),
    /// The file system refused a read or write.
    #[error("{path}: {problem}")]
    Io { path: PathBuf, problem: String },
    /// A tensor operation failed (out of memory, mostly).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl Error {
    /// Shorthand for [`Error::Checkpoint`].
    pub fn checkpoint(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::Checkpoint {
            path: path.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            problem: e.to_string(),
        }
    }
}

/// Result of model file operations.
pub type Result<T> = std::result::Result<T, Error>;
