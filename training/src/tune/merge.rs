//! Merged checkpoints: a LoRA version folded into its base (`W + scaling · B A`), written
//! as an ordinary BLOOM checkpoint that transformers and the engine load without peft.

use std::path::Path;

use mananera_model::checkpoint::{CONFIG_FILE, Checkpoint, TOKENIZER_FILE, WEIGHTS_FILE};
use mananera_model::fsio;
use mananera_model::versions::{self, Method, Version};

use super::TrainError;
use super::lora::Adapter;

/// Writes `version` (from `versions_dir`) merged with `base` into the new directory `out`.
pub fn export_merged(
    base: &Checkpoint,
    versions_dir: &Path,
    version: &Version,
    out: &Path,
) -> Result<(), TrainError> {
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        return Err(TrainError::Config(format!(
            "{} already exists and is not empty; name a new directory",
            out.display()
        )));
    }
    let dir = versions_dir.join(&version.id);
    let weights = match version.method {
        Method::Lora => {
            let mut weights = base.read_weights()?;
            let adapter = Adapter::load(&dir, &base.config)?;
            for (name, delta) in adapter.deltas()? {
                let merged = (&weights[&name] + delta)?;
                weights.insert(name, merged);
            }
            weights
        }
        Method::Full => base.with_weights(dir.join(WEIGHTS_FILE)).read_weights()?,
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let staged = tempfile::Builder::new()
        .prefix(".tmp-merge-")
        .tempdir_in(parent)
        .map_err(|e| TrainError::io(parent, e))?;
    Checkpoint::save_weights(&staged.path().join(WEIGHTS_FILE), &base.config, &weights)?;
    copy_checkpoint_files(base, staged.path())?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| TrainError::io(out, e))?;
    }
    std::fs::rename(staged.keep(), out).map_err(|e| TrainError::io(out, e))?;
    Ok(versions::sync_dir(parent)?)
}

/// Copies config.json, tokenizer.json and the small tokenizer files of `base` into `dir`,
/// which then is a complete checkpoint once it holds `model.safetensors`.
pub fn copy_checkpoint_files(base: &Checkpoint, dir: &Path) -> Result<(), TrainError> {
    let source = base.files.config.parent().unwrap_or(Path::new("."));
    for (from, name) in [
        (base.files.config.clone(), CONFIG_FILE),
        (base.files.tokenizer.clone(), TOKENIZER_FILE),
        (
            source.join("tokenizer_config.json"),
            "tokenizer_config.json",
        ),
        (
            source.join("special_tokens_map.json"),
            "special_tokens_map.json",
        ),
        (
            source.join("generation_config.json"),
            "generation_config.json",
        ),
    ] {
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| TrainError::io(&from, e))?;
            let to = dir.join(name);
            fsio::write_atomic(&to, &bytes).map_err(|e| TrainError::io(&to, e))?;
        }
    }
    Ok(())
}
