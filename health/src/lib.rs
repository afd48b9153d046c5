//! How the daemon and its bots watch their own health, shared by both crates (neither knows
//! the other's internals): [`Incident`] logs a failing dependency once, not once per call;
//! [`timed`] times every poll of a task and reports the ones that hold an async worker too
//! long (a blocking call that slipped onto the runtime).

pub mod incident;
pub mod poll;

pub use incident::{Incident, Tally, ledger};
pub use poll::{set_slow_poll_reporter, timed};
