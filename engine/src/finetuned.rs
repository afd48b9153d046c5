//! Which fine-tuned version the engine serves on top of the base checkpoint: none, the
//! current accepted version of the versions directory, or a named one. A LoRA version is
//! folded into the weights as they load (no merged copy on disk); a full version is a
//! checkpoint directory of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use mananera_model::BloomConfig;
use mananera_model::adapter::{self, AdapterFiles};
use mananera_model::checkpoint;
use mananera_model::versions::{self, Method, Version};

use super::{Error, Result};

/// `model.version`: what to serve on top of the base model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The base checkpoint alone.
    Base,
    /// The current accepted version, or the base when nothing was trained yet.
    Current,
    /// One version by id (`v0003`).
    Named(String),
}

impl Choice {
    /// Parses the setting's value.
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        match value {
            "current" => Ok(Choice::Current),
            "base" => Ok(Choice::Base),
            id if id.starts_with('v')
                && id[1..].chars().all(|c| c.is_ascii_digit())
                && id.len() > 1 =>
            {
                Ok(Choice::Named(id.to_string()))
            }
            other => Err(format!(
                "`{other}` is not a version: use \"current\", \"base\" or a version id such as \"v0003\""
            )),
        }
    }
}

/// The fine-tuned version options select, with its directory.
#[derive(Debug, Clone)]
pub struct Selected {
    pub version: Version,
    pub dir: PathBuf,
}

impl Selected {
    /// The files that make this version, for the model version hash.
    pub fn files(&self) -> Vec<PathBuf> {
        match self.version.method {
            Method::Lora => vec![
                self.dir.join(adapter::CONFIG_FILE),
                self.dir.join(adapter::WEIGHTS_FILE),
            ],
            Method::Full => vec![self.dir.join(checkpoint::WEIGHTS_FILE)],
        }
    }

    /// `scaling · B A` per weight name, for a LoRA version; checks that the adapter fits.
    pub fn deltas(&self, config: &BloomConfig) -> Result<HashMap<String, Tensor>> {
        let adapter = AdapterFiles::read(&self.dir, config).map_err(|e| unusable(&self.dir, e))?;
        adapter.deltas().map_err(|e| unusable(&self.dir, e))
    }
}

/// Finds the version `choice` names in `versions_dir`, checking it was trained on `model`.
pub fn select(choice: &Choice, versions_dir: &Path, model: &str) -> Result<Option<Selected>> {
    let version = match choice {
        Choice::Base => return Ok(None),
        Choice::Current => {
            versions::current(versions_dir).map_err(|e| unusable(versions_dir, e))?
        }
        Choice::Named(id) => {
            Some(versions::get(versions_dir, id).map_err(|e| unusable(versions_dir, e))?)
        }
    };
    let Some(version) = version else {
        return Ok(None);
    };
    if version.base_model != model {
        return Err(Error::checkpoint(
            versions_dir.join(&version.id),
            format!(
                "version {} was fine-tuned from {}, but model.id is {model}",
                version.id, version.base_model
            ),
            format!(
                "set model.id = \"{}\", or model.version = \"base\" to serve the base alone",
                version.base_model
            ),
        ));
    }
    let dir = versions_dir.join(&version.id);
    Ok(Some(Selected { version, dir }))
}

/// A version that cannot be served, with the fix for serving (the file's own problem kept).
fn unusable(path: &Path, e: mananera_model::Error) -> Error {
    let fix =
        "serve the base model (model.version = \"base\"), pick another version, or train again";
    match e {
        mananera_model::Error::Checkpoint { path, problem, .. } => {
            Error::checkpoint(path, problem, fix)
        }
        other => Error::checkpoint(path, other.to_string(), fix),
    }
}
