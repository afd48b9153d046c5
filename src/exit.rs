//! How `mananera` ends: the exit codes, and the failure every command returns. The nightly
//! run reads its children's codes with the same enum, so a code has one meaning everywhere.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | internal failure (I/O, a bug) |
//! | 2 | bad usage, settings or input |
//! | 3 | the model could not be found, downloaded or read |
//! | 4 | part failed, the rest was done: some pages or sources of a scrape, the hook of a publish |
//! | 5 | busy: another process holds the corpus or versions, or a run is in progress |
//! | 6 | `train`: the new version was rejected by its validation check |
//! | 130 | stopped by a signal (SIGINT/SIGTERM) before finishing |

/// A non-zero exit status with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// I/O, or a bug.
    Internal = 1,
    /// Bad usage, settings or input.
    Usage = 2,
    /// The model could not be found, downloaded or read.
    Model = 3,
    /// Part failed, the rest was done: some pages or sources of a scrape, the hook of a
    /// publish (its files are written).
    Partial = 4,
    /// Another process holds what this one needs, or a run is in progress.
    Busy = 5,
    /// `train`: the version was rejected by its validation check.
    Rejected = 6,
    /// Stopped by a signal before finishing.
    Stopped = 130,
}

impl Exit {
    /// The status the process exits with.
    pub fn code(self) -> u8 {
        self as u8
    }

    const ALL: [Exit; 7] = [
        Exit::Internal,
        Exit::Usage,
        Exit::Model,
        Exit::Partial,
        Exit::Busy,
        Exit::Rejected,
        Exit::Stopped,
    ];

    /// The kind of a model-file failure (shared by the engine and training errors).
    pub fn of_model(e: &mananera_model::Error) -> Self {
        use mananera_model::Error as E;
        match e {
            E::Checkpoint { .. } | E::Download { .. } => Exit::Model,
            E::Version(_) => Exit::Usage,
            E::Busy(_) => Exit::Busy,
            E::Io { .. } | E::Tensor(_) => Exit::Internal,
        }
    }
}

/// How a child `mananera` process ended, read from its exit status (the nightly run's
/// `scrape` and `train`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Exit status 0.
    Success,
    /// One of our codes.
    Failed(Exit),
    /// Killed by a signal (no code) or a code we never use.
    Other(Option<i32>),
}

impl Ended {
    /// Reads `code` (`ExitStatus::code`).
    pub fn of(code: Option<i32>) -> Self {
        match code {
            Some(0) => Ended::Success,
            Some(code) => Exit::ALL
                .into_iter()
                .find(|e| i32::from(e.code()) == code)
                .map_or(Ended::Other(Some(code)), Ended::Failed),
            None => Ended::Other(None),
        }
    }
}

/// A command that did not succeed: what to tell the person, and how to exit.
#[derive(Debug)]
pub struct Failure {
    /// How the process exits.
    pub exit: Exit,
    /// What to tell the person (stderr).
    pub message: String,
}

impl Failure {
    /// A failure exiting with `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    /// Bad usage, settings or input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
}

impl From<mananera_engine::Error> for Failure {
    fn from(e: mananera_engine::Error) -> Self {
        use mananera_engine::Error as E;
        let exit = match &e {
            E::InvalidInput(_) => Exit::Usage,
            E::Model(model) => Exit::of_model(model),
            E::Candle(_) | E::Internal(_) => Exit::Internal,
        };
        Self::new(exit, e.to_string())
    }
}

impl From<mananera_model::Error> for Failure {
    fn from(e: mananera_model::Error) -> Self {
        Self::new(Exit::of_model(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::{Ended, Exit};

    #[test]
    fn codes_read_back_as_their_meaning() {
        for exit in Exit::ALL {
            assert_eq!(Ended::of(Some(i32::from(exit.code()))), Ended::Failed(exit));
        }
        assert_eq!(
            [
                Exit::Usage,
                Exit::Model,
                Exit::Partial,
                Exit::Busy,
                Exit::Rejected,
                Exit::Stopped
            ]
            .map(Exit::code),
            [2, 3, 4, 5, 6, 130]
        );
        assert_eq!(Ended::of(Some(0)), Ended::Success);
        assert_eq!(Ended::of(Some(7)), Ended::Other(Some(7)));
        assert_eq!(Ended::of(None), Ended::Other(None));
    }
}
