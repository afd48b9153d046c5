//! BLOOM written for training: the same arithmetic as transformers' `BloomForCausalLM`, but
//! only from candle operations that have a backward pass, with optional LoRA on its linear
//! layers. (The serving engine uses hand-written kernels without gradients; candle's fused
//! `LayerNorm` and `softmax_last_dim` silently drop gradients, so neither is used here.)

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use mananera_model::layout::{self, Projection};
use mananera_model::{BloomConfig, alibi_slopes};

use super::TrainError;
use super::head::{Vocabulary, frozen_head_loss, trained_head_loss};
use super::lora::Adapter;
use super::ops;

/// A model ready to train: base weights (trainable `Var`s in a full fine-tune, constants
/// under LoRA) and the adapter, if any.
pub struct Model {
    config: BloomConfig,
    weights: HashMap<String, Tensor>,
    /// Trainable base tensors (full fine-tune), in [`BloomConfig::tensors`] order.
    vars: Vec<(String, Var)>,
    adapter: Option<Adapter>,
    slopes: Vec<f32>,
    /// A trimmed head: only these tokens are scored.
    trimmed: Option<Trimmed>,
}

/// The head's kept rows.
struct Trimmed {
    vocabulary: Vocabulary,
    /// The kept token ids as a tensor, to pick the rows of a trained head.
    ids: Tensor,
    /// The kept rows of a frozen head (LoRA), picked once.
    rows: Option<Tensor>,
}

/// Randomness for LoRA dropout: one seed per micro-batch, so a resumed run draws the same masks.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSeed(pub u64);

impl Model {
    /// A model whose base weights are all trained (the original recipe).
    pub fn full(config: BloomConfig, weights: HashMap<String, Tensor>) -> Result<Self, TrainError> {
        let mut vars = Vec::new();
        let mut live = HashMap::new();
        for (name, _) in config.tensors() {
            let var = Var::from_tensor(&weights[&name])?;
            live.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        Ok(Self::new(config, live, vars, None))
    }

    /// A frozen base with a trainable adapter.
    pub fn lora(config: BloomConfig, weights: HashMap<String, Tensor>, adapter: Adapter) -> Self {
        Self::new(config, weights, Vec::new(), Some(adapter))
    }

    fn new(
        config: BloomConfig,
        weights: HashMap<String, Tensor>,
        vars: Vec<(String, Var)>,
        adapter: Option<Adapter>,
    ) -> Self {
        let slopes = alibi_slopes(config.n_head);
        Self {
            config,
            weights,
            vars,
            adapter,
            slopes,
            trimmed: None,
        }
    }

    /// Scores only `vocabulary`'s tokens from now on (the corpus vocabulary the engine
    /// serves): the loss is the softmax over the kept tokens, and positions whose next
    /// token is not kept are left out of it.
    pub fn with_vocabulary(mut self, vocabulary: Vocabulary) -> candle_core::Result<Self> {
        let ids = Tensor::new(vocabulary.ids(), &Device::Cpu)?;
        let rows = self
            .vars
            .is_empty()
            .then(|| self.w(layout::WORD_EMBEDDINGS).index_select(&ids, 0))
            .transpose()?;
        self.trimmed = Some(Trimmed {
            vocabulary,
            ids,
            rows,
        });
        Ok(self)
    }

    /// The model's configuration.
    pub fn config(&self) -> &BloomConfig {
        &self.config
    }

    /// The adapter under training, if this is a LoRA run.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    /// The base weights (with the trained values in a full fine-tune).
    pub fn weights(&self) -> &HashMap<String, Tensor> {
        &self.weights
    }

    /// Every trainable tensor with its name: the adapter's, or all base weights.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        match &self.adapter {
            Some(adapter) => adapter.vars(),
            None => self.vars.clone(),
        }
    }

    /// Mean next-token cross-entropy of `ids` (`[batch, seq]`, u32), transformers' loss with
    /// `labels = input_ids`: position i predicts token i + 1. Ready for `backward`.
    pub fn loss(&self, ids: &Tensor, dropout: Option<DropoutSeed>) -> candle_core::Result<Tensor> {
        self.next_token_loss(ids, &[], dropout, true)
    }

    /// [`Model::loss`] over the positions of each row from `unscored[row]` on (an empty slice
    /// scores every position): a voice header's own tokens are context, not text to learn,
    /// as transformers' labels of -100. The mean is over the scored positions.
    pub fn loss_after(
        &self,
        ids: &Tensor,
        unscored: &[usize],
        dropout: Option<DropoutSeed>,
    ) -> candle_core::Result<Tensor> {
        self.next_token_loss(ids, unscored, dropout, true)
    }

    /// [`Model::loss_after`] without dropout, for validation: a frozen head skips its gradient.
    pub fn eval_loss(&self, ids: &Tensor, unscored: &[usize]) -> candle_core::Result<Tensor> {
        self.next_token_loss(ids, unscored, None, false)
    }

    fn next_token_loss(
        &self,
        ids: &Tensor,
        unscored: &[usize],
        dropout: Option<DropoutSeed>,
        with_grad: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        // The last position predicts nothing: leave it out before the vocabulary-wide head.
        let hidden = self.hidden(ids, dropout)?.narrow(1, 0, s - 1)?;
        let h = self.config.hidden_size;
        let hidden = hidden.contiguous()?.reshape((b * (s - 1), h))?;
        let targets = ids.narrow(1, 1, s - 1)?.flatten_all()?.to_vec1::<u32>()?;
        let (hidden, targets) = match unscored.iter().any(|&u| u > 0) {
            false => (hidden, targets),
            true => {
                let rows: Vec<u32> = (0..b)
                    .flat_map(|row| {
                        let from = unscored.get(row).copied().unwrap_or(0).min(s - 1);
                        (row * (s - 1) + from..(row + 1) * (s - 1)).map(|i| i as u32)
                    })
                    .collect();
                if rows.is_empty() {
                    candle_core::bail!("the blocks are all header: no token to score");
                }
                let targets = rows.iter().map(|&i| targets[i as usize]).collect();
                let rows = Tensor::new(rows.as_slice(), ids.device())?;
                (hidden.index_select(&rows, 0)?, targets)
            }
        };
        let (hidden, targets) = match &self.trimmed {
            None => (hidden, targets),
            Some(trimmed) => {
                let (rows, columns): (Vec<u32>, Vec<u32>) = targets
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &t)| trimmed.vocabulary.column(t).map(|c| (i as u32, c)))
                    .unzip();
                if rows.is_empty() {
                    candle_core::bail!(
                        "no next token of this block is in the vocabulary (engine.vocabulary); write the vocabulary again from this corpus with `mananera vocab`"
                    );
                }
                let rows = Tensor::new(rows.as_slice(), ids.device())?;
                (hidden.index_select(&rows, 0)?, columns)
            }
        };
        let embeddings = self.w(layout::WORD_EMBEDDINGS);
        if self.vars.is_empty() {
            let head = match &self.trimmed {
                Some(Trimmed {
                    rows: Some(rows), ..
                }) => rows,
                _ => embeddings,
            };
            return frozen_head_loss(&hidden, head, &targets, with_grad)?.mean_all();
        }
        let head = match &self.trimmed {
            Some(trimmed) => embeddings.index_select(&trimmed.ids, 0)?,
            None => embeddings.clone(),
        };
        if with_grad {
            trained_head_loss(&hidden, &head, &targets)?.mean_all()
        } else {
            frozen_head_loss(&hidden, &head, &targets, false)?.mean_all()
        }
    }

    /// `[batch, seq, vocab]`: every position's next-token logits, without dropout (what the
    /// engine's forward computes, with gradients).
    pub fn logits(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let h = self.config.hidden_size;
        let hidden = self.hidden(ids, None)?.reshape((b * s, h))?;
        self.matmul_t(&hidden, self.w(layout::WORD_EMBEDDINGS), None)?
            .reshape((b, s, self.config.vocab_size))
    }

    /// `[batch, seq, hidden]`: the final LayerNorm's output.
    fn hidden(&self, ids: &Tensor, dropout: Option<DropoutSeed>) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let h = self.config.hidden_size;
        let embeddings = self.w(layout::WORD_EMBEDDINGS);
        let mut x = ops::embedding(embeddings, &ids.flatten_all()?.to_vec1::<u32>()?)?
            .reshape((b, s, h))?;
        x = self.layer_norm(&x, layout::EMBEDDINGS_NORM)?;
        let bias = self.attention_bias(s, ids.device())?;
        let mut seeds = dropout.map(|DropoutSeed(seed)| Seeds { seed, next: 0 });
        for i in 0..self.config.n_layer {
            x = self.block(&x, i, &bias, seeds.as_mut())?;
        }
        self.layer_norm(&x, layout::FINAL_NORM)
    }

    /// `x Wᵀ + b`: through candle's graph when `W` is trained, else without its gradient.
    fn matmul_t(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if self.vars.is_empty() {
            return ops::frozen_linear(x, weight, bias);
        }
        let y = x.matmul(&weight.t()?)?;
        match bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }

    fn w(&self, name: &str) -> &Tensor {
        &self.weights[name]
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        ops::layer_norm(
            x,
            self.w(&format!("{prefix}.weight")),
            self.w(&format!("{prefix}.bias")),
            self.config.layer_norm_epsilon,
        )
    }

    /// `x W^T + b`, plus `scaling · B A dropout(x)` where an adapter targets `module`.
    fn linear(
        &self,
        x: &Tensor,
        module: &str,
        seeds: Option<&mut Seeds>,
    ) -> candle_core::Result<Tensor> {
        let (b, s, inp) = x.dims3()?;
        let flat = x.reshape((b * s, inp))?;
        let weight = self.w(&format!("{module}.weight"));
        let bias = self.w(&format!("{module}.bias"));
        let y = match self.adapter.as_ref().and_then(|a| a.pair(module)) {
            Some(pair) => ops::LoraLinear {
                weight,
                bias,
                a: pair.a.as_tensor(),
                b: pair.b.as_tensor(),
                scaling: pair.scaling,
                mask: match (pair.dropout, seeds) {
                    (p, Some(seeds)) if p > 0.0 => Some(dropout_mask(b * s * inp, p, seeds.take())),
                    _ => None,
                },
            }
            .forward(&flat)?,
            None => self.matmul_t(&flat, weight, Some(bias))?,
        };
        y.reshape((b, s, weight.dim(0)?))
    }

    fn block(
        &self,
        x: &Tensor,
        i: usize,
        bias: &Tensor,
        mut seeds: Option<&mut Seeds>,
    ) -> candle_core::Result<Tensor> {
        let post_ln = self.config.apply_residual_connection_post_layernorm;
        let layer = layout::layer_prefix(i);
        let [input_norm, post_norm] = layout::LAYER_NORMS.map(|n| format!("{layer}.{n}"));
        let ln = self.layer_norm(x, &input_norm)?;
        let residual = if post_ln { &ln } else { x };
        let attention = self.attention(&ln, i, bias, seeds.as_deref_mut())?;
        let x = (attention + residual)?;
        let ln = self.layer_norm(&x, &post_norm)?;
        let residual = if post_ln { &ln } else { &x };
        let up = self.linear(&ln, &Projection::HTo4h.module(i), seeds.as_deref_mut())?;
        let down = self.linear(&ops::gelu(&up)?, &Projection::FourHToH.module(i), seeds)?;
        down + residual
    }

    fn attention(
        &self,
        x: &Tensor,
        i: usize,
        bias: &Tensor,
        mut seeds: Option<&mut Seeds>,
    ) -> candle_core::Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let (nh, hd) = (self.config.n_head, self.config.head_dim());
        let qkv = self
            .linear(
                x,
                &Projection::QueryKeyValue.module(i),
                seeds.as_deref_mut(),
            )?
            .reshape((b, s, nh, 3, hd))?;
        let part = |k: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(3, k, 1)?
                .squeeze(3)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = q.matmul(&k.t()?.contiguous()?)?;
        let probs = ops::softmax(&scores, 1.0 / (hd as f32).sqrt(), Some(bias))?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, h))?;
        self.linear(&context, &Projection::Dense.module(i), seeds)
    }

    /// `[n_head, s, s]`: ALiBi (`slope_h · j` for key j) plus the causal mask.
    fn attention_bias(&self, s: usize, device: &Device) -> candle_core::Result<Tensor> {
        let nh = self.config.n_head;
        let mut bias = vec![0f32; nh * s * s];
        for (head, slope) in self.slopes.iter().enumerate() {
            for i in 0..s {
                for j in 0..s {
                    bias[(head * s + i) * s + j] = if j <= i {
                        slope * j as f32
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
        }
        Tensor::from_vec(bias, (nh, s, s), device)
    }
}

/// Dropout seeds handed out in a fixed order within one forward pass.
struct Seeds {
    seed: u64,
    next: u64,
}

impl Seeds {
    fn take(&mut self) -> u64 {
        self.next += 1;
        self.seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(self.next)
    }
}

/// An inverted-dropout mask (0 or 1/(1-p)) from a seeded generator (candle's own dropout
/// draws from an unseeded one, which would make resumed runs differ).
fn dropout_mask(len: usize, p: f32, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    (0..len)
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect()
}
