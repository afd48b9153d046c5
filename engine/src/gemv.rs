//! `y = x·Wᵀ` with f32 weights, on the engine's worker pool.
//!
//! - A few rows of `x` (decoding): bound by memory bandwidth, not arithmetic, so the weight
//!   rows are streamed once with an AVX2+FMA dot product (checked at run time, so the binary
//!   stays portable); the general matmul packs and tiles for reuse that isn't there.
//! - Many rows (prefill): gemm's tiled kernel, one single-threaded call per slice of the
//!   weight rows. Letting gemm parallelise on rayon would put its workers in competition with
//!   the pool's spinning worker for the same cores.

use super::parallel::for_each_chunk_mut;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

/// Up to this many activation rows go through the streaming kernel; more use the tiled one.
pub(crate) const MAX_STREAMING_ROWS: usize = 4;

/// Weight rows per parallel task: large enough to amortise scheduling, small enough to balance.
pub(crate) const ROWS_PER_TASK: usize = 64;

/// `x`: `[m, k]`, `w`: `[n, k]` (both f32) → `[m, n]`.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &MatmulWt)
}

struct MatmulWt;

impl CustomOp2 for MatmulWt {
    fn name(&self) -> &'static str {
        "matmul-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            bail!("matmul-wt needs f32 inputs");
        };
        let (Some((xs, xe)), Some((ws, we))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("matmul-wt needs contiguous inputs");
        };
        let ((m, k), (n, k2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k != k2 {
            bail!("matmul-wt: x is [{m}, {k}] but w is [{n}, {k2}]");
        }
        let (x, w) = (&x[xs..xe], &w[ws..we]);
        // Computed as [n, m] so each task owns a contiguous block, then transposed.
        let mut yt = vec![0f32; n * m];
        if m > MAX_STREAMING_ROWS {
            tiled(x, w, m, k, &mut yt);
            return Ok((CpuStorage::F32(transpose(yt, n, m)), Shape::from((m, n))));
        }
        for_each_chunk_mut(&mut yt, ROWS_PER_TASK * m, |task, out| {
            let first = task * ROWS_PER_TASK;
            for (r, out_row) in out.chunks_mut(m).enumerate() {
                let w_row = &w[(first + r) * k..(first + r + 1) * k];
                for (i, o) in out_row.iter_mut().enumerate() {
                    *o = dot(w_row, &x[i * k..(i + 1) * k]);
                }
            }
        });
        Ok((CpuStorage::F32(transpose(yt, n, m)), Shape::from((m, n))))
    }
}

/// `yt = W·xᵀ` (`[n, m]`) by slices of W's rows, each a single-threaded gemm call.
fn tiled(x: &[f32], w: &[f32], m: usize, k: usize, yt: &mut [f32]) {
    let n = yt.len() / m;
    for_each_chunk_mut(yt, tiled_rows(n) * m, |task, out| {
        let first = task * tiled_rows(n);
        let count = out.len() / m;
        gemm_rows(out, &w[first * k..(first + count) * k], x, m, k);
    });
}

/// Weight rows per task of the tiled product: two slices per thread or so, big enough for
/// gemm's blocking, enough to balance.
pub(crate) fn tiled_rows(n: usize) -> usize {
    n.div_ceil(8).next_multiple_of(16).max(64)
}

/// `out = w_rows·xᵀ` (`[count, m]`) for `count` weight rows, one single-threaded gemm call.
pub(crate) fn gemm_rows(out: &mut [f32], w_rows: &[f32], x: &[f32], m: usize, k: usize) {
    let count = out.len() / m;
    assert!(
        w_rows.len() >= count * k && x.len() >= m * k,
        "gemm_rows: short inputs"
    );
    // SAFETY: `out` is `count × m` row-major; the lhs is `w_rows` (`count × k`, row-major) and
    // the rhs is xᵀ (`k × m`, read through x's strides); the assert above keeps all three
    // ranges inside their slices.
    unsafe {
        gemm::gemm(
            count,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            false,
            w_rows.as_ptr(),
            1,
            k as isize,
            x.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `[n, m]` → `[m, n]`: the kernels compute per weight row, callers want per activation row.
pub(crate) fn transpose(yt: Vec<f32>, n: usize, m: usize) -> Vec<f32> {
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            y[i * n + j] = *v;
        }
    }
    y
}

/// Dot product, vectorised where the CPU allows.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, |x| x)
}

/// `Σ widen(a[i])·b[i]` in eight independent lanes, so the compiler can vectorise without
/// reassociating one sum: the portable dot product of every weight type.
pub(crate) fn dot_lanes<T: Copy>(a: &[T], b: &[f32], widen: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, y)| widen(x) * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += widen(x[l]) * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The sum of an AVX register's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub(crate) fn sum_lanes(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let chunks = n / 32;
    // SAFETY: every load reads 8 floats at offsets below `chunks * 32 <= n`.
    unsafe {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in 0..chunks {
            let base = c * 32;
            for (j, acc) in acc.iter_mut().enumerate() {
                let off = base + 8 * j;
                *acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(off)),
                    _mm256_loadu_ps(pb.add(off)),
                    *acc,
                );
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        sum_lanes(sum) + dot_portable(&a[chunks * 32..n], &b[chunks * 32..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_general_matmul() {
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
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let got = matmul_wt(&x, &w).unwrap();
            let diff = crate::max_abs_diff(&want, &got);
            assert!(diff < 1e-3, "({m},{k},{n}): {diff}");
        }
    }
}
