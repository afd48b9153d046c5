//! From transcripts to training blocks: tokenize each transcript whole, end it with EOS,
//! concatenate, and cut into blocks of `block_size` tokens. Validation is held out by
//! transcript (the newest ones plus a fixed hashed sample), so no text is in both.

use std::collections::BTreeSet;

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
    pub text: String,
}

/// Which transcripts train and which validate.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Vec<String>,
    pub validation: Vec<String>,
}

/// Holds out the `recent` newest transcripts and every transcript whose id hashes below
/// `fraction`: the hashed sample is the same in every run, so a transcript that validated
/// once is never trained on while it is sampled. At least one transcript is held out and
/// at least one trains.
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
    let mut held: BTreeSet<&str> = by_date
        .iter()
        .take(recent.max(1))
        .map(|d| d.id.as_str())
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

/// Concatenates `streams` and cuts them into blocks of exactly `block` tokens; the remainder
/// that does not fill a block is dropped (as transformers' `group_texts`).
pub fn pack<'a>(streams: impl IntoIterator<Item = &'a [u32]>, block: usize) -> Vec<Vec<u32>> {
    let all: Vec<u32> = streams.into_iter().flatten().copied().collect();
    all.chunks_exact(block.max(1))
        .map(<[u32]>::to_vec)
        .collect()
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
        assert_eq!(
            pack([&a[..], &b[..]], 3),
            vec![vec![1, 2, 3], vec![4, 5, 6]]
        );
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
