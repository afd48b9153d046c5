//! BLOOM's tanh-approximated GELU, vectorised and parallel.
//!
//! The arithmetic is `mananera_model::math::gelu` (training's too), vectorised for the widest
//! vector unit the CPU has; candle's `gelu` calls libm's `tanhf` per element.

use super::parallel::for_each_chunk_mut;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use mananera_model::math;

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
    math::vectorized(|| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = math::gelu(x);
        }
    })
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
}
