//! BLOOM's tanh-approximated GELU, vectorised and parallel.
//!
//! `0.5·x·(1 + tanh(z))` with `z = √(2/π)·(x + 0.044715·x³)` equals `x / (1 + e^(−2z))`; the
//! exponential is a branch-free polynomial the compiler can vectorise (libm's `tanhf`, which
//! candle's `gelu` calls per element, cannot be), accurate to a few ulp.

use super::parallel::for_each_chunk_mut;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// GELU (tanh approximation) of an f32 tensor.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Gelu)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            bail!("gelu needs f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("gelu needs a contiguous input")
        };
        let x = &x[start..end];
        let mut y = vec![0f32; x.len()];
        for_each_chunk_mut(&mut y, CHUNK, |i, y| {
            gelu_slice(&x[i * CHUNK..][..y.len()], y)
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

fn gelu_slice(x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        return unsafe { gelu_slice_avx2(x, y) };
    }
    gelu_slice_generic(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_slice_avx2(x: &[f32], y: &mut [f32]) {
    gelu_slice_generic(x, y)
}

#[inline(always)]
fn gelu_slice_generic(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gelu_one(x);
    }
}

#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let z = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * z))
}

/// `e^x` by range reduction to `[−ln2/2, ln2/2]` and a degree-6 polynomial; saturates to
/// 0 / +∞-like values outside the f32 range instead of branching.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_reference_formula() {
        let xs: Vec<f32> = (-4000..4000)
            .map(|i| i as f32 / 200.0)
            .chain([-100.0, 100.0, 0.0])
            .collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let got = gelu(&t).unwrap().to_vec1::<f32>().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let x = *x as f64;
            let want =
                0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x)).tanh());
            assert!(
                (g as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn exp_is_accurate_over_the_range_used() {
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            assert!(rel < 5e-7, "exp({x}): relative error {rel}");
        }
    }
}
