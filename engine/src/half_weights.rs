//! 16-bit weights (`engine.quantization = "f16"`): the matrices held as IEEE half floats,
//! half the bytes of f32, and every product computed in f32.
//!
//! Decoding is bound by the bytes it reads, so the streaming kernel converts each weight
//! row to f32 in registers as it reads it (AVX-512F or F16C `vcvtph2ps`, chosen at run time;
//! a portable loop elsewhere). Prefill converts a slice of weight rows at a time into an f32
//! buffer and hands it to the same tiled gemm as the f32 path.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use half::f16;

#[cfg(target_arch = "x86_64")]
use super::gemv::sum_lanes;
use super::gemv::{MAX_STREAMING_ROWS, ROWS_PER_TASK, dot_lanes, gemm_rows, tiled_rows, transpose};
use super::parallel::for_each_chunk_mut;

/// A `[n, k]` weight matrix of half floats.
#[derive(Debug)]
pub struct HalfMatrix {
    data: Vec<f16>,
    n: usize,
    k: usize,
}

impl HalfMatrix {
    /// Rounds an f32 `[n, k]` weight to half floats. A weight beyond f16's range (±65504) is
    /// refused: it would become infinite.
    pub fn from_f32(w: &Tensor) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = values.iter().find(|v| v.abs() > f16::MAX.to_f32()) {
            bail!(
                "a weight of {bad} is beyond the 16-bit range (±65504): use engine.quantization = \"none\" or \"q8_0\" for this checkpoint"
            );
        }
        let data = values.iter().map(|&v| f16::from_f32(v)).collect();
        Ok(Self { data, n, k })
    }

    /// Rows `ids` as f32 (the embedding lookup of a tied embedding/head).
    pub fn rows(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        let k = self.k;
        let mut out = vec![0f32; ids.len() * k];
        for (&id, dst) in ids.iter().zip(out.chunks_mut(k)) {
            let id = id as usize;
            if id >= self.n {
                bail!("token id {id} is outside the vocabulary of {}", self.n);
            }
            widen(&self.data[id * k..(id + 1) * k], dst);
        }
        Tensor::from_vec(out, (ids.len(), k), device)
    }

    /// `x·Wᵀ` for `x`: `[m, k]` f32 → `[m, n]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(&MatmulOp(self))
    }
}

struct MatmulOp<'a>(&'a HalfMatrix);

impl CustomOp1 for MatmulOp<'_> {
    fn name(&self) -> &'static str {
        "f16-matmul-t"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            bail!("f16-matmul-t needs f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("f16-matmul-t needs contiguous activations");
        };
        let (m, k) = layout.shape().dims2()?;
        let w = self.0;
        if k != w.k {
            bail!("f16-matmul-t: x is [{m}, {k}] but w is [{}, {}]", w.n, w.k);
        }
        let x = &x[start..end];
        let n = w.n;
        let mut yt = vec![0f32; n * m];
        if m > MAX_STREAMING_ROWS {
            let rows = tiled_rows(n);
            for_each_chunk_mut(&mut yt, rows * m, |task, out| {
                let first = task * rows;
                let count = out.len() / m;
                WIDE.with_borrow_mut(|wide| {
                    wide.resize(count * k, 0.0);
                    widen(&w.data[first * k..(first + count) * k], wide);
                    gemm_rows(out, wide, x, m, k);
                });
            });
        } else {
            for_each_chunk_mut(&mut yt, ROWS_PER_TASK * m, |task, out| {
                let first = task * ROWS_PER_TASK;
                for (r, out_row) in out.chunks_mut(m).enumerate() {
                    let row = &w.data[(first + r) * k..(first + r + 1) * k];
                    for (i, o) in out_row.iter_mut().enumerate() {
                        *o = dot(row, &x[i * k..(i + 1) * k]);
                    }
                }
            });
        }
        Ok((CpuStorage::F32(transpose(yt, n, m)), Shape::from((m, n))))
    }
}

thread_local! {
    /// One slice of weight rows widened to f32, per thread, reused across products.
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `dst[i] = src[i]` as f32.
fn widen(src: &[f16], dst: &mut [f32]) {
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, &mut dst[..src.len()]);
}

/// `Σ w[i]·x[i]` with `w` widened on the fly, vectorised where the CPU allows.
#[inline]
fn dot(w: &[f16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature the function is compiled for was just detected.
            return unsafe { dot_avx512(w, x) };
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features the function is compiled for were just detected.
            return unsafe { dot_f16c(w, x) };
        }
    }
    dot_portable(w, x)
}

fn dot_portable(w: &[f16], x: &[f32]) -> f32 {
    dot_lanes(w, x, f16::to_f32)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(w: &[f16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let chunks = n / 64;
    // SAFETY: every load reads 16 halves (32 bytes) or 16 floats at offsets below
    // `chunks * 64 <= n`.
    unsafe {
        let (pw, px) = (w.as_ptr() as *const u16, x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        for c in 0..chunks {
            let base = c * 64;
            for (j, acc) in acc.iter_mut().enumerate() {
                let off = base + 16 * j;
                let wide = _mm512_cvtph_ps(_mm256_loadu_si256(pw.add(off) as *const __m256i));
                *acc = _mm512_fmadd_ps(wide, _mm512_loadu_ps(px.add(off)), *acc);
            }
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum) + dot_portable(&w[chunks * 64..n], &x[chunks * 64..n])
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16c(w: &[f16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let chunks = n / 32;
    // SAFETY: every load reads 8 halves (16 bytes) or 8 floats at offsets below
    // `chunks * 32 <= n`.
    unsafe {
        let (pw, px) = (w.as_ptr() as *const u16, x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in 0..chunks {
            let base = c * 32;
            for (j, acc) in acc.iter_mut().enumerate() {
                let off = base + 8 * j;
                let wide = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(off) as *const __m128i));
                *acc = _mm256_fmadd_ps(wide, _mm256_loadu_ps(px.add(off)), *acc);
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        sum_lanes(sum) + dot_portable(&w[chunks * 32..n], &x[chunks * 32..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The f32 product of the weights rounded to f16: what every path must compute.
    fn reference(x: &Tensor, w: &Tensor) -> Tensor {
        let rounded = w
            .to_dtype(candle_core::DType::F16)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        crate::gemv::matmul_wt(x, &rounded).unwrap()
    }

    #[test]
    fn every_kernel_equals_the_f32_product_of_the_rounded_weights() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 64, 70),
            (3, 1000, 129),
            (4, 37, 5),
            (5, 64, 300),
            (64, 96, 1030),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let half = HalfMatrix::from_f32(&w).unwrap();
            let diff = crate::max_abs_diff(&reference(&x, &w), &half.matmul_t(&x).unwrap());
            assert!(diff < 1e-3, "({m},{k},{n}): {diff}");
        }
        // The portable loop against the vector kernels the CPU has.
        let w: Vec<f16> = (0..1000)
            .map(|i| f16::from_f32((i as f32 * 0.37).sin()))
            .collect();
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let (a, b) = (dot(&w, &x), dot_portable(&w, &x));
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }

    #[test]
    fn rows_are_the_rounded_weights_and_out_of_range_weights_are_refused() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1.0f32, 0.1], [-2.5, 1e-3]], &dev).unwrap();
        let half = HalfMatrix::from_f32(&w).unwrap();
        let rows = half.rows(&[1, 0], &dev).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], [-2.5, f16::from_f32(1e-3).to_f32()]);
        assert_eq!(rows[1], [1.0, f16::from_f32(0.1).to_f32()]);
        assert!(half.rows(&[2], &dev).is_err());
        let big = Tensor::new(&[[1e5f32, 0.0]], &dev).unwrap();
        let e = HalfMatrix::from_f32(&big).unwrap_err().to_string();
        assert!(e.contains("engine.quantization"), "{e}");
    }
}
