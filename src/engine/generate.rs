//! Text generation: prompts in, streamed text deltas and token ids out, for one prompt or a
//! left-padded batch decoded together through the KV cache.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, IndexOp, Tensor};
use serde::Serialize;

use super::sampling::{Sampler, SamplingParams};
use super::text::StreamDecoder;
use super::word_limit::{Verdict, WordLimit};
use super::{Engine, Error, Result};

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The word limit was reached (at a sentence end when one came soon).
    WordLimit,
    /// The context cap (`engine.max_context`) was reached.
    ContextFull,
    /// The caller asked to stop.
    Cancelled,
}

/// Where the time of one generation went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Reading the prompt and producing the first new token.
    pub prefill_ms: f64,
    /// Producing the remaining tokens.
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// The outcome of one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The new tokens (the end-of-sequence token included when it was produced).
    pub token_ids: Vec<u32>,
    /// The generated text: exactly the concatenation of the streamed deltas.
    pub text: String,
    pub stop_reason: StopReason,
    /// The seed used, so a sampled text can be reproduced.
    pub seed: u64,
    pub timings: Timings,
}

/// Per-sequence state while a batch decodes.
struct Row {
    /// Logit columns of the prompt and output tokens, for the repetition penalty.
    penalized: Vec<u32>,
    new_ids: Vec<u32>,
    decoder: StreamDecoder,
    sampler: Sampler,
    stop: Option<StopReason>,
}

impl Engine {
    /// Generates from one prompt, calling `on_delta` with each piece of text as soon as it
    /// forms complete characters; returning `ControlFlow::Break` from it cancels.
    pub fn generate(
        &self,
        prompt: &str,
        params: &SamplingParams,
        mut on_delta: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let mut out = self.generate_batch(&[prompt], params, |_, delta| on_delta(delta))?;
        Ok(out.remove(0))
    }

    /// Generates from several prompts at once (left-padded, one forward pass per step for the
    /// whole batch). Each row gives the same result it would alone. `on_delta(row, text)`
    /// streams; `Break` cancels that row.
    pub fn generate_batch(
        &self,
        prompts: &[&str],
        params: &SamplingParams,
        mut on_delta: impl FnMut(usize, &str) -> ControlFlow<()>,
    ) -> Result<Vec<Generation>> {
        params.validate()?;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = prompts
            .iter()
            .map(|p| self.encode_prompt(p))
            .collect::<Result<Vec<_>>>()?;
        let seed = params.seed.unwrap_or_else(rand::random);
        let word_limit = WordLimit::new(params.max_words);
        let config = self.model.config();
        let (eos, pad) = (config.eos_token_id, config.pad_token_id);
        let device = self.model.device();

        let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
        let mut rows: Vec<Row> = encoded
            .iter()
            .map(|ids| Row {
                penalized: ids.iter().filter_map(|&id| self.model.column(id)).collect(),
                new_ids: Vec::new(),
                decoder: StreamDecoder::default(),
                sampler: params.sampler(seed),
                stop: None,
            })
            .collect();
        let mut mask: Vec<Vec<u8>> = encoded
            .iter()
            .map(|ids| [vec![0u8; longest - ids.len()], vec![1u8; ids.len()]].concat())
            .collect();
        let mut step_ids: Vec<Vec<u32>> = encoded
            .iter()
            .map(|ids| [vec![pad; longest - ids.len()], ids.clone()].concat())
            .collect();

        let mut cache = self.model.new_cache();
        let start = Instant::now();
        let mut prefill_ms = 0.0;
        let max_steps = params.max_new_tokens.min(self.max_context - longest);
        for step in 0..max_steps {
            let ids = Tensor::new(step_ids.clone(), device)?;
            let mask_t = Tensor::new(mask.clone(), device)?;
            let hidden = self.model.forward(&ids, &mask_t, &mut cache)?;
            let last = hidden.i((.., hidden.dim(1)? - 1, ..))?.contiguous()?;
            let logits = self.model.logits(&last)?.to_dtype(DType::F32)?;
            for (r, row) in rows.iter_mut().enumerate() {
                if row.stop.is_some() {
                    continue;
                }
                let column = row.sampler.next(&logits.get(r)?, &row.penalized)?;
                row.penalized.push(column);
                let next = self.model.token_id(column);
                row.new_ids.push(next);
                if next == eos {
                    row.stop = Some(StopReason::Eos);
                    continue;
                }
                let pending = row.decoder.push(&self.codec, next)?;
                let (delta, stop) = match word_limit.map(|l| l.judge(row.decoder.text(), &pending))
                {
                    Some(Verdict::StopAfter) => (pending.as_str(), Some(StopReason::WordLimit)),
                    Some(Verdict::StopWithin(n)) => (&pending[..n], Some(StopReason::WordLimit)),
                    _ => (pending.as_str(), None),
                };
                row.decoder.release(delta);
                row.stop = stop;
                if !delta.is_empty() && on_delta(r, delta).is_break() {
                    row.stop = Some(StopReason::Cancelled);
                }
            }
            if step == 0 {
                prefill_ms = start.elapsed().as_secs_f64() * 1e3;
            }
            if rows.iter().all(|r| r.stop.is_some()) {
                break;
            }
            // Next step: each row feeds its newest token; finished rows feed padding, masked out.
            for ((row, ids), m) in rows.iter().zip(step_ids.iter_mut()).zip(mask.iter_mut()) {
                let live = row.stop.is_none();
                *ids = vec![if live {
                    *row.new_ids.last().unwrap_or(&pad)
                } else {
                    pad
                }];
                m.push(u8::from(live));
            }
        }
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        let decode_ms = total_ms - prefill_ms;
        let context_full = longest + params.max_new_tokens > self.max_context;
        Ok(rows
            .into_iter()
            .zip(encoded)
            .map(|(row, prompt)| {
                let stop_reason = row.stop.unwrap_or(if context_full {
                    StopReason::ContextFull
                } else {
                    StopReason::MaxNewTokens
                });
                let new_tokens = row.new_ids.len();
                let timings = Timings {
                    prompt_tokens: prompt.len(),
                    new_tokens,
                    prefill_ms,
                    decode_ms,
                    prefill_tokens_per_s: per_second(prompt.len(), prefill_ms),
                    decode_tokens_per_s: per_second(new_tokens.saturating_sub(1), decode_ms),
                };
                Generation {
                    token_ids: row.new_ids,
                    text: row.decoder.into_text(),
                    stop_reason,
                    seed,
                    timings,
                }
            })
            .collect())
    }

    /// Tokenizes a prompt, rejecting an empty one or one that leaves no room to generate.
    fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.trim().is_empty() {
            return Err(Error::InvalidInput(
                "the prompt is empty: give a topic to speak about".into(),
            ));
        }
        let ids = self.codec.encode(prompt)?;
        if ids.is_empty() {
            return Err(Error::InvalidInput(
                "the prompt has no tokens: give a topic to speak about".into(),
            ));
        }
        if ids.len() >= self.max_context {
            return Err(Error::InvalidInput(format!(
                "the prompt is {} tokens, but the context cap (engine.max_context) is {}: shorten it",
                ids.len(),
                self.max_context
            )));
        }
        Ok(ids)
    }
}

fn per_second(count: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        count as f64 * 1e3 / ms
    } else {
        0.0
    }
}
