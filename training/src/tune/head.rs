//! The language-model head and its loss as one operation: the logits of a micro-batch
//! (`[n, vocab]`, a quarter of a GB for bloom-560m's 250,880 rows and 255 positions) go into
//! one buffer kept for the whole run instead of fresh pages every step, the softmax and its
//! gradient are computed in place, and the gradient for the hidden states comes out of the
//! forward pass, so nothing vocabulary-wide but the buffer outlives it. A frozen head (LoRA
//! keeps the tied embeddings frozen) needs two matrix products; a trained one (a full
//! fine-tune) a third, in its backward pass, for the head's own gradient.
//!
//! With a corpus [`Vocabulary`] (`engine.vocabulary`, the trimmed head the engine serves)
//! the head has only the kept rows: the loss is the softmax over the kept tokens, which is
//! exactly what the served model can produce.

use std::cell::RefCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::TrainError;
use mananera_model::math::{self, log_sum_exp};

use super::ops::{f32_input, with_data};

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
    check_targets(hidden, targets)?;
    hidden.contiguous()?.apply_op1(FrozenHeadLoss {
        pass: HeadPass::new(head, targets, with_grad)?,
    })
}

/// [`frozen_head_loss`] for a trained head (a full fine-tune): the backward pass also
/// gives the head's gradient, `Σᵢ gᵢ · dlogitsᵢᵀ hiddenᵢ`, from the softmax gradient the
/// forward pass left in the logits buffer, in one product written straight into the
/// gradient (candle's matmul backward takes it through two transposed copies).
pub fn trained_head_loss(
    hidden: &Tensor,
    head: &Tensor,
    targets: &[u32],
) -> candle_core::Result<Tensor> {
    check_targets(hidden, targets)?;
    hidden.contiguous()?.apply_op2(
        &head.contiguous()?,
        TrainedHeadLoss {
            pass: HeadPass::new(head, targets, true)?,
        },
    )
}

fn check_targets(hidden: &Tensor, targets: &[u32]) -> candle_core::Result<()> {
    let (n, _) = hidden.dims2()?;
    if targets.len() != n {
        candle_core::bail!("{} targets for {n} rows", targets.len());
    }
    Ok(())
}

thread_local! {
    /// The logits buffer, kept between steps so its pages are mapped once per run, and
    /// which pass last wrote it (a trained head's backward reads the softmax gradient left
    /// there). One per thread: a pass's forward and backward run on the thread that trains.
    static LOGITS: RefCell<Logits> = const {
        RefCell::new(Logits {
            data: Vec::new(),
            pass: 0,
        })
    };
}

struct Logits {
    data: Vec<f32>,
    pass: u64,
}

/// Numbers the passes, so a backward pass can tell its forward pass's logits from later ones.
static PASSES: AtomicU64 = AtomicU64::new(1);

/// One forward pass through the head: what it needs and what it leaves for its backward.
struct HeadPass {
    head: Tensor,
    targets: Vec<u32>,
    with_grad: bool,
    id: u64,
    /// `d loss_i / d hidden_i` for each row (unit upstream gradient), from the forward pass.
    dx: Mutex<Option<Vec<f32>>>,
}

impl HeadPass {
    fn new(head: &Tensor, targets: &[u32], with_grad: bool) -> candle_core::Result<Self> {
        Ok(Self {
            head: head.contiguous()?,
            targets: targets.to_vec(),
            with_grad,
            id: PASSES.fetch_add(1, Ordering::Relaxed),
            dx: Mutex::new(None),
        })
    }

    /// The op's output: the per-row losses of the hidden states in `storage`.
    fn losses(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h) = layout.shape().dims2()?;
        let losses = self.forward(f32_input(storage, layout)?, n, h)?;
        Ok((CpuStorage::F32(losses), Shape::from(n)))
    }

    /// The per-row losses of `x` (`[n, h]`); with a gradient, the logits buffer is left
    /// holding `softmax − one-hot` and `dx` is set.
    fn forward(&self, x: &[f32], n: usize, h: usize) -> candle_core::Result<Vec<f32>> {
        let (v, head_h) = self.head.dims2()?;
        if head_h != h {
            candle_core::bail!("head rows of {head_h} for hidden states of {h}");
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("target row {bad} is outside the head of {v}");
        }
        LOGITS.with_borrow_mut(|logits| {
            logits.pass = self.id;
            logits.data.resize(n * v, 0.0);
            self.scores(x, &mut logits.data[..n * v], (n, h, v))
        })
    }

    /// The losses (and, with a gradient, `dx` and the softmax gradient in `logits`).
    fn scores(
        &self,
        x: &[f32],
        logits: &mut [f32],
        (n, h, v): (usize, usize, usize),
    ) -> candle_core::Result<Vec<f32>> {
        with_data(&self.head, |w| {
            // logits = x · headᵀ: headᵀ's element (p, j) is head[j·h + p].
            matmul(logits, (x, 1, h), (w, h, 1), (n, v, h));
        })?;
        let with_grad = self.with_grad;
        let losses: Vec<f32> = logits
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
                matmul(&mut dx, (logits, 1, v), (w, 1, h), (n, h, v));
            })?;
            *self.dx.lock().unwrap_or_else(|p| p.into_inner()) = Some(dx);
        }
        Ok(losses)
    }

    /// The hidden states' gradient for the upstream gradient `grad` (one value per row).
    fn dx(&self, hidden: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h) = hidden.dims2()?;
        let Some(mut dx) = self.dx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            candle_core::bail!("the head's loss was computed without its gradient (evaluation)");
        };
        scale_rows(&mut dx, h, grad)?;
        Tensor::from_vec(dx, (n, h), hidden.device())
    }
}

/// Multiplies each row (of `width` values) of `data` by its upstream gradient in `grad`.
fn scale_rows(data: &mut [f32], width: usize, grad: &Tensor) -> candle_core::Result<()> {
    let upstream = grad.to_vec1::<f32>()?;
    data.par_chunks_mut(width)
        .zip(upstream.par_iter())
        .for_each(|(row, &g)| row.iter_mut().for_each(|x| *x *= g));
    Ok(())
}

/// `dst[m×n] = lhs · rhs`, each operand given as `(data, column stride, row stride)` of its
/// `m×k` / `k×n` matrix; `dst` is row-major.
fn matmul(
    dst: &mut [f32],
    (lhs, lhs_cs, lhs_rs): (&[f32], usize, usize),
    (rhs, rhs_cs, rhs_rs): (&[f32], usize, usize),
    (m, n, k): (usize, usize, usize),
) {
    let last = |rows: usize, cols: usize, cs: usize, rs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(m > 0 && n > 0 && k > 0 && dst.len() >= m * n);
    assert!(lhs.len() > last(m, k, lhs_cs, lhs_rs) && rhs.len() > last(k, n, rhs_cs, rhs_rs));
    // SAFETY: dst is m×n row-major, and every element of lhs (m×k) and rhs (k×n) at the
    // given strides lies inside its slice (checked above).
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
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

struct FrozenHeadLoss {
    pass: HeadPass,
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
        self.pass.losses(storage, layout)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        self.pass.dx(hidden, grad).map(Some)
    }
}

struct TrainedHeadLoss {
    pass: HeadPass,
}

impl CustomOp2 for TrainedHeadLoss {
    fn name(&self) -> &'static str {
        "trained-head-loss"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
        _head: &CpuStorage,
        _head_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.pass.losses(storage, layout)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, h) = hidden.dims2()?;
        let (v, _) = head.dims2()?;
        // Each row's hidden state times its upstream gradient.
        let mut scaled = hidden.flatten_all()?.to_vec1::<f32>()?;
        scale_rows(&mut scaled, h, grad)?;
        let stale = LOGITS.with_borrow(|logits| logits.pass != self.pass.id);
        if stale {
            // Another pass (an evaluation, another micro-batch) ran in between: compute this
            // one's softmax gradient again.
            with_data(hidden, |x| self.pass.forward(x, n, h))??;
        }
        let dhead = LOGITS.with_borrow(|logits| {
            // d head = dlogitsᵀ · scaled: dlogitsᵀ's element (j, p) is dlogits[p·v + j].
            let mut dhead = vec![0f32; v * h];
            matmul(&mut dhead, (&logits.data, v, 1), (&scaled, 1, h), (v, h, n));
            dhead
        });
        let dhead = Tensor::from_vec(dhead, (v, h), head.device())?;
        Ok((Some(self.pass.dx(hidden, grad)?), Some(dhead)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Both heads' losses and gradients equal candle's log-softmax graph's, with an
    /// upstream gradient that differs per row; a trained head's too when another pass
    /// overwrote its logits before its backward.
    #[test]
    fn both_heads_equal_candles_generic_graph() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 7), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (11, 7), &dev)?)?;
        let targets = [3u32, 0, 10, 7, 1];
        let weights = Tensor::new(&[0.5f32, -1.0, 2.0, 0.25, 1.5], &dev)?;
        let logp = candle_nn::ops::log_softmax(&x.matmul(&w.t()?)?, D::Minus1)?;
        let ids = Tensor::new(&targets, &dev)?.unsqueeze(1)?;
        let theirs = (logp.gather(&ids, 1)?.squeeze(1)?.neg()? * &weights)?.sum_all()?;
        let their_grads = theirs.backward()?;
        let overwritten = trained_head_loss(x.as_tensor(), w.as_tensor(), &targets)?;
        let frozen = frozen_head_loss(x.as_tensor(), w.as_tensor(), &targets, true)?;
        // A pass with other targets in between leaves other logits behind.
        let _other = frozen_head_loss(x.as_tensor(), w.as_tensor(), &[0, 0, 0, 0, 0], true)?;
        let latest = trained_head_loss(x.as_tensor(), w.as_tensor(), &targets)?;
        for (name, ours, trained) in [
            ("frozen", frozen, false),
            ("trained", latest, true),
            ("trained, logits overwritten", overwritten, true),
        ] {
            let ours = (ours * &weights)?.sum_all()?;
            let (a, b) = (ours.to_scalar::<f32>()?, theirs.to_scalar::<f32>()?);
            assert!((a - b).abs() < 1e-5, "{name}: {a} vs {b}");
            let grads = ours.backward()?;
            let dx = (grads.get(x.as_tensor()).unwrap() - their_grads.get(x.as_tensor()).unwrap())?;
            assert!(
                max_abs(&dx) < 1e-5,
                "{name}: hidden gradients differ by {}",
                max_abs(&dx)
            );
            match grads.get(w.as_tensor()) {
                Some(dw) => {
                    assert!(trained, "{name}: a frozen head got a gradient");
                    let diff = (dw - their_grads.get(w.as_tensor()).unwrap())?;
                    assert!(
                        max_abs(&diff) < 1e-5,
                        "{name}: head gradients differ by {}",
                        max_abs(&diff)
                    );
                }
                None => assert!(!trained, "{name}: the trained head got no gradient"),
            }
        }
        Ok(())
    }
}
