//! The voices a request may choose: one per `[[corpus.speakers]]` entry, each with the
//! header its training blocks open with, and the default one (`generation.voice`).

use mananera_training::speakers::{SpeakerRule, Voice};

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
}
