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
    /// The voices of the blocks, with their headers' tokens (empty for a run from before
    /// voices: one voice without a header).
    #[serde(default)]
    pub(super) voices: Vec<PlanVoice>,
}

/// One voice of a run's blocks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct PlanVoice {
    /// Its id; empty for transcripts of no voice.
    pub(super) id: String,
    /// The header's tokens, which open each of its blocks.
    pub(super) header: Vec<u32>,
}

impl PlanRecord {
    /// Leading positions of each block whose next tokens are not scored: the header's (its
    /// first token is no prediction; the last predicts the block's first word).
    pub(super) fn unscored(&self, voices: &[usize]) -> Vec<usize> {
        voices
            .iter()
            .map(|&v| {
                self.voices
                    .get(v)
                    .map_or(0, |voice| voice.header.len().saturating_sub(1))
            })
            .collect()
    }
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
    /// The voice of each block (an index into `record.voices`).
    pub(super) train_voices: Vec<usize>,
    pub(super) validation_voices: Vec<usize>,
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
    let voices = plan_voices(job, documents, &tokenizer)?;
    let voice_of: HashMap<&str, usize> = voices
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id.as_str(), i))
        .collect();
    let headers: Vec<Vec<u32>> = voices.iter().map(|v| v.header.clone()).collect();
    let by_id: HashMap<&str, &Document> = documents.iter().map(|d| (d.id.as_str(), d)).collect();
    let tokens = |ids: &[String]| -> Result<Vec<(usize, Vec<u32>)>, TrainError> {
        use rayon::prelude::*;
        ids.par_iter()
            .map(|id| {
                let doc = by_id[id.as_str()];
                Ok((
                    voice_of[doc.voice.as_str()],
                    data::tokenize(&tokenizer, &doc.text, eos)?,
                ))
            })
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
    } else {
        // A block never mixes voices: one voice's transcripts after the other's waste one
        // partial block per voice, not one per change.
        new.sort_by_key(|id| voice_of[by_id[id.as_str()].voice.as_str()]);
    }
    let new_tokens = tokens(&new)?;
    let packed = data::pack(&streams(&new_tokens), &headers, settings.block_size);
    let (mut train, mut train_voices) = (packed.blocks, packed.voices);
    let spans = if budgeted {
        new.iter()
            .zip(&packed.spans)
            .map(|(id, blocks)| Span {
                start: blocks.start,
                end: blocks.end,
                date: by_id[id.as_str()].date.clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut replay = Vec::new();
    if parent.is_some() && !new.is_empty() {
        let old_tokens = tokens(&old)?;
        let new_count: usize = new_tokens.iter().map(|(_, t)| t.len()).sum();
        let (picked, blocks) = replay_blocks(&old, &old_tokens, &headers, new_count, settings);
        train.extend(blocks.blocks);
        train_voices.extend(blocks.voices);
        replay = picked;
    }
    let validation_tokens = tokens(&split.validation)?;
    let mut validation_streams = streams(&validation_tokens);
    validation_streams.sort_by_key(|(v, _)| *v);
    let (validation, validation_voices) =
        validation_blocks(&validation_streams, &headers, settings);
    let tokens_available: usize = new_tokens.iter().map(|(_, t)| t.len()).sum();
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
            voices,
        },
        train,
        validation,
        train_voices,
        validation_voices,
    })
}

/// Each transcript's voice and tokens, as [`data::pack`] takes them.
fn streams(tokens: &[(usize, Vec<u32>)]) -> Vec<(usize, &[u32])> {
    tokens.iter().map(|(v, t)| (*v, t.as_slice())).collect()
}

/// The voices of `documents` with their headers' tokens, in the configured order (and a
/// voice without a header for transcripts of no voice). A transcript of a voice that is not
/// configured, or a header that leaves no room in a block, is refused.
fn plan_voices(
    job: &Job,
    documents: &[Document],
    tokenizer: &tokenizers::Tokenizer,
) -> Result<Vec<PlanVoice>, TrainError> {
    let used: BTreeSet<&str> = documents.iter().map(|d| d.voice.as_str()).collect();
    if let Some(unknown) = used
        .iter()
        .find(|id| !id.is_empty() && !job.voices.iter().any(|v| v.id == **id))
    {
        let document = documents.iter().find(|d| d.voice == *unknown);
        return Err(TrainError::Data(format!(
            "transcript {} is in voice {unknown:?}, which no [[corpus.speakers]] entry has; \
             configure that speaker (with `voice` and `header`) or remove the transcript",
            document.map_or("?", |d| d.id.as_str())
        )));
    }
    let mut voices = Vec::new();
    if used.contains("") {
        voices.push(PlanVoice {
            id: String::new(),
            header: Vec::new(),
        });
    }
    for voice in job.voices.iter().filter(|v| used.contains(v.id.as_str())) {
        let header = tokenizer
            .encode(voice.header.as_str(), false)
            .map_err(|e| {
                TrainError::Data(format!("cannot tokenize voice {}'s header: {e}", voice.id))
            })?
            .get_ids()
            .to_vec();
        if header.len() * 2 > job.settings.block_size {
            return Err(TrainError::Config(format!(
                "voice {}'s header is {} tokens, more than half of training.block_size = {}: \
                 shorten `header` in its [[corpus.speakers]] entry or raise block_size",
                voice.id,
                header.len(),
                job.settings.block_size
            )));
        }
        voices.push(PlanVoice {
            id: voice.id.clone(),
            header,
        });
    }
    Ok(voices)
}

/// A replay sample of the transcripts trained on before (`old`, with their tokens), about
/// `training.replay_ratio` of the `new_count` new tokens: their ids and their blocks.
fn replay_blocks(
    old: &[String],
    old_tokens: &[(usize, Vec<u32>)],
    headers: &[Vec<u32>],
    new_count: usize,
    settings: &TrainingConfig,
) -> (Vec<String>, data::Packed) {
    let sizes: Vec<(&str, usize)> = old
        .iter()
        .zip(old_tokens)
        .map(|(id, (_, t))| (id.as_str(), t.len()))
        .collect();
    let picked = data::replay(&sizes, new_count, settings.replay_ratio, settings.seed);
    let chosen: BTreeSet<&str> = picked.iter().copied().collect();
    let mut streams: Vec<(usize, &[u32])> = old
        .iter()
        .zip(old_tokens)
        .filter(|(id, _)| chosen.contains(id.as_str()))
        .map(|(_, (v, t))| (*v, t.as_slice()))
        .collect();
    streams.sort_by_key(|(v, _)| *v);
    let blocks = data::pack(&streams, headers, settings.block_size);
    (picked.into_iter().map(str::to_string).collect(), blocks)
}

/// The held-out transcripts' blocks with their voices, at most
/// `training.max_validation_blocks` of them: a seeded sample, in order, that gives each
/// voice its share (and every voice at least one block).
fn validation_blocks(
    streams: &[(usize, &[u32])],
    headers: &[Vec<u32>],
    settings: &TrainingConfig,
) -> (Vec<Vec<u32>>, Vec<usize>) {
    let packed = data::pack(streams, headers, settings.block_size);
    if packed.blocks.len() <= settings.max_validation_blocks {
        return (packed.blocks, packed.voices);
    }
    let present: BTreeSet<usize> = packed.voices.iter().copied().collect();
    let share = (settings.max_validation_blocks / present.len().max(1)).max(1);
    let order = data::epoch_order(packed.blocks.len(), settings.seed, usize::MAX);
    let mut taken: HashMap<usize, usize> = HashMap::new();
    let mut keep: Vec<usize> = order
        .into_iter()
        .filter(|&i| {
            let count = taken.entry(packed.voices[i]).or_default();
            *count += 1;
            *count <= share
        })
        .collect();
    keep.sort_unstable();
    let voices = keep.iter().map(|&i| packed.voices[i]).collect();
    let blocks = keep.into_iter().map(|i| packed.blocks[i].clone()).collect();
    (blocks, voices)
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
