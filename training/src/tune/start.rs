//! The models a run starts from and measures against: the base, the parent version it
//! continues, and the version served now.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use mananera_model::checkpoint::{Checkpoint, WEIGHTS_FILE};
use mananera_model::versions::{Method, Version, Versions};

use super::TrainError;
use super::lora::Adapter;
use super::model::Model;
use super::run::Job;

/// Refuses to continue a version trained on another base checkpoint.
pub(super) fn check_base(job: &Job, version: &Version) -> Result<(), TrainError> {
    if version.base_version != job.base_version {
        return Err(TrainError::Model(format!(
            "the current version {} was trained on base {} ({}), but model.id is {} ({}); \
             configure that base again, or move {} aside to start over",
            version.id,
            version.base_model,
            version.base_version,
            job.base_model,
            job.base_version,
            job.versions_dir.display()
        )));
    }
    Ok(())
}

/// `model` with the run's head: trimmed to the corpus vocabulary when the job has one.
fn with_head(job: &Job, model: Model) -> Result<Model, TrainError> {
    Ok(match &job.vocabulary {
        Some(vocabulary) => model.with_vocabulary(vocabulary.clone())?,
        None => model,
    })
}

/// The model a run starts from: the parent version (incremental) or the base.
pub(super) fn start_model(
    job: &Job,
    versions: &Versions,
    parent: Option<&Version>,
) -> Result<Model, TrainError> {
    let config = job.base.config.clone();
    let settings = &job.settings;
    match (settings.method, parent) {
        (_, Some(parent)) if parent.method != settings.method => Err(TrainError::Config(format!(
            "the current version {} was trained with method {}; an incremental run must use \
             the same (training.method = \"{}\")",
            parent.id, parent.method, parent.method
        ))),
        (method, Some(parent)) => {
            saved_model(job, &versions.dir().join(&parent.id), method, || {
                Ok(job.base.read_weights()?)
            })
        }
        (Method::Lora, None) => {
            let adapter = Adapter::init(&settings.lora_spec(), &config, settings.seed)?;
            with_head(job, Model::lora(config, job.base.read_weights()?, adapter))
        }
        (Method::Full, None) => with_head(job, Model::full(config, job.base.read_weights()?)?),
    }
}

/// The model saved in `dir` (a version, or a stopped run's checkpoint) trained with
/// `method`, with the run's head: a LoRA one adapts `base_weights()`, a full one carries its
/// own weights.
pub(super) fn saved_model(
    job: &Job,
    dir: &Path,
    method: Method,
    base_weights: impl FnOnce() -> Result<HashMap<String, Tensor>, TrainError>,
) -> Result<Model, TrainError> {
    let config = job.base.config.clone();
    let model = match method {
        Method::Lora => {
            let adapter = Adapter::load(dir, &config)?;
            Model::lora(config, base_weights()?, adapter)
        }
        Method::Full => Model::full(config, full_weights(dir, &job.base)?)?,
    };
    with_head(job, model)
}

/// A full version's weights, read as a checkpoint of the base's shape.
fn full_weights(dir: &Path, base: &Checkpoint) -> Result<HashMap<String, Tensor>, TrainError> {
    Ok(base.with_weights(dir.join(WEIGHTS_FILE)).read_weights()?)
}

/// The model served now, when it is not the one the run starts from (a fresh run while a
/// version is current): its validation loss is the bar the new version must meet.
pub(super) fn served_model(
    job: &Job,
    versions: &Versions,
    current: Option<&Version>,
    parent: Option<&Version>,
    start: &Model,
) -> Result<Option<Model>, TrainError> {
    let Some(current) = current else {
        return Ok(None);
    };
    if parent.is_some_and(|p| p.id == current.id) {
        return Ok(None);
    }
    let dir = versions.dir().join(&current.id);
    saved_model(job, &dir, current.method, || start_base_weights(job, start)).map(Some)
}

/// The frozen base weights (shared with a LoRA start model, read again otherwise).
fn start_base_weights(job: &Job, start: &Model) -> Result<HashMap<String, Tensor>, TrainError> {
    match start.adapter() {
        Some(_) => Ok(start.weights().clone()),
        None => Ok(job.base.read_weights()?),
    }
}
