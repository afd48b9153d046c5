//! Sampling settings of a request, their validation, and the per-sequence sampler built from
//! them (repetition penalty, temperature, top-k, top-p, seeded randomness).

use mananera_model::math;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// How to pick tokens and when to stop. The defaults match `config.toml`'s `[generation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token every time (greedy).
    pub temperature: f64,
    /// Sample only among the `top_k` most likely tokens; 0 turns the filter off.
    pub top_k: usize,
    /// Sample only within the smallest set of tokens whose probability reaches `top_p` (after
    /// `top_k`, over the tokens it kept, as transformers does); 1 turns it off.
    pub top_p: f64,
    /// Penalty (> 1 discourages) applied to every token already in the prompt or the output.
    pub repetition_penalty: f32,
    /// Random seed; the same seed, settings and prompt give the same text. None picks one.
    pub seed: Option<u64>,
    /// Hard cap on generated tokens.
    pub max_new_tokens: usize,
    /// The end-of-text token cannot be chosen before this many tokens (as transformers'
    /// `min_new_tokens`): a speech at least this long (or `max_new_tokens`, when that is
    /// lower). 0 turns it off.
    pub min_new_tokens: usize,
    /// Soft cap on generated words: past it, generation stops at the next sentence end if one
    /// comes soon, else at a word boundary shortly after. 0 turns it off.
    pub max_words: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed: None,
            max_new_tokens: 256,
            min_new_tokens: 0,
            max_words: 100,
        }
    }
}

impl SamplingParams {
    /// Rejects settings that make no sense, naming the setting and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(what));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be 0 (greedy) or positive, got {}",
                self.temperature
            ));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad(format!(
                "top_p must be in (0, 1] (1 turns it off), got {}",
                self.top_p
            ));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition_penalty must be positive (1 turns it off), got {}",
                self.repetition_penalty
            ));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }

        Ok(())
    }

    /// The sampler for one sequence, seeded with `seed`.
    pub(crate) fn sampler(&self, seed: u64) -> Sampler {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            scores: Vec::new(),
            candidates: Vec::new(),
        }
    }
}

/// Picks the next token of one sequence, as transformers' `generate` does with these
/// settings: repetition penalty, then temperature, top-k, top-p on what top-k kept
/// (renormalised), and a draw. It works on one row of logits in place of a copy kept
/// between tokens, and finds the top-k by partial selection in one pass, so a token costs a
/// pass over the vocabulary and work on the few candidates: no index vector, sort or tensor
/// per token.
pub(crate) struct Sampler {
    rng: StdRng,
    temperature: f64,
    top_k: usize,
    top_p: f64,
    repetition_penalty: f32,
    /// The row's scores after the penalty and the ban.
    scores: Vec<f32>,
    /// `(column, score)` of the tokens still in the running, best first once sorted.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// `logits`: one score per logit column; `context`: the columns of the prompt and of the
    /// tokens generated so far, which the repetition penalty applies to (as in transformers).
    /// `banned`: a column that may not be chosen (the end of text, before `min_new_tokens`).
    /// Returns the chosen column.
    pub(crate) fn next(
        &mut self,
        logits: &[f32],
        context: &[u32],
        banned: Option<u32>,
    ) -> Result<u32> {
        self.scores.clear();
        self.scores.extend_from_slice(logits);
        if self.repetition_penalty != 1.0 {
            let penalty = self.repetition_penalty;
            let mut seen: Vec<u32> = context.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for column in seen {
                if let Some(score) = self.scores.get_mut(column as usize) {
                    *score = if *score >= 0.0 {
                        *score / penalty
                    } else {
                        *score * penalty
                    };
                }
            }
        }
        if let Some(score) = banned.and_then(|c| self.scores.get_mut(c as usize)) {
            *score = f32::NEG_INFINITY;
        }
        let Some((best, best_score)) = argmax(&self.scores) else {
            return Err(Error::InvalidInput(
                "no token can be chosen: every score is −∞ or NaN".into(),
            ));
        };
        if self.temperature == 0.0 {
            return Ok(best);
        }
        let inv_t = (1.0 / self.temperature) as f32;
        let weight = |score: f32| math::exp((score - best_score) * inv_t);
        if self.top_k == 0 && self.top_p >= 1.0 {
            // Every token: a draw along the row, no candidates needed. The scratch row turns
            // into the weights, so each exponential is computed once.
            let scores = &mut self.scores;
            let total: f64 = math::vectorized(|| {
                scores.iter_mut().for_each(|s| *s = weight(*s));
                scores.iter().map(|&w| w as f64).sum()
            });
            let mut target = self.rng.random::<f64>() * total;
            for (column, &w) in scores.iter().enumerate() {
                target -= w as f64;
                if target < 0.0 {
                    return Ok(column as u32);
                }
            }
            return Ok(best);
        }
        let kept = self.nucleus(&weight);
        let kept = &self.candidates[..kept];
        let kept_total: f64 = kept.iter().map(|&(_, s)| weight(s) as f64).sum();
        let mut target = self.rng.random::<f64>() * kept_total;
        for &(column, score) in kept {
            target -= weight(score) as f64;
            if target < 0.0 {
                return Ok(column);
            }
        }
        Ok(kept[0].0)
    }
}

impl Sampler {
    /// Fills `candidates` (best first) and returns how many of them stay in the running:
    /// top-k's, then the smallest prefix whose probability reaches top-p (transformers keeps
    /// the token that crosses it). Without top-k, top-p's probabilities are over the whole
    /// row, and candidates are gathered 64 at a time, doubling, until they reach top-p.
    fn nucleus(&mut self, weight: &impl Fn(f32) -> f32) -> usize {
        let vocab = self.scores.len();
        let (limit, row_total) = match self.top_k {
            0 => {
                let scores = &self.scores;
                let total: f64 =
                    math::vectorized(|| scores.iter().map(|&s| weight(s) as f64).sum());
                (vocab, Some(total))
            }
            k => (k.min(vocab), None),
        };
        let mut k = if row_total.is_some() {
            limit.min(64)
        } else {
            limit
        };
        loop {
            top_k(&self.scores, k, &mut self.candidates);
            let n = self.candidates.len();
            if self.top_p >= 1.0 {
                return n.max(1);
            }
            let total = row_total
                .unwrap_or_else(|| self.candidates.iter().map(|&(_, s)| weight(s) as f64).sum());
            let mut mass = 0.0;
            for (i, &(_, s)) in self.candidates.iter().enumerate() {
                mass += weight(s) as f64 / total;
                if mass >= self.top_p {
                    return i + 1;
                }
            }
            if k >= limit || n < k {
                return n.max(1);
            }
            k = (2 * k).min(limit);
        }
    }
}

/// The first column of the highest score, ignoring NaN; None when none is above −∞. The
/// maximum comes from vector lanes (a scalar running maximum is one dependent comparison
/// per column), then its first column from a plain search.
fn argmax(scores: &[f32]) -> Option<(u32, f32)> {
    let best = math::vectorized(|| math::max(scores));
    if best == f32::NEG_INFINITY {
        return None;
    }
    let column = scores.iter().position(|&s| s == best)?;
    Some((column as u32, best))
}

/// The `k` highest-scoring columns into `out`, best first (ties: the lower column first),
/// by one pass that keeps at most `2k` candidates above a rising threshold. Columns at −∞
/// or NaN are never candidates.
fn top_k(scores: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    out.clear();
    let mut threshold = f32::NEG_INFINITY;
    for (column, &score) in scores.iter().enumerate() {
        if score > threshold {
            out.push((column as u32, score));
            if out.len() >= 2 * k.max(1) {
                out.select_nth_unstable_by(k - 1, better);
                out.truncate(k);
                threshold = out.iter().map(|&(_, s)| s).fold(f32::INFINITY, f32::min);
            }
        }
    }
    out.sort_unstable_by(better);
    out.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_banned_column_is_never_chosen() {
        let logits = [0.1f32, 0.2, 9.0, 0.3];
        let greedy = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.0,
            ..Default::default()
        };
        let mut sampler = greedy.sampler(0);
        assert_eq!(sampler.next(&logits, &[], None).unwrap(), 2);
        assert_eq!(sampler.next(&logits, &[], Some(2)).unwrap(), 3);
        let mut sampled = SamplingParams::default().sampler(7);
        for _ in 0..200 {
            assert_ne!(sampled.next(&logits, &[], Some(2)).unwrap(), 2);
        }
    }

    /// A row with a clear order: column c scores `-(c as f32) / 4`.
    fn falling(n: usize) -> Vec<f32> {
        (0..n).map(|c| -(c as f32) / 4.0).collect()
    }

    fn params(temperature: f64, top_k: usize, top_p: f64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn top_k_finds_the_best_columns_in_one_pass() {
        let mut scores: Vec<f32> = (0..1000).map(|c| ((c * 7919) % 1000) as f32).collect();
        scores[17] = f32::NAN;
        scores[18] = f32::NEG_INFINITY;
        let mut out = Vec::new();
        top_k(&scores, 5, &mut out);
        let mut want: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_finite())
            .map(|(c, &s)| (c as u32, s))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(out, want[..5]);
        // Ties keep the lower column.
        top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 2, &mut out);
        assert_eq!(out, [(1, 3.0), (2, 3.0)]);
    }

    /// Sampled frequencies follow transformers' rule: top-k, then top-p over the
    /// renormalised survivors, keeping the token that crosses top-p.
    #[test]
    fn sampling_keeps_exactly_the_tokens_transformers_keeps() {
        let row = falling(200);
        // Probabilities over the 3 best at temperature 1: e^0, e^-0.25, e^-0.5 renormalised
        // are 0.419, 0.326, 0.254 (cumulative 0.419, 0.746): top_p 0.7 keeps 2.
        let mut sampler = params(1.0, 3, 0.7).sampler(5);
        let mut counts = [0usize; 200];
        for _ in 0..4000 {
            counts[sampler.next(&row, &[], None).unwrap() as usize] += 1;
        }
        assert!(counts[0] > 0 && counts[1] > 0, "{:?}", &counts[..4]);
        assert_eq!(counts[2..].iter().sum::<usize>(), 0, "{:?}", &counts[..4]);
        let share = counts[0] as f64 / 4000.0;
        let want = 1.0 / (1.0 + (-0.25f64).exp());
        assert!((share - want).abs() < 0.03, "{share} vs {want}");
        // Top-k alone keeps k tokens.
        let mut sampler = params(1.0, 4, 1.0).sampler(5);
        let picked: std::collections::BTreeSet<u32> = (0..2000)
            .map(|_| sampler.next(&row, &[], None).unwrap())
            .collect();
        assert_eq!(picked, (0..4).collect());
        // Top-p alone: cumulative over the whole row. With 1/4 steps the best 10 tokens
        // hold 1 - e^-2.5 = 0.918 of the mass, the best 11 0.936: top_p 0.93 keeps 11.
        let mut sampler = params(1.0, 0, 0.93).sampler(9);
        let worst = (0..20000)
            .map(|_| sampler.next(&row, &[], None).unwrap())
            .max()
            .unwrap();
        assert_eq!(worst, 10);
        // A flat row needs candidates gathered past the first 64: 501 of 1000 reach 0.5004.
        let flat = vec![0f32; 1000];
        let mut sampler = params(1.0, 0, 0.5004).sampler(4);
        let worst = (0..20000)
            .map(|_| sampler.next(&flat, &[], None).unwrap())
            .max()
            .unwrap();
        assert_eq!(worst, 500);
        // Neither: every token can come.
        let mut sampler = params(1.0, 0, 1.0).sampler(3);
        let worst = (0..20000)
            .map(|_| sampler.next(&row, &[], None).unwrap())
            .max()
            .unwrap();
        assert!(worst > 20, "{worst}");
    }

    #[test]
    fn the_penalty_applies_once_per_token_and_a_row_of_nothing_is_an_error() {
        let greedy = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut sampler = greedy.sampler(0);
        // Seen three times, column 0 is halved once: 0.5 still beats 0.3.
        assert_eq!(
            sampler.next(&[1.0, 0.3, -1.0], &[0, 0, 0], None).unwrap(),
            0
        );
        // Seen once, 0.5 loses to 0.6.
        assert_eq!(sampler.next(&[1.0, 0.6, -1.0], &[0], None).unwrap(), 1);
        // A negative score is multiplied: -0.5 becomes -1.0 and loses to -0.8.
        assert_eq!(sampler.next(&[-0.5, -0.8], &[0], None).unwrap(), 1);
        let err = sampler
            .next(&[f32::NAN, f32::NEG_INFINITY], &[], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no token can be chosen"), "{err}");
        let err = params(0.8, 50, 0.95)
            .sampler(0)
            .next(&[0.0], &[], Some(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no token can be chosen"), "{err}");
    }

    #[test]
    fn nonsense_values_are_rejected_with_the_setting_named() {
        let cases = [
            SamplingParams {
                temperature: -0.5,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                max_new_tokens: 0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f64::NAN,
                ..Default::default()
            },
        ];
        let names = [
            "temperature",
            "top_p",
            "top_p",
            "repetition_penalty",
            "max_new_tokens",
            "temperature",
        ];
        for (params, name) in cases.iter().zip(names) {
            let err = params.validate().expect_err("must be rejected").to_string();
            assert!(err.contains(name), "{err}");
        }
        SamplingParams::default()
            .validate()
            .expect("defaults are valid");
    }
}
