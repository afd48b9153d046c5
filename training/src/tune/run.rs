//! One training run: plan the data, build the model, take the optimizer steps, validate,
//! and write the new version (accepted or rejected). A run asked to stop saves a checkpoint
//! at the next step boundary that `--resume` continues bit for bit.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use mananera_model::BloomConfig;
use mananera_model::checkpoint::{Checkpoint, WEIGHTS_FILE};
use mananera_model::versions::{self, Method, Metrics, Status, Version, Versions};
use mananera_model::{fsio, tensors};

use super::data::{self, Document};
use super::lora::Adapter;
use super::model::{DropoutSeed, Model};
use super::optim::{AdamW, AdamWParams, clip_grad_norm};
use super::{TrainError, TrainingConfig};

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

/// Everything a stopped run needs to continue (`run/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    settings: TrainingConfig,
    incremental: bool,
    parent: Option<String>,
    base_model: String,
    base_version: String,
    step: usize,
    total: usize,
    plan: PlanRecord,
    first_loss: Option<f64>,
    last_loss: f64,
    validation_loss_before: f64,
    trained_tokens: usize,
    wall_s: f64,
}

/// Which transcripts a run uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlanRecord {
    /// Trained on before this run (the parent's list).
    seen: Vec<String>,
    new: Vec<String>,
    replay: Vec<String>,
    validation: Vec<String>,
    window: (String, String),
    /// Budgeted runs: where each of `new` lies in the training blocks (the replay blocks
    /// follow them), so a run cut short knows which transcripts it trained whole.
    #[serde(default)]
    spans: Vec<Span>,
}

/// The blocks `[start, end)` that hold a transcript's tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Span {
    start: usize,
    end: usize,
    date: String,
}

/// Blocks a budgeted run shuffles among, in optimizer steps: small enough that a run cut
/// short has trained a newest-first prefix, large enough to mix several transcripts.
const BUDGET_WINDOW_STEPS: usize = 8;

/// Blocks and the record of where they came from.
struct Plan {
    record: PlanRecord,
    train: Vec<Vec<u32>>,
    validation: Vec<Vec<u32>>,
}

const BLOCKS: &str = "blocks.safetensors";
const STATE: &str = "state.json";
const OPTIMIZER: &str = "optimizer.safetensors";

/// Runs `job` on `documents` (every transcript of the corpus).
pub fn train(
    job: &Job,
    documents: &[Document],
    on: &mut dyn FnMut(Event),
) -> Result<Outcome, TrainError> {
    job.settings.validate()?;
    check_memory(&job.base.config, &job.settings, available_memory())?;
    let versions = Versions::open(&job.versions_dir)?;
    let current = versions.current()?;
    if let Some(current) = &current {
        check_base(job, current)?;
    }
    let started = Instant::now();
    let (mut state, plan, model, optimizer) = if job.resume {
        resume(job, &versions, on)?
    } else {
        let parent = if job.incremental {
            current.clone()
        } else {
            None
        };
        let settings = &job.settings;
        on(Event::Phase("tokenizing"));
        let plan = plan(job, documents, parent.as_ref())?;
        if let (true, Some(parent)) = (plan.record.new.is_empty(), &parent) {
            return Ok(Outcome::NothingNew {
                current: parent.id.clone(),
            });
        }
        let model = start_model(job, &versions, parent.as_ref())?;
        let optimizer = match parent.as_ref() {
            Some(parent) => load_optimizer(&versions.dir().join(&parent.id), &model, settings)?,
            None => AdamW::new(vars(&model), adam(settings))?,
        };
        on(Event::Phase("validating the current model"));
        let served = served_model(job, &versions, current.as_ref(), parent.as_ref(), &model)?;
        let before = evaluate(served.as_ref().unwrap_or(&model), &plan.validation)?;
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
            parent: parent.map(|p| p.id),
            base_model: job.base_model.clone(),
            base_version: job.base_version.clone(),
            step: 0,
            total,
            plan: plan.record.clone(),
            first_loss: None,
            last_loss: f64::NAN,
            validation_loss_before: before,
            trained_tokens: 0,
            wall_s: 0.0,
        };
        (state, plan, model, optimizer)
    };
    let mut optimizer = optimizer;
    let settings = state.settings.clone();
    let per_step = settings.batch_size * settings.grad_accumulation;
    tracing::info!(
        step = state.step,
        total = state.total,
        train_blocks = plan.train.len(),
        "training started"
    );
    on(Event::Start { total: state.total });
    let budgeted = settings.is_budgeted();
    // A lineage warms up once: a budgeted run that continues a version starts at the peak.
    let warmup = if budgeted && state.parent.is_some() {
        0
    } else {
        settings.warmup_steps.min(state.total)
    };
    let budget_s = settings.max_minutes * 60.0;
    let elapsed = |state: &RunState| state.wall_s + started.elapsed().as_secs_f64();
    let epoch_len = plan.train.len().div_ceil(per_step);
    let new_blocks = state.plan.spans.last().map_or(0, |s| s.end);
    let visit_order = |epoch: usize| {
        if budgeted {
            data::budget_order(
                new_blocks,
                plan.train.len() - new_blocks,
                settings.replay_ratio,
                per_step * BUDGET_WINDOW_STEPS,
                settings.seed,
                epoch,
            )
        } else if settings.shuffle {
            data::epoch_order(plan.train.len(), settings.seed, epoch)
        } else {
            (0..plan.train.len()).collect()
        }
    };
    let mut order: Option<(usize, Vec<usize>)> = None;
    let mut budget_reached = false;
    while state.step < state.total {
        if budget_s > 0.0 && state.step > 0 && elapsed(&state) >= budget_s {
            budget_reached = true;
            tracing::info!(
                step = state.step,
                planned = state.total,
                budget_minutes = settings.max_minutes,
                "the time budget is spent; validating what was trained"
            );
            break;
        }
        if job.stop.load(Ordering::SeqCst) {
            state.wall_s += started.elapsed().as_secs_f64();
            on(Event::Phase("saving a checkpoint"));
            save_checkpoint(&versions, &state, &plan, &model, &optimizer)?;
            return Ok(Outcome::Stopped {
                step: state.step,
                total: state.total,
            });
        }
        let step = state.step;
        let (epoch, within) = (step / epoch_len, step % epoch_len);
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, visit_order(epoch)));
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
                elapsed(&state) / budget_s
            } else {
                0.0
            };
            settings.schedule.factor_at(step, warmup, state.total, time)
        } else {
            settings.schedule.factor(step, warmup, state.total)
        };
        let lr = settings.learning_rate * factor;
        let seed = settings.seed ^ ((step as u64) << 16);
        let Stepped { loss, grad_norm } = optimizer_step(
            &model,
            &mut optimizer,
            &plan.train,
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
        state.first_loss.get_or_insert(loss);
        state.last_loss = loss;
        state.trained_tokens += picked.len() * settings.block_size;
        state.step += 1;
        on(Event::Step {
            step: state.step,
            total: estimated_total(&state, elapsed(&state), budget_s),
            loss,
            lr,
            grad_norm,
            tokens: state.trained_tokens,
        });
        if settings.checkpoint_steps > 0
            && state.step % settings.checkpoint_steps == 0
            && state.step < state.total
        {
            let mut snapshot = state.clone();
            snapshot.wall_s += started.elapsed().as_secs_f64();
            save_checkpoint(&versions, &snapshot, &plan, &model, &optimizer)?;
        }
    }
    on(Event::Phase("validating the new version"));
    let after = evaluate(&model, &plan.validation)?;
    let wall_s = state.wall_s + started.elapsed().as_secs_f64();
    let (before, after_ppl) = (state.validation_loss_before.exp(), after.exp());
    let accepted = after_ppl <= before * (1.0 + settings.tolerance);
    // A run cut short has trained only part of its transcripts.
    let trained = if budgeted && state.step < epoch_len {
        let order = visit_order(0);
        let visited = &order[..(state.step * per_step).min(order.len())];
        trained_mostly(&state.plan, visited, plan.train.len())
    } else {
        state.plan.new.clone()
    };
    let backlog = state.plan.new.len() - trained.len();
    let window = match budgeted {
        true => trained_window(&state.plan, &trained),
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
        settings: serde_json::to_value(&settings).unwrap_or_default(),
    };
    on(Event::Phase("saving the version"));
    let staged = versions.stage()?;
    write_trained(staged.path(), &job.base_model, &model, &optimizer)?;
    if model.adapter().is_none() {
        super::merge::copy_checkpoint_files(&job.base, staged.path())?;
    }
    versions.commit(staged, &record)?;
    clear_checkpoint(&versions)?;
    tracing::info!(
        version = %record.id,
        status = ?record.status,
        perplexity_before = before,
        perplexity_after = after_ppl,
        steps = record.metrics.steps,
        "training finished"
    );
    Ok(Outcome::Finished(Box::new(record)))
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

/// The new transcripts a run cut short counts as trained: those with at least half of their
/// blocks among `visited` (the rest of a long one is not worth a night of its own), and
/// at least the newest when any of its blocks were, so a transcript longer than two budgets
/// cannot hold the backlog up for good.
fn trained_mostly(record: &PlanRecord, visited: &[usize], blocks: usize) -> Vec<String> {
    let mut seen = vec![false; blocks];
    for &b in visited {
        seen[b] = true;
    }
    let share = |span: &Span| seen[span.start..span.end].iter().filter(|&&v| v).count();
    record
        .new
        .iter()
        .zip(&record.spans)
        .enumerate()
        .filter(|(i, (_, span))| {
            let visited = share(span);
            let len = span.end.saturating_sub(span.start);
            len > 0 && (visited * 2 >= len || (*i == 0 && visited > 0))
        })
        .map(|(_, (id, _))| id.clone())
        .collect()
}

/// The oldest and newest dates of the transcripts a budgeted run trained.
fn trained_window(record: &PlanRecord, trained: &[String]) -> (String, String) {
    let trained: BTreeSet<&str> = trained.iter().map(String::as_str).collect();
    let dates: Vec<&str> = record
        .new
        .iter()
        .zip(&record.spans)
        .filter(|(id, _)| trained.contains(id.as_str()))
        .map(|(_, span)| span.date.as_str())
        .collect();
    (
        dates.iter().min().unwrap_or(&"").to_string(),
        dates.iter().max().unwrap_or(&"").to_string(),
    )
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy)]
pub struct Stepped {
    /// Mean of the micro-batches' losses.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimizer step: the gradients of every micro-batch (`blocks` rows picked by each
/// entry of `micro`) summed with weight 1/len(micro), clipped to `max_grad_norm`, then
/// AdamW at `lr`. LoRA dropout draws from `seed`.
pub fn optimizer_step(
    model: &Model,
    optimizer: &mut AdamW,
    blocks: &[Vec<u32>],
    micro: &[&[usize]],
    lr: f64,
    max_grad_norm: f64,
    seed: u64,
) -> Result<Stepped, TrainError> {
    let trainable = vars(model);
    let mut sums: Option<Vec<Tensor>> = None;
    let mut loss_sum = 0.0;
    for (m, picked) in micro.iter().enumerate() {
        let ids = batch(blocks, picked)?;
        let loss = model.loss(&ids, Some(DropoutSeed(seed ^ m as u64)))?;
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
    let mut grads = sums.unwrap_or_default();
    let grad_norm = clip_grad_norm(&mut grads, max_grad_norm)?;
    optimizer.step(&grads, lr)?;
    Ok(Stepped {
        loss: loss_sum / micro.len().max(1) as f64,
        grad_norm,
    })
}

/// Bytes a step is expected to hold at its peak: the weights (with gradients and both AdamW
/// moments for a full fine-tune), and per token of a micro-batch the activations backward
/// keeps (the vocabulary-wide logits and their softmax, every layer's projections, and the
/// attention scores, which grow with the block).
pub fn estimated_memory(shape: &BloomConfig, settings: &TrainingConfig) -> u64 {
    let (v, h, l, nh) = (
        shape.vocab_size as u64,
        shape.hidden_size as u64,
        shape.n_layer as u64,
        shape.n_head as u64,
    );
    let params = v * h + l * 12 * h * h;
    let weights = match settings.method {
        Method::Full => 16 * params,
        Method::Lora => 4 * params,
    };
    let s = settings.block_size as u64;
    let per_token = 4 * (4 * v + l * (24 * h + 3 * nh * s));
    weights + per_token * s * settings.batch_size as u64
}

/// Refuses a run that cannot fit in `available` bytes of memory, before touching anything.
fn check_memory(
    shape: &BloomConfig,
    settings: &TrainingConfig,
    available: Option<u64>,
) -> Result<(), TrainError> {
    let Some(available) = available else {
        return Ok(());
    };
    let needed = estimated_memory(shape, settings);
    if needed > available {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(TrainError::Config(format!(
            "training.block_size = {} with batch_size = {} ({} method) needs about {:.1} GiB,              and {:.1} GiB is available; lower block_size or batch_size (grad_accumulation              keeps the effective batch)",
            settings.block_size,
            settings.batch_size,
            settings.method,
            gib(needed),
            gib(available)
        )));
    }
    Ok(())
}

/// `MemAvailable` from /proc/meminfo, where there is one.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn adam(settings: &TrainingConfig) -> AdamWParams {
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

fn check_base(job: &Job, version: &Version) -> Result<(), TrainError> {
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

/// Tokenizes the corpus and picks the blocks: all training transcripts, or (incremental)
/// the ones the parent has not seen plus a replay sample of those it has.
fn plan(job: &Job, documents: &[Document], parent: Option<&Version>) -> Result<Plan, TrainError> {
    let settings = &job.settings;
    if documents.is_empty() {
        return Err(TrainError::Data(
            "the corpus is empty; run `mananera scrape` or `mananera corpus import` first".into(),
        ));
    }
    let split = data::split(
        documents,
        settings.validation_recent,
        settings.validation_fraction,
    )?;
    let tokenizer = tokenizers::Tokenizer::from_file(&job.base.files.tokenizer).map_err(|e| {
        TrainError::Model(format!(
            "{}: not a tokenizer.json ({e})",
            job.base.files.tokenizer.display()
        ))
    })?;
    let eos = job.base.config.eos_token_id;
    let by_id: HashMap<&str, &Document> = documents.iter().map(|d| (d.id.as_str(), d)).collect();
    let tokens = |ids: &[String]| -> Result<Vec<Vec<u32>>, TrainError> {
        use rayon::prelude::*;
        ids.par_iter()
            .map(|id| data::tokenize(&tokenizer, &by_id[id.as_str()].text, eos))
            .collect()
    };
    let seen: BTreeSet<&str> = parent
        .map(|p| p.transcripts.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let (mut new, old): (Vec<String>, Vec<String>) = split
        .train
        .iter()
        .cloned()
        .partition(|id| !seen.contains(id.as_str()));
    let budgeted = settings.is_budgeted();
    if budgeted {
        // Newest first: a run that does not reach the end leaves the oldest for later.
        new.sort_by(|a, b| {
            by_id[b.as_str()]
                .date
                .cmp(&by_id[a.as_str()].date)
                .then(a.cmp(b))
        });
    }
    let new_tokens = tokens(&new)?;
    let mut train = data::pack(new_tokens.iter().map(Vec::as_slice), settings.block_size);
    let spans = if budgeted {
        let block = settings.block_size;
        let mut at = 0;
        new.iter()
            .zip(&new_tokens)
            .map(|(id, t)| {
                let start = at / block;
                at += t.len();
                Span {
                    start,
                    end: at.div_ceil(block).min(train.len()),
                    date: by_id[id.as_str()].date.clone(),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut replay = Vec::new();
    if parent.is_some() && !new.is_empty() {
        let old_tokens = tokens(&old)?;
        let sizes: Vec<(&str, usize)> = old
            .iter()
            .zip(&old_tokens)
            .map(|(id, t)| (id.as_str(), t.len()))
            .collect();
        let new_count: usize = new_tokens.iter().map(Vec::len).sum();
        let picked = data::replay(&sizes, new_count, settings.replay_ratio, settings.seed);
        let chosen: BTreeSet<&str> = picked.iter().copied().collect();
        let streams = old
            .iter()
            .zip(&old_tokens)
            .filter(|(id, _)| chosen.contains(id.as_str()))
            .map(|(_, t)| t.as_slice());
        train.extend(data::pack(streams, settings.block_size));
        replay = picked.into_iter().map(str::to_string).collect();
    }
    let validation_tokens = tokens(&split.validation)?;
    let mut validation = data::pack(
        validation_tokens.iter().map(Vec::as_slice),
        settings.block_size,
    );
    if validation.len() > settings.max_validation_blocks {
        let order = data::epoch_order(validation.len(), settings.seed, usize::MAX);
        let mut keep: Vec<usize> = order[..settings.max_validation_blocks].to_vec();
        keep.sort_unstable();
        validation = keep.into_iter().map(|i| validation[i].clone()).collect();
    }
    let tokens_available: usize = new_tokens.iter().map(Vec::len).sum();
    if !new.is_empty() && train.is_empty() {
        return Err(TrainError::Data(format!(
            "the training transcripts hold {tokens_available} tokens, fewer than one block of \
             training.block_size = {}; lower block_size or add transcripts",
            settings.block_size
        )));
    }
    if validation.is_empty() {
        return Err(TrainError::Data(format!(
            "the held-out transcripts ({}) hold fewer tokens than one block of \
             training.block_size = {}; lower block_size, or raise validation_recent",
            split.validation.join(", "),
            settings.block_size
        )));
    }
    let dates: Vec<&str> = new
        .iter()
        .chain(&replay)
        .map(|id| by_id[id.as_str()].date.as_str())
        .collect();
    let window = (
        dates.iter().min().unwrap_or(&"").to_string(),
        dates.iter().max().unwrap_or(&"").to_string(),
    );
    tracing::info!(
        new = new.len(),
        replay = replay.len(),
        validation = split.validation.len(),
        train_blocks = train.len(),
        validation_blocks = validation.len(),
        "dataset"
    );
    Ok(Plan {
        record: PlanRecord {
            seen: seen.into_iter().map(str::to_string).collect(),
            new,
            replay,
            validation: split.validation,
            window,
            spans,
        },
        train,
        validation,
    })
}

/// The model a run starts from: the parent version (incremental) or the base.
fn start_model(
    job: &Job,
    versions: &Versions,
    parent: Option<&Version>,
) -> Result<Model, TrainError> {
    let shape = job.base.config.clone();
    let settings = &job.settings;
    match (settings.method, parent) {
        (_, Some(parent)) if parent.method != settings.method => Err(TrainError::Config(format!(
            "the current version {} was trained with method {}; an incremental run must use \
             the same (training.method = \"{}\")",
            parent.id, parent.method, parent.method
        ))),
        (Method::Lora, parent) => {
            let weights = job.base.read_weights()?;
            let adapter = match parent {
                Some(parent) => Adapter::load(&versions.dir().join(&parent.id), &shape)?,
                None => Adapter::init(&settings.lora_spec(), &shape, settings.seed)?,
            };
            Ok(Model::lora(shape, weights, adapter))
        }
        (Method::Full, Some(parent)) => {
            let weights = full_weights(&versions.dir().join(&parent.id), &job.base)?;
            Model::full(shape, weights)
        }
        (Method::Full, None) => Model::full(shape, job.base.read_weights()?),
    }
}

/// A full version's weights, read as a checkpoint of the base's shape.
fn full_weights(dir: &Path, base: &Checkpoint) -> Result<HashMap<String, Tensor>, TrainError> {
    Ok(base.with_weights(dir.join(WEIGHTS_FILE)).read_weights()?)
}

/// The model served now, when it is not the one the run starts from (a fresh run while a
/// version is current): its validation loss is the bar the new version must meet.
fn served_model(
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
    let shape = job.base.config.clone();
    Ok(Some(match current.method {
        Method::Lora => Model::lora(
            shape.clone(),
            start_base_weights(job, start)?,
            Adapter::load(&dir, &shape)?,
        ),
        Method::Full => Model::full(shape, full_weights(&dir, &job.base)?)?,
    }))
}

/// The frozen base weights (shared with a LoRA start model, read again otherwise).
fn start_base_weights(job: &Job, start: &Model) -> Result<HashMap<String, Tensor>, TrainError> {
    match start.adapter() {
        Some(_) => Ok(start.weights().clone()),
        None => Ok(job.base.read_weights()?),
    }
}

/// Mean loss over `blocks`, one at a time.
pub fn evaluate(model: &Model, blocks: &[Vec<u32>]) -> Result<f64, TrainError> {
    let mut sum = 0.0;
    for block in blocks {
        let ids = Tensor::new(block.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        sum += model.loss(&ids, None)?.to_scalar::<f32>()? as f64;
    }
    Ok(sum / blocks.len().max(1) as f64)
}

fn batch(blocks: &[Vec<u32>], picked: &[usize]) -> candle_core::Result<Tensor> {
    let rows: Vec<Tensor> = picked
        .iter()
        .map(|&i| Tensor::new(blocks[i].as_slice(), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    Tensor::stack(&rows, 0)
}

/// Writes the trained weights and the optimizer state into `dir`: a PEFT adapter, or every
/// weight as `model.safetensors`.
fn write_trained(
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

fn load_optimizer(
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
fn save_checkpoint(
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
fn clear_checkpoint(versions: &Versions) -> Result<(), TrainError> {
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

fn blocks_of(tensor: &Tensor) -> candle_core::Result<Vec<Vec<u32>>> {
    tensor.to_vec2::<u32>()
}

/// Loads the stopped run in `run/`: its settings win over the configured ones, so the
/// continuation is the same run.
fn resume(
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
    let plan = Plan {
        record: state.plan.clone(),
        train: take("train")?,
        validation: take("validation")?,
    };
    let shape = job.base.config.clone();
    let model = match state.settings.method {
        Method::Lora => Model::lora(
            shape.clone(),
            job.base.read_weights()?,
            Adapter::load(&dir, &shape)?,
        ),
        Method::Full => Model::full(shape, full_weights(&dir, &job.base)?)?,
    };
    let optimizer = load_optimizer(&dir, &model, &state.settings)?;
    tracing::info!(
        step = state.step,
        total = state.total,
        "resuming a stopped run"
    );
    Ok((state, plan, model, optimizer))
}
