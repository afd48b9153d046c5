//! Which speaker labels belong to the speakers we keep (by default the president of the day),
//! tolerant of the typos real transcripts contain and strict about look-alikes.

use jiff::civil::Date;
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::text::{compact_label, fold_accents};

/// One speaker to keep, as configured in `[[corpus.speakers]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakerRule {
    /// Name recorded with every transcript kept for this speaker.
    pub name: String,
    /// The short id a request names this speaker's voice by (`amlo`, `sheinbaum`):
    /// lowercase letters, digits, `-` and `_`.
    pub voice: String,
    /// The text put before every training block of this speaker and before every prompt in
    /// their voice, so the model learns who is speaking (the speaker's label line).
    pub header: String,
    /// First day (inclusive) on which this speaker's labels count.
    #[serde(default)]
    pub from: Option<Date>,
    /// Last day (inclusive) on which this speaker's labels count.
    #[serde(default)]
    pub until: Option<Date>,
    /// The label spellings of this speaker; spacing, accents and punctuation do not matter.
    pub labels: Vec<String>,
    /// Words that make a label someone else's even when it contains the name
    /// (president-elect, ex-president, an AI-made voice...).
    #[serde(default)]
    pub reject: Vec<String>,
    /// Letters that may be missing, extra or wrong in a label and still match.
    #[serde(default = "default_max_typos")]
    pub max_typos: usize,
    /// Titles of transcripts in which this speaker is the one speaking (their speeches and
    /// messages), as regular expressions compared without case or accents. In such a
    /// transcript, paragraphs before any label and blocks whose label is unknown (`???`)
    /// are this speaker's. They must not match anyone else's message or a conference.
    #[serde(default)]
    pub titles: Vec<String>,
}

fn default_max_typos() -> usize {
    2
}

/// A speaker's voice as training and generation use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voice {
    /// The id a request names it by.
    pub id: String,
    /// The speaker's name, as recorded with their transcripts.
    pub name: String,
    /// The text before every block and prompt in this voice.
    pub header: String,
}

impl SpeakerRule {
    /// This speaker's voice.
    pub fn voice(&self) -> Voice {
        Voice {
            id: self.voice.clone(),
            name: self.name.clone(),
            header: self.header.clone(),
        }
    }

    fn active_on(&self, date: Date) -> bool {
        self.from.is_none_or(|from| date >= from) && self.until.is_none_or(|until| date <= until)
    }
}

/// A speech, message or report ("Mensaje del presidente …"): the start of a title pattern.
const SPEECH: &str = r"\b(?:mensaje|palabras|discurso|informe)(?: de bienvenida)?";

/// What may follow "del presidente" / "de la presidenta" in a speech's title without a name
/// after it: "de México", "de la República", then the occasion ("en …", "durante …", ". …");
/// not "de Cuba", "municipal", "del INE".
const WITHOUT_NAME: &str = r"(?: de méxico| de la república| de los estados unidos mexicanos)?(?: ?[,.:;|]| (?:a|al|ante|en|desde|durante|sobre|con|por)\b|$)";

/// The default speakers: the president of the day.
pub fn default_speakers() -> Vec<SpeakerRule> {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
    let office = "(?:de méxico|de la república|de los estados unidos mexicanos)?,? ?";
    vec![
        SpeakerRule {
            name: "Andrés Manuel López Obrador".into(),
            voice: "amlo".into(),
            header: "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR:\n".into(),
            from: None,
            until: Some(jiff::civil::date(2024, 9, 30)),
            labels: strings(&[
                "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
                "ANDRÉS MANUEL LÓPEZ OBRADOR",
                "PRESIDENTE LÓPEZ OBRADOR",
            ]),
            reject: strings(&[
                "EXPRESIDENTE",
                "ELECTO",
                "CANDIDATO",
                "VOZ",
                "MANIPULADA",
                "INTELIGENCIA ARTIFICIAL",
            ]),
            max_typos: 2,
            titles: vec![
                format!(
                    "{SPEECH} del? (?:lic\\. |licenciado )?(?:presidente {office})?(?:andrés manuel )?lópez obrador\\b"
                ),
                format!("{SPEECH} del presidente{WITHOUT_NAME}"),
            ],
        },
        SpeakerRule {
            name: "Claudia Sheinbaum Pardo".into(),
            voice: "sheinbaum".into(),
            header: "PRESIDENTA CLAUDIA SHEINBAUM PARDO:\n".into(),
            from: Some(jiff::civil::date(2024, 10, 1)),
            until: None,
            labels: strings(&[
                "PRESIDENTA CLAUDIA SHEINBAUM PARDO",
                "PRESIDENTA DE MÉXICO, CLAUDIA SHEINBAUM PARDO",
                "CLAUDIA SHEINBAUM PARDO",
            ]),
            reject: strings(&[
                "EXPRESIDENTA",
                "ELECTA",
                "CANDIDATA",
                "JEFA DE GOBIERNO",
                "VOZ",
                "MANIPULADA",
                "INTELIGENCIA ARTIFICIAL",
            ]),
            max_typos: 2,
            titles: vec![
                format!("{SPEECH} de (?:la )?(?:presidenta {office})?claudia sheinbaum\\b"),
                format!("{SPEECH} de la presidenta{WITHOUT_NAME}"),
            ],
        },
    ]
}

/// A rule prepared for matching: labels and rejected words in compact form, titles compiled.
#[derive(Debug, Clone)]
struct Compiled {
    name: String,
    rule: SpeakerRule,
    labels: Vec<String>,
    reject: Vec<String>,
    titles: Vec<Regex>,
}

/// The configured speakers, ready to classify labels.
#[derive(Debug, Clone)]
pub struct Speakers {
    rules: Vec<Compiled>,
}

/// A voice id a request can name and a header that says something: each speaker has its own.
fn check_voice(rule: &SpeakerRule, before: &[SpeakerRule]) -> Result<(), SpeakerConfigError> {
    let id = &rule.voice;
    if id.is_empty()
        || id.len() > 32
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(SpeakerConfigError(format!(
            "speaker {:?}: `voice` = {id:?} must be a short id of lowercase letters, digits, \
             `-` or `_` (e.g. voice = \"amlo\")",
            rule.name
        )));
    }
    if let Some(other) = before.iter().find(|r| r.voice == *id) {
        return Err(SpeakerConfigError(format!(
            "speakers {:?} and {:?} both have voice {id:?}; give each its own",
            other.name, rule.name
        )));
    }
    if rule.header.trim().is_empty() {
        return Err(SpeakerConfigError(format!(
            "speaker {:?} has an empty `header`; use their label line, e.g. header = \"{}:\\n\"",
            rule.name,
            rule.labels.first().map_or("NOMBRE", String::as_str)
        )));
    }
    Ok(())
}

/// A configuration mistake in `[[corpus.speakers]]`.
#[derive(Debug, thiserror::Error)]
#[error("corpus.speakers: {0}")]
pub struct SpeakerConfigError(String);

impl Speakers {
    /// Checks and prepares `rules`.
    pub fn new(rules: &[SpeakerRule]) -> Result<Self, SpeakerConfigError> {
        if rules.is_empty() {
            return Err(SpeakerConfigError(
                "no speaker configured: nothing would be kept; add a [[corpus.speakers]] entry"
                    .into(),
            ));
        }
        let mut compiled = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            check_voice(rule, &rules[..i])?;
            let labels: Vec<String> = rule.labels.iter().map(|l| compact_label(l)).collect();
            if labels.is_empty() || labels.iter().any(|l| l.len() < 3) {
                return Err(SpeakerConfigError(format!(
                    "speaker {:?} needs at least one label of three or more letters",
                    rule.name
                )));
            }
            if let (Some(from), Some(until)) = (rule.from, rule.until)
                && from > until
            {
                return Err(SpeakerConfigError(format!(
                    "speaker {:?}: `from` ({from}) is after `until` ({until})",
                    rule.name
                )));
            }
            let titles = rule
                .titles
                .iter()
                .map(|pattern| {
                    RegexBuilder::new(&fold_accents(pattern))
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| {
                            SpeakerConfigError(format!(
                                "speaker {:?}: title pattern {pattern:?} does not compile: {e}",
                                rule.name
                            ))
                        })
                })
                .collect::<Result<_, _>>()?;
            compiled.push(Compiled {
                name: rule.name.clone(),
                rule: rule.clone(),
                labels,
                reject: rule.reject.iter().map(|w| compact_label(w)).collect(),
                titles,
            });
        }
        Ok(Self { rules: compiled })
    }

    /// The speakers whose labels count on `date`.
    pub fn on(&self, date: Date) -> DaySpeakers<'_> {
        DaySpeakers {
            rules: self
                .rules
                .iter()
                .filter(|r| r.rule.active_on(date))
                .collect(),
            speaking: None,
        }
    }
}

/// The speakers kept on one day, for one transcript.
#[derive(Debug)]
pub struct DaySpeakers<'a> {
    rules: Vec<&'a Compiled>,
    /// The kept speaker the transcript's title names as the one speaking (a speech of the
    /// president): unlabelled openings and unknown labels are theirs.
    speaking: Option<&'a Compiled>,
}

impl<'a> DaySpeakers<'a> {
    /// The same speakers for a transcript called `titles` (its headline, its address): if
    /// one of them is one of a kept speaker's `titles` (their speech, their message), that
    /// speaker holds the transcript's unlabelled opening and every block with an unknown
    /// label. An address reads as words: `mensaje-del-presidente` as `mensaje del presidente`.
    pub fn titled(mut self, titles: &[&str]) -> Self {
        let titles: Vec<String> = titles
            .iter()
            .map(|t| fold_accents(&t.replace(['-', '_', '/'], " ")))
            .collect();
        self.speaking = self.rules.iter().copied().find(|r| {
            r.titles
                .iter()
                .any(|pattern| titles.iter().any(|t| pattern.is_match(t)))
        });
        self
    }

    /// Who speaks before any label: the speaker the title names, if any.
    pub fn opening(&self) -> Option<&'a str> {
        self.speaking.map(|r| r.name.as_str())
    }

    /// The kept speaker a label names, if any. A label without a letter or digit (`???`,
    /// the plain-text dataset's unknown speaker) is the speaker the title names, if any.
    pub fn classify(&self, label: &str) -> Option<&'a str> {
        let label = compact_label(label);
        if label.is_empty() {
            return self.opening();
        }
        self.rules.iter().find_map(|r| {
            if r.reject
                .iter()
                .any(|w| !w.is_empty() && label.contains(w.as_str()))
            {
                return None;
            }
            // Only labels of about the same length can be within `max_typos` edits.
            r.labels
                .iter()
                .any(|l| {
                    l.len().abs_diff(label.len()) <= r.rule.max_typos
                        && strsim::levenshtein(l, &label) <= r.rule.max_typos
                })
                .then_some(r.name.as_str())
        })
    }

    /// Whether no speaker is kept on this day.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn speakers() -> Speakers {
        Speakers::new(&default_speakers()).unwrap()
    }

    #[test]
    fn every_amlo_variant_and_typo_from_the_research_matches() {
        let s = speakers();
        let day = s.on(date(2021, 6, 28));
        for label in [
            "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
            "ANDRÉS MANUEL LÓPEZ OBRADOR",
            "RESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
            "PRSIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
            "PRESDIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
            "PRESIDENT E ANDRÉS MANUEL LÓPEZ OBRADOR",
            "PRESIDENTE ANDRÉSMANUEL LÓPEZ OBRADOR",
            "PRESIDENTE ANDRÉS MANEL LÓPEZ OBRADOR",
            "PRESIDENTE ANDRÉS MANUEL LÓ'PEZ OBRADOR",
            "PRESIDENTE ANDRES MANUEL LOPEZ OBRADOR",
        ] {
            assert_eq!(
                day.classify(label),
                Some("Andrés Manuel López Obrador"),
                "{label}"
            );
        }
    }

    #[test]
    fn every_sheinbaum_variant_matches_from_october_2024() {
        let s = speakers();
        let day = s.on(date(2025, 7, 2));
        for label in [
            "PRESIDENTA CLAUDIA SHEINBAUM PARDO",
            "PRESIDENTA DE MÉXICO, CLAUDIA SHEINBAUM PARDO",
            "PRESIDENTA DE MÉXICO CLAUDIA SHEINBAUM PARDO",
            "PRESIDENTA DE MÉXICO, CLAUDIA SHEINBAUM PARDO ",
            "PRESIDENTA DE MÉXICO, CLAUDIA SHEIBAUM PARDO",
        ] {
            assert_eq!(
                day.classify(label),
                Some("Claudia Sheinbaum Pardo"),
                "{label}"
            );
        }
    }

    #[test]
    fn look_alikes_and_other_people_do_not_match() {
        let s = speakers();
        let sheinbaum_era = s.on(date(2025, 7, 2));
        let amlo_era = s.on(date(2023, 3, 1));
        for label in [
            "CLAUDIA SHEINBAUM PARDO, JEFA DE GOBIERNO DE LA CIUDAD DE MÉXICO",
            "CLAUDIA SHEINBAUM PARDO, PRESIDENTA ELECTA",
            "PRESIDENTA ELECTA CLAUDIA SHEINBAUM PARDO",
            "CANDIDATA CLAUDIA SHEINBAUM PARDO",
            "EXPRESIDENTE DE MÉXICO, ANDRÉS MANUEL LÓPEZ OBRADOR",
            "VOZ DEL PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR MANIPULADA CON INTELIGENCIA ARTIFICIAL",
            "PREGUNTA",
            "INTERLOCUTORA",
            "MODERADOR",
        ] {
            assert_eq!(sheinbaum_era.classify(label), None, "{label}");
            assert_eq!(amlo_era.classify(label), None, "{label}");
        }
        // Each president only on their own days.
        assert_eq!(
            amlo_era.classify("PRESIDENTA CLAUDIA SHEINBAUM PARDO"),
            None
        );
        assert_eq!(
            sheinbaum_era.classify("PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR"),
            None
        );
        assert_eq!(
            s.on(date(2024, 9, 30))
                .classify("PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR"),
            Some("Andrés Manuel López Obrador")
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        assert!(
            Speakers::new(&[])
                .unwrap_err()
                .to_string()
                .contains("no speaker")
        );
        let mut rule = default_speakers().remove(0);
        rule.labels = vec!["A".into()];
        assert!(
            Speakers::new(&[rule])
                .unwrap_err()
                .to_string()
                .contains("three or more")
        );
    }

    #[test]
    fn a_title_names_the_president_as_the_one_speaking_only_in_their_own_speeches() {
        let s = speakers();
        let amlo = || s.on(date(2021, 9, 27));
        for title in [
            "Versión estenográfica. Mensaje del presidente Andrés Manuel López Obrador. Armada de México, 200 años",
            "Discurso de Andrés Manuel López Obrador, Presidente de los Estados Unidos Mexicanos",
            "Discurso del Lic. Andrés Manuel López Obrador durante su Toma de Posesión",
            "Versión estenográfica | Mensaje del Presidente de los Estados Unidos Mexicanos, Andrés Manuel López Obrador",
            "Mensaje de bienvenida del presidente de México | XVII Cumbre Mundial de Premios Nobel de la Paz",
            "Versión estenográfica. Mensaje del presidente en el Bicentenario de la Independencia de Chiapas",
            "Versión estenográfica. Informe del presidente de la República al pueblo de México",
            "Palabras del presidente Andres Manuel Lopez Obrador durante la firma del decreto",
            // The dataset's address: its slug names him when the headline does not.
            "import:mananeras/articulos/2019/febrero/03--mensaje-del-presidente-andres-manuel-lopez-obrador-durante-la-presentacion-de-sembrando-vida-en-cordoba.txt",
            "https://www.gob.mx/presidencia/es/articulos/mensaje-del-presidente-lopez-obrador-durante-presentacion-del-consejo",
        ] {
            assert_eq!(
                amlo().titled(&[title]).opening(),
                Some("Andrés Manuel López Obrador"),
                "{title}"
            );
        }
        for title in [
            "Versión estenográfica de la conferencia de prensa matutina del presidente Andrés Manuel López Obrador",
            "Agenda oficial del presidente Andrés Manuel López Obrador",
            "Mensaje del vocero de la Presidencia, Jesús Ramírez Cuevas",
            "Mensaje de la secretaria de Salud",
            "Informe de los hechos en Culiacán el 17 de octubre de 2019",
            "Versión estenográfica. Informe de la Presidencia de la Comisión para la Verdad y Acceso a la Justicia",
            "Versión estenográfica | Informe diario sobre coronavirus COVID-19 en México. Secretaría de Salud",
            "Mensaje del presidente de la República de Cuba, Miguel Díaz-Canel",
            "Mensaje del presidente municipal de Tijuana",
            "Versión estenográfica. Mensajes de los presidentes de México y de los Estados Unidos de América",
            "Versión estenográfica | Presentación de Sembrando Vida",
            "Speech Delivered by Andrés Manuel López Obrador",
            "",
        ] {
            assert_eq!(amlo().titled(&[title]).opening(), None, "{title}");
        }
        // Sheinbaum's speeches on her days; neither president on the other's.
        let sheinbaum = s.on(date(2025, 2, 2));
        let title = "Versión estenográfica. Mensaje de la Presidenta de México, Claudia Sheinbaum Pardo al pueblo de México desde Palacio Nacional";
        assert_eq!(
            sheinbaum.titled(&[title]).opening(),
            Some("Claudia Sheinbaum Pardo")
        );
        assert_eq!(amlo().titled(&[title]).opening(), None);
        for title in [
            "Mensaje de la presidenta del Instituto Nacional Electoral",
            "Mensaje de la presidenta municipal de Tijuana",
            "Mensaje del presidente Andrés Manuel López Obrador",
        ] {
            assert_eq!(
                s.on(date(2025, 2, 2)).titled(&[title]).opening(),
                None,
                "{title}"
            );
        }
    }

    #[test]
    fn an_unknown_label_is_the_titled_speaker_and_no_one_otherwise() {
        let s = speakers();
        let title = ["Mensaje del presidente Andrés Manuel López Obrador"];
        let day = s.on(date(2021, 9, 27)).titled(&title);
        assert_eq!(day.classify("???"), Some("Andrés Manuel López Obrador"));
        assert_eq!(day.classify(""), Some("Andrés Manuel López Obrador"));
        assert_eq!(day.classify("MODERADOR"), None);
        assert_eq!(day.classify("MARÍA LUISA ALBORES, SECRETARIA"), None);
        assert_eq!(s.on(date(2021, 9, 27)).classify("???"), None);
    }

    #[test]
    fn a_title_pattern_that_does_not_compile_is_named() {
        let mut rule = default_speakers().remove(0);
        rule.titles = vec!["mensaje (del".into()];
        let err = Speakers::new(&[rule]).unwrap_err().to_string();
        assert!(
            err.contains("mensaje (del") && err.contains("López Obrador"),
            "{err}"
        );
    }
}
