//! mananera: speeches in the voice of the Mexican presidential morning press conference,
//! from a BLOOM model written in Rust.
//!
//! # Layout
//! The model is described once in `mananera-model`, computed for serving in
//! `mananera-engine` and trained in `mananera-training`; the bots are `mananera-bots`.
//! This crate wires them into one binary (README's "Architecture" has the arrows).
//!
//! - [`cli`]: the command line and its one dispatch; [`commands`]: one module per
//!   subcommand (its flags and its work); [`exit`]: exit codes and failures; [`logging`].
//! - [`config`]: `config.toml` with environment and command-line overrides; [`schedule`]:
//!   `[nightly]` and its due times.
//! - [`service`]: the daemon's core: generation worker with continuous batching, prompt
//!   cache, user limits, metrics.
//! - [`web`]: the web page and HTTP API of `mananera serve`.
//! - [`chat_bots`]: the Discord and Telegram bots (`mananera-bots` crate) wired to the service.
//! - [`live`]: the settings in force and the model served, changed without a restart.
//! - [`nightly`]: the scheduled re-scrape and incremental fine-tune inside the daemon, run
//!   as child processes whose output is [`summary`].
//! - [`admin`], [`control`]: what admins see and do, and the control socket they reach it on.
//! - [`systemd`]: readiness, status and watchdog notifications to the service manager.
//! - [`stall`]: the stall watchdog, an OS thread that probes the async runtime.
//! - [`failpoint`]: pauses and panics the tests set at named places (debug builds only).

pub mod admin;
pub mod chat_bots;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod exit;
pub mod failpoint;
pub mod heap;
pub mod language;
pub mod live;
pub mod logging;
pub mod nightly;
pub mod publish;
pub mod schedule;
pub mod service;
pub mod stall;
pub mod summary;
pub mod systemd;
pub mod texts;
pub mod voices;
pub mod web;
