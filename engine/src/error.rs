//! The engine's error type: every failure a user can cause names what went wrong, where, and
//! how to fix it; the CLI maps the kinds to exit codes.

use std::path::PathBuf;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file (checkpoint, tokenizer, adapter, version, vocabulary) is missing,
    /// unreadable, corrupt or disagrees with `config.json`, or could not be downloaded.
    #[error(transparent)]
    Model(Box<mananera_model::Error>),
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
    /// A model file that cannot be used: what, where, how to fix.
    pub fn checkpoint(
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        mananera_model::Error::checkpoint(path, problem, fix).into()
    }
}

impl From<mananera_model::Error> for Error {
    fn from(e: mananera_model::Error) -> Self {
        Self::Model(Box::new(e))
    }
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, Error>;
