//! BLOOM written for training: the same arithmetic as transformers' `BloomForCausalLM`, but
//! only from candle operations that have a backward pass, with optional LoRA on its linear
//! layers. (The serving engine uses hand-written kernels without gradients; candle's fused
//! `LayerNorm` and `softmax_last_dim` silently drop gradients, so neither is used here.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;

use super::TrainError;
use super::lora::Adapter;
use super::ops;

/// The fields of a BLOOM `config.json` that training needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Shape {
    pub vocab_size: usize,
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    #[serde(default = "default_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_epsilon() -> f64 {
    1e-5
}

fn default_eos() -> u32 {
    2
}

impl Shape {
    /// Reads and checks `config.json`.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let shape: Self = serde_json::from_str(&text).map_err(|e| {
            TrainError::Model(format!(
                "{}: not a BLOOM config.json ({e}); point model.id at a BLOOM checkpoint",
                path.display()
            ))
        })?;
        if shape.n_head == 0
            || !shape.hidden_size.is_multiple_of(shape.n_head)
            || shape.n_layer == 0
        {
            return Err(TrainError::Model(format!(
                "{}: hidden_size {} is not a multiple of n_head {} (or no layers)",
                path.display(),
                shape.hidden_size,
                shape.n_head
            )));
        }
        Ok(shape)
    }

    /// bigscience/bloom-560m's shape, for benchmarks without its download.
    pub fn bloom_560m() -> Self {
        Self {
            vocab_size: 250_880,
            hidden_size: 1024,
            n_layer: 24,
            n_head: 16,
            layer_norm_epsilon: 1e-5,
            apply_residual_connection_post_layernorm: false,
            eos_token_id: 2,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.n_head
    }

    /// Every tensor of the model with its shape, in checkpoint order and unprefixed names.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (v, h) = (self.vocab_size, self.hidden_size);
        let mut out = vec![
            ("word_embeddings.weight".to_string(), vec![v, h]),
            ("word_embeddings_layernorm.weight".into(), vec![h]),
            ("word_embeddings_layernorm.bias".into(), vec![h]),
        ];
        for i in 0..self.n_layer {
            for (name, shape) in [
                ("input_layernorm.weight", vec![h]),
                ("input_layernorm.bias", vec![h]),
                ("self_attention.query_key_value.weight", vec![3 * h, h]),
                ("self_attention.query_key_value.bias", vec![3 * h]),
                ("self_attention.dense.weight", vec![h, h]),
                ("self_attention.dense.bias", vec![h]),
                ("post_attention_layernorm.weight", vec![h]),
                ("post_attention_layernorm.bias", vec![h]),
                ("mlp.dense_h_to_4h.weight", vec![4 * h, h]),
                ("mlp.dense_h_to_4h.bias", vec![4 * h]),
                ("mlp.dense_4h_to_h.weight", vec![h, 4 * h]),
                ("mlp.dense_4h_to_h.bias", vec![h]),
            ] {
                out.push((format!("h.{i}.{name}"), shape));
            }
        }
        out.push(("ln_f.weight".into(), vec![h]));
        out.push(("ln_f.bias".into(), vec![h]));
        out
    }

    /// The linear layers LoRA can adapt: (module path, out, in).
    pub fn linears(&self) -> Vec<(String, usize, usize)> {
        let h = self.hidden_size;
        (0..self.n_layer)
            .flat_map(|i| {
                [
                    (format!("h.{i}.self_attention.query_key_value"), 3 * h, h),
                    (format!("h.{i}.self_attention.dense"), h, h),
                    (format!("h.{i}.mlp.dense_h_to_4h"), 4 * h, h),
                    (format!("h.{i}.mlp.dense_4h_to_h"), h, 4 * h),
                ]
            })
            .collect()
    }
}

/// The checkpoint a run starts from: its directory's files and the parsed shape.
#[derive(Debug, Clone)]
pub struct BaseCheckpoint {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
    pub shape: Shape,
}

/// Reads every tensor of `base` as f32 (bf16/f16 are widened), under unprefixed names,
/// checking each against the shape config.json implies.
pub fn read_weights(base: &BaseCheckpoint) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut found = HashMap::new();
    for path in &base.weights {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            TrainError::Model(format!(
                "{}: not a readable safetensors file ({e}); download or export the checkpoint again",
                path.display()
            ))
        })?;
        for (name, tensor) in tensors {
            let name = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_string();
            found.insert(name, tensor);
        }
    }
    let mut out = HashMap::new();
    for (name, shape) in base.shape.tensors() {
        let tensor = found.remove(&name).ok_or_else(|| {
            TrainError::Model(format!(
                "tensor `{name}` is missing from {}; the checkpoint is incomplete or not BLOOM",
                base.weights
                    .first()
                    .map_or(String::new(), |p| p.display().to_string())
            ))
        })?;
        if tensor.dims() != shape.as_slice() {
            return Err(TrainError::Model(format!(
                "tensor `{name}` has shape {:?} but {} implies {shape:?}",
                tensor.dims(),
                base.config.display()
            )));
        }
        out.insert(name, tensor.to_dtype(DType::F32)?);
    }
    Ok(out)
}

/// Writes `weights` as a checkpoint's `model.safetensors` (unprefixed names, in
/// [`Shape::tensors`] order), atomically.
pub fn save_weights(
    path: &Path,
    shape: &Shape,
    weights: &HashMap<String, Tensor>,
) -> Result<(), TrainError> {
    let ordered: Vec<(String, Tensor)> = shape
        .tensors()
        .into_iter()
        .map(|(name, _)| {
            let tensor = weights[&name].clone();
            (name, tensor)
        })
        .collect();
    super::tensors::save(path, &ordered)
}

/// Random weights in bloom's initialisation (N(0, 0.02²), LayerNorm 1/0), for benchmarks and
/// tests. Drawn from `seed` in the tensors' fixed order, so the same seed and shape always
/// give the same model (candle's own `randn` draws from an unseeded generator).
pub fn random_weights(shape: &Shape, seed: u64) -> Result<HashMap<String, Tensor>, TrainError> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, dims) in shape.tensors() {
        let tensor = match (dims.len(), name.ends_with(".bias")) {
            (1, true) => Tensor::zeros(dims, DType::F32, &Device::Cpu)?,
            (1, false) => Tensor::ones(dims, DType::F32, &Device::Cpu)?,
            _ => {
                let count: usize = dims.iter().product();
                let mut values = Vec::with_capacity(count + 1);
                // Box–Muller: two uniform draws give two independent normal values.
                while values.len() < count {
                    let u1: f32 = 1.0 - rng.random::<f32>();
                    let u2: f32 = rng.random::<f32>();
                    let radius = 0.02 * (-2.0 * u1.ln()).sqrt();
                    let angle = std::f32::consts::TAU * u2;
                    values.push(radius * angle.cos());
                    values.push(radius * angle.sin());
                }
                values.truncate(count);
                Tensor::from_vec(values, dims, &Device::Cpu)?
            }
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

/// A model ready to train: base weights (trainable `Var`s in a full fine-tune, constants
/// under LoRA) and the adapter, if any.
pub struct Model {
    shape: Shape,
    weights: HashMap<String, Tensor>,
    /// Trainable base tensors (full fine-tune), in [`Shape::tensors`] order.
    vars: Vec<(String, Var)>,
    adapter: Option<Adapter>,
    slopes: Vec<f32>,
}

/// Randomness for LoRA dropout: one seed per micro-batch, so a resumed run draws the same masks.
#[derive(Debug, Clone, Copy)]
pub struct DropoutSeed(pub u64);

impl Model {
    /// A model whose base weights are all trained (the original recipe).
    pub fn full(shape: Shape, weights: HashMap<String, Tensor>) -> Result<Self, TrainError> {
        let mut vars = Vec::new();
        let mut live = HashMap::new();
        for (name, _) in shape.tensors() {
            let var = Var::from_tensor(&weights[&name])?;
            live.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        Ok(Self::new(shape, live, vars, None))
    }

    /// A frozen base with a trainable adapter.
    pub fn lora(shape: Shape, weights: HashMap<String, Tensor>, adapter: Adapter) -> Self {
        Self::new(shape, weights, Vec::new(), Some(adapter))
    }

    fn new(
        shape: Shape,
        weights: HashMap<String, Tensor>,
        vars: Vec<(String, Var)>,
        adapter: Option<Adapter>,
    ) -> Self {
        let slopes = alibi_slopes(shape.n_head);
        Self {
            shape,
            weights,
            vars,
            adapter,
            slopes,
        }
    }

    /// The model's shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
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
    /// `labels = input_ids`: position i predicts token i + 1.
    pub fn loss(&self, ids: &Tensor, dropout: Option<DropoutSeed>) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        // The last position predicts nothing: leave it out before the vocabulary-wide head.
        let hidden = self.hidden(ids, dropout)?.narrow(1, 0, s - 1)?;
        let h = self.shape.hidden_size;
        let predicted = self.matmul_t(
            &hidden.contiguous()?.reshape((b * (s - 1), h))?,
            self.w("word_embeddings.weight"),
            None,
        )?;
        let targets = ids.narrow(1, 1, s - 1)?.flatten_all()?.to_vec1::<u32>()?;
        ops::cross_entropy(&predicted, &targets)
    }

    /// `[batch, seq, hidden]`: the final LayerNorm's output.
    fn hidden(&self, ids: &Tensor, dropout: Option<DropoutSeed>) -> candle_core::Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let h = self.shape.hidden_size;
        let embeddings = self.w("word_embeddings.weight");
        let mut x = embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, h))?;
        x = self.layer_norm(&x, "word_embeddings_layernorm")?;
        let bias = self.attention_bias(s, ids.device())?;
        let mut seeds = dropout.map(|DropoutSeed(seed)| Seeds { seed, next: 0 });
        for i in 0..self.shape.n_layer {
            x = self.block(&x, i, &bias, seeds.as_mut())?;
        }
        self.layer_norm(&x, "ln_f")
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
            self.shape.layer_norm_epsilon,
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
        let post_ln = self.shape.apply_residual_connection_post_layernorm;
        let ln = self.layer_norm(x, &format!("h.{i}.input_layernorm"))?;
        let residual = if post_ln { &ln } else { x };
        let attention = self.attention(&ln, i, bias, seeds.as_deref_mut())?;
        let x = (attention + residual)?;
        let ln = self.layer_norm(&x, &format!("h.{i}.post_attention_layernorm"))?;
        let residual = if post_ln { &ln } else { &x };
        let up = self.linear(
            &ln,
            &format!("h.{i}.mlp.dense_h_to_4h"),
            seeds.as_deref_mut(),
        )?;
        let down = self.linear(&ops::gelu(&up)?, &format!("h.{i}.mlp.dense_4h_to_h"), seeds)?;
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
        let (nh, hd) = (self.shape.n_head, self.shape.head_dim());
        let qkv = self
            .linear(
                x,
                &format!("h.{i}.self_attention.query_key_value"),
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
        self.linear(&context, &format!("h.{i}.self_attention.dense"), seeds)
    }

    /// `[n_head, s, s]`: ALiBi (`slope_h · j` for key j) plus the causal mask.
    fn attention_bias(&self, s: usize, device: &Device) -> candle_core::Result<Tensor> {
        let nh = self.shape.n_head;
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

/// ALiBi slopes for any head count, exactly as transformers' `build_alibi_tensor` computes
/// them: a geometric series for the largest power of two ≤ `n_head`, then every other slope
/// of the series for twice that power to fill the remaining heads (bloom-176b has 112 heads).
pub fn alibi_slopes(n_head: usize) -> Vec<f32> {
    let closest_power_of_2 = 1usize << n_head.ilog2();
    let base = 2f64.powf(-(2f64.powf(-((closest_power_of_2 as f64).log2() - 3.0))));
    let mut slopes: Vec<f32> = (1..=closest_power_of_2)
        .map(|p| base.powi(p as i32) as f32)
        .collect();
    if closest_power_of_2 != n_head {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * closest_power_of_2 as f64).log2() - 3.0))));
        let remaining = (n_head - closest_power_of_2).min(closest_power_of_2);
        slopes.extend((0..remaining).map(|i| extra_base.powi(2 * i as i32 + 1) as f32));
    }
    slopes
}
