//! From transcripts to training blocks: tokenize each transcript whole, end it with EOS,
//! concatenate a voice's transcripts, and cut them into blocks of `block_size` tokens that
//! each open with the voice's header. Validation is held out by transcript (each voice's
//! newest ones plus a fixed hashed sample), so no text is in both.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};

use super::TrainError;

/// One transcript's text, as the dataset sees it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The corpus id (its file path under `transcripts/`).
    pub id: String,
    /// Sort key for "most recent": the conference date, `YYYY-MM-DD`.
    pub date: String,
    /// The voice id of its speaker ([`crate::speakers::Voice::id`]); empty: no voice, no header.
    pub voice: String,
    pub text: String,
}

/// Which transcripts train and which validate.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Vec<String>,
    pub validation: Vec<String>,
}

/// Holds out each voice's `recent` newest transcripts (of a voice with at least two) and
/// every transcript whose id hashes below `fraction`: the hashed sample is the same in every
/// run, so a transcript that validated once is never trained on while it is sampled. At
/// least one transcript is held out and at least one trains.
pub fn split(documents: &[Document], recent: usize, fraction: f64) -> Result<Split, TrainError> {
    if documents.len() < 2 {
        return Err(TrainError::Data(format!(
            "the corpus has {} transcript(s); training needs at least 2 (one is held out to \
             validate). Run `mananera scrape` or `mananera corpus import` first",
            documents.len()
        )));
    }
    let mut by_date: Vec<&Document> = documents.iter().collect();
    by_date.sort_by(|a, b| (&b.date, &b.id).cmp(&(&a.date, &a.id)));
    let mut by_voice: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for d in &by_date {
        by_voice
            .entry(d.voice.as_str())
            .or_default()
            .push(d.id.as_str());
    }
    let mut held: BTreeSet<&str> = by_voice
        .values()
        .filter(|newest_first| newest_first.len() >= 2 || by_voice.len() == 1)
        .flat_map(|newest_first| newest_first.iter().take(recent.max(1)).copied())
        .collect();
    held.extend(
        documents
            .iter()
            .filter(|d| sample_point(&d.id) < fraction)
            .map(|d| d.id.as_str()),
    );
    if held.len() == documents.len() {
        // Keep the oldest for training.
        held.remove(by_date.last().map(|d| d.id.as_str()).unwrap_or_default());
    }
    let (validation, train) = documents
        .iter()
        .map(|d| d.id.clone())
        .partition(|id| held.contains(id.as_str()));
    Ok(Split { train, validation })
}

/// A stable point in [0, 1) for `id`.
fn sample_point(id: &str) -> f64 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Token ids of `text` followed by `eos` (no other special tokens).
pub fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    eos: u32,
) -> Result<Vec<u32>, TrainError> {
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| TrainError::Data(format!("cannot tokenize a transcript: {e}")))?;
    let mut ids = encoding.get_ids().to_vec();
    ids.push(eos);
    Ok(ids)
}

/// Blocks cut from token streams, each of one voice and opening with its header.
#[derive(Debug, Default, PartialEq)]
pub struct Packed {
    pub blocks: Vec<Vec<u32>>,
    /// The voice (an index into the headers) of each block.
    pub voices: Vec<usize>,
    /// The blocks that hold each stream's tokens.
    pub spans: Vec<Range<usize>>,
}

/// Concatenates `streams` (each a voice index into `headers` and its tokens) and cuts them
/// into blocks of exactly `block` tokens: a voice's header, then as many of its tokens as
/// fit (as transformers' `group_texts`, with the header before each block). A block never
/// mixes voices: the remainder that does not fill a block is dropped where the voice changes
/// and at the end. Every header must be shorter than `block`.
pub fn pack(streams: &[(usize, &[u32])], headers: &[Vec<u32>], block: usize) -> Packed {
    let block = block.max(1);
    let mut out = Packed::default();
    let mut open: Vec<u32> = Vec::with_capacity(block);
    let mut voice = None;
    for &(v, tokens) in streams {
        let header = &headers[v];
        if voice != Some(v) {
            open.clear();
            voice = Some(v);
            close_spans(&mut out);
        }
        let start = out.blocks.len();
        let mut rest = tokens;
        while !rest.is_empty() {
            if open.is_empty() {
                open.extend_from_slice(header);
            }
            let take = (block - open.len()).min(rest.len());
            open.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if open.len() == block {
                out.blocks
                    .push(std::mem::replace(&mut open, Vec::with_capacity(block)));
                out.voices.push(v);
            }
        }
        let end = out.blocks.len() + usize::from(open.len() > header.len());
        out.spans.push(start..end);
    }
    close_spans(&mut out);
    out
}

/// The open block was dropped: no span reaches past the finished blocks.
fn close_spans(packed: &mut Packed) {
    let blocks = packed.blocks.len();
    for span in packed.spans.iter_mut().rev() {
        if span.end <= blocks {
            break;
        }
        span.end = blocks;
        span.start = span.start.min(blocks);
    }
}

/// Picks old transcripts to replay next to new ones: a seeded shuffle of `old`, taken until
/// their tokens reach `ratio` × `new_tokens`.
pub fn replay<'a>(
    old: &[(&'a str, usize)],
    new_tokens: usize,
    ratio: f64,
    seed: u64,
) -> Vec<&'a str> {
    let want = (new_tokens as f64 * ratio).ceil() as usize;
    let mut shuffled = old.to_vec();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut taken = 0;
    shuffled
        .into_iter()
        .take_while(|(_, tokens)| {
            let more = taken < want;
            taken += tokens;
            more
        })
        .map(|(id, _)| id)
        .collect()
}

/// The order blocks are visited in epoch `epoch`: a shuffle seeded by the run's seed and
/// the epoch, so a resumed run visits them identically.
pub fn epoch_order(blocks: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..blocks).collect();
    let mix = seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(mix));
    order
}

/// The order a budgeted run visits its blocks in: the `new` blocks (newest transcript first)
/// with the `replay` blocks (indices `new..new + replay`) mixed in at `ratio` per new block
/// while they last, shuffled only within windows of `window` blocks (seeded by the run's seed
/// and the epoch). A run cut short has then trained a newest-first prefix of its transcripts,
/// with its share of replay.
pub fn budget_order(
    new: usize,
    replay: usize,
    ratio: f64,
    window: usize,
    seed: u64,
    epoch: usize,
) -> Vec<usize> {
    let mut order = Vec::with_capacity(new + replay);
    let (mut taken_new, mut taken_replay) = (0, 0);
    while taken_new + taken_replay < new + replay {
        let replay_due = taken_replay < replay
            && (taken_new == new || (taken_replay as f64) < ratio * taken_new as f64);
        if replay_due {
            order.push(new + taken_replay);
            taken_replay += 1;
        } else {
            order.push(taken_new);
            taken_new += 1;
        }
    }
    let mix = seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix);
    for chunk in order.chunks_mut(window.max(1)) {
        chunk.shuffle(&mut rng);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, date: &str) -> Document {
        Document {
            id: id.into(),
            date: date.into(),
            voice: String::new(),
            text: String::new(),
        }
    }

    #[test]
    fn validation_holds_the_newest_and_never_overlaps() {
        let docs: Vec<Document> = (0..200)
            .map(|i| {
                doc(
                    &format!("t{i:03}"),
                    &format!("2024-{:02}-{:02}", 1 + i / 28, 1 + i % 28),
                )
            })
            .collect();
        let split = split(&docs, 2, 0.05).unwrap();
        assert!(split.validation.contains(&"t199".to_string()));
        assert!(split.validation.contains(&"t198".to_string()));
        assert!(
            split.validation.len() > 2 && split.validation.len() < 30,
            "{}",
            split.validation.len()
        );
        assert_eq!(split.train.len() + split.validation.len(), 200);
        assert!(split.train.iter().all(|t| !split.validation.contains(t)));
        // The hashed sample does not move when transcripts are added.
        let more: Vec<Document> = docs
            .iter()
            .cloned()
            .chain([doc("t200", "2025-01-01")])
            .collect();
        let later = super::split(&more, 2, 0.05).unwrap();
        for id in split
            .validation
            .iter()
            .filter(|id| !["t199", "t198"].contains(&id.as_str()))
        {
            assert!(later.validation.contains(id), "{id} left the sample");
        }
    }

    #[test]
    fn tiny_corpora_are_refused_or_keep_one_to_train() {
        assert!(split(&[doc("a", "2024-01-01")], 1, 0.05).is_err());
        let two = split(&[doc("a", "2024-01-01"), doc("b", "2024-01-02")], 5, 1.0).unwrap();
        assert_eq!(two.train, ["a"]);
        assert_eq!(two.validation, ["b"]);
    }

    #[test]
    fn packing_drops_the_partial_block() {
        let a = [1, 2, 3];
        let b = [4, 5, 6, 7, 8];
        let packed = pack(&[(0, &a[..]), (0, &b[..])], &[vec![]], 3);
        assert_eq!(packed.blocks, vec![vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(packed.spans, vec![0..1, 1..2]);
    }

    #[test]
    fn every_block_opens_with_its_voice_header_and_never_mixes_voices() {
        let headers = [vec![90, 91], vec![80]];
        let a = [1, 2, 3, 4, 5];
        let b = [6, 7, 8];
        let c = [9, 10, 11, 12];
        let packed = pack(&[(0, &a[..]), (0, &b[..]), (1, &c[..])], &headers, 4);
        assert_eq!(
            packed.blocks,
            vec![
                vec![90, 91, 1, 2],
                vec![90, 91, 3, 4],
                vec![90, 91, 5, 6],
                vec![90, 91, 7, 8],
                // 9.. is voice 1's: its own header, nothing of voice 0's.
                vec![80, 9, 10, 11],
            ]
        );
        assert_eq!(packed.voices, [0, 0, 0, 0, 1]);
        // b's span starts in the block a ended in; c's tail (12) was dropped.
        assert_eq!(packed.spans, vec![0..3, 2..4, 4..5]);
    }

    #[test]
    fn each_voice_keeps_its_newest_for_validation() {
        let mut docs: Vec<Document> = (0..6)
            .map(|i| doc(&format!("t{i}"), &format!("2024-01-0{}", i + 1)))
            .collect();
        for d in &mut docs[..3] {
            d.voice = "a".into();
        }
        for d in &mut docs[3..] {
            d.voice = "b".into();
        }
        let split = split(&docs, 1, 0.0).unwrap();
        assert_eq!(split.validation, ["t2", "t5"]);
    }

    #[test]
    fn replay_reaches_the_ratio() {
        let old = [("a", 100), ("b", 100), ("c", 100), ("d", 100)];
        let picked = replay(&old, 150, 1.0, 7);
        assert_eq!(picked.len(), 2);
        assert_eq!(replay(&old, 150, 0.0, 7).len(), 0);
        assert_eq!(replay(&old, 150, 1.0, 7), picked);
    }

    #[test]
    fn a_budgeted_order_is_newest_first_with_replay_mixed_in_and_shuffled_within_windows() {
        let order = budget_order(8, 4, 0.5, 3, 7, 0);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>());
        // Every window holds the blocks of that stretch of the merged sequence.
        let merged = [0, 8, 1, 2, 9, 3, 4, 10, 5, 6, 11, 7];
        for (window, expected) in order.chunks(3).zip(merged.chunks(3)) {
            let (mut a, mut b) = (window.to_vec(), expected.to_vec());
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
        }
        assert_eq!(order, budget_order(8, 4, 0.5, 3, 7, 0));
        // More replay than the ratio wants comes after the new blocks.
        assert_eq!(budget_order(2, 3, 0.5, 1, 0, 0), [0, 2, 1, 3, 4]);
    }
}
