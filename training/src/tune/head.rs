//! The language-model head and its loss as one operation, for a head that is not trained
//! (LoRA keeps the tied embeddings frozen): the logits of a micro-batch (`[n, vocab]`, a
//! quarter of a GB for bloom-560m's 250,880 rows and 255 positions) go into one buffer kept
//! for the whole run instead of fresh pages every step, the softmax and its gradient are
//! computed in place, and the gradient for the hidden states comes out of the forward pass,
//! so nothing vocabulary-wide outlives it. Two matrix products, as before; no copies.
//!
//! With a corpus [`Vocabulary`] (`engine.vocabulary`, the trimmed head the engine serves)
//! the head has only the kept rows: the loss is the softmax over the kept tokens, which is
//! exactly what the served model can produce.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::TrainError;
use mananera_model::math::{self, log_sum_exp};

use super::ops::f32_input;

/// The tokens a trimmed head keeps: sorted, distinct token ids; a head row per id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    ids: Vec<u32>,
}

impl Vocabulary {
    /// `ids` (sorted and distinct, as `mananera vocab` writes them) of a model with
    /// `vocab_size` tokens.
    pub fn new(ids: Vec<u32>, vocab_size: usize) -> Result<Self, TrainError> {
        if ids.is_empty() {
            return Err(TrainError::Config(
                "the vocabulary (engine.vocabulary) keeps no token; write it again with `mananera vocab`".into(),
            ));
        }
        if let Some(pair) = ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(TrainError::Config(format!(
                "the vocabulary's ids are not sorted and distinct (at {} then {}); write it again with `mananera vocab`",
                pair[0], pair[1]
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(TrainError::Config(format!(
                "the vocabulary has token {bad}, outside this model's {vocab_size}; write it again for this model"
            )));
        }
        Ok(Self { ids })
    }

    /// The kept token ids, in head-row order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The head row of `token`, if it is kept.
    pub fn column(&self, token: u32) -> Option<u32> {
        self.ids.binary_search(&token).ok().map(|c| c as u32)
    }
}

/// Per-row next-token losses of `hidden` (`[n, h]`) under the frozen `head` (`[v, h]`),
/// `targets` being head rows: `-log softmax(hidden headᵀ)[target]`. With `with_grad`, the
/// gradient for `hidden` is computed in the same pass (for training; evaluation leaves it).
pub fn frozen_head_loss(
    hidden: &Tensor,
    head: &Tensor,
    targets: &[u32],
    with_grad: bool,
) -> candle_core::Result<Tensor> {
    let (n, _) = hidden.dims2()?;
    if targets.len() != n {
        candle_core::bail!("{} targets for {n} rows", targets.len());
    }
    hidden.contiguous()?.apply_op1(FrozenHeadLoss {
        head: head.contiguous()?,
        targets: targets.to_vec(),
        with_grad,
        dx: Mutex::new(None),
    })
}

/// The logits buffer, kept between steps so its pages are mapped once per run.
static LOGITS: Mutex<Vec<f32>> = Mutex::new(Vec::new());

struct FrozenHeadLoss {
    head: Tensor,
    targets: Vec<u32>,
    with_grad: bool,
    /// `d loss_i / d hidden_i` for each row (unit upstream gradient), from the forward pass.
    dx: Mutex<Option<Vec<f32>>>,
}

/// The contiguous f32 data of `t`, borrowed.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("expected an f32 tensor on the CPU");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor");
    };
    Ok(f(&data[start..end]))
}

/// `dst[m×n] = lhs[m×k] · rhs`, where `rhs` is given by its strides (row-major operands).
fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    (rhs_cs, rhs_rs): (isize, isize),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= n * k);
    // SAFETY: dst is m×n row-major, lhs m×k row-major, and rhs's k×n elements at the given
    // strides lie inside `rhs` (checked above for the two layouts used here).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

impl CustomOp1 for FrozenHeadLoss {
    fn name(&self) -> &'static str {
        "frozen-head-loss"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_input(storage, layout)?;
        let (n, h) = layout.shape().dims2()?;
        let (v, head_h) = self.head.dims2()?;
        if head_h != h {
            candle_core::bail!("head rows of {head_h} for hidden states of {h}");
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("target row {bad} is outside the head of {v}");
        }
        let mut logits = LOGITS.lock().unwrap_or_else(|p| p.into_inner());
        logits.resize(n * v, 0.0);
        with_data(&self.head, |w| {
            // logits = x · headᵀ: headᵀ's element (p, j) is head[j·h + p].
            matmul(&mut logits, x, w, (n, v, h), (h as isize, 1));
        })?;
        let with_grad = self.with_grad;
        let losses: Vec<f32> = logits[..n * v]
            .par_chunks_mut(v)
            .zip(self.targets.par_iter())
            .map(|(row, &target)| {
                let picked = row[target as usize];
                if !with_grad {
                    let (max, lse) = math::vectorized(|| log_sum_exp(row));
                    return max + lse - picked;
                }
                // d loss / d logits = softmax − one-hot.
                let (max, sum) = math::vectorized(|| {
                    let max = math::max(row);
                    let sum = math::exp_in_place(row, max);
                    let inverse = 1.0 / sum as f32;
                    row.iter_mut().for_each(|z| *z *= inverse);
                    (max, sum)
                });
                row[target as usize] -= 1.0;
                max + sum.ln() as f32 - picked
            })
            .collect();
        if with_grad {
            let mut dx = vec![0f32; n * h];
            with_data(&self.head, |w| {
                // dx = dlogits · head.
                matmul(&mut dx, &logits[..n * v], w, (n, h, v), (1, h as isize));
            })?;
            *self.dx.lock().unwrap_or_else(|p| p.into_inner()) = Some(dx);
        }
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, h) = hidden.dims2()?;
        let Some(mut dx) = self.dx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            candle_core::bail!("the head's loss was computed without its gradient (evaluation)");
        };
        let upstream = grad.to_vec1::<f32>()?;
        dx.par_chunks_mut(h)
            .zip(upstream.par_iter())
            .for_each(|(row, &g)| row.iter_mut().for_each(|d| *d *= g));
        Ok(Some(Tensor::from_vec(dx, (n, h), hidden.device())?))
    }
}
