//! Two operations with hand-written backward passes, where candle's generic graph does
//! needless work:
//!
//! - [`frozen_linear`]: `x Wᵀ` for a weight that is not trained. candle's matmul backward
//!   always computes the gradient of both operands, so every frozen layer (and the
//!   250,880-row head) would cost a second full-size product and a weight-sized gradient
//!   per step; this op only propagates to `x`.
//! - [`cross_entropy`]: mean next-token loss straight from the logits, one pass per row in
//!   parallel, instead of a log-softmax graph that keeps four vocabulary-wide copies alive.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `x` (`[n, in]`) times `weightᵀ` (`weight`: `[out, in]`), with a gradient for `x` only.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op1(FrozenLinear {
        weight: weight.clone(),
    })
}

struct FrozenLinear {
    weight: Tensor,
}

/// The contiguous f32 data of an op's input.
fn f32_input<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
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
        let x = Tensor::from_slice(
            f32_input(storage, layout)?,
            layout.shape(),
            self.weight.device(),
        )?;
        let y = x.matmul(&self.weight.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// Mean over rows of `-log softmax(logits[i])[targets[i]]`; `logits` is `[n, vocab]`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!("{} targets for {n} rows of logits", targets.len());
    }
    logits
        .contiguous()?
        .apply_op1(CrossEntropy {
            targets: targets.to_vec(),
        })?
        .mean_all()
}

struct CrossEntropy {
    targets: Vec<u32>,
}

/// `(max, log Σ exp(x - max))` of one row.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (max, sum.ln() as f32)
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = f32_input(storage, layout)?;
        let (n, v) = layout.shape().dims2()?;
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("target token {bad} is outside the vocabulary of {v}");
        }
        let losses: Vec<f32> = data
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &target)| {
                let (max, lse) = log_sum_exp(row);
                max + lse - row[target as usize]
            })
            .collect();
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, v) = logits.dims2()?;
        let data = logits.flatten_all()?.to_vec1::<f32>()?;
        let upstream = grad.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v)
            .zip(data.par_chunks(v))
            .zip(self.targets.par_iter().zip(upstream.par_iter()))
            .for_each(|((out, row), (&target, &g))| {
                let (max, lse) = log_sum_exp(row);
                for (o, &x) in out.iter_mut().zip(row) {
                    *o = g * (x - max - lse).exp();
                }
                out[target as usize] -= g;
            });
        Ok(Some(Tensor::from_vec(out, (n, v), logits.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;

    #[test]
    fn both_ops_equal_candles_generic_graph() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 7), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (11, 7), &dev)?;
        let targets = [3u32, 0, 10, 7, 1];
        let ours = cross_entropy(&frozen_linear(x.as_tensor(), &w)?, &targets)?;
        let logits = x.as_tensor().matmul(&w.t()?)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let ids = Tensor::new(&targets, &dev)?.unsqueeze(1)?;
        let theirs = logp.gather(&ids, 1)?.mean_all()?.neg()?;
        let (a, b) = (ours.to_scalar::<f32>()?, theirs.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let ga = ours.backward()?.get(x.as_tensor()).cloned().unwrap();
        let gb = theirs.backward()?.get(x.as_tensor()).cloned().unwrap();
        let diff = (ga - gb)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "gradients differ by {diff}");
        Ok(())
    }
}
