//! One module per subcommand; each turns settings into engine calls and prints the result
//! as text or JSON.

pub mod admin;
pub mod bench;
pub mod bench_train;
pub mod corpus;
pub mod eval;
pub mod generate;
pub mod progress;
pub mod random_model;
pub mod scrape;
pub mod serve;
pub mod train;
pub mod vocab;

use crate::cli::{Failure, Format};
use crate::config::Config;

/// `mananera config`: the effective settings, as TOML or JSON.
pub fn show_config(config: &Config, format: Format) -> Result<(), Failure> {
    let text = match format {
        Format::Json | Format::Jsonl => {
            serde_json::to_string_pretty(config).map_err(|e| Failure {
                code: 1,
                message: e.to_string(),
            })?
        }
        Format::Text => toml::to_string_pretty(config).map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?,
    };
    println!("{text}");
    Ok(())
}

/// The failure of a command whose async runtime could not be built.
pub(crate) fn no_runtime(e: std::io::Error) -> Failure {
    Failure {
        code: 1,
        message: format!("cannot start the async runtime: {e}"),
    }
}

/// Prints `value` as one JSON document on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|e| Failure {
        code: 1,
        message: e.to_string(),
    })?;
    println!("{text}");
    Ok(())
}
