//! Text generation: prompts in, streamed text deltas and token ids out. Each prompt is a
//! [`Sequence`] with its own KV cache; sequences decode together one token at a time.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, IndexOp, Tensor};

use super::bloom::Cache;
use serde::Serialize;

use super::sampling::{Sampler, SamplingParams};
use super::text::StreamDecoder;
use super::word_limit::{Verdict, WordLimit};
use super::{Engine, Error, Result};

/// What a speech continues: an optional voice header, then the text (the topic). The two are
/// tokenized apart, as training tokenizes a block's header apart from its text, so the
/// header's tokens are exactly the ones the model learnt.
#[derive(Debug, Clone, Copy)]
pub struct Prompt<'a> {
    pub header: &'a str,
    pub text: &'a str,
}

impl<'a> From<&'a str> for Prompt<'a> {
    fn from(text: &'a str) -> Self {
        Prompt { header: "", text }
    }
}

impl<'a> From<&'a String> for Prompt<'a> {
    fn from(text: &'a String) -> Self {
        Prompt::from(text.as_str())
    }
}

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

/// One prompt on its way to a speech: its own key/value cache, sampler, stream decoder and
/// stop state. Sequences of any lengths decode together through [`Engine::step`], so a
/// service can add a request to a batch that is already running.
pub struct Sequence {
    cache: Cache,
    prompt: Vec<u32>,
    /// Logit columns of the prompt and output tokens, for the repetition penalty.
    penalized: Vec<u32>,
    new_ids: Vec<u32>,
    decoder: StreamDecoder,
    sampler: Sampler,
    word_limit: Option<WordLimit>,
    /// `max_new_tokens`, lowered so prompt plus output fit the context cap.
    max_new: usize,
    /// `min_new_tokens`: before this many, the end of text cannot be chosen.
    min_new: usize,
    context_full: bool,
    stop: Option<StopReason>,
    seed: u64,
    started: Instant,
    prefill_ms: f64,
}

impl Sequence {
    /// True once the sequence has stopped, for whatever reason.
    pub fn is_done(&self) -> bool {
        self.stop.is_some()
    }

    /// Stops the sequence; its text so far stays.
    pub fn cancel(&mut self) {
        self.stop.get_or_insert(StopReason::Cancelled);
    }

    /// The column the sampler may not choose now: the end of text, while the sequence is
    /// shorter than `min_new_tokens`.
    fn banned(&self, engine: &Engine) -> Option<u32> {
        (self.new_ids.len() < self.min_new)
            .then(|| engine.model.column(engine.model.config().eos_token_id))
            .flatten()
    }

    /// Takes the next token (as a logit column) and returns the text it completes.
    fn accept(&mut self, engine: &Engine, column: u32) -> Result<String> {
        self.penalized.push(column);
        let next = engine.model.token_id(column);
        self.new_ids.push(next);
        let mut delta = String::new();
        if next == engine.model.config().eos_token_id {
            self.stop = Some(StopReason::Eos);
        } else {
            let pending = self.decoder.push(&engine.codec, next)?;
            let verdict = self
                .word_limit
                .map(|l| l.judge(self.decoder.text(), &pending));
            let (released, stop) = match verdict {
                Some(Verdict::StopAfter) => (pending.as_str(), Some(StopReason::WordLimit)),
                Some(Verdict::StopWithin(n)) => (&pending[..n], Some(StopReason::WordLimit)),
                _ => (pending.as_str(), None),
            };
            self.decoder.release(released);
            delta.push_str(released);
            self.stop = stop;
        }
        if self.stop.is_none() && self.new_ids.len() >= self.max_new {
            self.stop = Some(if self.context_full {
                StopReason::ContextFull
            } else {
                StopReason::MaxNewTokens
            });
        }
        Ok(delta)
    }

    /// The finished generation with its timings.
    pub fn finish(self) -> Generation {
        let total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let decode_ms = total_ms - self.prefill_ms;
        let new_tokens = self.new_ids.len();
        let timings = Timings {
            prompt_tokens: self.prompt.len(),
            new_tokens,
            prefill_ms: self.prefill_ms,
            decode_ms,
            prefill_tokens_per_s: per_second(self.prompt.len(), self.prefill_ms),
            decode_tokens_per_s: per_second(new_tokens.saturating_sub(1), decode_ms),
        };
        Generation {
            token_ids: self.new_ids,
            text: self.decoder.into_text(),
            stop_reason: self.stop.unwrap_or(StopReason::Cancelled),
            seed: self.seed,
            timings,
        }
    }
}

impl Engine {
    /// Generates from one prompt, calling `on_delta` with each piece of text as soon as it
    /// forms complete characters; returning `ControlFlow::Break` from it cancels.
    pub fn generate<'p>(
        &self,
        prompt: impl Into<Prompt<'p>>,
        params: &SamplingParams,
        mut on_delta: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let mut out = self.generate_batch(&[prompt.into()], params, |_, delta| on_delta(delta))?;
        Ok(out.remove(0))
    }

    /// Generates from several prompts at once (one forward pass per step for the whole
    /// batch), all with the same seed. Each row gives the same result it would alone.
    /// `on_delta(row, text)` streams; `Break` cancels that row.
    pub fn generate_batch<'p, P: Copy + Into<Prompt<'p>>>(
        &self,
        prompts: &[P],
        params: &SamplingParams,
        mut on_delta: impl FnMut(usize, &str) -> ControlFlow<()>,
    ) -> Result<Vec<Generation>> {
        let seed = params.seed.unwrap_or_else(rand::random);
        let params = SamplingParams {
            seed: Some(seed),
            ..params.clone()
        };
        let mut rows = prompts
            .iter()
            .map(|&p| self.start(p.into(), &params))
            .collect::<Result<Vec<_>>>()?;
        for (r, row) in rows.iter_mut().enumerate() {
            let delta = self.prefill(row)?;
            if !delta.is_empty() && on_delta(r, &delta).is_break() {
                row.cancel();
            }
        }
        while rows.iter().any(|r| !r.is_done()) {
            let mut live: Vec<(usize, &mut Sequence)> = rows
                .iter_mut()
                .enumerate()
                .filter(|(_, r)| !r.is_done())
                .collect();
            let mut seqs: Vec<&mut Sequence> = live.iter_mut().map(|(_, s)| &mut **s).collect();
            let deltas = self.step(&mut seqs)?;
            for ((r, row), delta) in live.into_iter().zip(deltas) {
                if !delta.is_empty() && on_delta(r, &delta).is_break() {
                    row.cancel();
                }
            }
        }
        Ok(rows.into_iter().map(Sequence::finish).collect())
    }

    /// Checks and tokenizes a prompt into a sequence ready for [`Engine::prefill`]. Cheap: no
    /// model work happens here.
    pub fn start(&self, prompt: Prompt<'_>, params: &SamplingParams) -> Result<Sequence> {
        params.validate()?;
        let prompt = self.encode_prompt(prompt)?;
        let seed = params.seed.unwrap_or_else(rand::random);
        Ok(Sequence {
            cache: self.model.new_cache(),
            penalized: prompt
                .iter()
                .filter_map(|&id| self.model.column(id))
                .collect(),
            new_ids: Vec::new(),
            decoder: StreamDecoder::default(),
            sampler: params.sampler(seed),
            word_limit: WordLimit::new(params.max_words),
            max_new: params.max_new_tokens.min(self.max_context - prompt.len()),
            min_new: params.min_new_tokens,
            context_full: prompt.len() + params.max_new_tokens > self.max_context,
            stop: None,
            seed,
            started: Instant::now(),
            prefill_ms: 0.0,
            prompt,
        })
    }

    /// Reads the prompt of a new sequence and picks its first token; returns the text released.
    pub fn prefill(&self, seq: &mut Sequence) -> Result<String> {
        let started = Instant::now();
        let n = seq.prompt.len();
        let device = self.model.device();
        let ids = Tensor::new(seq.prompt.as_slice(), device)?.unsqueeze(0)?;
        let mask = Tensor::ones((1, n), DType::U8, device)?;
        let hidden = self.model.forward(&ids, &mask, &mut seq.cache)?;
        let logits = self
            .model
            .logits(&hidden.i((.., n - 1, ..))?.contiguous()?)?
            .to_dtype(DType::F32)?;
        let banned = seq.banned(self);
        let row = logits.flatten_all()?.to_vec1::<f32>()?;
        let column = seq.sampler.next(&row, &seq.penalized, banned)?;
        let delta = seq.accept(self, column)?;
        seq.prefill_ms = started.elapsed().as_secs_f64() * 1e3;
        seq.started = started;
        Ok(delta)
    }

    /// One token for every sequence that has not stopped, in a single batched forward pass;
    /// returns the text each released (empty for sequences already done).
    pub fn step(&self, seqs: &mut [&mut Sequence]) -> Result<Vec<String>> {
        let live: Vec<usize> = (0..seqs.len()).filter(|&i| !seqs[i].is_done()).collect();
        let mut deltas = vec![String::new(); seqs.len()];
        if live.is_empty() {
            return Ok(deltas);
        }
        let ids = live
            .iter()
            .map(|&i| seqs[i].new_ids.last().copied())
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| {
                Error::InvalidInput("a sequence must be prefilled before it steps".into())
            })?;
        let mut caches: Vec<&mut Cache> = Vec::with_capacity(live.len());
        for (i, seq) in seqs.iter_mut().enumerate() {
            if live.contains(&i) {
                caches.push(&mut seq.cache);
            }
        }
        let hidden = self.model.decode_step(&ids, &mut caches)?;
        let logits = self.model.logits(&hidden)?.to_dtype(DType::F32)?;
        let width = logits.dim(1)?;
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        for (row, &i) in live.iter().enumerate() {
            let seq = &mut *seqs[i];
            let banned = seq.banned(self);
            let scores = &logits[row * width..][..width];
            let column = seq.sampler.next(scores, &seq.penalized, banned)?;
            deltas[i] = seq.accept(self, column)?;
        }
        Ok(deltas)
    }

    /// Tokenizes a prompt (its header, then its text), rejecting an empty text or a prompt
    /// that leaves no room to generate.
    fn encode_prompt(&self, prompt: Prompt<'_>) -> Result<Vec<u32>> {
        if prompt.text.trim().is_empty() {
            return Err(Error::InvalidInput(
                "the prompt is empty: give a topic to speak about".into(),
            ));
        }
        let text = self.codec.encode(prompt.text)?;
        if text.is_empty() {
            return Err(Error::InvalidInput(
                "the prompt has no tokens: give a topic to speak about".into(),
            ));
        }
        let mut ids = self.codec.encode(prompt.header)?;
        let header = ids.len();
        ids.extend(text);
        if ids.len() >= self.max_context {
            let what = match header {
                0 => format!("the prompt is {} tokens", ids.len()),
                h => format!(
                    "the voice header and the prompt are {h} + {} tokens",
                    ids.len() - h
                ),
            };
            return Err(Error::InvalidInput(format!(
                "{what}, but the context cap (engine.max_context) is {}: shorten it",
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
