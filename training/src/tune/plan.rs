//! What a run trains on: the corpus tokenized and packed into blocks, split into training
//! and validation, the transcripts new to this run with a replay sample of older ones, and,
//! for a run cut short by its budget, which transcripts it trained whole.

use std::collections::{BTreeSet, HashMap};

use mananera_model::versions::Version;
use serde::{Deserialize, Serialize};

use super::data::{self, Document};
use super::run::Job;
use super::{TrainError, TrainingConfig};

/// Which transcripts a run uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PlanRecord {
    /// Trained on before this run (the parent's list).
    pub(super) seen: Vec<String>,
    pub(super) new: Vec<String>,
    pub(super) replay: Vec<String>,
    pub(super) validation: Vec<String>,
    pub(super) window: (String, String),
    /// Budgeted runs: where each of `new` lies in the training blocks (the replay blocks
    /// follow them), so a run cut short knows which transcripts it trained whole.
    #[serde(default)]
    pub(super) spans: Vec<Span>,
}

/// The blocks `[start, end)` that hold a transcript's tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) date: String,
}

/// Blocks a budgeted run shuffles among, in optimizer steps: small enough that a run cut
/// short has trained a newest-first prefix, large enough to mix several transcripts.
pub(super) const BUDGET_WINDOW_STEPS: usize = 8;

/// Blocks and the record of where they came from.
pub(super) struct Plan {
    pub(super) record: PlanRecord,
    pub(super) train: Vec<Vec<u32>>,
    pub(super) validation: Vec<Vec<u32>>,
}

/// Tokenizes the corpus and picks the blocks: all training transcripts, or (incremental)
/// the ones the parent has not seen plus a replay sample of those it has.
pub(super) fn plan(
    job: &Job,
    documents: &[Document],
    parent: Option<&Version>,
) -> Result<Plan, TrainError> {
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
        let dates: Vec<&str> = new
            .iter()
            .map(|id| by_id[id.as_str()].date.as_str())
            .collect();
        spans_of(&dates, &new_tokens, settings.block_size, train.len())
    } else {
        Vec::new()
    };
    let mut replay = Vec::new();
    if parent.is_some() && !new.is_empty() {
        let old_tokens = tokens(&old)?;
        let new_count: usize = new_tokens.iter().map(Vec::len).sum();
        let (picked, blocks) = replay_blocks(&old, &old_tokens, new_count, settings);
        train.extend(blocks);
        replay = picked;
    }
    let validation = validation_blocks(&tokens(&split.validation)?, settings);
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

/// Where each new transcript (of `tokens`, packed in order) lies in blocks of `block`
/// tokens, with its date.
fn spans_of(dates: &[&str], tokens: &[Vec<u32>], block: usize, blocks: usize) -> Vec<Span> {
    let mut at = 0;
    dates
        .iter()
        .zip(tokens)
        .map(|(date, t)| {
            let start = at / block;
            at += t.len();
            Span {
                start,
                end: at.div_ceil(block).min(blocks),
                date: date.to_string(),
            }
        })
        .collect()
}

/// A replay sample of the transcripts trained on before (`old`, with their tokens), about
/// `training.replay_ratio` of the `new_count` new tokens: their ids and their blocks.
fn replay_blocks(
    old: &[String],
    old_tokens: &[Vec<u32>],
    new_count: usize,
    settings: &TrainingConfig,
) -> (Vec<String>, Vec<Vec<u32>>) {
    let sizes: Vec<(&str, usize)> = old
        .iter()
        .zip(old_tokens)
        .map(|(id, t)| (id.as_str(), t.len()))
        .collect();
    let picked = data::replay(&sizes, new_count, settings.replay_ratio, settings.seed);
    let chosen: BTreeSet<&str> = picked.iter().copied().collect();
    let streams = old
        .iter()
        .zip(old_tokens)
        .filter(|(id, _)| chosen.contains(id.as_str()))
        .map(|(_, t)| t.as_slice());
    let blocks = data::pack(streams, settings.block_size);
    (picked.into_iter().map(str::to_string).collect(), blocks)
}

/// The held-out transcripts' blocks, at most `training.max_validation_blocks` of them (a
/// seeded sample, in order).
fn validation_blocks(tokens: &[Vec<u32>], settings: &TrainingConfig) -> Vec<Vec<u32>> {
    let validation = data::pack(tokens.iter().map(Vec::as_slice), settings.block_size);
    if validation.len() <= settings.max_validation_blocks {
        return validation;
    }
    let order = data::epoch_order(validation.len(), settings.seed, usize::MAX);
    let mut keep: Vec<usize> = order[..settings.max_validation_blocks].to_vec();
    keep.sort_unstable();
    keep.into_iter().map(|i| validation[i].clone()).collect()
}

/// The new transcripts a run cut short counts as trained: those with at least half of their
/// blocks among `visited` (the rest of a long one is not worth a night of its own), and
/// at least the newest when any of its blocks were, so a transcript longer than two budgets
/// cannot hold the backlog up for good.
pub(super) fn trained_mostly(record: &PlanRecord, visited: &[usize], blocks: usize) -> Vec<String> {
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
pub(super) fn trained_window(record: &PlanRecord, trained: &[String]) -> (String, String) {
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
