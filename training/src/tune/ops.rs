//! Operations with hand-written backward passes, where candle's generic graph does
//! needless work:
//!
//! - [`frozen_linear`]: `x Wᵀ` for a weight that is not trained. candle's matmul backward
//!   always computes the gradient of both operands, so every frozen layer (and the
//!   250,880-row head) would cost a second full-size product and a weight-sized gradient
//!   per step; this op only propagates to `x`.
//! - [`embedding`]: the token lookup, whose backward touches only the looked-up rows.
//! - [`gelu`], [`softmax`], [`layer_norm`]: one fused pass forward and one backward, rows in
//!   parallel; candle's versions are chains of single-threaded elementwise ops whose
//!   backward visits (and allocates) every link, which dominated a training step.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor};
use mananera_model::math;
use rayon::prelude::*;

/// `x` (`[n, in]`) times `weightᵀ` (`weight`: `[out, in]`) plus `bias`, with a gradient for
/// `x` only.
pub fn frozen_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenLinear {
        weight: weight.clone(),
        bias: bias.map(values).transpose()?,
    })
}

struct FrozenLinear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
}

/// An op's input as a tensor (a copy of its contiguous f32 data).
fn input_tensor(
    storage: &CpuStorage,
    layout: &Layout,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    Tensor::from_slice(f32_input(storage, layout)?, layout.shape(), device)
}

/// An op's output: `y` (rows of `bias.len()`) plus `bias` on every row.
fn with_bias(y: Tensor, bias: Option<&[f32]>) -> candle_core::Result<(CpuStorage, Shape)> {
    let shape = y.shape().clone();
    let mut out = y.flatten_all()?.to_vec1::<f32>()?;
    if let Some(bias) = bias {
        out.par_chunks_mut(bias.len()).for_each(|row| {
            row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        });
    }
    Ok((CpuStorage::F32(out), shape))
}

/// The contiguous f32 data of `t`, borrowed.
pub(super) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("expected a tensor on the CPU");
    };
    Ok(f(f32_input(storage, layout)?))
}

/// The contiguous f32 data of an op's input.
pub(super) fn f32_input<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("expected f32 input");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous input");
    };
    Ok(&data[start..end])
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = input_tensor(storage, layout, self.weight.device())?;
        with_bias(x.matmul(&self.weight.t()?)?, self.bias.as_deref())
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// A frozen linear layer with a LoRA adapter: `x Wᵀ + bias + scaling · (mask ⊙ x) Aᵀ Bᵀ`,
/// with gradients for `x`, `A` and `B` only. `mask` is LoRA dropout's (already scaled) mask.
pub struct LoraLinear<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scaling: f64,
    pub mask: Option<Vec<f32>>,
}

impl LoraLinear<'_> {
    /// Applies the layer to `x` (`[n, in]`).
    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mask = self
            .mask
            .map(|m| Tensor::from_vec(m, x.shape(), x.device()))
            .transpose()?;
        x.contiguous()?.apply_op3(
            &self.a.contiguous()?,
            &self.b.contiguous()?,
            LoraOp {
                weight: self.weight.clone(),
                bias: values(self.bias)?,
                scaling: self.scaling,
                mask,
            },
        )
    }
}

struct LoraOp {
    weight: Tensor,
    bias: Vec<f32>,
    scaling: f64,
    mask: Option<Tensor>,
}

impl LoraOp {
    fn dropped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.mask {
            Some(mask) => x * mask,
            None => Ok(x.clone()),
        }
    }
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dev = self.weight.device();
        let (x, a, b) = (
            input_tensor(s1, l1, dev)?,
            input_tensor(s2, l2, dev)?,
            input_tensor(s3, l3, dev)?,
        );
        let delta = (self.dropped(&x)?.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scaling)?;
        with_bias((x.matmul(&self.weight.t()?)? + delta)?, Some(&self.bias))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, grad) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let dropped = self.dropped(&x)?;
        let grad_b = grad.matmul(&b)?;
        let low = dropped.matmul(&a.t()?)?;
        let through_adapter = self.dropped(&(grad_b.matmul(&a)? * self.scaling)?)?;
        let dx = (grad.matmul(&self.weight)? + through_adapter)?;
        let da = (grad_b.t()?.matmul(&dropped)? * self.scaling)?;
        let db = (grad.t()?.matmul(&low)? * self.scaling)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// Rows `ids` of `table` (`[v, h]`): the token embedding lookup, `[ids.len(), h]`. Its
/// backward adds each position's gradient into its row of a zeroed table-sized gradient and
/// touches nothing else (candle's `index_select` backward writes a table-sized copy of zeros
/// first: a GB per step for bloom-560m).
pub fn embedding(table: &Tensor, ids: &[u32]) -> candle_core::Result<Tensor> {
    let (v, _) = table.dims2()?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= v) {
        candle_core::bail!("token {bad} is outside the embedding table of {v} rows");
    }
    table
        .contiguous()?
        .apply_op1(Embedding { ids: ids.to_vec() })
}

struct Embedding {
    ids: Vec<u32>,
}

impl CustomOp1 for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let table = f32_input(storage, layout)?;
        let (_, h) = layout.shape().dims2()?;
        let mut rows = vec![0f32; self.ids.len() * h];
        rows.par_chunks_mut(h)
            .zip(self.ids.par_iter())
            .for_each(|(row, &id)| row.copy_from_slice(&table[id as usize * h..][..h]));
        Ok((CpuStorage::F32(rows), Shape::from((self.ids.len(), h))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        _rows: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (v, h) = table.dims2()?;
        let grad = values(grad)?;
        let mut dtable = vec![0f32; v * h];
        for (&id, g) in self.ids.iter().zip(grad.chunks(h)) {
            dtable[id as usize * h..][..h]
                .iter_mut()
                .zip(g)
                .for_each(|(d, &g)| *d += g);
        }
        Ok(Some(Tensor::from_vec(dtable, (v, h), table.device())?))
    }
}

/// The f32 data of a tensor (copied), for a backward pass.
fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// BLOOM's GELU (the tanh approximation).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

/// Elements per parallel task of the elementwise ops.
const CHUNK: usize = 16 * 1024;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_input(storage, layout)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                math::vectorized(|| y.iter_mut().zip(x).for_each(|(y, &x)| *y = math::gelu(x)))
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (x_values, mut dx) = (values(x)?, values(grad)?);
        dx.par_chunks_mut(CHUNK)
            .zip(x_values.par_chunks(CHUNK))
            .for_each(|(dx, x)| {
                math::vectorized(|| {
                    dx.iter_mut()
                        .zip(x)
                        .for_each(|(g, &x)| *g *= math::gelu_grad(x))
                })
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Softmax over the last dimension of `scale · x + bias`, where `bias` (attention masks,
/// ALiBi) has the shape of `x`'s trailing dimensions and repeats over the leading ones.
pub fn softmax(x: &Tensor, scale: f32, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax {
        scale,
        bias: bias.map(values).transpose()?,
    })
}

struct Softmax {
    scale: f32,
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_input(storage, layout)?;
        let n = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let bias = self.bias.as_deref();
        if bias.is_some_and(|b| b.is_empty() || x.len() % b.len() != 0 || b.len() % n != 0) {
            candle_core::bail!(
                "softmax: the bias does not repeat over {:?}",
                layout.shape()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .enumerate()
            .for_each(|(r, (y, x))| {
                let b = bias.map(|b| &b[(r * n) % b.len()..][..n]);
                math::vectorized(|| {
                    match b {
                        Some(b) => y
                            .iter_mut()
                            .zip(x.iter().zip(b))
                            .for_each(|(y, (&x, &b))| *y = self.scale * x + b),
                        None => y.iter_mut().zip(x).for_each(|(y, &x)| *y = self.scale * x),
                    }
                    let max = math::max(y);
                    let inverse = 1.0 / math::exp_in_place(y, max) as f32;
                    y.iter_mut().for_each(|y| *y *= inverse);
                });
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = x.dims().last().copied().unwrap_or(1).max(1);
        let (y, g) = (values(y)?, values(grad)?);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(dx, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                    *dx = self.scale * y * (g - dot);
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// LayerNorm over the last dimension with gain and bias (as `torch.nn.LayerNorm`).
pub fn layer_norm(
    x: &Tensor,
    gain: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&gain.contiguous()?, &bias.contiguous()?, LayerNorm { eps })
}

struct LayerNorm {
    eps: f64,
}

/// Mean and 1/σ of one row (f64 sums).
fn moments(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, gain, bias) = (f32_input(s1, l1)?, f32_input(s2, l2)?, f32_input(s3, l3)?);
        let n = gain.len();
        if n == 0 || x.len() % n != 0 || bias.len() != n {
            candle_core::bail!(
                "layer norm: gain {n}, bias {} for rows of {:?}",
                bias.len(),
                l1.shape()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
            let (mean, rstd) = moments(x, self.eps);
            for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gain).zip(bias) {
                *y = (x - mean) * rstd * g + b;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gain: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = gain.elem_count();
        let (xs, gs, g) = (values(x)?, values(gain)?, values(grad)?);
        let mut dx = vec![0f32; xs.len()];
        // Per row: dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)), with dx̂ = g ⊙ gain.
        dx.par_chunks_mut(n)
            .zip(xs.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(dx, (x, g))| {
                let (mean, rstd) = moments(x, self.eps);
                let (mut sum, mut dot) = (0f32, 0f32);
                for ((&x, &g), &gain) in x.iter().zip(g).zip(&gs) {
                    let dxhat = g * gain;
                    sum += dxhat;
                    dot += dxhat * (x - mean) * rstd;
                }
                let (sum, dot) = (sum / n as f32, dot / n as f32);
                for (((dx, &x), &g), &gain) in dx.iter_mut().zip(x).zip(g).zip(&gs) {
                    let xhat = (x - mean) * rstd;
                    *dx = rstd * (g * gain - sum - xhat * dot);
                }
            });
        let mut dgain = vec![0f32; n];
        let mut dbias = vec![0f32; n];
        for (x, g) in xs.chunks(n).zip(g.chunks(n)) {
            let (mean, rstd) = moments(x, self.eps);
            for (i, (&x, &g)) in x.iter().zip(g).enumerate() {
                dgain[i] += g * (x - mean) * rstd;
                dbias[i] += g;
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgain, gain.shape(), dev)?),
            Some(Tensor::from_vec(dbias, gain.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;

    /// Gradients of `Σ w ⊙ f(x)` (random `w`) by the fused op and by candle's graph, equal
    /// up to f32 rounding relative to the values' size (sums run in another order).
    fn same_gradients(
        fused: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        generic: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        shape: (usize, usize, usize),
    ) -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape, &dev)?))?;
        let a = fused(x.as_tensor())?;
        let b = generic(x.as_tensor())?;
        let w = Tensor::randn(0f32, 1.0, a.shape(), &dev)?;
        let max = |t: Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
        let scale = max(b.clone())?.max(1.0);
        let forward = max((&a - &b)?)?;
        assert!(
            forward < 1e-5 * scale,
            "forward differs by {forward} (values up to {scale})"
        );
        let ga = (a * &w)?
            .sum_all()?
            .backward()?
            .get(x.as_tensor())
            .cloned()
            .unwrap();
        let gb = (b * &w)?
            .sum_all()?
            .backward()?
            .get(x.as_tensor())
            .cloned()
            .unwrap();
        let gscale = max(gb.clone())?.max(1.0);
        let diff = max((ga - gb)?)?;
        assert!(
            diff < 1e-5 * gscale,
            "gradients differ by {diff} (values up to {gscale})"
        );
        Ok(())
    }

    #[test]
    fn fused_elementwise_ops_equal_candles_graph() -> candle_core::Result<()> {
        same_gradients(gelu, |x| x.gelu(), (2, 3, 50))?;
        let dev = Device::Cpu;
        let mask = Tensor::randn(0f32, 1.0, (3, 50), &dev)?;
        same_gradients(
            |x| softmax(x, 0.5, Some(&mask)),
            |x| candle_nn::ops::softmax(&(x * 0.5)?.broadcast_add(&mask)?, D::Minus1),
            (2, 3, 50),
        )?;
        let w = Tensor::randn(0f32, 1.0, (7, 50), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 7, &dev)?;
        same_gradients(
            |x| frozen_linear(&x.reshape((6, 50))?, &w, Some(&b))?.reshape((2, 3, 7)),
            |x| {
                x.reshape((6, 50))?
                    .matmul(&w.t()?)?
                    .broadcast_add(&b)?
                    .reshape((2, 3, 7))
            },
            (2, 3, 50),
        )?;
        let gain = Var::from_tensor(&Tensor::randn(1f32, 0.3, 50, &dev)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 0.3, 50, &dev)?)?;
        same_gradients(
            |x| layer_norm(x, gain.as_tensor(), bias.as_tensor(), 1e-5),
            |x| candle_nn::ops::layer_norm_slow(x, gain.as_tensor(), bias.as_tensor(), 1e-5),
            (2, 3, 50),
        )?;
        // The embedding lookup, repeated ids included.
        let table = Var::from_tensor(&Tensor::randn(0f32, 1.0, (9, 4), &dev)?)?;
        let ids = [3u32, 0, 3, 8, 1];
        let w = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let ours = (embedding(table.as_tensor(), &ids)? * &w)?
            .sum_all()?
            .backward()?;
        let id_tensor = Tensor::new(&ids, &dev)?;
        let theirs = (table.as_tensor().index_select(&id_tensor, 0)? * &w)?
            .sum_all()?
            .backward()?;
        let diff = (ours.get(table.as_tensor()).unwrap() - theirs.get(table.as_tensor()).unwrap())?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "embedding gradients differ by {diff}");
        assert!(embedding(table.as_tensor(), &[9]).is_err());
        // LoRA with dropout: the input, A and B gradients.
        let weight = Tensor::randn(0f32, 1.0, (7, 50), &dev)?;
        let lora_bias = Tensor::randn(0f32, 1.0, 7, &dev)?;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 50), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 3), &dev)?)?;
        let mask: Vec<f32> = (0..300)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
            .collect();
        let mask_t = Tensor::from_slice(&mask, (6, 50), &dev)?;
        let lora = |x: &Tensor| {
            LoraLinear {
                weight: &weight,
                bias: &lora_bias,
                a: a.as_tensor(),
                b: b.as_tensor(),
                scaling: 2.0,
                mask: Some(mask.clone()),
            }
            .forward(&x.reshape((6, 50))?)
        };
        let graph = |x: &Tensor| {
            let x = x.reshape((6, 50))?;
            let base = x.matmul(&weight.t()?)?.broadcast_add(&lora_bias)?;
            let delta = (&x * &mask_t)?
                .matmul(&a.as_tensor().t()?)?
                .matmul(&b.as_tensor().t()?)?;
            base + (delta * 2.0)?
        };
        same_gradients(lora, graph, (2, 3, 50))?;
        let x = Tensor::randn(0f32, 1.0, (6, 50), &dev)?;
        let fused = lora(&x)?.sum_all()?.backward()?;
        let generic = graph(&x)?.sum_all()?.backward()?;
        for var in [&a, &b] {
            let theirs = generic.get(var.as_tensor()).unwrap();
            let d = (fused.get(var.as_tensor()).unwrap() - theirs)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let scale = theirs
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                .max(1.0);
            assert!(
                d < 1e-5 * scale,
                "LoRA gradient differs by {d} (values up to {scale})"
            );
        }
        // The gain and bias gradients too.
        let x = Tensor::randn(0f32, 2.0, (4, 50), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (4, 50), &dev)?;
        let fused = (layer_norm(&x, gain.as_tensor(), bias.as_tensor(), 1e-5)? * &w)?
            .sum_all()?
            .backward()?;
        let generic =
            (candle_nn::ops::layer_norm_slow(&x, gain.as_tensor(), bias.as_tensor(), 1e-5)? * &w)?
                .sum_all()?
                .backward()?;
        for var in [&gain, &bias] {
            let theirs = generic.get(var.as_tensor()).unwrap();
            let d = (fused.get(var.as_tensor()).unwrap() - theirs)?
                .abs()?
                .max(0)?
                .to_scalar::<f32>()?;
            let scale = theirs.abs()?.max(0)?.to_scalar::<f32>()?.max(1.0);
            assert!(d < 1e-5 * scale, "gain/bias gradient differs by {d}");
        }
        Ok(())
    }
}
