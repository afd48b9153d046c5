//! Quantized weight matrices (Q8_0, Q4_0, Q4_K) and their matrix products.
//!
//! Q8_0 and Q4_0 use mananera's interleaved layout and kernel ([`super::blocks`]). Q4_K uses
//! candle's block format and SIMD dot product (`k_quants`, llama.cpp's layout) with our
//! driver: activations are quantized once per call to Q8_K, then weight rows are streamed in
//! parallel chunks, four rows per dot call so each activation block is loaded once for four
//! outputs.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{BlockQ4K, GgmlType};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::blocks::{ActivationRow, BLOCK, BlockMatrix, Format};
use super::parallel::for_each_chunk_mut;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 32;

/// A `[n, k]` weight matrix in a block-quantized format.
#[derive(Debug)]
pub enum QMatrix {
    /// Q8_0 or Q4_0, with mananera's own interleaved layout and kernel.
    Blocks(BlockMatrix),
    /// Q4_K super-blocks of 256 values.
    Q4K(Packed<BlockQ4K>),
}

/// Rows of blocks: row `r` is `blocks[r * k / B .. (r + 1) * k / B]` for block size `B`.
#[derive(Debug)]
pub struct Packed<T> {
    blocks: Vec<T>,
    n: usize,
    k: usize,
}

impl QMatrix {
    /// Quantizes an f32 `[n, k]` tensor; `k` must be a multiple of the format's block size.
    pub fn quantize(w: &Tensor, format: GgmlDType) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let data = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let blocks = |format| Ok(Self::Blocks(BlockMatrix::quantize(format, &data, n, k)));
        match format {
            GgmlDType::Q8_0 if k % BLOCK == 0 => blocks(Format::Q8_0),
            GgmlDType::Q4_0 if k % BLOCK == 0 => blocks(Format::Q4_0),
            GgmlDType::Q4K => Ok(Self::Q4K(Packed::quantize(&data, n, k)?)),
            other => bail!("no kernel for {other:?} with rows of {k} values"),
        }
    }

    /// `x` (`[m, k]`, f32, contiguous) times the transposed matrix → `[m, n]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(&MatmulOp(self))
    }

    /// Bytes of the quantized values and their scales.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Blocks(q) => q.bytes(),
            Self::Q4K(p) => std::mem::size_of_val(p.blocks.as_slice()),
        }
    }

    /// `(n, k)`.
    fn dims(&self) -> (usize, usize) {
        match self {
            Self::Blocks(q) => (q.n, q.k),
            Self::Q4K(p) => (p.n, p.k),
        }
    }

    /// Rows `ids` dequantized to f32 → `[ids.len(), k]`: the embedding lookup.
    pub fn rows(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        let (n, k) = self.dims();
        let mut out = vec![0f32; ids.len() * k];
        for (&id, dst) in ids.iter().zip(out.chunks_mut(k)) {
            let id = id as usize;
            if id >= n {
                bail!("token id {id} is outside the vocabulary of {n}");
            }
            match self {
                Self::Blocks(q) => q.dequantize_row(id, dst),
                Self::Q4K(p) => p.dequantize_row(id, dst),
            }
        }
        Tensor::from_vec(out, (ids.len(), k), device)
    }
}

struct MatmulOp<'a>(&'a QMatrix);

impl CustomOp1 for MatmulOp<'_> {
    fn name(&self) -> &'static str {
        "quantized-matmul-t"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            bail!("quantized matmul needs f32 activations")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("quantized matmul needs contiguous activations")
        };
        let (m, k) = layout.shape().dims2()?;
        let (n, weight_k) = self.0.dims();
        if k != weight_k {
            bail!("quantized matmul: activations have {k} columns, weights {weight_k}");
        }
        let x = &x[start..end];
        let y = match self.0 {
            QMatrix::Blocks(q) => {
                let rows: Vec<ActivationRow> = x.chunks(k).map(ActivationRow::quantize).collect();
                matmul_by_rows(n, m, |first, i, col| q.dot_rows(first, &rows[i], col))
            }
            QMatrix::Q4K(p) => {
                let xq = p.quantize_activations(x, m);
                let per_row = p.blocks_per_row();
                matmul_by_rows(n, m, |first, i, col| {
                    p.dot_rows(first, &xq[i * per_row..][..per_row], col)
                })
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// The parallel driver both formats share: `dots(first, i, col)` fills `col` with the dot
/// products of weight rows `first..first + col.len()` and activation row `i`. Computed as
/// `[n, m]` so each task owns a contiguous block, then transposed to `[m, n]`.
fn matmul_by_rows(n: usize, m: usize, dots: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut yt = vec![0f32; n * m];
    for_each_chunk_mut(&mut yt, ROWS_PER_TASK * m, |task, out| {
        let mut col = vec![0f32; out.len() / m];
        for i in 0..m {
            dots(task * ROWS_PER_TASK, i, &mut col);
            for (r, v) in col.iter().enumerate() {
                out[r * m + i] = *v;
            }
        }
    });
    super::gemv::transpose(yt, n, m)
}

impl<T> Packed<T>
where
    T: GgmlType + Send + Sync,
    T::VecDotType: Send + Sync,
{
    fn blocks_per_row(&self) -> usize {
        self.k / T::BLCK_SIZE
    }

    fn quantize(data: &[f32], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(T::BLCK_SIZE) {
            bail!(
                "rows of {k} values do not split into {:?} blocks of {}",
                T::DTYPE,
                T::BLCK_SIZE
            );
        }
        let per_row = k / T::BLCK_SIZE;
        let mut blocks: Vec<T> = (0..n * per_row).map(|_| T::zeros()).collect();
        blocks
            .par_chunks_mut(per_row * ROWS_PER_TASK)
            .zip(data.par_chunks(k * ROWS_PER_TASK))
            .for_each(|(dst, src)| T::from_float(src, dst));
        Ok(Self { blocks, n, k })
    }

    fn row(&self, r: usize) -> &[T] {
        let per_row = self.blocks_per_row();
        &self.blocks[r * per_row..(r + 1) * per_row]
    }

    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        T::to_float(self.row(r), out);
    }

    /// `m` activation rows in the format's dot-product partner (Q8_K for Q4_K), row-major.
    fn quantize_activations(&self, x: &[f32], m: usize) -> Vec<T::VecDotType> {
        let per_row = self.blocks_per_row();
        let mut xq: Vec<T::VecDotType> = (0..m * per_row).map(|_| T::VecDotType::zeros()).collect();
        for (src, dst) in x.chunks(self.k).zip(xq.chunks_mut(per_row)) {
            T::VecDotType::from_float(src, dst);
        }
        xq
    }

    /// Rows `first..first + out.len()` against one quantized activation row, four rows per
    /// dot call so each activation block is loaded once for four outputs.
    fn dot_rows(&self, first: usize, x: &[T::VecDotType], out: &mut [f32]) {
        let k = self.k;
        let w = |r: usize| self.row(first + r);
        let mut r = 0;
        while r + 4 <= out.len() {
            let (a, b, c, d) = T::vec_dot_4(k, w(r), w(r + 1), w(r + 2), w(r + 3), x);
            out[r..r + 4].copy_from_slice(&[a, b, c, d]);
            r += 4;
        }
        for (j, o) in out.iter_mut().enumerate().skip(r) {
            *o = T::vec_dot(k, w(j), x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quantized_products_track_the_f32_product() {
        let dev = Device::Cpu;
        for (format, m, tolerance) in [
            (GgmlDType::Q8_0, 1, 0.02),
            (GgmlDType::Q8_0, 5, 0.02),
            (GgmlDType::Q4K, 3, 0.1),
        ] {
            let (n, k) = (70, 512);
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let got = QMatrix::quantize(&w, format).unwrap().matmul_t(&x).unwrap();
            let rel = ((&want - &got)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                / want
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap())
            .sqrt();
            assert!(rel < tolerance, "{format:?} m={m}: relative error {rel}");
        }
    }

    #[test]
    fn embedding_rows_dequantize_the_right_rows() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (10, 64), &dev).unwrap();
        let q = QMatrix::quantize(&w, GgmlDType::Q8_0).unwrap();
        let rows = q.rows(&[7, 2], &dev).unwrap();
        let want = Tensor::cat(
            &[
                w.get(7).unwrap().unsqueeze(0).unwrap(),
                w.get(2).unwrap().unsqueeze(0).unwrap(),
            ],
            0,
        )
        .unwrap();
        let diff = crate::max_abs_diff(&rows, &want);
        assert!(diff < 0.05, "{diff}");
        assert!(q.rows(&[10], &dev).is_err());
    }
}
