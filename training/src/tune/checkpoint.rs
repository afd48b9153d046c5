//! A stopped run's checkpoint (`run/` in the versions directory): the blocks, the trained
//! weights, the optimizer state and where the run was, so `--resume` continues bit for bit;
//! and the trained files a version directory holds.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use mananera_model::checkpoint::{Checkpoint, WEIGHTS_FILE};
use mananera_model::versions::{self, Versions};
use mananera_model::{fsio, tensors};
use serde::{Deserialize, Serialize};

use super::model::Model;
use super::optim::AdamW;
use super::plan::{Plan, PlanRecord};
use super::run::{Event, Job, adam};
use super::start::saved_model;
use super::{TrainError, TrainingConfig};

/// Everything a stopped run needs to continue (`run/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RunState {
    pub(super) settings: TrainingConfig,
    pub(super) incremental: bool,
    pub(super) parent: Option<String>,
    pub(super) base_model: String,
    pub(super) base_version: String,
    pub(super) step: usize,
    pub(super) total: usize,
    pub(super) plan: PlanRecord,
    pub(super) first_loss: Option<f64>,
    pub(super) last_loss: f64,
    pub(super) validation_loss_before: f64,
    /// Each voice's validation loss before the run.
    #[serde(default)]
    pub(super) voice_loss_before: BTreeMap<String, f64>,
    pub(super) trained_tokens: usize,
    pub(super) wall_s: f64,
}

const BLOCKS: &str = "blocks.safetensors";
const STATE: &str = "state.json";
const OPTIMIZER: &str = "optimizer.safetensors";

/// Writes the trained weights and the optimizer state into `dir`: a PEFT adapter, or every
/// weight as `model.safetensors`.
pub(super) fn write_trained(
    dir: &Path,
    base_model: &str,
    model: &Model,
    optimizer: &AdamW,
) -> Result<(), TrainError> {
    match model.adapter() {
        Some(adapter) => adapter.save(dir, base_model)?,
        None => Checkpoint::save_weights(&dir.join(WEIGHTS_FILE), model.config(), model.weights())?,
    }
    let (first, second) = optimizer.moments()?;
    let names = model.trainable();
    let mut state = Vec::with_capacity(2 * names.len() + 1);
    for (((name, _), m), v) in names.iter().zip(first).zip(second) {
        state.push((format!("{name}.exp_avg"), m));
        state.push((format!("{name}.exp_avg_sq"), v));
    }
    state.push((
        "step".to_string(),
        Tensor::new(&[optimizer.steps() as u32], &Device::Cpu)?,
    ));
    Ok(tensors::save(&dir.join(OPTIMIZER), &state)?)
}

/// The optimizer state saved beside a version's (or checkpoint's) weights.
pub(super) fn load_optimizer(
    dir: &Path,
    model: &Model,
    settings: &TrainingConfig,
) -> Result<AdamW, TrainError> {
    let path = dir.join(OPTIMIZER);
    let mut saved = tensors::load(&path)?;
    let mut first = Vec::new();
    let mut second = Vec::new();
    let names = model.trainable();
    for (name, _) in &names {
        let (Some(m), Some(v)) = (
            saved.remove(&format!("{name}.exp_avg")),
            saved.remove(&format!("{name}.exp_avg_sq")),
        ) else {
            return Err(TrainError::Model(format!(
                "{} has no optimizer state for `{name}`; the version was trained with other \
                 settings: train from scratch (without --incremental)",
                path.display()
            )));
        };
        first.push(m);
        second.push(v);
    }
    let step = saved
        .get("step")
        .map(|s| s.to_vec1::<u32>())
        .transpose()?
        .and_then(|s| s.first().copied())
        .unwrap_or(0) as usize;
    AdamW::resume(
        names.into_iter().map(|(_, v)| v).collect(),
        adam(settings),
        first,
        second,
        step,
    )
    .map_err(|e| TrainError::Model(format!("{}: {e}", path.display())))
}

/// Writes a resumable checkpoint as `run/`, replacing the previous one atomically.
pub(super) fn save_checkpoint(
    versions: &Versions,
    state: &RunState,
    plan: &Plan,
    model: &Model,
    optimizer: &AdamW,
) -> Result<(), TrainError> {
    let staged = versions.stage()?;
    let dir = staged.path();
    write_trained(dir, &state.base_model, model, optimizer)?;
    tensors::save(
        &dir.join(BLOCKS),
        &[
            (
                "train".to_string(),
                blocks_tensor(&plan.train, state.settings.block_size)?,
            ),
            (
                "validation".to_string(),
                blocks_tensor(&plan.validation, state.settings.block_size)?,
            ),
            (
                "train_voices".to_string(),
                voices_tensor(&plan.train_voices)?,
            ),
            (
                "validation_voices".to_string(),
                voices_tensor(&plan.validation_voices)?,
            ),
        ],
    )?;
    let json = versions::pretty(state);
    fsio::write_atomic(&dir.join(STATE), json.as_bytes()).map_err(|e| TrainError::io(dir, e))?;
    let target = versions.dir().join(versions::RUN);
    let old = versions.stage()?;
    if target.exists() {
        std::fs::rename(&target, old.path().join("old")).map_err(|e| TrainError::io(&target, e))?;
    }
    std::fs::rename(staged.keep(), &target).map_err(|e| TrainError::io(&target, e))?;
    versions::sync_dir(versions.dir())?;
    drop(old);
    tracing::info!(step = state.step, dir = %target.display(), "checkpoint saved");
    Ok(())
}

/// Removes a finished run's checkpoint.
pub(super) fn clear_checkpoint(versions: &Versions) -> Result<(), TrainError> {
    let dir = versions.dir().join(versions::RUN);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TrainError::io(&dir, e)),
    }
}

fn blocks_tensor(blocks: &[Vec<u32>], block: usize) -> candle_core::Result<Tensor> {
    let flat: Vec<u32> = blocks.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (blocks.len(), block), &Device::Cpu)
}

fn voices_tensor(voices: &[usize]) -> candle_core::Result<Tensor> {
    let voices: Vec<u32> = voices.iter().map(|&v| v as u32).collect();
    Tensor::new(voices.as_slice(), &Device::Cpu)
}

fn blocks_of(tensor: &Tensor) -> candle_core::Result<Vec<Vec<u32>>> {
    tensor.to_vec2::<u32>()
}

/// Loads the stopped run in `run/`: its settings win over the configured ones, so the
/// continuation is the same run.
pub(super) fn resume(
    job: &Job,
    versions: &Versions,
    on: &mut dyn FnMut(Event),
) -> Result<(RunState, Plan, Model, AdamW), TrainError> {
    let dir = versions.dir().join(versions::RUN);
    let state_path = dir.join(STATE);
    let text = match std::fs::read_to_string(&state_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TrainError::Config(format!(
                "there is no stopped run to resume in {}; start one without --resume",
                versions.dir().display()
            )));
        }
        Err(e) => return Err(TrainError::io(&state_path, e)),
    };
    let state: RunState = serde_json::from_str(&text).map_err(|e| {
        TrainError::Config(format!(
            "{} is damaged ({e}); delete {} and train again",
            state_path.display(),
            dir.display()
        ))
    })?;
    if state.base_version != job.base_version {
        return Err(TrainError::Model(format!(
            "the stopped run in {} trains base {} ({}), but model.id is {} ({}); configure \
             that base to resume, or delete {} to start over",
            dir.display(),
            state.base_model,
            state.base_version,
            job.base_model,
            job.base_version,
            dir.display()
        )));
    }
    on(Event::Phase("loading the stopped run"));
    let mut blocks = tensors::load(&dir.join(BLOCKS))?;
    let mut take = |name: &str| -> Result<Vec<Vec<u32>>, TrainError> {
        let tensor = blocks.remove(name).ok_or_else(|| {
            TrainError::Config(format!("{} has no `{name}` blocks", dir.display()))
        })?;
        Ok(blocks_of(&tensor)?)
    };
    let train = take("train")?;
    let validation = take("validation")?;
    // A checkpoint from before voices: its blocks are of one voice without a header.
    let mut voices_of = |name: &str, len: usize| -> Result<Vec<usize>, TrainError> {
        Ok(match blocks.remove(name) {
            Some(tensor) => tensor
                .to_vec1::<u32>()?
                .into_iter()
                .map(|v| v as usize)
                .collect(),
            None => vec![0; len],
        })
    };
    let plan = Plan {
        record: state.plan.clone(),
        train_voices: voices_of("train_voices", train.len())?,
        validation_voices: voices_of("validation_voices", validation.len())?,
        train,
        validation,
    };
    let model = saved_model(job, &dir, state.settings.method, || {
        Ok(job.base.read_weights()?)
    })?;
    let optimizer = load_optimizer(&dir, &model, &state.settings)?;
    tracing::info!(
        step = state.step,
        total = state.total,
        "resuming a stopped run"
    );
    Ok((state, plan, model, optimizer))
}
