//! Self-attention for inference: ALiBi, causal and padding masks, and the key/value cache,
//! fused into one pass over plain slices.
//!
//! Decoding one token touches ~15 small tensors per layer when written with tensor ops
//! (split heads, grow the cache by concatenation, two batched matmuls, bias, softmax, merge
//! heads); at ~100 ops per token that overhead rivals the weights' memory time. Here the
//! cache grows in place (amortised doubling) and each (sequence, head) pair is one task.
//!
//! Shapes: `b` sequences, `s` new positions, `t` positions in all, `nh` heads of `hd`.

use super::gemv::dot;
use super::parallel::for_each_chunk_mut;

/// Keys and values of every position seen so far, `[b][nh][capacity][hd]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `extra` more positions, keeping the cached ones.
    fn reserve(&mut self, extra: usize, b: usize, nh: usize, hd: usize) {
        if self.len + extra <= self.capacity {
            return;
        }
        let capacity = (self.len + extra).max(2 * self.capacity).max(64);
        let grow = |old: &[f32]| {
            let mut new = vec![0f32; b * nh * capacity * hd];
            for bh in 0..b * nh {
                let src = &old[bh * self.capacity * hd..][..self.len * hd];
                new[bh * capacity * hd..][..self.len * hd].copy_from_slice(src);
            }
            new
        };
        self.k = grow(&self.k);
        self.v = grow(&self.v);
        self.capacity = capacity;
    }
}

/// Which positions each sequence may attend to and their ALiBi positions, computed once per
/// forward pass from the `[b, t]` attention mask (1 = token, 0 = left padding).
#[derive(Debug, Clone)]
pub struct MaskInfo {
    t: usize,
    /// ALiBi position of each key: its index among the sequence's real tokens (0 for padding),
    /// as transformers' `build_alibi_tensor` computes from the mask's cumulative sum.
    positions: Vec<f32>,
    visible: Vec<bool>,
}

impl MaskInfo {
    /// From a row-major `[b, t]` mask.
    pub fn new(mask: &[u8], b: usize, t: usize) -> Self {
        let mut positions = Vec::with_capacity(b * t);
        for row in mask.chunks(t) {
            let mut seen = 0f32;
            for &m in row {
                seen += f32::from(m);
                positions.push(if m > 0 { seen - 1.0 } else { 0.0 });
            }
        }
        Self {
            t,
            positions,
            visible: mask.iter().map(|&m| m > 0).collect(),
        }
    }
}

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub b: usize,
    pub s: usize,
    pub nh: usize,
    pub hd: usize,
}

/// Attention of the new positions. `qkv` is the fused projection, `[b, s, nh, 3, hd]`
/// (transformers' per-head `[q | k | v]` layout); the new keys and values are appended to
/// `cache`. Returns the merged heads, `[b, s, nh·hd]`.
pub fn attend(
    qkv: &[f32],
    d: Dims,
    cache: &mut KvCache,
    mask: &MaskInfo,
    slopes: &[f32],
) -> Vec<f32> {
    let Dims { b, s, nh, hd } = d;
    let past = cache.len;
    let t = past + s;
    debug_assert_eq!(mask.t, t);
    cache.reserve(s, b, nh, hd);
    let cap = cache.capacity;
    for bi in 0..b {
        for i in 0..s {
            for h in 0..nh {
                let src = &qkv[((bi * s + i) * nh + h) * 3 * hd..][..3 * hd];
                let dst = ((bi * nh + h) * cap + past + i) * hd;
                cache.k[dst..dst + hd].copy_from_slice(&src[hd..2 * hd]);
                cache.v[dst..dst + hd].copy_from_slice(&src[2 * hd..]);
            }
        }
    }
    cache.len = t;

    let scale = 1.0 / (hd as f32).sqrt();
    let (k, v) = (&cache.k, &cache.v);
    // One task per (sequence, head): its s query rows, written as [b, nh, s, hd].
    let mut heads = vec![0f32; b * nh * s * hd];
    for_each_chunk_mut(&mut heads, s * hd, |bh, out| {
        let (bi, h) = (bh / nh, bh % nh);
        let keys = &k[bh * cap * hd..][..t * hd];
        let values = &v[bh * cap * hd..][..t * hd];
        let positions = &mask.positions[bi * t..][..t];
        let visible = &mask.visible[bi * t..][..t];
        let mut scores = vec![0f32; t];
        for (i, out) in out.chunks_mut(hd).enumerate() {
            let q = &qkv[((bi * s + i) * nh + h) * 3 * hd..][..hd];
            let query = past + i;
            let mut max = f32::NEG_INFINITY;
            for (j, score) in scores.iter_mut().enumerate().take(query + 1) {
                if visible[j] {
                    *score = dot(q, &keys[j * hd..][..hd]) * scale + slopes[h] * positions[j];
                    max = max.max(*score);
                }
            }
            if max == f32::NEG_INFINITY {
                // A padding query sees nothing; its output is never read by a real token.
                out.fill(0.0);
                continue;
            }
            let mut total = 0f32;
            for (j, score) in scores.iter_mut().enumerate().take(query + 1) {
                *score = if visible[j] {
                    (*score - max).exp()
                } else {
                    0.0
                };
                total += *score;
            }
            out.fill(0.0);
            for (j, &p) in scores.iter().enumerate().take(query + 1) {
                if p > 0.0 {
                    let w = p / total;
                    for (o, v) in out.iter_mut().zip(&values[j * hd..][..hd]) {
                        *o += w * v;
                    }
                }
            }
        }
    });
    // [b, nh, s, hd] → [b, s, nh·hd]
    let mut merged = vec![0f32; b * s * nh * hd];
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..s {
                let src = &heads[((bi * nh + h) * s + i) * hd..][..hd];
                merged[((bi * s + i) * nh + h) * hd..][..hd].copy_from_slice(src);
            }
        }
    }
    merged
}
