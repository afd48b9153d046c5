//! The tokenizer (from the checkpoint's `tokenizer.json`) and the streaming decoder that turns
//! generated token ids into text deltas.
//!
//! BLOOM's byte-level tokens can end in the middle of a UTF-8 character (ñ, á, ¿ and emoji
//! span several bytes), so a delta is only released once the bytes before it form complete
//! characters.

use std::path::Path;

use super::{Error, Result};

/// A loaded `tokenizers` tokenizer with the operations generation and scoring need.
#[derive(Clone)]
pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
}

impl TextCodec {
    /// Loads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::checkpoint(
                path,
                format!("is not a valid tokenizer.json ({e})"),
                "copy tokenizer.json from the original checkpoint (a Hugging Face fast tokenizer file)",
            )
        })?;
        Ok(Self { tokenizer })
    }

    /// Token ids of `text`, without adding special tokens (BLOOM adds none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::InvalidInput(format!("the text cannot be tokenized: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens (EOS, padding) left out. Incomplete UTF-8 sequences
    /// come out as U+FFFD, which [`StreamDecoder`] holds back.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::InvalidInput(format!("token ids cannot be decoded: {e}")))
    }
}

/// Incremental decoding of one generated sequence into text deltas that never split a
/// character. Text is *released* by the caller after it decides to emit it, so the released
/// pieces concatenate to [`StreamDecoder::text`].
#[derive(Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    text: String,
}

impl StreamDecoder {
    /// Adds one token and returns the complete text not yet released (possibly empty).
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String> {
        self.ids.push(id);
        let decoded = codec.decode(&self.ids)?;
        // Trailing replacement characters are bytes still waiting for the rest of their character.
        let complete = decoded.trim_end_matches(char::REPLACEMENT_CHARACTER);
        // A decoder that rewrites earlier text (not byte-level BPE) cannot be streamed
        // exactly; wait until it settles rather than emit text that contradicts the past.
        Ok(complete
            .strip_prefix(self.text.as_str())
            .unwrap_or_default()
            .to_string())
    }

    /// Records `delta` (a prefix of what [`StreamDecoder::push`] returned) as emitted.
    pub fn release(&mut self, delta: &str) {
        self.text.push_str(delta);
    }

    /// Everything released so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The released text, consuming the decoder.
    pub fn into_text(self) -> String {
        self.text
    }
}
