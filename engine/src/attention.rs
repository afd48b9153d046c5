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

    /// Appends one position's key and value for every head from `qkv_row`
    /// (`[nh, 3, hd]`).
    fn push(&mut self, qkv_row: &[f32], nh: usize, hd: usize) {
        self.reserve(1, 1, nh, hd);
        for h in 0..nh {
            let src = &qkv_row[h * 3 * hd..][..3 * hd];
            let dst = (h * self.capacity + self.len) * hd;
            self.k[dst..dst + hd].copy_from_slice(&src[hd..2 * hd]);
            self.v[dst..dst + hd].copy_from_slice(&src[2 * hd..]);
        }
        self.len += 1;
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

/// The cached keys and values one query attends over, with their ALiBi positions and
/// whether each is a real token.
struct Keys<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    positions: &'a [f32],
    visible: &'a [bool],
}

/// One query against the first `t` cached positions, softmax-weighted values into `out`
/// (zeros when it sees nothing: a padding query, whose output no real token reads).
fn attend_query(
    q: &[f32],
    k: &Keys,
    t: usize,
    scale: f32,
    slope: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let mut max = f32::NEG_INFINITY;
    for (j, score) in scores.iter_mut().enumerate().take(t) {
        if k.visible[j] {
            *score = dot(q, &k.keys[j * hd..][..hd]) * scale + slope * k.positions[j];
            max = max.max(*score);
        }
    }
    out.fill(0.0);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut total = 0f32;
    for (j, score) in scores.iter_mut().enumerate().take(t) {
        *score = if k.visible[j] {
            (*score - max).exp()
        } else {
            0.0
        };
        total += *score;
    }
    for (j, &p) in scores.iter().enumerate().take(t) {
        if p > 0.0 {
            let w = p / total;
            for (o, v) in out.iter_mut().zip(&k.values[j * hd..][..hd]) {
                *o += w * v;
            }
        }
    }
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
            let keys = Keys {
                keys,
                values,
                positions,
                visible,
            };
            attend_query(q, &keys, past + i + 1, scale, slopes[h], &mut scores, out);
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

/// Attention of one new position per sequence, each sequence with its own cache (so their
/// lengths may differ), in one parallel pass over every (sequence, head) pair. `qkv` is
/// `[b, nh, 3, hd]`; the new keys and values are appended to the caches. Returns the merged
/// heads, `[b, nh·hd]`. The same arithmetic as [`attend`] for an unpadded sequence.
pub fn attend_each(
    qkv: &[f32],
    nh: usize,
    hd: usize,
    caches: &mut [&mut KvCache],
    slopes: &[f32],
) -> Vec<f32> {
    for (row, cache) in qkv.chunks(nh * 3 * hd).zip(caches.iter_mut()) {
        cache.push(row, nh, hd);
    }
    let longest = caches.iter().map(|c| c.len).max().unwrap_or(0);
    let positions: Vec<f32> = (0..longest).map(|j| j as f32).collect();
    let visible = vec![true; longest];
    let caches: &[&mut KvCache] = caches;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut merged = vec![0f32; caches.len() * nh * hd];
    for_each_chunk_mut(&mut merged, hd, |bh, out| {
        let (bi, h) = (bh / nh, bh % nh);
        let cache = &caches[bi];
        let (t, cap) = (cache.len, cache.capacity);
        let keys = Keys {
            keys: &cache.k[h * cap * hd..][..t * hd],
            values: &cache.v[h * cap * hd..][..t * hd],
            positions: &positions,
            visible: &visible,
        };
        let q = &qkv[(bi * nh + h) * 3 * hd..][..hd];
        let mut scores = vec![0f32; t];
        attend_query(q, &keys, t, scale, slopes[h], &mut scores, out);
    });
    merged
}
