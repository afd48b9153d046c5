//! Data parallelism for the engine's kernels on candle's barrier pool.
//!
//! Decoding runs ~100 short parallel regions per token. rayon's workers fall asleep between
//! them and each wake-up costs tens of microseconds; candle's barrier pool (which candle's own
//! element-wise ops already use) spins briefly between regions, so handing work to it costs
//! almost nothing. Sharing it also keeps one set of worker threads instead of two.

/// Calls `f(index, chunk)` for every `chunk_len`-sized chunk of `out` (the last may be
/// shorter), spread over the pool's threads and the caller's.
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let len = out.len();
    let chunk_len = chunk_len.max(1);
    let chunks = len.div_ceil(chunk_len);
    if chunks <= 1 {
        if len > 0 {
            f(0, out);
        }
        return;
    }
    // The pool takes a shared closure; chunks are handed out by index, so each is mutably
    // reached by exactly one call.
    let base = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(chunks, |range| {
        for index in range {
            let start = index * chunk_len;
            let end = len.min(start + chunk_len);
            // SAFETY: `start..end` lies inside `out`, which outlives this call (the pool joins
            // before returning), and distinct indices give disjoint ranges.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut((base as *mut T).add(start), end - start) };
            f(index, chunk);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_visited_once_with_its_index() {
        let mut out = vec![0usize; 1003];
        for_each_chunk_mut(&mut out, 10, |i, chunk| {
            for v in chunk.iter_mut() {
                *v += i + 1;
            }
        });
        for (j, v) in out.iter().enumerate() {
            assert_eq!(*v, j / 10 + 1);
        }
        let mut empty: Vec<u8> = Vec::new();
        for_each_chunk_mut(&mut empty, 4, |_, _| panic!("no chunks"));
    }
}
