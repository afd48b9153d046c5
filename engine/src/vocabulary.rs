//! Trimmed vocabularies: serving only the tokens a corpus uses.
//!
//! BLOOM's head scores 250,880 tokens for 46 languages and code; in decoding it is about half
//! of the bytes read per token. Restricting it to the tokens of the Spanish transcripts (plus
//! the special tokens) makes each step read far less, at the price that the model can only
//! produce, and `eval` can only score, those tokens. Opt-in: `engine.vocabulary` names a file
//! written by `mananera vocab`.
//!
//! File format: `#` comment lines, then one token id per line.

use std::collections::BTreeSet;
use std::path::Path;

use super::text::TextCodec;
use super::{Error, Result};
use mananera_model::BloomConfig;

/// The special tokens every vocabulary keeps, so generation can end and pad.
fn specials(config: &BloomConfig) -> [u32; 3] {
    [
        config.bos_token_id,
        config.eos_token_id,
        config.pad_token_id,
    ]
}

/// Reads a vocabulary file: sorted, distinct ids, all inside the model's vocabulary, with the
/// special tokens added.
pub fn read(path: &Path, config: &BloomConfig) -> Result<Vec<u32>> {
    let fix = "write it again with `mananera vocab --output FILE CORPUS...` for this model, or set engine.vocabulary = \"\" for the full vocabulary";
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidInput(format!(
            "{}: cannot read the vocabulary file ({e}); {fix}",
            path.display()
        ))
    })?;
    let mut ids: BTreeSet<u32> = specials(config).into_iter().collect();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id: u32 = line.parse().map_err(|_| {
            Error::InvalidInput(format!(
                "{}:{}: `{line}` is not a token id; {fix}",
                path.display(),
                n + 1
            ))
        })?;
        if id as usize >= config.vocab_size {
            return Err(Error::InvalidInput(format!(
                "{}:{}: token id {id} is outside this model's vocabulary of {}; {fix}",
                path.display(),
                n + 1,
                config.vocab_size
            )));
        }
        ids.insert(id);
    }
    Ok(ids.into_iter().collect())
}

/// The ids `texts` tokenize to, plus the special tokens, sorted.
pub fn build<'a>(
    codec: &TextCodec,
    config: &BloomConfig,
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<u32>> {
    let mut ids: BTreeSet<u32> = specials(config).into_iter().collect();
    for text in texts {
        ids.extend(codec.encode(text)?);
    }
    Ok(ids.into_iter().collect())
}

/// Writes `ids` to `path` atomically (temporary file, fsync, rename), so a crash never leaves
/// a half-written vocabulary behind.
pub fn write(path: &Path, ids: &[u32], vocab_size: usize) -> std::io::Result<()> {
    let mut text = format!(
        "# mananera vocabulary: {} of {vocab_size} tokens\n",
        ids.len()
    );
    for id in ids {
        text.push_str(&id.to_string());
        text.push('\n');
    }
    mananera_model::fsio::write_atomic(path, text.as_bytes())
}
