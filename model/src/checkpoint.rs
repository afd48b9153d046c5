//! A BLOOM checkpoint: finding its files (a local directory, or a Hugging Face Hub
//! repository downloaded and cached through `hf-hub`), reading its weights and config, and
//! writing a checkpoint's weights (a merge, a full fine-tune).
//!
//! A checkpoint is `config.json`, `tokenizer.json` and the weights, either one
//! `model.safetensors` or shards listed by `model.safetensors.index.json`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::weights::Weights;

use crate::{BloomConfig, Error, Result};

/// Where to find the model, as configured.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// A local checkpoint directory or a Hub repository id such as `bigscience/bloom-560m`.
    pub model: String,
    /// Hub branch, tag or commit to pin.
    pub revision: String,
    /// Where Hub downloads are cached.
    pub cache_dir: PathBuf,
    /// Never touch the network; use only what the cache already holds.
    pub offline: bool,
}

/// The files of one checkpoint, all present on disk.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
}

/// A checkpoint's files with its parsed `config.json`: what training starts from.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where its files are.
    pub files: CheckpointFiles,
    /// Its parsed `config.json`.
    pub config: BloomConfig,
}

impl Checkpoint {
    /// Reads and checks the configuration of `files`.
    pub fn open(files: CheckpointFiles) -> Result<Self> {
        let config = BloomConfig::read(&files.config)?;
        Ok(Self { files, config })
    }

    /// The checkpoint in directory `dir` (no Hub lookup).
    pub fn local(dir: &Path) -> Result<Self> {
        Self::open(local_checkpoint(dir)?)
    }

    /// Every tensor as f32 under unprefixed names, checked against `config.json`.
    pub fn read_weights(&self) -> Result<HashMap<String, Tensor>> {
        Weights::open(&self.files.weights, &Device::Cpu)?.read_all(&self.config)
    }

    /// Writes `weights` (unprefixed names, every tensor of `config`'s layout, in its order) as
    /// a checkpoint's `model.safetensors` at `path`, atomically.
    pub fn save_weights(
        path: &Path,
        config: &BloomConfig,
        weights: &HashMap<String, Tensor>,
    ) -> Result<()> {
        let mut ordered = Vec::new();
        for (name, _) in config.tensors() {
            let tensor = weights.get(&name).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("tensor `{name}` is missing from the weights to save"),
                    "report it: a bug",
                )
            })?;
            ordered.push((name, tensor.clone()));
        }
        crate::tensors::save(path, &ordered)
    }

    /// The same checkpoint with its weights replaced by `weights` (a full fine-tune's file).
    pub fn with_weights(&self, weights: PathBuf) -> Self {
        let mut out = self.clone();
        out.files.weights = vec![weights];
        out
    }
}

/// The model's configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// The fast tokenizer's file.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// A single-file checkpoint's weights (a full fine-tune's version holds one too).
pub const WEIGHTS_FILE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

impl ModelSource {
    /// Locates (downloading if needed) every file of the checkpoint.
    pub fn resolve(&self) -> Result<CheckpointFiles> {
        let path = Path::new(&self.model);
        if path.exists() {
            return local_checkpoint(path);
        }
        if looks_like_repo_id(&self.model) {
            return self.download();
        }
        Err(Error::checkpoint(
            path,
            "the model directory does not exist",
            "pass --model with an existing checkpoint directory (config.json, tokenizer.json, \
             model.safetensors) or a Hugging Face repository id such as bigscience/bloom-560m",
        ))
    }

    fn download(&self) -> Result<CheckpointFiles> {
        let repo = Repo::with_revision(self.model.clone(), RepoType::Model, self.revision.clone());
        let fetch = |file: &str| -> Result<PathBuf> {
            if let Some(path) = Cache::new(self.cache_dir.clone())
                .repo(repo.clone())
                .get(file)
            {
                return Ok(path);
            }
            if self.offline {
                return Err(self.download_error(file, "not in the cache and offline mode is on", "turn `model.offline` off once to download it, or copy the checkpoint into a local directory and point `model.id` at it"));
            }
            tracing::info!(repo = %self.model, revision = %self.revision, file, "downloading from the Hugging Face Hub");
            let api = ApiBuilder::from_env()
                .with_cache_dir(self.cache_dir.clone())
                .with_progress(true)
                .build()
                .map_err(|e| {
                    self.download_error(file, &e.to_string(), "check HF_ENDPOINT/HF_HOME")
                })?;
            api.repo(repo.clone()).get(file).map_err(|e| {
                self.download_error(
                    file,
                    &e.to_string(),
                    "check the repository id and revision, your network, and (for gated models) \
                     HF_TOKEN; or download the checkpoint elsewhere and point `model.id` at the directory",
                )
            })
        };
        let config = fetch(CONFIG_FILE)?;
        let tokenizer = fetch(TOKENIZER_FILE)?;
        let weights = match fetch(WEIGHTS_FILE) {
            Ok(single) => vec![single],
            Err(single_error) => match fetch(INDEX) {
                Ok(index) => {
                    let shards = shard_names(&index)?;
                    shards
                        .iter()
                        .map(|s| fetch(s))
                        .collect::<Result<Vec<_>>>()?
                }
                Err(_) => return Err(single_error),
            },
        };
        Ok(CheckpointFiles {
            config,
            tokenizer,
            weights,
        })
    }

    fn download_error(&self, file: &str, reason: &str, fix: &str) -> Error {
        Error::Download {
            repo: self.model.clone(),
            revision: self.revision.clone(),
            file: file.to_string(),
            reason: reason.to_string(),
            fix: fix.to_string(),
        }
    }
}

/// `owner/name`: one slash, no path-like start. Anything else is treated as a local path.
fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn local_checkpoint(dir: &Path) -> Result<CheckpointFiles> {
    if !dir.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "is a file, not a checkpoint directory",
            "pass the directory that holds config.json",
        ));
    }
    let require = |name: &str, what: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::checkpoint(
                &path,
                format!("missing {what}"),
                format!(
                    "copy {name} from the original checkpoint into {}",
                    dir.display()
                ),
            ))
        }
    };
    let config = require(CONFIG_FILE, "the model configuration")?;
    let tokenizer = require(
        TOKENIZER_FILE,
        "the tokenizer (mananera needs the fast-tokenizer file, tokenizer.json)",
    )?;
    let weights = if dir.join(WEIGHTS_FILE).is_file() {
        vec![dir.join(WEIGHTS_FILE)]
    } else if dir.join(INDEX).is_file() {
        let shards = shard_names(&dir.join(INDEX))?;
        shards
            .iter()
            .map(|s| require(s, "a weight shard listed in model.safetensors.index.json"))
            .collect::<Result<Vec<_>>>()?
    } else {
        let fix = if dir.join("pytorch_model.bin").exists() {
            "only PyTorch .bin weights are present: re-save the model with \
             `model.save_pretrained(dir, safe_serialization=True)`"
        } else {
            "copy model.safetensors (or the shards and model.safetensors.index.json) into the directory"
        };
        return Err(Error::checkpoint(
            dir.join(WEIGHTS_FILE),
            "no safetensors weights (neither model.safetensors nor model.safetensors.index.json)",
            fix,
        ));
    };
    Ok(CheckpointFiles {
        config,
        tokenizer,
        weights,
    })
}

/// The distinct shard file names of a sharded checkpoint's index, in order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| {
        Error::checkpoint(
            index,
            format!("cannot be read ({e})"),
            "check the file's permissions",
        )
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| {
        Error::checkpoint(
            index,
            format!("is not a valid safetensors index ({e})"),
            "download or export the checkpoint again",
        )
    })?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    if let Some(bad) = shards
        .iter()
        .find(|s| s.contains('/') || s.contains('\\') || s.starts_with('.'))
    {
        return Err(Error::checkpoint(
            index,
            format!("names shard `{bad}` outside the checkpoint directory"),
            "use an index whose shards are plain file names",
        ));
    }
    Ok(shards.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::looks_like_repo_id;

    #[test]
    fn repo_ids_are_told_apart_from_paths() {
        assert!(looks_like_repo_id("bigscience/bloom-560m"));
        assert!(!looks_like_repo_id("./bloom"));
        assert!(!looks_like_repo_id("/models/bloom"));
        assert!(!looks_like_repo_id("models/bloom/560m"));
        assert!(!looks_like_repo_id("bloom"));
    }
}
