//! BLOOM (BigScience Large Open-science Open-access Multilingual) in candle.
//!
//! A line-for-line port of Hugging Face `transformers`' `modeling_bloom.py` (`BloomForCausalLM`),
//! in the shape of candle-transformers' own models: a [`BloomConfig`] read from `config.json`,
//! one struct per block with `load` and `forward`. Everything is computed in f32; the linear
//! layers may hold quantized weights (see [`super::linear`]).
//!
//! Shapes use `b` = batch, `s` = new positions in this call, `t` = all positions so far
//! (cache + new), `h` = hidden size, `nh` = heads, `hd` = head size.

use candle_core::{D, DType, Device, Module, Tensor};

use super::attention::{Dims, KvCache, MaskInfo, attend, attend_each};
use super::linear::{Linear, Quantization};
use mananera_model::layout::{self, Projection};
use mananera_model::weights::Weights;
use mananera_model::{BloomConfig, alibi_slopes};

/// LayerNorm over the last dimension with weight and bias, as `torch.nn.LayerNorm`.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(w: &Weights, name: &str, size: usize, eps: f64) -> super::Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{name}.weight"), &[size])?,
            bias: w.get(&format!("{name}.bias"), &[size])?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
    }
}

/// The key/value caches of every layer, so that a generation step feeds only the new tokens.
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<KvCache>,
}

impl Cache {
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Multi-head self-attention with the fused `query_key_value` projection.
#[derive(Debug, Clone)]
struct Attention {
    query_key_value: Linear,
    dense: Linear,
    n_head: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, layer: usize, cfg: &BloomConfig, q: Quantization) -> super::Result<Self> {
        Ok(Self {
            query_key_value: Linear::load(w, layer, Projection::QueryKeyValue, cfg, q)?,
            dense: Linear::load(w, layer, Projection::Dense, cfg, q)?,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x`: `[b, s, h]` → the attention output before the residual, `[b, s, h]`.
    fn forward(&self, x: &Tensor, slopes: &[f32], kv: &mut LayerKv) -> candle_core::Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let qkv = self
            .query_key_value
            .forward(x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (nh, hd) = (self.n_head, self.head_dim);
        let context = match kv {
            LayerKv::Shared { mask, cache } => {
                attend(&qkv, Dims { b, s, nh, hd }, cache, mask, slopes)
            }
            LayerKv::PerSequence(caches) => attend_each(&qkv, nh, hd, caches, slopes),
        };
        self.dense
            .forward(&Tensor::from_vec(context, (b, s, h), x.device())?)
    }
}

/// The keys and values one layer attends over: one cache shared by a left-padded batch, or
/// one cache per sequence when sequences of different lengths decode together.
enum LayerKv<'a, 'c> {
    Shared {
        mask: &'a MaskInfo,
        cache: &'a mut KvCache,
    },
    PerSequence(&'a mut [&'c mut KvCache]),
}

/// The feed-forward block: `dense_4h_to_h(gelu_tanh(dense_h_to_4h(x)))`.
#[derive(Debug, Clone)]
struct Mlp {
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

impl Mlp {
    fn load(w: &Weights, layer: usize, cfg: &BloomConfig, q: Quantization) -> super::Result<Self> {
        Ok(Self {
            dense_h_to_4h: Linear::load(w, layer, Projection::HTo4h, cfg, q)?,
            dense_4h_to_h: Linear::load(w, layer, Projection::FourHToH, cfg, q)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // BloomGelu is the tanh approximation.
        self.dense_4h_to_h
            .forward(&super::gelu::gelu(&self.dense_h_to_4h.forward(x)?)?)
    }
}

/// One transformer layer. `post_layernorm_residual` mirrors
/// `apply_residual_connection_post_layernorm`: the residual is taken after the LayerNorm
/// instead of before it.
#[derive(Debug, Clone)]
struct Block {
    input_layernorm: LayerNorm,
    self_attention: Attention,
    post_attention_layernorm: LayerNorm,
    mlp: Mlp,
    post_layernorm_residual: bool,
}

impl Block {
    /// Bytes of its four weight matrices.
    fn weight_bytes(&self) -> usize {
        let (a, m) = (&self.self_attention, &self.mlp);
        [
            &a.query_key_value,
            &a.dense,
            &m.dense_h_to_4h,
            &m.dense_4h_to_h,
        ]
        .iter()
        .map(|l| l.weight_bytes())
        .sum()
    }

    fn load(w: &Weights, i: usize, cfg: &BloomConfig, q: Quantization) -> super::Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_epsilon);
        let layer = layout::layer_prefix(i);
        let [input_norm, post_norm] = layout::LAYER_NORMS.map(|n| format!("{layer}.{n}"));
        Ok(Self {
            input_layernorm: LayerNorm::load(w, &input_norm, h, eps)?,
            self_attention: Attention::load(w, i, cfg, q)?,
            post_attention_layernorm: LayerNorm::load(w, &post_norm, h, eps)?,
            mlp: Mlp::load(w, i, cfg, q)?,
            post_layernorm_residual: cfg.apply_residual_connection_post_layernorm,
        })
    }

    fn forward(&self, x: &Tensor, slopes: &[f32], kv: &mut LayerKv) -> candle_core::Result<Tensor> {
        let ln = self.input_layernorm.forward(x)?;
        let residual = if self.post_layernorm_residual { &ln } else { x };
        let x = (self.self_attention.forward(&ln, slopes, kv)? + residual)?;
        let ln = self.post_attention_layernorm.forward(&x)?;
        let residual = if self.post_layernorm_residual {
            &ln
        } else {
            &x
        };
        self.mlp.forward(&ln)? + residual
    }
}

/// `BloomForCausalLM`: embeddings, the layers, the final LayerNorm and the language-model head
/// (tied to the word embeddings unless the checkpoint stores its own `lm_head.weight`).
#[derive(Debug, Clone)]
pub struct Bloom {
    word_embeddings: Linear,
    word_embeddings_layernorm: LayerNorm,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    /// With a trimmed vocabulary, the token id of each head row (sorted); `None` = every token.
    head_ids: Option<Vec<u32>>,
    slopes: Vec<f32>,
    device: Device,
    config: BloomConfig,
}

impl Bloom {
    /// Builds the model from checkpoint weights, quantizing the linear layers (the head
    /// included) when `quantization` asks for it. `head_ids` (sorted, distinct, in range)
    /// trims the language-model head to those tokens: the logits then have one column per
    /// kept token and the model can only produce those (see [`super::vocabulary`]).
    pub fn load(
        weights: &Weights,
        config: &BloomConfig,
        quantization: Quantization,
        head_ids: Option<Vec<u32>>,
    ) -> super::Result<Self> {
        let (v, h, eps) = (
            config.vocab_size,
            config.hidden_size,
            config.layer_norm_epsilon,
        );
        let embeddings = weights.get(layout::WORD_EMBEDDINGS, &[v, h])?;
        let word_embeddings = Linear::from_weight(embeddings.clone(), None, quantization)?;
        // Tied: the head shares the (possibly quantized) embedding matrix, stored once.
        let lm_head = match (weights.get_optional(layout::LM_HEAD, &[v, h])?, &head_ids) {
            (None, None) => word_embeddings.clone(),
            (Some(head), None) => Linear::from_weight(head, None, quantization)?,
            (stored, Some(ids)) => {
                let full = stored.unwrap_or(embeddings.clone());
                let rows = full.index_select(&Tensor::new(ids.as_slice(), weights.device())?, 0)?;
                Linear::from_weight(rows, None, quantization)?
            }
        };
        let blocks = (0..config.n_layer)
            .map(|i| Block::load(weights, i, config, quantization))
            .collect::<super::Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings,
            word_embeddings_layernorm: LayerNorm::load(weights, layout::EMBEDDINGS_NORM, h, eps)?,
            blocks,
            ln_f: LayerNorm::load(weights, layout::FINAL_NORM, h, eps)?,
            lm_head,
            head_ids,
            slopes: alibi_slopes(config.n_head),
            device: weights.device().clone(),
            config: config.clone(),
        })
    }

    /// Bytes of weights one decoding step reads: every layer's matrices, the head, and one
    /// embedding row (the LayerNorms, biases and the KV cache are left out: a few MB).
    pub fn decode_bytes(&self) -> usize {
        let layers: usize = self.blocks.iter().map(Block::weight_bytes).sum();
        layers + self.lm_head.weight_bytes() + self.word_embeddings.row_bytes()
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &BloomConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh, empty cache for a new batch of sequences.
    pub fn new_cache(&self) -> Cache {
        Cache {
            layers: vec![KvCache::default(); self.blocks.len()],
        }
    }

    /// Runs the new positions `input_ids` (`[b, s]`, u32) through the model, appending their
    /// keys and values to `cache`. `attention_mask` (`[b, t]`, 1 for tokens and 0 for left
    /// padding) covers the cached positions and the new ones. Returns the final hidden states
    /// after `ln_f`, `[b, s, h]`; apply [`Bloom::logits`] to the positions whose scores you need.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut Cache,
    ) -> candle_core::Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        let past = cache.len();
        let t = attention_mask.dim(1)?;
        if t != past + s || attention_mask.dim(0)? != b {
            candle_core::bail!(
                "attention mask is {:?}, expected [{b}, {}] (cached {past} + new {s})",
                attention_mask.dims(),
                past + s
            );
        }
        let mask = MaskInfo::new(
            &attention_mask
                .to_dtype(DType::U8)?
                .flatten_all()?
                .to_vec1::<u8>()?,
            b,
            t,
        );
        let mut x = self
            .word_embeddings
            .embedding(&input_ids.flatten_all()?)?
            .reshape((b, s, ()))?;
        x = self.word_embeddings_layernorm.forward(&x)?;
        for (block, cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let mut kv = LayerKv::Shared { mask: &mask, cache };
            x = block.forward(&x, &self.slopes, &mut kv)?;
        }
        self.ln_f.forward(&x)
    }

    /// One decoding step for sequences of any lengths, each with its own cache: `input_ids[i]`
    /// is sequence i's newest token. The linear layers run once for the whole batch (one read
    /// of the weights for every sequence); attention runs per sequence. Returns the final
    /// hidden states, `[b, h]`.
    pub fn decode_step(
        &self,
        input_ids: &[u32],
        caches: &mut [&mut Cache],
    ) -> candle_core::Result<Tensor> {
        let b = input_ids.len();
        if caches.len() != b {
            candle_core::bail!("{b} tokens but {} caches", caches.len());
        }
        let ids = Tensor::new(input_ids, &self.device)?;
        let mut x = self.word_embeddings.embedding(&ids)?.reshape((b, 1, ()))?;
        x = self.word_embeddings_layernorm.forward(&x)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let mut layer_caches: Vec<&mut KvCache> =
                caches.iter_mut().map(|c| &mut c.layers[layer]).collect();
            let mut kv = LayerKv::PerSequence(&mut layer_caches);
            x = block.forward(&x, &self.slopes, &mut kv)?;
        }
        self.ln_f.forward(&x)?.squeeze(1)
    }

    /// Scores for hidden states `[.., h]` → `[.., columns]`: one column per token, or per
    /// kept token with a trimmed vocabulary (map with [`Bloom::token_id`] / [`Bloom::column`]).
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// The token a logit column stands for.
    pub fn token_id(&self, column: u32) -> u32 {
        self.head_ids
            .as_ref()
            .map_or(column, |ids| ids[column as usize])
    }

    /// The logit column of a token, `None` when a trimmed vocabulary leaves it out.
    pub fn column(&self, token_id: u32) -> Option<u32> {
        match &self.head_ids {
            None => (token_id < self.config.vocab_size as u32).then_some(token_id),
            Some(ids) => ids.binary_search(&token_id).ok().map(|c| c as u32),
        }
    }

    /// Log-probability of each token given the tokens before it, for one sequence
    /// (`logprobs[i]` scores `token_ids[i + 1]`), computed in chunks of `chunk` positions
    /// through the cache so long texts need no quadratic memory. Every scored token must have
    /// a logit column ([`Bloom::column`]).
    pub fn score(&self, token_ids: &[u32], chunk: usize) -> candle_core::Result<Vec<f32>> {
        let device = self.device();
        let mut cache = self.new_cache();
        let mut logprobs = Vec::with_capacity(token_ids.len().saturating_sub(1));
        let mut start = 0;
        while start + 1 < token_ids.len() {
            let end = (start + chunk.max(1)).min(token_ids.len() - 1);
            let ids = Tensor::new(&token_ids[start..end], device)?.unsqueeze(0)?;
            let mask = Tensor::ones((1, end), DType::U8, device)?;
            let hidden = self.forward(&ids, &mask, &mut cache)?.squeeze(0)?;
            let log_softmax = candle_nn::ops::log_softmax(&self.logits(&hidden)?, D::Minus1)?;
            let columns = token_ids[start + 1..end + 1]
                .iter()
                .map(|&id| {
                    self.column(id).ok_or_else(|| {
                        candle_core::Error::Msg(format!("token {id} has no logit column"))
                    })
                })
                .collect::<candle_core::Result<Vec<u32>>>()?;
            let targets = Tensor::new(columns.as_slice(), device)?.unsqueeze(1)?;
            logprobs.extend(
                log_softmax
                    .gather(&targets, 1)?
                    .squeeze(1)?
                    .to_vec1::<f32>()?,
            );
            start = end;
        }
        Ok(logprobs)
    }
}
