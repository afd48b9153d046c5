//! Linear layers whose weights are f32, 16-bit, or quantized in-process (Q8_0, Q4_0, Q4_K) at
//! load time.
//!
//! Quantization happens from the checkpoint's tensors when the model is built, so there is
//! no separate conversion step. A weight whose input size is not a multiple of the format's
//! block (32 for Q8_0/Q4_0, 256 for Q4_K) falls back to the next format that fits (Q4_K →
//! Q8_0), then to f32.

use std::str::FromStr;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

use super::Result;
use super::gemv;
use super::half_weights::HalfMatrix;
use super::quant::QMatrix;
use mananera_model::BloomConfig;
use mananera_model::layout::Projection;
use mananera_model::weights::Weights;

/// How the linear layers (and the tied embedding/head) store their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// Full f32 weights: exact, largest and slowest.
    #[default]
    None,
    /// IEEE half-float weights, products computed in f32: half the bytes of f32, no block
    /// scales (`half_weights`).
    F16,
    /// 8-bit blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit blocks of 32 with one f16 scale (4.5 bits per weight): the fastest, least exact.
    Q4_0,
    /// 4-bit k-quant super-blocks of 256 (4.5 bits per weight).
    Q4k,
}

impl Quantization {
    /// Every accepted spelling, for help texts and error messages.
    pub const NAMES: &'static str = "none, f16, q8_0, q4_0, q4k";

    /// Formats to try for one weight, best first.
    fn candidates(self) -> &'static [GgmlDType] {
        match self {
            Self::None | Self::F16 => &[],
            Self::Q8_0 => &[GgmlDType::Q8_0],
            Self::Q4_0 => &[GgmlDType::Q4_0],
            Self::Q4k => &[GgmlDType::Q4K, GgmlDType::Q8_0],
        }
    }
}

impl FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "q4k" => Ok(Self::Q4k),
            other => Err(format!(
                "unknown quantization `{other}` (expected one of {})",
                Self::NAMES
            )),
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4k => "q4k",
        })
    }
}

/// Weight storage of one layer: `[out, in]`.
#[derive(Debug, Clone)]
enum Weight {
    F32(Tensor),
    F16(Arc<HalfMatrix>),
    Quantized(Arc<QMatrix>),
}

/// `y = x·Wᵀ + b` over the last dimension of `x`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// `(out, in)`.
    shape: (usize, usize),
}

impl Linear {
    /// Loads projection `p` of layer `layer`: its weight (`[out, in]`) and bias (`[out]`).
    pub fn load(
        w: &Weights,
        layer: usize,
        p: Projection,
        config: &BloomConfig,
        q: Quantization,
    ) -> Result<Self> {
        let module = p.module(layer);
        let (out, inp) = p.dims(config.hidden_size);
        let weight = w.get(&format!("{module}.weight"), &[out, inp])?;
        let bias = w.get(&format!("{module}.bias"), &[out])?;
        Self::from_weight(weight, Some(bias), q)
    }

    /// Wraps an f32 weight, quantizing it when `q` asks for it and the shape allows.
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>, q: Quantization) -> Result<Self> {
        let shape = weight.dims2()?;
        let inp = shape.1;
        let format = q
            .candidates()
            .iter()
            .copied()
            .find(|f| inp % f.block_size() == 0);
        let weight = match format {
            Some(format) => Weight::Quantized(Arc::new(QMatrix::quantize(&weight, format)?)),
            None if q == Quantization::F16 => Weight::F16(Arc::new(HalfMatrix::from_f32(&weight)?)),
            None => Weight::F32(weight),
        };
        Ok(Self {
            weight,
            bias,
            shape,
        })
    }

    /// Bytes its weight matrix takes: what one pass over it reads (a decoding step's product).
    pub fn weight_bytes(&self) -> usize {
        let (n, k) = self.shape;
        match &self.weight {
            Weight::F32(_) => n * k * 4,
            Weight::F16(_) => n * k * 2,
            Weight::Quantized(q) => q.bytes(),
        }
    }

    /// Bytes of one of its rows (an embedding lookup reads one).
    pub fn row_bytes(&self) -> usize {
        self.weight_bytes() / self.shape.0.max(1)
    }

    /// Rows `ids` of the weight matrix, the embedding lookup of a tied embedding/head.
    pub fn embedding(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weight {
            Weight::F32(w) => w.embedding(ids),
            Weight::F16(h) => h.rows(&ids.to_vec1::<u32>()?, ids.device()),
            Weight::Quantized(q) => q.rows(&ids.to_vec1::<u32>()?, ids.device()),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, k) = self.shape;
        let rows = x.elem_count() / k;
        let mut dims = x.dims().to_vec();
        match dims.last_mut() {
            Some(last) => *last = n,
            None => candle_core::bail!("linear layer applied to a scalar"),
        }
        let flat = || x.reshape((rows, k))?.contiguous();
        let y = match &self.weight {
            Weight::F32(w) => gemv::matmul_wt(&flat()?, w)?.reshape(dims)?,
            Weight::F16(h) => h.matmul_t(&flat()?)?.reshape(dims)?,
            Weight::Quantized(q) => q.matmul_t(&flat()?)?.reshape(dims)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
