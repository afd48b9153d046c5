//! The optimizer and its schedule, written out so that their state can be saved and resumed:
//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias correction), the
//! warm-up + decay schedules of transformers, and `clip_grad_norm_`.

use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ops::with_data;

/// How the learning rate moves over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up, then half a cosine down to 0 (`get_cosine_schedule_with_warmup`).
    Cosine,
    /// Linear warm-up, then linearly down to 0 (`get_linear_schedule_with_warmup`).
    Linear,
    /// Linear warm-up, then constant.
    Constant,
}

impl Schedule {
    /// The factor on the peak learning rate for optimizer step `step` (0-based) of `total`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let after = (step - warmup) as f64;
        let span = total.saturating_sub(warmup).max(1) as f64;
        match self {
            Schedule::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * after / span).cos())).max(0.0)
            }
            Schedule::Linear => ((total as f64 - step as f64) / span).max(0.0),
            Schedule::Constant => 1.0,
        }
    }

    /// The factor for a budgeted run at step `step` of at most `total`, `time` being the
    /// share of its time budget spent (0 without one): past warm-up the schedule follows
    /// whichever of the steps and the time is further along, so it ends near 0 when the
    /// budget does.
    pub fn factor_at(self, step: usize, warmup: usize, total: usize, time: f64) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let by_steps = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
        let progress = by_steps.max(time).clamp(0.0, 1.0);
        match self {
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Schedule::Linear => 1.0 - progress,
            Schedule::Constant => 1.0,
        }
    }
}

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW with its moments, one pair per trainable tensor, in the order given at creation.
/// The moments are plain vectors updated in place, and the weights are rewritten in row
/// chunks: a full fine-tune of bloom-560m holds no weight-sized temporaries.
pub struct AdamW {
    params: AdamWParams,
    vars: Vec<Var>,
    first: Vec<Vec<f32>>,
    second: Vec<Vec<f32>>,
    /// Steps taken so far.
    step: usize,
}

/// Elements updated per chunk of rows.
const CHUNK: usize = 1 << 20;

impl AdamW {
    /// Fresh moments (zero) for `vars`.
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> candle_core::Result<Self> {
        let first: Vec<Vec<f32>> = vars.iter().map(|v| vec![0f32; v.elem_count()]).collect();
        let second = first.clone();
        Ok(Self {
            params,
            vars,
            first,
            second,
            step: 0,
        })
    }

    /// Continues from saved moments (same order and shapes as `vars`).
    pub fn resume(
        vars: Vec<Var>,
        params: AdamWParams,
        first: Vec<Tensor>,
        second: Vec<Tensor>,
        step: usize,
    ) -> candle_core::Result<Self> {
        if first.len() != vars.len() || second.len() != vars.len() {
            candle_core::bail!(
                "saved optimizer state has {} tensors, the model trains {}",
                first.len(),
                vars.len()
            );
        }
        for ((var, m), v) in vars.iter().zip(&first).zip(&second) {
            if m.dims() != var.dims() || v.dims() != var.dims() {
                candle_core::bail!(
                    "saved optimizer moments {:?}/{:?} do not fit a tensor of shape {:?}",
                    m.dims(),
                    v.dims(),
                    var.dims()
                );
            }
        }
        let flat = |ts: Vec<Tensor>| -> candle_core::Result<Vec<Vec<f32>>> {
            ts.iter()
                .map(|t| t.flatten_all()?.to_vec1::<f32>())
                .collect()
        };
        Ok(Self {
            params,
            first: flat(first)?,
            second: flat(second)?,
            vars,
            step,
        })
    }

    /// Steps taken so far (the bias-correction count).
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The first and second moments as tensors shaped like their weights, for saving.
    pub fn moments(&self) -> candle_core::Result<(Vec<Tensor>, Vec<Tensor>)> {
        let shaped = |all: &[Vec<f32>]| -> candle_core::Result<Vec<Tensor>> {
            all.iter()
                .zip(&self.vars)
                .map(|(m, var)| Tensor::from_slice(m, var.shape(), var.device()))
                .collect()
        };
        Ok((shaped(&self.first)?, shaped(&self.second)?))
    }

    /// One update with learning rate `lr` from `grads` (same order as the vars), as
    /// `torch.optim.AdamW`: decay, moments, bias-corrected step, on `grads` times
    /// `grad_scale` (gradient clipping's factor, see [`clip_factor`]).
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f32) -> candle_core::Result<()> {
        self.step += 1;
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let t = self.step as i32;
        let step_size = (lr / (1.0 - beta1.powi(t))) as f32;
        let correction2_sqrt = (1.0 - beta2.powi(t)).sqrt() as f32;
        let decay = (1.0 - lr * weight_decay) as f32;
        let (b1, b2, eps) = (beta1 as f32, beta2 as f32, eps as f32);
        for (i, (var, grad)) in self.vars.iter().zip(grads).enumerate() {
            let weight = var.as_tensor();
            let grad = grad.contiguous()?;
            if grad.elem_count() != weight.elem_count() {
                candle_core::bail!(
                    "a gradient of shape {:?} for a tensor of shape {:?}",
                    grad.dims(),
                    weight.dims()
                );
            }
            let rows = weight.dims().first().copied().unwrap_or(1).max(1);
            let row_len = weight.elem_count() / rows;
            let per_chunk = (CHUNK / row_len.max(1)).max(1);
            let mut row = 0;
            while row < rows {
                let n = per_chunk.min(rows - row);
                let mut p = weight.narrow(0, row, n)?.flatten_all()?.to_vec1::<f32>()?;
                let range = row * row_len..(row + n) * row_len;
                let m = &mut self.first[i][range.clone()];
                let v = &mut self.second[i][range.clone()];
                with_data(&grad, |g| {
                    p.par_iter_mut()
                        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
                        .zip(g[range].par_iter())
                        .for_each(|((p, (m, v)), &g)| {
                            let g = g * grad_scale;
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            let denom = v.sqrt() / correction2_sqrt + eps;
                            *p = *p * decay - step_size * *m / denom;
                        })
                })?;
                let mut dims = weight.dims().to_vec();
                if let Some(first) = dims.first_mut() {
                    *first = n;
                }
                weight.slice_set(&Tensor::from_vec(p, dims, weight.device())?, 0, row)?;
                row += n;
            }
        }
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_` without rewriting the gradients: their global L2
/// norm, and the factor `max / (norm + 1e-6)` (at most 1) that bounds it by `max_norm`,
/// for [`AdamW::step`] to apply. `max_norm` 0 only measures (factor 1).
pub fn clip_factor(grads: &[Tensor], max_norm: f64) -> candle_core::Result<(f64, f32)> {
    let mut sum = 0f64;
    for grad in grads {
        sum += with_data(&grad.contiguous()?, |g| {
            g.par_chunks(CHUNK)
                .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
                .sum::<f64>()
        })?;
    }
    let norm = sum.sqrt();
    let coef = max_norm / (norm + 1e-6);
    let factor = if max_norm > 0.0 && coef < 1.0 {
        coef as f32
    } else {
        1.0
    };
    Ok((norm, factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // Values of transformers' schedule functions for warmup 2, total 6.
        let cosine: Vec<f64> = (0..6).map(|s| Schedule::Cosine.factor(s, 2, 6)).collect();
        let expected = [
            0.0,
            0.5,
            1.0,
            0.853_553_390_593_273_8,
            0.5,
            0.146_446_609_406_726_2,
        ];
        for (got, want) in cosine.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{cosine:?}");
        }
        let linear: Vec<f64> = (0..6).map(|s| Schedule::Linear.factor(s, 2, 6)).collect();
        assert_eq!(linear, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        assert_eq!(Schedule::Constant.factor(5, 2, 6), 1.0);
        assert_eq!(Schedule::Cosine.factor(0, 0, 4), 1.0);
    }

    #[test]
    fn clipping_scales_to_the_bound() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let grads = vec![
            Tensor::new(&[3f32, 0.0], &dev)?,
            Tensor::new(&[4f32], &dev)?,
        ];
        let (norm, factor) = clip_factor(&grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((3.0 * factor - 0.6).abs() < 1e-5, "{factor}");
        assert_eq!(clip_factor(&grads, 10.0)?.1, 1.0);
        assert_eq!(clip_factor(&grads, 0.0)?.1, 1.0);
        Ok(())
    }
}
