//! The voices a request may choose: one per `[[corpus.speakers]]` entry, each with the
//! header its training blocks open with, and the default one (`generation.voice`).

use mananera_training::speakers::{SpeakerRule, Voice};
use mananera_training::store::Entry;

/// The configured voices and the default.
#[derive(Debug, Clone)]
pub struct Voices {
    voices: Vec<Voice>,
    default: usize,
}

/// A voice a request named that is not configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVoice {
    pub asked: String,
    /// The voices there are, in the configured order.
    pub known: Vec<String>,
}

impl Voices {
    /// The voices of `speakers`, `default` among them (a mistake names the setting).
    pub fn new(speakers: &[SpeakerRule], default: &str) -> Result<Self, String> {
        let voices: Vec<Voice> = speakers.iter().map(SpeakerRule::voice).collect();
        let ids = || {
            voices
                .iter()
                .map(|v| v.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let default = voices.iter().position(|v| v.id == default).ok_or_else(|| {
            format!(
                "generation.voice = {default:?} is none of the voices of [[corpus.speakers]] \
                     ({}); set it to one of them",
                ids()
            )
        })?;
        Ok(Self { voices, default })
    }

    /// The voice `asked` names (ignoring case and surrounding spaces), or the default one.
    pub fn choose(&self, asked: Option<&str>) -> Result<&Voice, UnknownVoice> {
        let Some(asked) = asked.map(str::trim).filter(|a| !a.is_empty()) else {
            return Ok(self.default_voice());
        };
        self.voices
            .iter()
            .find(|v| v.id.eq_ignore_ascii_case(asked))
            .ok_or_else(|| UnknownVoice {
                asked: asked.to_string(),
                known: self.ids().into_iter().map(str::to_string).collect(),
            })
    }

    /// The voices' ids, in the configured order.
    fn ids(&self) -> Vec<&str> {
        self.voices.iter().map(|v| v.id.as_str()).collect()
    }

    /// The voices' ids, the default first: what a menu offers.
    pub fn menu(&self) -> Vec<String> {
        let default = &self.default_voice().id;
        std::iter::once(default.clone())
            .chain(
                self.ids()
                    .into_iter()
                    .filter(|v| v != default)
                    .map(str::to_string),
            )
            .collect()
    }

    /// The voice of a request that names none (`generation.voice`).
    pub fn default_voice(&self) -> &Voice {
        &self.voices[self.default]
    }
}

/// Refuses a voice that training cannot have learnt although it could have: a speaker with
/// no transcript in a corpus (`entries`) that holds transcripts from their days (between
/// `from` and `until`), whose labels then never matched. A corpus with nothing from a
/// speaker's days (an empty one before the first night, or one of older years only) is fine:
/// their transcripts are still to come.
pub fn check_trained(speakers: &[SpeakerRule], entries: &[Entry]) -> Result<(), String> {
    for speaker in speakers {
        let in_their_days = |e: &&Entry| {
            speaker.from.is_none_or(|from| e.date >= from)
                && speaker.until.is_none_or(|until| e.date <= until)
        };
        let days = entries.iter().filter(in_their_days).count();
        let theirs = entries.iter().filter(|e| e.speaker == speaker.name).count();
        if days > 0 && theirs == 0 {
            return Err(format!(
                "voice {:?} has no training data: the corpus holds {days} transcript(s) from the days \
                 of {:?} but none of their words, so their `labels` never matched. Fix `labels` or \
                 `titles` of that [[corpus.speakers]] entry and read the transcripts again \
                 (`mananera scrape --full`, `mananera corpus import`), or remove the entry",
                speaker.voice, speaker.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mananera_training::speakers::default_speakers;

    #[test]
    fn a_voice_is_chosen_by_id_or_defaults_and_an_unknown_one_lists_the_voices() {
        let voices = Voices::new(&default_speakers(), "amlo").unwrap();
        assert_eq!(voices.choose(None).unwrap().id, "amlo");
        assert_eq!(voices.choose(Some(" Sheinbaum ")).unwrap().id, "sheinbaum");
        assert!(
            voices
                .choose(Some("sheinbaum"))
                .unwrap()
                .header
                .contains("SHEINBAUM")
        );
        let unknown = voices.choose(Some("fox")).unwrap_err();
        assert_eq!(unknown.known, ["amlo", "sheinbaum"]);
        let err = Voices::new(&default_speakers(), "fox").unwrap_err();
        assert!(
            err.contains("generation.voice") && err.contains("amlo, sheinbaum"),
            "{err}"
        );
    }

    fn entry(date: &str, speaker: &str) -> Entry {
        serde_json::from_value(serde_json::json!({
            "id": format!("{date}.txt"), "date": date, "source": "t", "url": "u", "title": "",
            "speaker": speaker, "chars": 1, "chunks": 1, "sha256": "", "fingerprint": "", "bytes": 1,
        }))
        .unwrap()
    }

    #[test]
    fn a_speaker_never_matched_in_their_days_is_refused_one_whose_days_are_to_come_is_not() {
        let speakers = default_speakers();
        assert!(check_trained(&speakers, &[]).is_ok(), "an empty corpus");
        let amlo_only = [entry("2023-03-01", "Andrés Manuel López Obrador")];
        assert!(
            check_trained(&speakers, &amlo_only).is_ok(),
            "her days are to come"
        );
        let mut unmatched = amlo_only.to_vec();
        unmatched.push(entry("2025-03-01", "Andrés Manuel López Obrador"));
        let err = check_trained(&speakers, &unmatched).unwrap_err();
        assert!(
            err.starts_with("voice \"sheinbaum\" has no training data"),
            "{err}"
        );
        unmatched.push(entry("2025-03-02", "Claudia Sheinbaum Pardo"));
        assert!(check_trained(&speakers, &unmatched).is_ok());
    }
}
