//! ALiBi, BLOOM's position information: each head adds `slope · distance` to its attention
//! scores. Serving and training must use the same slopes, so they are computed here once.

/// ALiBi slopes for any head count, exactly as transformers' `build_alibi_tensor` computes
/// them: a geometric series for the largest power of two ≤ `n_head`, then every other slope
/// of the series for twice that power to fill the remaining heads (bloom-176b has 112 heads).
pub fn alibi_slopes(n_head: usize) -> Vec<f32> {
    let closest_power_of_2 = 1usize << n_head.ilog2();
    let base = 2f64.powf(-(2f64.powf(-((closest_power_of_2 as f64).log2() - 3.0))));
    let mut slopes: Vec<f32> = (1..=closest_power_of_2)
        .map(|p| base.powi(p as i32) as f32)
        .collect();
    if closest_power_of_2 != n_head {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * closest_power_of_2 as f64).log2() - 3.0))));
        let remaining = (n_head - closest_power_of_2).min(closest_power_of_2);
        slopes.extend((0..remaining).map(|i| extra_base.powi(2 * i as i32 + 1) as f32));
    }
    slopes
}

#[cfg(test)]
mod tests {
    use super::alibi_slopes;

    #[test]
    fn alibi_slopes_match_transformers_for_powers_of_two() {
        // transformers' build_alibi_tensor for 8 heads: 2^-1 … 2^-8.
        let expected: Vec<f32> = (1..=8).map(|p| 2f32.powi(-p)).collect();
        assert_eq!(alibi_slopes(8), expected);
    }

    #[test]
    fn alibi_slopes_fill_non_powers_of_two_with_odd_powers_of_the_finer_base() {
        // 12 heads: the 8-head series, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 (base of 16 heads, odd powers).
        let slopes = alibi_slopes(12);
        assert_eq!(slopes.len(), 12);
        let extra: Vec<f32> = [0.5f32, 1.5, 2.5, 3.5]
            .iter()
            .map(|e| 2f32.powf(-e))
            .collect();
        for (got, want) in slopes[8..].iter().zip(extra) {
            assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        }
        // bloom-176b: 112 heads = 64 + 48 extra.
        assert_eq!(alibi_slopes(112).len(), 112);
    }
}
