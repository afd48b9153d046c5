//! The engine: a BLOOM checkpoint loaded into memory with its tokenizer, ready to generate
//! text and to score it.
//!
//! - [`bloom`]: the model itself, a port of transformers' `BloomForCausalLM`, with
//!   `attention` (fused ALiBi attention and KV cache) and `gelu`.
//! - [`linear`]: f32, 16-bit or in-process-quantized linear layers; their kernels are `gemv`
//!   (f32), `half_weights` (f16),
//!   `blocks` (Q8_0/Q4_0), `quant` (dispatch, Q4_K), all on `parallel`'s worker pool.
//! - [`finetuned`]: the fine-tuned version served on top of the base checkpoint.
//! - [`text`]: tokenizer and UTF-8-safe streaming decoder.
//! - [`sampling`], [`word_limit`], [`generate`]: turning logits into text.
//! - [`vocabulary`]: the opt-in trimmed vocabulary.
//!
//! The checkpoint's files (config, tensor layout, reader, adapters, versions) are
//! `mananera-model`'s, shared with training; this crate computes the model, it does not
//! describe it, and it links none of the corpus pipeline.

mod attention;
mod blocks;
pub mod bloom;
mod error;
pub mod finetuned;
mod gelu;
mod gemv;
pub mod generate;
mod half_weights;
pub mod linear;
mod parallel;
mod quant;
pub mod sampling;
pub mod text;
pub mod vocabulary;
pub mod word_limit;

use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

pub use error::{Error, Result};
pub use generate::{Generation, Prompt, StopReason, Timings};
pub use linear::Quantization;
pub use sampling::SamplingParams;

use bloom::Bloom;
use mananera_model::BloomConfig;
use mananera_model::checkpoint::{self, CheckpointFiles, ModelSource};
use mananera_model::versions::Method;
use mananera_model::weights::Weights;
use text::TextCodec;

/// What to load and how.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub source: ModelSource,
    pub quantization: Quantization,
    /// Cap on prompt plus generated tokens (BLOOM was trained with 2048).
    pub max_context: usize,
    /// A trimmed vocabulary file (see [`vocabulary`]); `None` serves every token.
    pub vocabulary: Option<std::path::PathBuf>,
    /// Which fine-tuned version to serve, and the versions directory it lives in.
    pub version: finetuned::Choice,
    pub versions_dir: std::path::PathBuf,
}

impl EngineOptions {
    /// The checkpoint files to load and the fine-tuned version on top of them: a full
    /// version replaces the base's weights, a LoRA version adds to them.
    pub fn resolve(&self) -> Result<(CheckpointFiles, Option<finetuned::Selected>)> {
        let mut files = self.source.resolve()?;
        let selected = finetuned::select(&self.version, &self.versions_dir, &self.source.model)?;
        if let Some(full) = selected
            .as_ref()
            .filter(|s| s.version.method == Method::Full)
        {
            files.weights = vec![full.dir.join(checkpoint::WEIGHTS_FILE)];
        }
        Ok((files, selected))
    }
}

/// A loaded model and tokenizer.
pub struct Engine {
    model: Bloom,
    codec: TextCodec,
    max_context: usize,
}

/// Per-token log-probabilities of a text under the model.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub token_ids: Vec<u32>,
    /// `logprobs[i]` is the natural-log probability of `token_ids[i + 1]` given the tokens before it.
    pub logprobs: Vec<f32>,
}

impl Scored {
    /// `exp` of the mean negative log-likelihood per predicted token.
    pub fn perplexity(&self) -> f64 {
        let n = self.logprobs.len().max(1) as f64;
        (-self.logprobs.iter().map(|&l| l as f64).sum::<f64>() / n).exp()
    }
}

impl Engine {
    /// Resolves, reads and (optionally) quantizes the checkpoint.
    pub fn load(options: &EngineOptions) -> Result<Self> {
        let started = Instant::now();
        let (files, selected) = options.resolve()?;
        let config = BloomConfig::read(&files.config)?;
        let codec = TextCodec::load(&files.tokenizer)?;
        let mut weights = Weights::open(&files.weights, &Device::Cpu)?;
        if let Some(lora) = selected
            .as_ref()
            .filter(|s| s.version.method == Method::Lora)
        {
            weights.add_deltas(lora.deltas(&config)?);
        }
        let head_ids = options
            .vocabulary
            .as_deref()
            .map(|p| vocabulary::read(p, &config))
            .transpose()?;
        let head_rows = head_ids.as_ref().map_or(config.vocab_size, Vec::len);
        let model = Bloom::load(&weights, &config, options.quantization, head_ids)?;
        tracing::info!(
            model = %options.source.model,
            layers = config.n_layer,
            hidden = config.hidden_size,
            heads = config.n_head,
            vocab = config.vocab_size,
            head_rows,
            quantization = %options.quantization,
            version = selected.as_ref().map_or("base", |s| s.version.id.as_str()),
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Self::from_parts(model, codec, options.max_context)
    }

    /// Wraps an already built model (tests, benchmarks).
    pub fn from_parts(model: Bloom, codec: TextCodec, max_context: usize) -> Result<Self> {
        if max_context < 2 {
            return Err(Error::InvalidInput(format!(
                "engine.max_context must be at least 2, got {max_context}"
            )));
        }
        Ok(Self {
            model,
            codec,
            max_context,
        })
    }

    /// The model, for callers that drive it directly.
    pub fn model(&self) -> &Bloom {
        &self.model
    }

    /// The tokenizer.
    pub fn codec(&self) -> &TextCodec {
        &self.codec
    }

    /// Scores `text`: the log-probability of each of its tokens given the ones before. A
    /// [`Prompt`] with a voice header scores the text after the header (its first token
    /// too, given the header), as training scores a block.
    pub fn score<'p>(&self, text: impl Into<Prompt<'p>>) -> Result<Scored> {
        let prompt = text.into();
        let mut token_ids = self.codec.encode(prompt.header)?;
        let header = token_ids.len();
        token_ids.extend(self.codec.encode(prompt.text)?);
        // The header's last token predicts the text's first; without one, the first predicts
        // the second.
        let context = header.saturating_sub(1);
        if token_ids.len() - context < 2 {
            return Err(Error::InvalidInput(format!(
                "the text has {} token(s); scoring needs at least {}",
                token_ids.len() - header,
                2 - usize::from(header > 0)
            )));
        }
        if let Some((position, &id)) = token_ids
            .iter()
            .enumerate()
            .skip(context + 1)
            .find(|(_, id)| self.model.column(**id).is_none())
        {
            return Err(Error::InvalidInput(format!(
                "token {id} ({:?}) at position {position} is outside the trimmed vocabulary (engine.vocabulary), \
                 so it has no probability; score with the full vocabulary (engine.vocabulary = \"\")",
                self.codec.decode(&[id]).unwrap_or_default()
            )));
        }
        let mut logprobs = self.model.score(&token_ids, self.max_context.min(512))?;
        logprobs.drain(..context);
        token_ids.drain(..context);
        Ok(Scored {
            token_ids,
            logprobs,
        })
    }
}

/// Largest elementwise |a − b| of two same-shaped f32 tensors, for checks against a
/// reference; NaN when they cannot be compared, so such a check fails.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let diff = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0));
    diff.and_then(|d| d.to_scalar::<f32>()).unwrap_or(f32::NAN)
}

/// What exactly `options` serve: `<model name>-<hash>` over the checkpoint's files, the
/// quantization and the vocabulary, so that any change to them changes the version (the
/// daemon's cache keys start with it). Reads every file once: call it where a version is
/// needed, not on every load.
pub fn model_version(options: &EngineOptions) -> Result<String> {
    use sha2::{Digest, Sha256};
    let (files, selected) = options.resolve()?;
    let extra = selected
        .as_ref()
        .map(finetuned::Selected::files)
        .unwrap_or_default();
    let mut hash = Sha256::new();
    let paths = [&files.config, &files.tokenizer]
        .into_iter()
        .chain(&files.weights)
        .chain(&extra)
        .chain(options.vocabulary.as_ref());
    for path in paths {
        let mut file = std::fs::File::open(path).map_err(|e| {
            Error::checkpoint(
                path,
                format!("cannot read it ({e})"),
                "check its permissions",
            )
        })?;
        std::io::copy(&mut file, &mut hash).map_err(|e| {
            Error::checkpoint(path, format!("cannot read it ({e})"), "check the disk")
        })?;
    }
    hash.update(options.quantization.to_string());
    let digest = hash.finalize();
    let name = options
        .source
        .model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("model");
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok(match &selected {
        Some(s) => format!("{name}+{}-{hex}", s.version.id),
        None => format!("{name}-{hex}"),
    })
}

/// Sizes the worker pool the matrix code runs on (candle and mananera's kernels share
/// rayon's global pool); 0 keeps one thread per core. candle's kernels also read
/// `RAYON_NUM_THREADS`, which the binary sets before any thread exists.
pub fn configure_threads(threads: usize) {
    if threads > 0
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
    {
        tracing::warn!(error = %e, "could not size the thread pool");
    }
}
