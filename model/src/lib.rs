//! The BLOOM model as files, described once for serving (the `mananera-engine` crate) and
//! training (`mananera-training`): both depend on this crate, and it depends on neither, nor
//! on the corpus pipeline.
//!
//! # Layout
//! - [`config`]: `config.json` ([`BloomConfig`]); [`layout`]: every tensor's name and shape;
//!   [`alibi`]: the attention slopes.
//! - [`checkpoint`]: finding a checkpoint (a directory or the Hugging Face Hub, single file or
//!   shards); [`weights`]: reading its tensors (prefixes, dtypes, shapes checked);
//!   [`random`]: seeded random weights of any shape.
//! - [`adapter`]: PEFT's LoRA adapter files; [`tensors`]: safetensors PyTorch reads.
//! - [`math`]: vectorisable `exp`, GELU and softmax sums, with run-time CPU dispatch.
//! - [`versions`]: the directory of fine-tuned versions; [`fsio`]: crash-safe writes.

pub mod adapter;
pub mod alibi;
pub mod checkpoint;
pub mod config;
mod error;
pub mod fsio;
pub mod gguf;
pub mod layout;
pub mod math;
pub mod random;
pub mod tensors;
pub mod versions;
pub mod weights;

pub use alibi::alibi_slopes;
pub use config::BloomConfig;
pub use error::{Error, Result};
