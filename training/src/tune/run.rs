//! One training run: plan the data, build the model, take the optimizer steps, validate,
//! and write the new version (accepted or rejected). A run asked to stop saves a checkpoint
//! at the next step boundary that `--resume` continues bit for bit.
//!
//! The parts: `plan` (the blocks), `start` (the starting models), `checkpoint` (stop and
//! resume), `memory` (the up-front memory check).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use mananera_model::checkpoint::Checkpoint;
use mananera_model::versions::{Metrics, Status, Version, Versions, VoiceMetrics};

use super::checkpoint::{self, RunState};
use super::data;
use super::data::Document;
use super::head::Vocabulary;
use super::model::{DropoutSeed, Model};
use super::optim::{AdamW, AdamWParams, clip_factor};
use super::plan::{self, BUDGET_WINDOW_STEPS, Plan};
use super::{TrainError, TrainingConfig, memory, start, verdict};
use crate::speakers::Voice;

/// What to train.
pub struct Job<'a> {
    pub base: Checkpoint,
    /// `model.id`, recorded in versions and adapter configs.
    pub base_model: String,
    /// The base's content version; adapters made on another base are refused.
    pub base_version: String,
    pub settings: TrainingConfig,
    pub versions_dir: PathBuf,
    /// Continue from the current version on the transcripts it has not seen.
    pub incremental: bool,
    /// Continue the stopped run in `run/`.
    pub resume: bool,
    /// Set from a signal handler: stop at the next step boundary.
    pub stop: &'a AtomicBool,
    /// Score only these tokens (the corpus vocabulary the engine serves, `engine.vocabulary`);
    /// `None` trains the full head.
    pub vocabulary: Option<Vocabulary>,
    /// The configured voices: each transcript's blocks open with its voice's header.
    pub voices: Vec<Voice>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// A new version was written (accepted or rejected).
    Finished(Box<Version>),
    /// Stopped on request; `--resume` continues.
    Stopped { step: usize, total: usize },
    /// An incremental run found no transcript it had not trained on.
    NothingNew { current: String },
}

/// What a run reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A phase without steps started (tokenizing, validating, saving).
    Phase(&'static str),
    /// The step count is known.
    Start { total: usize },
    /// An optimizer step finished.
    Step {
        step: usize,
        total: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: usize,
    },
}

/// A run under way: where it is, its blocks, the model and the optimizer.
struct Run {
    state: RunState,
    plan: Plan,
    model: Model,
    optimizer: AdamW,
}

/// Runs `job` on `documents` (every transcript of the corpus).
pub fn train(
    job: &Job,
    documents: &[Document],
    on: &mut dyn FnMut(Event),
) -> Result<Outcome, TrainError> {
    job.settings.validate()?;
    memory::check(&job.base.config, &job.settings, memory::available())?;
    let versions = Versions::open(&job.versions_dir)?;
    let current = versions.current()?;
    if let Some(current) = &current {
        start::check_base(job, current)?;
    }
    let started = Instant::now();
    let mut run = if job.resume {
        let (state, plan, model, optimizer) = checkpoint::resume(job, &versions, on)?;
        Run {
            state,
            plan,
            model,
            optimizer,
        }
    } else {
        match fresh(job, documents, &versions, current.as_ref(), on)? {
            Ok(run) => run,
            Err(nothing_new) => return Ok(nothing_new),
        }
    };
    let budget_reached = match take_steps(job, &versions, &mut run, started, on)? {
        Stepping::Done { budget_reached } => budget_reached,
        Stepping::Stopped => {
            return Ok(Outcome::Stopped {
                step: run.state.step,
                total: run.state.total,
            });
        }
    };
    finish(job, &versions, &run, budget_reached, started, on)
        .map(|v| Outcome::Finished(Box::new(v)))
}

/// A new run: its blocks, its starting model and optimizer, and the validation loss it must
/// not make worse. `Err` holds the outcome when there is nothing new to train on.
fn fresh(
    job: &Job,
    documents: &[Document],
    versions: &Versions,
    current: Option<&Version>,
    on: &mut dyn FnMut(Event),
) -> Result<Result<Run, Outcome>, TrainError> {
    let parent = if job.incremental { current } else { None };
    let settings = &job.settings;
    on(Event::Phase("tokenizing"));
    let plan = plan::plan(job, documents, parent)?;
    if let (true, Some(parent)) = (plan.record.new.is_empty(), parent) {
        return Ok(Err(Outcome::NothingNew {
            current: parent.id.clone(),
        }));
    }
    let model = start::start_model(job, versions, parent)?;
    let optimizer = match parent {
        Some(parent) => {
            checkpoint::load_optimizer(&versions.dir().join(&parent.id), &model, settings)?
        }
        None => AdamW::new(vars(&model), adam(settings))?,
    };
    on(Event::Phase("validating the current model"));
    let served = start::served_model(job, versions, current, parent, &model)?;
    let before = validate(served.as_ref().unwrap_or(&model), &plan)?;
    drop(served);
    let per_step = settings.batch_size * settings.grad_accumulation;
    let per_epoch = plan.train.len().div_ceil(per_step);
    let mut total = match settings.max_steps {
        0 => per_epoch * settings.epochs,
        n => n,
    };
    if settings.max_tokens > 0 {
        total = total.min(settings.max_tokens / (per_step * settings.block_size));
    }
    let state = RunState {
        settings: settings.clone(),
        incremental: job.incremental,
        parent: parent.map(|p| p.id.clone()),
        base_model: job.base_model.clone(),
        base_version: job.base_version.clone(),
        step: 0,
        total,
        plan: plan.record.clone(),
        first_loss: None,
        last_loss: f64::NAN,
        validation_loss_before: before.loss,
        voice_loss_before: before.voices,
        trained_tokens: 0,
        wall_s: 0.0,
    };
    Ok(Ok(Run {
        state,
        plan,
        model,
        optimizer,
    }))
}

/// How the steps ended.
enum Stepping {
    /// Every planned step, or the time budget ran out (`budget_reached`).
    Done { budget_reached: bool },
    /// Asked to stop: the checkpoint is saved.
    Stopped,
}

/// The order a run visits its training blocks in during `epoch`: newest first within
/// windows for a budgeted run, shuffled or in order otherwise.
fn visit_order(settings: &TrainingConfig, run: &Run, epoch: usize) -> Vec<usize> {
    let blocks = run.plan.train.len();
    if settings.is_budgeted() {
        let per_step = settings.batch_size * settings.grad_accumulation;
        let new_blocks = run.state.plan.spans.last().map_or(0, |s| s.end);
        data::budget_order(
            new_blocks,
            blocks - new_blocks,
            settings.replay_ratio,
            per_step * BUDGET_WINDOW_STEPS,
            settings.seed,
            epoch,
        )
    } else if settings.shuffle {
        data::epoch_order(blocks, settings.seed, epoch)
    } else {
        (0..blocks).collect()
    }
}

/// The optimizer steps, from `run.state.step` to the planned total, the time budget, or a
/// stop request.
fn take_steps(
    job: &Job,
    versions: &Versions,
    run: &mut Run,
    started: Instant,
    on: &mut dyn FnMut(Event),
) -> Result<Stepping, TrainError> {
    let settings = run.state.settings.clone();
    let per_step = settings.batch_size * settings.grad_accumulation;
    tracing::info!(
        step = run.state.step,
        total = run.state.total,
        train_blocks = run.plan.train.len(),
        "training started"
    );
    on(Event::Start {
        total: run.state.total,
    });
    let budgeted = settings.is_budgeted();
    // A lineage warms up once: a budgeted run that continues a version starts at the peak.
    let warmup = if budgeted && run.state.parent.is_some() {
        0
    } else {
        settings.warmup_steps.min(run.state.total)
    };
    let budget_s = settings.max_minutes * 60.0;
    let elapsed = |state: &RunState| state.wall_s + started.elapsed().as_secs_f64();
    let epoch_len = run.plan.train.len().div_ceil(per_step);
    let unscored = run.plan.record.unscored(&run.plan.train_voices);
    let mut order: Option<(usize, Vec<usize>)> = None;
    while run.state.step < run.state.total {
        if budget_s > 0.0 && run.state.step > 0 && elapsed(&run.state) >= budget_s {
            tracing::info!(
                step = run.state.step,
                planned = run.state.total,
                budget_minutes = settings.max_minutes,
                "the time budget is spent; validating what was trained"
            );
            return Ok(Stepping::Done {
                budget_reached: true,
            });
        }
        if job.stop.load(Ordering::SeqCst) {
            run.state.wall_s += started.elapsed().as_secs_f64();
            on(Event::Phase("saving a checkpoint"));
            checkpoint::save_checkpoint(
                versions,
                &run.state,
                &run.plan,
                &run.model,
                &run.optimizer,
            )?;
            return Ok(Stepping::Stopped);
        }
        let step = run.state.step;
        let (epoch, within) = (step / epoch_len, step % epoch_len);
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, visit_order(&settings, run, epoch)));
        }
        let order = order
            .as_ref()
            .map(|(_, o)| o.as_slice())
            .unwrap_or_default();
        let picked = &order[within * per_step..((within + 1) * per_step).min(order.len())];
        let micro: Vec<&[usize]> = picked.chunks(settings.batch_size).collect();
        let factor = if budgeted {
            // The schedule fits the budget: its progress is the larger of the steps' and the
            // time's share.
            let time = if budget_s > 0.0 {
                elapsed(&run.state) / budget_s
            } else {
                0.0
            };
            settings
                .schedule
                .factor_at(step, warmup, run.state.total, time)
        } else {
            settings.schedule.factor(step, warmup, run.state.total)
        };
        let lr = settings.learning_rate * factor;
        let seed = settings.seed ^ ((step as u64) << 16);
        let Stepped { loss, grad_norm } = optimizer_step(
            &run.model,
            &mut run.optimizer,
            Blocks {
                tokens: &run.plan.train,
                unscored: &unscored,
            },
            &micro,
            lr,
            settings.max_grad_norm,
            seed,
        )?;
        if !loss.is_finite() {
            return Err(TrainError::Data(format!(
                "the training loss became {loss} at step {}; lower training.learning_rate",
                step + 1
            )));
        }
        let state = &mut run.state;
        state.first_loss.get_or_insert(loss);
        state.last_loss = loss;
        state.trained_tokens += picked.len() * settings.block_size;
        state.step += 1;
        on(Event::Step {
            step: state.step,
            total: estimated_total(state, elapsed(state), budget_s),
            loss,
            lr,
            grad_norm,
            tokens: state.trained_tokens,
        });
        if settings.checkpoint_steps > 0
            && state.step.is_multiple_of(settings.checkpoint_steps)
            && state.step < state.total
        {
            let mut snapshot = state.clone();
            snapshot.wall_s += started.elapsed().as_secs_f64();
            checkpoint::save_checkpoint(
                versions,
                &snapshot,
                &run.plan,
                &run.model,
                &run.optimizer,
            )?;
        }
    }
    Ok(Stepping::Done {
        budget_reached: false,
    })
}

/// Validates the trained model and writes the version (current if accepted).
fn finish(
    job: &Job,
    versions: &Versions,
    run: &Run,
    budget_reached: bool,
    started: Instant,
    on: &mut dyn FnMut(Event),
) -> Result<Version, TrainError> {
    let (state, plan, model) = (&run.state, &run.plan, &run.model);
    let settings = &state.settings;
    on(Event::Phase("validating the new version"));
    let validated = validate(model, plan)?;
    let after = validated.loss;
    let wall_s = state.wall_s + started.elapsed().as_secs_f64();
    let (before, after_ppl) = (state.validation_loss_before.exp(), after.exp());
    let voices = voice_metrics(state, plan, &validated);
    let worse_voices = verdict::worse_voices(&voices, settings.tolerance);
    let accepted =
        verdict::overall_holds(before, after_ppl, settings.tolerance) && worse_voices.is_empty();
    if !worse_voices.is_empty() {
        tracing::warn!(voices = ?worse_voices, "validation perplexity of these voices got worse beyond training.tolerance: the version is rejected");
    }
    // A run cut short has trained only part of its transcripts.
    let per_step = settings.batch_size * settings.grad_accumulation;
    let budgeted = settings.is_budgeted();
    let trained = if budgeted && state.step < plan.train.len().div_ceil(per_step) {
        let order = visit_order(settings, run, 0);
        let visited = &order[..(state.step * per_step).min(order.len())];
        plan::trained_mostly(&state.plan, visited, plan.train.len())
    } else {
        state.plan.new.clone()
    };
    let backlog = state.plan.new.len() - trained.len();
    let window = match budgeted {
        true => plan::trained_window(&state.plan, &trained),
        false => state.plan.window.clone(),
    };
    let metrics = Metrics {
        steps: state.step,
        tokens: state.trained_tokens,
        train_blocks: plan.train.len(),
        validation_blocks: plan.validation.len(),
        train_loss_first: state.first_loss.unwrap_or(f64::NAN),
        train_loss_last: state.last_loss,
        validation_loss_before: state.validation_loss_before,
        validation_loss_after: after,
        perplexity_before: before,
        perplexity_after: after_ppl,
        wall_s,
        tokens_per_s: state.trained_tokens as f64 / wall_s.max(1e-9),
        data_window: window,
        backlog,
        budget_reached,
        voices,
        worse_voices,
    };
    let seen: BTreeSet<String> = state
        .plan
        .seen
        .iter()
        .chain(&trained)
        .chain(&state.plan.replay)
        .cloned()
        .collect();
    let record = Version {
        id: versions.next_id()?,
        status: if accepted {
            Status::Accepted
        } else {
            Status::Rejected
        },
        method: settings.method,
        parent: state.parent.clone(),
        base_model: state.base_model.clone(),
        base_version: state.base_version.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        transcripts: seen.into_iter().collect(),
        new_transcripts: trained,
        validation: state.plan.validation.clone(),
        metrics,
        settings: serde_json::to_value(settings).unwrap_or_default(),
    };
    on(Event::Phase("saving the version"));
    let staged = versions.stage()?;
    checkpoint::write_trained(staged.path(), &job.base_model, model, &run.optimizer)?;
    if model.adapter().is_none() {
        super::merge::copy_checkpoint_files(&job.base, staged.path())?;
    }
    versions.commit(staged, &record)?;
    checkpoint::clear_checkpoint(versions)?;
    tracing::info!(
        version = %record.id,
        status = ?record.status,
        perplexity_before = before,
        perplexity_after = after_ppl,
        steps = record.metrics.steps,
        "training finished"
    );
    Ok(record)
}

/// The steps a run will take: the planned ones, or fewer when the time budget's share spent
/// runs ahead of the steps' (so the ETA shown is the budget's).
fn estimated_total(state: &RunState, elapsed_s: f64, budget_s: f64) -> usize {
    if budget_s <= 0.0 || elapsed_s <= 0.0 {
        return state.total;
    }
    let by_time = (state.step as f64 * budget_s / elapsed_s).ceil() as usize;
    by_time.clamp(state.step, state.total)
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy)]
pub struct Stepped {
    /// Mean of the micro-batches' losses.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Training blocks, and how many leading positions of each are not scored (its voice header).
#[derive(Debug, Clone, Copy)]
pub struct Blocks<'a> {
    pub tokens: &'a [Vec<u32>],
    /// Per block; an empty slice scores every position.
    pub unscored: &'a [usize],
}

impl<'a> Blocks<'a> {
    /// Blocks scored whole (no headers).
    pub fn scored(tokens: &'a [Vec<u32>]) -> Self {
        Self {
            tokens,
            unscored: &[],
        }
    }
}

/// One optimizer step: the gradients of every micro-batch (`blocks` rows picked by each
/// entry of `micro`) summed with weight 1/len(micro), clipped to `max_grad_norm`, then
/// AdamW at `lr`. LoRA dropout draws from `seed`.
pub fn optimizer_step(
    model: &Model,
    optimizer: &mut AdamW,
    blocks: Blocks<'_>,
    micro: &[&[usize]],
    lr: f64,
    max_grad_norm: f64,
    seed: u64,
) -> Result<Stepped, TrainError> {
    let trainable = vars(model);
    let mut sums: Option<Vec<Tensor>> = None;
    let mut loss_sum = 0.0;
    for (m, picked) in micro.iter().enumerate() {
        let ids = batch(blocks.tokens, picked)?;
        let skip: Vec<usize> = picked
            .iter()
            .map(|&i| blocks.unscored.get(i).copied().unwrap_or(0))
            .collect();
        let loss = model.loss_after(&ids, &skip, Some(DropoutSeed(seed ^ m as u64)))?;
        loss_sum += loss.to_scalar::<f32>()? as f64;
        let grads = (loss / micro.len() as f64)?.backward()?;
        let grads = trainable
            .iter()
            .map(|var| {
                grads
                    .get(var.as_tensor())
                    .cloned()
                    .map_or_else(|| var.as_tensor().zeros_like(), Ok)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        sums = Some(match sums {
            None => grads,
            Some(sums) => sums
                .iter()
                .zip(&grads)
                .map(|(a, b)| a + b)
                .collect::<candle_core::Result<Vec<_>>>()?,
        });
    }
    let grads = sums.unwrap_or_default();
    let (grad_norm, grad_scale) = clip_factor(&grads, max_grad_norm)?;
    optimizer.step(&grads, lr, grad_scale)?;
    Ok(Stepped {
        loss: loss_sum / micro.len().max(1) as f64,
        grad_norm,
    })
}

/// AdamW's hyper-parameters from the settings.
pub(super) fn adam(settings: &TrainingConfig) -> AdamWParams {
    AdamWParams {
        beta1: settings.adam_beta1,
        beta2: settings.adam_beta2,
        eps: settings.adam_epsilon,
        weight_decay: settings.weight_decay,
    }
}

fn vars(model: &Model) -> Vec<Var> {
    model.trainable().into_iter().map(|(_, v)| v).collect()
}

/// Mean loss over `blocks`, one at a time, each scored after its first `unscored[block]`
/// positions (an empty slice scores everything).
pub fn evaluate(model: &Model, blocks: &[Vec<u32>], unscored: &[usize]) -> Result<f64, TrainError> {
    let losses = block_losses(model, blocks, unscored)?;
    Ok(losses.iter().sum::<f64>() / losses.len().max(1) as f64)
}

fn block_losses(
    model: &Model,
    blocks: &[Vec<u32>],
    unscored: &[usize],
) -> Result<Vec<f64>, TrainError> {
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let ids = Tensor::new(block.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let skip = unscored.get(i).copied().unwrap_or(0);
            Ok(model.eval_loss(&ids, &[skip])?.to_scalar::<f32>()? as f64)
        })
        .collect()
}

/// A model's validation loss: over every held-out block, and each voice's.
struct Validated {
    loss: f64,
    voices: BTreeMap<String, f64>,
}

fn validate(model: &Model, plan: &Plan) -> Result<Validated, TrainError> {
    let unscored = plan.record.unscored(&plan.validation_voices);
    let losses = block_losses(model, &plan.validation, &unscored)?;
    let mut by_voice: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (loss, &v) in losses.iter().zip(&plan.validation_voices) {
        let Some(voice) = plan.record.voices.get(v).filter(|v| !v.id.is_empty()) else {
            continue;
        };
        let entry = by_voice.entry(voice.id.clone()).or_default();
        entry.0 += loss;
        entry.1 += 1;
    }
    Ok(Validated {
        loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
        voices: by_voice
            .into_iter()
            .map(|(id, (sum, n))| (id, sum / n as f64))
            .collect(),
    })
}

/// Each voice's blocks and validation perplexity before and after the run.
fn voice_metrics(
    state: &RunState,
    plan: &Plan,
    after: &Validated,
) -> BTreeMap<String, VoiceMetrics> {
    let count = |voices: &[usize], v: usize| voices.iter().filter(|&&x| x == v).count();
    plan.record
        .voices
        .iter()
        .enumerate()
        .filter(|(_, voice)| !voice.id.is_empty())
        .map(|(v, voice)| {
            let ppl = |losses: &BTreeMap<String, f64>| {
                losses.get(&voice.id).map_or(f64::NAN, |l| l.exp())
            };
            let metrics = VoiceMetrics {
                train_blocks: count(&plan.train_voices, v),
                validation_blocks: count(&plan.validation_voices, v),
                perplexity_before: ppl(&state.voice_loss_before),
                perplexity_after: ppl(&after.voices),
            };
            (voice.id.clone(), metrics)
        })
        .collect()
}

fn batch(blocks: &[Vec<u32>], picked: &[usize]) -> candle_core::Result<Tensor> {
    let rows: Vec<Tensor> = picked
        .iter()
        .map(|&i| Tensor::new(blocks[i].as_slice(), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    Tensor::stack(&rows, 0)
}
