//! Whether a new version may be served: its validation perplexity may not be worse than the
//! served model's beyond `training.tolerance`, neither overall nor for any one voice (so one
//! president's nightly news cannot quietly degrade the other's voice).

use std::collections::BTreeMap;

use mananera_model::versions::VoiceMetrics;

/// True when `after` is at most (1 + tolerance) × `before`.
pub fn overall_holds(before: f64, after: f64, tolerance: f64) -> bool {
    after <= before * (1.0 + tolerance)
}

/// The voices whose perplexity after the run is worse than (1 + tolerance) × before, or not
/// a number; a voice the served model was not measured on (no perplexity before) is not
/// judged.
pub fn worse_voices(voices: &BTreeMap<String, VoiceMetrics>, tolerance: f64) -> Vec<String> {
    voices
        .iter()
        .filter(|(_, m)| {
            m.perplexity_before.is_finite()
                && !overall_holds(m.perplexity_before, m.perplexity_after, tolerance)
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(before: f64, after: f64) -> VoiceMetrics {
        VoiceMetrics {
            train_blocks: 1,
            validation_blocks: 1,
            perplexity_before: before,
            perplexity_after: after,
        }
    }

    #[test]
    fn one_voice_worse_beyond_the_tolerance_is_named() {
        let voices = BTreeMap::from([
            ("amlo".to_string(), voice(20.0, 20.3)),
            ("sheinbaum".to_string(), voice(30.0, 20.0)),
        ]);
        assert!(worse_voices(&voices, 0.02).is_empty());
        let voices = BTreeMap::from([
            ("amlo".to_string(), voice(20.0, 21.0)),
            ("sheinbaum".to_string(), voice(30.0, 20.0)),
        ]);
        assert_eq!(worse_voices(&voices, 0.02), ["amlo"]);
        assert!(worse_voices(&voices, 0.06).is_empty());
        let diverged = BTreeMap::from([("amlo".to_string(), voice(20.0, f64::NAN))]);
        assert_eq!(worse_voices(&diverged, 0.02), ["amlo"]);
        let unmeasured = BTreeMap::from([("amlo".to_string(), voice(f64::NAN, 25.0))]);
        assert!(worse_voices(&unmeasured, 0.02).is_empty());
    }
}
