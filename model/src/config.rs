//! A BLOOM checkpoint's `config.json`: the fields serving and training need, under Hugging
//! Face's names (and the aliases older checkpoints use) so the file deserialises directly.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The subset of Hugging Face's `BloomConfig` mananera uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BloomConfig {
    pub vocab_size: usize,
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}
fn default_bos() -> u32 {
    1
}
fn default_eos() -> u32 {
    2
}
fn default_pad() -> u32 {
    3
}

impl BloomConfig {
    /// bigscience/bloom-560m's shape, for benchmarks and random models without a download.
    pub fn bloom_560m() -> Self {
        Self {
            vocab_size: 250_880,
            hidden_size: 1024,
            n_layer: 24,
            n_head: 16,
            layer_norm_epsilon: 1e-5,
            apply_residual_connection_post_layernorm: false,
            bos_token_id: 1,
            eos_token_id: 2,
            pad_token_id: 3,
        }
    }

    /// Reads and checks `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::checkpoint(
                path,
                format!("cannot be read ({e})"),
                "check the file's permissions",
            )
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(
                path,
                format!("is not a BLOOM config.json ({e})"),
                "use the config.json saved with the checkpoint (model_type \"bloom\")",
            )
        })?;
        config.validate().map_err(|problem| {
            Error::checkpoint(
                path,
                problem,
                "use the config.json saved with the checkpoint",
            )
        })?;
        Ok(config)
    }

    /// Size of one attention head; `hidden_size` must be a multiple of `n_head`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_head
    }

    /// Checks the invariants the forward passes rely on, so a bad `config.json` is reported
    /// instead of producing shape errors deep inside a layer.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.n_head == 0 || self.hidden_size == 0 || self.n_layer == 0 || self.vocab_size == 0 {
            return Err("vocab_size, hidden_size, n_layer and n_head must all be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.n_head) {
            return Err(format!(
                "hidden_size {} is not divisible by n_head {}",
                self.hidden_size, self.n_head
            ));
        }
        Ok(())
    }
}
