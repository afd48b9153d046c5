//! Q8_0 weights (blocks of 32 signed bytes sharing one f16 scale, llama.cpp's format split
//! into separate value and scale arrays) and an AVX2 matrix-vector kernel for them.
//!
//! Activations are quantized the same way once per call; each block's dot product is an
//! integer multiply-add (`maddubs` on |w| and x·sign(w)), scaled by both blocks' scales.
//! Four weight rows are processed together so each activation block is loaded once per four
//! outputs and four independent accumulators keep the FMA pipes busy.

use half::f16;

/// Values per block.
pub const BLOCK: usize = 32;


/// A `[n, k]` matrix in Q8_0, interleaved in groups of four rows so the kernel that computes
/// four outputs at once reads one sequential stream (four row streams a kilobyte apart
/// defeat the hardware prefetcher and halve the bandwidth drawn from memory).
///
/// Group `g` holds rows `4g..4g+4`: values block-major, `[block][row][32]`; scales in chunks
/// of eight blocks, `[chunk][row][8]`, then the remaining blocks as `[block][row]`.
/// Rows past `n` (padding up to a multiple of four) are zero.
#[derive(Debug)]
pub struct Q8Matrix {
    values: Vec<i8>,
    scales: Vec<f16>,
    pub n: usize,
    pub k: usize,
}

/// Rows computed together.
pub const GROUP: usize = 4;

/// One activation row in Q8_0 with f32 scales.
pub struct Q8Row {
    values: Vec<i8>,
    scales: Vec<f32>,
}

/// Quantizes `x` (a multiple of 32 long) block by block: scale = max|x|/127.
fn quantize_into(x: &[f32], values: &mut [i8], mut scale: impl FnMut(usize, f32)) {
    for (b, (src, dst)) in x.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK)).enumerate() {
        let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, v) in dst.iter_mut().zip(src) {
            // round-half-away like roundf, without the libm call (x86-64 has no SSE4.1 by default)
            let scaled = v * inv;
            *q = (scaled + 0.5f32.copysign(scaled)) as i8;
        }
        scale(b, d);
    }
}

impl Q8Row {
    /// Quantizes one activation row.
    pub fn quantize(x: &[f32]) -> Self {
        let mut values = vec![0i8; x.len()];
        let mut scales = vec![0f32; x.len() / BLOCK];
        quantize_into(x, &mut values, |b, d| scales[b] = d);
        Self { values, scales }
    }
}

impl Q8Matrix {
    /// Quantizes `[n, k]` f32 data; `k` must be a multiple of 32.
    pub fn quantize(data: &[f32], n: usize, k: usize) -> Self {
        use rayon::prelude::*;
        let blocks = k / BLOCK;
        let groups = n.div_ceil(GROUP);
        let mut values = vec![0i8; groups * GROUP * k];
        let mut scales = vec![f16::ZERO; groups * GROUP * blocks];
        let layout = Layout { k };
        values
            .par_chunks_mut(GROUP * k)
            .zip(scales.par_chunks_mut(GROUP * blocks))
            .enumerate()
            .for_each(|(g, (values, scales))| {
                let mut row_values = vec![0i8; k];
                for i in 0..GROUP.min(n - g * GROUP) {
                    let r = g * GROUP + i;
                    quantize_into(&data[r * k..(r + 1) * k], &mut row_values, |b, d| {
                        scales[layout.scale(b, i)] = f16::from_f32(d)
                    });
                    for (b, block) in row_values.chunks_exact(BLOCK).enumerate() {
                        values[layout.value(b, i)..][..BLOCK].copy_from_slice(block);
                    }
                }
            });
        Self { values, scales, n, k }
    }

    fn group(&self, g: usize) -> (&[i8], &[f16]) {
        let blocks = self.k / BLOCK;
        (&self.values[g * GROUP * self.k..][..GROUP * self.k], &self.scales[g * GROUP * blocks..][..GROUP * blocks])
    }

    /// Row `r` dequantized into `out`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (values, scales) = self.group(r / GROUP);
        let layout = Layout { k: self.k };
        for (b, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
            let d = scales[layout.scale(b, r % GROUP)].to_f32();
            for (o, q) in dst.iter_mut().zip(&values[layout.value(b, r % GROUP)..][..BLOCK]) {
                *o = *q as f32 * d;
            }
        }
    }

    /// Dot products of rows `first..first + out.len()` with `x`; `first` is a multiple of 4.
    pub fn dot_rows(&self, first: usize, x: &Q8Row, out: &mut [f32]) {
        debug_assert_eq!(first % GROUP, 0);
        for (g, out) in out.chunks_mut(GROUP).enumerate() {
            let d = self.dot_group(first / GROUP + g, x);
            out.copy_from_slice(&d[..out.len()]);
        }
    }

    fn dot_group(&self, g: usize, x: &Q8Row) -> [f32; GROUP] {
        let (values, scales) = self.group(g);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were just detected; the slices hold one whole group.
            return unsafe { dot_group_avx2(values, scales, x) };
        }
        let layout = Layout { k: self.k };
        std::array::from_fn(|i| {
            let mut sum = 0f32;
            for (b, xv) in x.values.chunks_exact(BLOCK).enumerate() {
                let w = &values[layout.value(b, i)..][..BLOCK];
                let dot: i32 = w.iter().zip(xv).map(|(a, b)| *a as i32 * *b as i32).sum();
                sum += dot as f32 * scales[layout.scale(b, i)].to_f32() * x.scales[b];
            }
            sum
        })
    }
}

/// Offsets inside one interleaved group.
#[derive(Clone, Copy)]
struct Layout {
    k: usize,
}

impl Layout {
    /// Start of block `b` of row `i`.
    fn value(self, b: usize, i: usize) -> usize {
        (b * GROUP + i) * BLOCK
    }

    /// Scale of block `b` of row `i`.
    fn scale(self, b: usize, i: usize) -> usize {
        let full = self.k / BLOCK / 8 * 8;
        if b < full { (b / 8) * 8 * GROUP + i * 8 + b % 8 } else { full * GROUP + (b - full) * GROUP + i }
    }
}

/// The four dot products of one group against `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_group_avx2(values: &[i8], scales: &[f16], x: &Q8Row) -> [f32; GROUP] {
    use std::arch::x86_64::*;
    let blocks = x.scales.len();
    let full = blocks / 8 * 8;
    // SAFETY (whole body): `values` holds GROUP·blocks blocks of 32 and `scales` GROUP·blocks
    // scales in the layout above; x holds `blocks` blocks; every offset below stays inside.
    unsafe {
        let (w, ws, xv, xs) = (values.as_ptr(), scales.as_ptr(), x.values.as_ptr(), x.scales.as_ptr());
        let mut acc = [_mm256_setzero_ps(); GROUP];
        let mut b = 0;
        while b < full {
            // Scales of 8 blocks of each row times the activation's: one vector per row.
            let xd = _mm256_loadu_ps(xs.add(b));
            let mut combined = [[0f32; 8]; GROUP];
            for (i, c) in combined.iter_mut().enumerate() {
                let half = _mm_loadu_si128(ws.add(b * GROUP + i * 8) as *const __m128i);
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(_mm256_cvtph_ps(half), xd));
            }
            for j in 0..8 {
                let vx = _mm256_loadu_si256(xv.add((b + j) * BLOCK) as *const __m256i);
                for i in 0..GROUP {
                    // A broadcast load uses a load port, leaving the shuffle unit to the dot product.
                    let scale = _mm256_broadcast_ss(&combined[i][j]);
                    let wp = w.add(((b + j) * GROUP + i) * BLOCK);
                    acc[i] = _mm256_fmadd_ps(block_dot(wp, vx), scale, acc[i]);
                }
            }
            b += 8;
        }
        while b < blocks {
            let vx = _mm256_loadu_si256(xv.add(b * BLOCK) as *const __m256i);
            for i in 0..GROUP {
                let scale = _mm256_set1_ps((*ws.add(full * GROUP + (b - full) * GROUP + i)).to_f32() * *xs.add(b));
                acc[i] = _mm256_fmadd_ps(block_dot(w.add((b * GROUP + i) * BLOCK), vx), scale, acc[i]);
            }
            b += 1;
        }
        let mut out = [0f32; GROUP];
        for i in 0..GROUP {
            out[i] = hsum(acc[i]);
        }
        out
    }
}

/// One block's integer dot product (32 weights × 32 activations) as 8 partial f32 sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_dot(wp: *const i8, vx: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees 32 readable bytes at `wp`.
    let vw = unsafe { _mm256_loadu_si256(wp as *const __m256i) };
    // maddubs multiplies unsigned by signed bytes: move w's sign onto x.
    let products = _mm256_maddubs_epi16(_mm256_sign_epi8(vw, vw), _mm256_sign_epi8(vx, vw));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(products, _mm256_set1_epi16(1)))
}

/// Sum of the 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(a: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let half = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_dots_agree_and_track_f32() {
        let (n, k) = (9, 32 * 11); // 11 blocks: one group of 8 plus a remainder of 3
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3).collect();
        let x: Vec<f32> = (0..k).map(|i| ((i * 104729 % 1000) as f32 / 500.0 - 1.0)).collect();
        let m = Q8Matrix::quantize(&w, n, k);
        let xq = Q8Row::quantize(&x);
        let mut fast = vec![0f32; n];
        m.dot_rows(0, &xq, &mut fast);
        let layout = Layout { k };
        for r in 0..n {
            let (values, scales) = m.group(r / GROUP);
            let portable: f32 = (0..k / BLOCK)
                .map(|b| {
                    let w = &values[layout.value(b, r % GROUP)..][..BLOCK];
                    let dot: i32 = w.iter().zip(&xq.values[b * BLOCK..][..BLOCK]).map(|(a, b)| *a as i32 * *b as i32).sum();
                    dot as f32 * scales[layout.scale(b, r % GROUP)].to_f32() * xq.scales[b]
                })
                .sum();
            let wr = &w[r * k..(r + 1) * k];
            let exact: f32 = wr.iter().zip(&x).map(|(a, b)| a * b).sum();
            // Quantization error is relative to the vectors' sizes, not to the (small) result.
            let scale = (wr.iter().map(|v| v * v).sum::<f32>() * x.iter().map(|v| v * v).sum::<f32>()).sqrt();
            assert!((fast[r] - portable).abs() < 1e-5 * scale, "row {r}: simd {} vs portable {portable}", fast[r]);
            assert!((portable - exact).abs() < 0.01 * scale, "row {r}: quantized {portable} vs exact {exact}");
        }
        let mut row = vec![0f32; k];
        m.dequantize_row(3, &mut row);
        assert!(row.iter().zip(&w[3 * k..4 * k]).all(|(a, b)| (a - b).abs() < 0.01));
    }
}
