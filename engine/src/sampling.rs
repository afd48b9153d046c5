//! Sampling settings of a request, their validation, and the per-sequence sampler built from
//! them (repetition penalty, temperature, top-k, top-p, seeded randomness).

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
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
    /// Sample only within the smallest set of tokens whose probability reaches `top_p`; 1 turns it off.
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
        let temperature = self.temperature;
        let top_k = (self.top_k > 0).then_some(self.top_k);
        let top_p = (self.top_p < 1.0).then_some(self.top_p);
        let sampling = match (temperature == 0.0, top_k, top_p) {
            (true, _, _) => Sampling::ArgMax,
            (false, None, None) => Sampling::All { temperature },
            (false, Some(k), None) => Sampling::TopK { k, temperature },
            (false, None, Some(p)) => Sampling::TopP { p, temperature },
            (false, Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        };
        Sampler {
            processor: LogitsProcessor::from_sampling(seed, sampling),
            repetition_penalty: self.repetition_penalty,
        }
    }
}

/// Picks the next token of one sequence.
pub(crate) struct Sampler {
    processor: LogitsProcessor,
    repetition_penalty: f32,
}

impl Sampler {
    /// `logits`: one score per logit column; `context`: the columns of the prompt and of the
    /// tokens generated so far, which the repetition penalty applies to (as in transformers).
    /// `banned`: a column that may not be chosen (the end of text, before `min_new_tokens`).
    /// Returns the chosen column.
    pub(crate) fn next(
        &mut self,
        logits: &Tensor,
        context: &[u32],
        banned: Option<u32>,
    ) -> Result<u32> {
        let logits = match banned {
            Some(column) => {
                let mut scores = logits.to_vec1::<f32>()?;
                if let Some(score) = scores.get_mut(column as usize) {
                    *score = f32::NEG_INFINITY;
                }
                Tensor::from_vec(scores, logits.dims(), logits.device())?
            }
            None => logits.clone(),
        };
        let logits = if self.repetition_penalty == 1.0 {
            logits.clone()
        } else {
            candle_transformers::utils::apply_repeat_penalty(
                &logits,
                self.repetition_penalty,
                context,
            )?
        };
        Ok(self.processor.sample(&logits)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_banned_column_is_never_chosen() {
        let logits = Tensor::new(&[0.1f32, 0.2, 9.0, 0.3], &candle_core::Device::Cpu).unwrap();
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
