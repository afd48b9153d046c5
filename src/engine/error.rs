//! The engine's error type: every failure a user can cause names what went wrong, where, and
//! how to fix it; the CLI maps the kinds to exit codes.

use std::path::PathBuf;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint file is missing, unreadable, corrupt or disagrees with `config.json`.
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
    /// A request (prompt, sampling settings, file to score) is unusable as given.
    #[error("{0}")]
    InvalidInput(String),
    /// A tensor operation failed: a bug or resource exhaustion, not something the user did.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A bug caught before it could take the process down (a panic in model code).
    #[error("internal error: {0}")]
    Internal(String),
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
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, Error>;
