//! Block-quantized weight matrices in llama.cpp's 32-value block formats (Q8_0: 8-bit values;
//! Q4_0: 4-bit values; one f16 scale per block), with an AVX2 matrix-vector kernel.
//!
//! Activations are quantized to 8 bits per block once per call; each block's dot product is
//! an integer multiply-add (`maddubs` on |w| and x·sign(w)) scaled by both blocks' scales.
//! Four weight rows are computed together, interleaved in memory so the kernel reads one
//! sequential stream: four row streams a kilobyte apart defeat the hardware prefetcher and
//! halve the bandwidth drawn from memory, which is what bounds decoding.
//!
//! Group `g` holds rows `4g..4g+4`: values block-major, `[block][row][bytes]`; scales in
//! chunks of eight blocks, `[chunk][row][8]`, then the remaining blocks as `[block][row]`.
//! Rows past `n` (padding up to a multiple of four) are zero.

use half::f16;

/// Values per block.
pub const BLOCK: usize = 32;

/// Rows computed together.
const GROUP: usize = 4;

/// How the 32 values of a block are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One signed byte per value; scale = max|x|/127.
    Q8_0,
    /// One nibble per value (low nibbles hold values 0..16, high nibbles 16..32), offset by 8;
    /// scale = (the value of largest magnitude)/−8, as ggml's Q4_0.
    Q4_0,
}

impl Format {
    /// Bytes of one block's values.
    const fn bytes(self) -> usize {
        match self {
            Self::Q8_0 => BLOCK,
            Self::Q4_0 => BLOCK / 2,
        }
    }

    /// Quantizes 32 values into `dst`, returning the scale.
    fn encode(self, src: &[f32], dst: &mut [u8]) -> f32 {
        match self {
            Self::Q8_0 => {
                let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (q, v) in dst.iter_mut().zip(src) {
                    *q = round(v * inv) as i8 as u8;
                }
                d
            }
            Self::Q4_0 => {
                let max = src
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                let nibble = |v: f32| (round(v * inv) + 8.0).clamp(0.0, 15.0) as u8;
                for j in 0..BLOCK / 2 {
                    dst[j] = nibble(src[j]) | (nibble(src[j + BLOCK / 2]) << 4);
                }
                d
            }
        }
    }

    /// Value `j` of an encoded block, in units of the block's scale.
    fn value(self, block: &[u8], j: usize) -> i8 {
        match self {
            Self::Q8_0 => block[j] as i8,
            Self::Q4_0 if j < BLOCK / 2 => (block[j] & 0x0F) as i8 - 8,
            Self::Q4_0 => (block[j - BLOCK / 2] >> 4) as i8 - 8,
        }
    }
}

/// Round half away from zero, like `roundf`, without its libm call.
#[inline(always)]
fn round(v: f32) -> f32 {
    ((v + 0.5f32.copysign(v)) as i32) as f32
}

/// One activation row in Q8_0 with f32 scales.
pub struct ActivationRow {
    values: Vec<u8>,
    scales: Vec<f32>,
    /// Per block, 8·scale·Σvalues: Q4_0 kernels multiply the stored (unsigned, +8) nibbles and
    /// subtract this once per block instead of re-centring every value.
    offsets: Vec<f32>,
}

impl ActivationRow {
    /// Quantizes one activation row (a multiple of 32 long).
    pub fn quantize(x: &[f32]) -> Self {
        let mut values = vec![0u8; x.len()];
        let scales: Vec<f32> = x
            .chunks_exact(BLOCK)
            .zip(values.chunks_exact_mut(BLOCK))
            .map(|(src, dst)| Format::Q8_0.encode(src, dst))
            .collect();
        let offsets = values
            .chunks_exact(BLOCK)
            .zip(&scales)
            .map(|(block, d)| 8.0 * d * block.iter().map(|&v| v as i8 as i32).sum::<i32>() as f32)
            .collect();
        Self {
            values,
            scales,
            offsets,
        }
    }
}

/// A `[n, k]` block-quantized matrix, interleaved in groups of four rows.
#[derive(Debug)]
pub struct BlockMatrix {
    format: Format,
    values: Vec<u8>,
    scales: Vec<f16>,
    pub n: usize,
    pub k: usize,
}

impl BlockMatrix {
    /// Bytes of the values and the block scales.
    pub fn bytes(&self) -> usize {
        self.values.len() + 2 * self.scales.len()
    }

    /// Quantizes `[n, k]` f32 data; `k` must be a multiple of 32.
    pub fn quantize(format: Format, data: &[f32], n: usize, k: usize) -> Self {
        use rayon::prelude::*;
        let blocks = k / BLOCK;
        let groups = n.div_ceil(GROUP);
        let group_bytes = GROUP * blocks * format.bytes();
        let mut values = vec![0u8; groups * group_bytes];
        let mut scales = vec![f16::ZERO; groups * GROUP * blocks];
        let layout = Layout {
            blocks,
            bytes: format.bytes(),
        };
        values
            .par_chunks_mut(group_bytes)
            .zip(scales.par_chunks_mut(GROUP * blocks))
            .enumerate()
            .for_each(|(g, (values, scales))| {
                for i in 0..GROUP.min(n - g * GROUP) {
                    let row = &data[(g * GROUP + i) * k..][..k];
                    for (b, src) in row.chunks_exact(BLOCK).enumerate() {
                        let dst = &mut values[layout.value(b, i)..][..format.bytes()];
                        scales[layout.scale(b, i)] = f16::from_f32(format.encode(src, dst));
                    }
                }
            });
        Self {
            format,
            values,
            scales,
            n,
            k,
        }
    }

    fn layout(&self) -> Layout {
        Layout {
            blocks: self.k / BLOCK,
            bytes: self.format.bytes(),
        }
    }

    fn group(&self, g: usize) -> (&[u8], &[f16]) {
        let blocks = self.k / BLOCK;
        let bytes = GROUP * blocks * self.format.bytes();
        (
            &self.values[g * bytes..][..bytes],
            &self.scales[g * GROUP * blocks..][..GROUP * blocks],
        )
    }

    /// Row `r` dequantized into `out` (`k` long).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (values, scales) = self.group(r / GROUP);
        let layout = self.layout();
        for (b, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
            let d = scales[layout.scale(b, r % GROUP)].to_f32();
            let block = &values[layout.value(b, r % GROUP)..][..self.format.bytes()];
            for (j, o) in dst.iter_mut().enumerate() {
                *o = self.format.value(block, j) as f32 * d;
            }
        }
    }

    /// Dot products of rows `first..first + out.len()` with `x`; `first` is a multiple of 4.
    pub fn dot_rows(&self, first: usize, x: &ActivationRow, out: &mut [f32]) {
        debug_assert_eq!(first % GROUP, 0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were just detected.
            return unsafe {
                match self.format {
                    Format::Q8_0 => self.dot_rows_avx2::<false>(first, x, out),
                    Format::Q4_0 => self.dot_rows_avx2::<true>(first, x, out),
                }
            };
        }
        for (g, out) in out.chunks_mut(GROUP).enumerate() {
            let (values, scales) = self.group(first / GROUP + g);
            out.copy_from_slice(&self.dot_group_portable(values, scales, x)[..out.len()]);
        }
    }

    /// [`BlockMatrix::dot_rows`] with one feature check per call rather than per group (the
    /// per-group dispatch cost a quarter of the time on 1024-wide rows).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_rows_avx2<const Q4: bool>(
        &self,
        first: usize,
        x: &ActivationRow,
        out: &mut [f32],
    ) {
        for (g, out) in out.chunks_mut(GROUP).enumerate() {
            let (values, scales) = self.group(first / GROUP + g);
            // SAFETY: the caller checked the features; the slices hold one whole group.
            let d = unsafe { dot_group_avx2::<Q4>(values, scales, x) };
            out.copy_from_slice(&d[..out.len()]);
        }
    }

    fn dot_group_portable(&self, values: &[u8], scales: &[f16], x: &ActivationRow) -> [f32; GROUP] {
        let layout = self.layout();
        std::array::from_fn(|i| {
            let mut sum = 0f32;
            for (b, xv) in x.values.chunks_exact(BLOCK).enumerate() {
                let block = &values[layout.value(b, i)..][..self.format.bytes()];
                let dot: i32 = (0..BLOCK)
                    .map(|j| self.format.value(block, j) as i32 * xv[j] as i8 as i32)
                    .sum();
                sum += dot as f32 * scales[layout.scale(b, i)].to_f32() * x.scales[b];
            }
            sum
        })
    }
}

/// Offsets inside one interleaved group.
#[derive(Clone, Copy)]
struct Layout {
    blocks: usize,
    bytes: usize,
}

impl Layout {
    /// Start of block `b` of row `i`.
    fn value(self, b: usize, i: usize) -> usize {
        (b * GROUP + i) * self.bytes
    }

    /// Scale of block `b` of row `i`.
    fn scale(self, b: usize, i: usize) -> usize {
        let full = self.blocks / 8 * 8;
        if b < full {
            (b / 8) * 8 * GROUP + i * 8 + b % 8
        } else {
            full * GROUP + (b - full) * GROUP + i
        }
    }
}

/// The four dot products of one group against `x`; `Q4` selects the nibble format.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_group_avx2<const Q4: bool>(
    values: &[u8],
    scales: &[f16],
    x: &ActivationRow,
) -> [f32; GROUP] {
    use std::arch::x86_64::*;
    let blocks = x.scales.len();
    let full = blocks / 8 * 8;
    let bytes = if Q4 { BLOCK / 2 } else { BLOCK };
    // SAFETY (whole body): `values` holds GROUP·blocks blocks and `scales` GROUP·blocks scales
    // in the layout above; x holds `blocks` blocks; every offset below stays inside.
    unsafe {
        let (w, ws, xv, xs) = (
            values.as_ptr(),
            scales.as_ptr(),
            x.values.as_ptr(),
            x.scales.as_ptr(),
        );
        let mut acc = [_mm256_setzero_ps(); GROUP];
        // Q4_0: Σ_b d_w·offset_b, subtracted at the end (see `ActivationRow::offsets`).
        let mut correction = [_mm256_setzero_ps(); GROUP];
        let mut b = 0;
        while b < full {
            // Scales of 8 blocks of each row times the activation's, read back by broadcast
            // loads (load ports) rather than lane shuffles (which the dot product needs).
            let xd = _mm256_loadu_ps(xs.add(b));
            let mut combined = [[0f32; 8]; GROUP];
            for (i, c) in combined.iter_mut().enumerate() {
                let wd =
                    _mm256_cvtph_ps(_mm_loadu_si128(ws.add(b * GROUP + i * 8) as *const __m128i));
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(wd, xd));
                if Q4 {
                    correction[i] = _mm256_fmadd_ps(
                        wd,
                        _mm256_loadu_ps(x.offsets.as_ptr().add(b)),
                        correction[i],
                    );
                }
            }
            for j in 0..8 {
                let vx = _mm256_loadu_si256(xv.add((b + j) * BLOCK) as *const __m256i);
                for (i, c) in combined.iter().enumerate() {
                    let vw = load_block::<Q4>(w.add(((b + j) * GROUP + i) * bytes));
                    acc[i] = _mm256_fmadd_ps(
                        block_dot::<Q4>(vw, vx),
                        _mm256_broadcast_ss(&c[j]),
                        acc[i],
                    );
                }
            }
            b += 8;
        }
        let mut tail_correction = [0f32; GROUP];
        while b < blocks {
            let vx = _mm256_loadu_si256(xv.add(b * BLOCK) as *const __m256i);
            for (i, a) in acc.iter_mut().enumerate() {
                let wd = (*ws.add(full * GROUP + (b - full) * GROUP + i)).to_f32();
                let vw = load_block::<Q4>(w.add((b * GROUP + i) * bytes));
                *a = _mm256_fmadd_ps(block_dot::<Q4>(vw, vx), _mm256_set1_ps(wd * *xs.add(b)), *a);
                if Q4 {
                    tail_correction[i] += wd * x.offsets[b];
                }
            }
            b += 1;
        }
        let mut out = [0f32; GROUP];
        for i in 0..GROUP {
            out[i] = hsum(acc[i])
                - if Q4 {
                    hsum(correction[i]) + tail_correction[i]
                } else {
                    0.0
                };
        }
        out
    }
}

/// A block's 32 values as bytes: signed for Q8_0, the stored unsigned nibbles (value + 8)
/// for Q4_0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_block<const Q4: bool>(p: *const u8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the block's bytes (16 or 32) are readable at `p`.
    unsafe {
        if Q4 {
            let packed = _mm_loadu_si128(p as *const __m128i);
            let low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
            let high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
            _mm256_set_m128i(high, low)
        } else {
            _mm256_loadu_si256(p as *const __m256i)
        }
    }
}

/// One block's integer dot product (32 weights × 32 activations) as 8 partial f32 sums.
/// `maddubs` multiplies unsigned by signed bytes: Q4_0's nibbles are unsigned already (their
/// +8 offset is corrected per block by the caller, and 15·127·2 cannot saturate); for Q8_0
/// the weights' signs move onto the activations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn block_dot<const Q4: bool>(
    vw: std::arch::x86_64::__m256i,
    vx: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let products = if Q4 {
        _mm256_maddubs_epi16(vw, vx)
    } else {
        _mm256_maddubs_epi16(_mm256_sign_epi8(vw, vw), _mm256_sign_epi8(vx, vw))
    };
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
        let (n, k) = (9, 32 * 11); // 11 blocks: one chunk of 8 plus 3; 9 rows: a padded group
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let x: Vec<f32> = (0..k)
            .map(|i| (i * 104_729 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let xq = ActivationRow::quantize(&x);
        for (format, tolerance) in [(Format::Q8_0, 0.01), (Format::Q4_0, 0.1)] {
            let m = BlockMatrix::quantize(format, &w, n, k);
            let mut fast = vec![0f32; n];
            m.dot_rows(0, &xq, &mut fast);
            let portable: Vec<f32> = (0..n.div_ceil(GROUP))
                .flat_map(|g| {
                    let (values, scales) = m.group(g);
                    m.dot_group_portable(values, scales, &xq)
                })
                .collect();
            for r in 0..n {
                let wr = &w[r * k..(r + 1) * k];
                let exact: f32 = wr.iter().zip(&x).map(|(a, b)| a * b).sum();
                // Quantization error is relative to the vectors' sizes, not to the (small) result.
                let scale = (wr.iter().map(|v| v * v).sum::<f32>()
                    * x.iter().map(|v| v * v).sum::<f32>())
                .sqrt();
                assert!(
                    (fast[r] - portable[r]).abs() < 1e-5 * scale,
                    "{format:?} row {r}: simd {} vs portable {}",
                    fast[r],
                    portable[r]
                );
                assert!(
                    (portable[r] - exact).abs() < tolerance * scale,
                    "{format:?} row {r}: {} vs exact {exact}",
                    portable[r]
                );
                let mut row = vec![0f32; k];
                m.dequantize_row(r, &mut row);
                let err = row
                    .iter()
                    .zip(wr)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Half a step for Q8_0; Q4_0's −8..7 grid can miss the far end by a whole step;
                // plus the f16 rounding of the scale (2⁻¹¹ relative, times up to 127 or 8 steps).
                let amax = wr.iter().fold(0f32, |m, v| m.max(v.abs()));
                let bound = amax / 1024.0
                    + match format {
                        Format::Q8_0 => amax / 127.0 * 0.5,
                        Format::Q4_0 => amax / 8.0,
                    };
                assert!(
                    err <= bound,
                    "{format:?} row {r}: dequantization error {err} > {bound}"
                );
            }
        }
    }
}
