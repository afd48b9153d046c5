//! BLOOM's elementwise math in a form the compiler can vectorise, shared by serving and
//! training so both compute the same numbers: `e^x` as a branch-free polynomial (libm's
//! `expf` and `tanhf`, called per element, cannot be vectorised), the tanh-approximated GELU
//! and its derivative, softmax sums, and [`vectorized`], which runs a loop compiled for the
//! widest vector unit this CPU has (AVX-512, else AVX2 + FMA, else the portable build).

/// Runs `f` compiled for the widest vector unit detected at run time. `f` must be a loop
/// over slices of the `#[inline(always)]` functions of this module (or other code the
/// compiler inlines into it); its results are the same on every path up to the order of
/// floating-point operations, which the compiler keeps.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    vectorized_as(Simd::detected(), f)
}

/// The vector units [`vectorized`] can compile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// x86-64 AVX-512 (F).
    Avx512,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// Whatever the build targets (SSE2 on x86-64).
    Portable,
}

impl Simd {
    /// The widest this CPU has.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// [`vectorized`] on a chosen path (tests compare the paths); a path this CPU lacks runs
/// the portable build instead.
#[inline(always)]
pub fn vectorized_as<R>(simd: Simd, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if simd == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F was just detected.
            return unsafe { with_avx512(f) };
        }
        if simd != Simd::Portable
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA were just detected.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `e^x` by range reduction to `[−ln2/2, ln2/2]` and a degree-6 polynomial, within 5e-7
/// relative error for `x` in [−86, 80]. Below, it is 0 (as `e^−∞` must be for masked
/// attention scores); above, `e^80`. Both ends keep every result a normal f32: subnormal
/// operands make the matrix products that follow tens of times slower.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let underflows = x < -86.0;
    let x = x.clamp(-86.0, 80.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let e = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflows { 0.0 } else { e }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// BLOOM's GELU, `0.5·x·(1 + tanh(z))` with `z = √(2/π)·(x + 0.044715·x³)`, computed as
/// the equal `x / (1 + e^(−2z))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let z = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    x / (1.0 + exp(-2.0 * z))
}

/// `d gelu(x) / dx`: with `σ = 1 / (1 + e^(−2z))` (so `0.5·(1 + tanh z) = σ`),
/// `σ + x·2σ(1−σ)·dz/dx`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let z = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    let sigma = 1.0 / (1.0 + exp(-2.0 * z));
    let dz = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
    sigma + 2.0 * x * sigma * (1.0 - sigma) * dz
}

/// Lanes of the partial sums below: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// The largest element (−∞ for an empty row).
#[inline(always)]
pub fn max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let tail = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `Σ e^(v − shift)` over `row`, in f32 lanes added up in f64.
#[inline(always)]
pub fn sum_exp(row: &[f32], shift: f32) -> f64 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += exp(v - shift);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| exp(v - shift) as f64)
        .sum();
    lanes.iter().map(|&s| s as f64).sum::<f64>() + tail
}

/// Replaces every `v` of `row` with `e^(v − shift)` and returns their sum (as [`sum_exp`]).
#[inline(always)]
pub fn exp_in_place(row: &mut [f32], shift: f32) -> f64 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, v) in lanes.iter_mut().zip(chunk) {
            *v = exp(*v - shift);
            *s += *v;
        }
    }
    let mut tail = 0f64;
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        tail += *v as f64;
    }
    lanes.iter().map(|&s| s as f64).sum::<f64>() + tail
}

/// `(max, ln Σ e^(v − max))` of a row of logits: `max + lse − v_t` is token t's loss.
#[inline(always)]
pub fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = max(row);
    (max, sum_exp(row, max).ln() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_gelu(x: f64) -> f64 {
        0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x)).tanh())
    }

    #[test]
    fn exp_is_accurate_over_the_range_used() {
        for i in -8600..=8000 {
            let x = i as f32 / 100.0;
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            assert!(rel < 5e-7, "exp({x}): relative error {rel}");
        }
        for x in [-86.01, -100.0, f32::NEG_INFINITY] {
            assert_eq!(exp(x), 0.0, "exp({x})");
        }
        for x in [-86.0, -50.0, 0.0, 80.0, 200.0] {
            assert!(exp(x).is_normal(), "exp({x}) = {}", exp(x));
        }
    }

    #[test]
    fn gelu_and_its_gradient_match_the_formula() {
        for i in -4000..4000 {
            let x = i as f64 / 200.0;
            let want = reference_gelu(x);
            let got = gelu(x as f32) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu({x}) = {got}, want {want}"
            );
            let h = 1e-4;
            let slope = (reference_gelu(x + h) - reference_gelu(x - h)) / (2.0 * h);
            let grad = gelu_grad(x as f32) as f64;
            assert!(
                (grad - slope).abs() <= 1e-5 * slope.abs().max(1.0),
                "gelu'({x}) = {grad}, want {slope}"
            );
        }
    }

    #[test]
    fn every_path_computes_the_same_softmax_sums() {
        let row: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let max_ref = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum_ref: f64 = row.iter().map(|&v| ((v - max_ref) as f64).exp()).sum();
        for simd in [Simd::Avx512, Simd::Avx2, Simd::Portable] {
            let (m, lse) = vectorized_as(simd, || log_sum_exp(&row));
            assert_eq!(m, max_ref, "{simd:?}");
            assert!((lse as f64 - sum_ref.ln()).abs() < 1e-6, "{simd:?}: {lse}");
            let mut copy = row.clone();
            let sum = vectorized_as(simd, || exp_in_place(&mut copy, m));
            assert!((sum - sum_ref).abs() < 1e-5 * sum_ref, "{simd:?}: {sum}");
            for (&e, &v) in copy.iter().zip(&row) {
                let want = ((v - m) as f64).exp();
                assert!((e as f64 - want).abs() <= 5e-7 * want, "{simd:?}: e^{v}");
            }
            let mut gelus = vec![0f32; row.len()];
            vectorized_as(simd, || {
                gelus.iter_mut().zip(&row).for_each(|(y, &x)| *y = gelu(x))
            });
            for (&y, &x) in gelus.iter().zip(&row) {
                assert_eq!(y, gelu(x), "{simd:?}: gelu({x})");
            }
        }
    }
}
