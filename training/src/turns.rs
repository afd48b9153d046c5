//! From a transcript's paragraphs to the words of the speakers we keep: who is speaking,
//! where a turn ends, and what is not speech (stage directions, video blocks, end markers).

use std::collections::HashMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::speakers::DaySpeakers;
use crate::text::normalize;

/// One paragraph of a transcript as it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Paragraph {
    /// A speaker label given apart from the text (the plain-text dataset's speaker lines);
    /// `None` when any label is inside `text` (HTML pages).
    pub label: Option<String>,
    /// The paragraph's text, not yet normalised.
    pub text: String,
    /// Every letter of the paragraph is bold: since 2025 gob.mx prints reporters'
    /// questions that way, without a label.
    pub all_bold: bool,
}

/// What is not speech, as regular expressions over one normalised paragraph
/// (`[corpus.cleaning]`). A site that changes its notation is a config change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleaningRules {
    /// A paragraph that starts a video or audio clip; nothing is kept until its end.
    pub clip_start: String,
    /// A paragraph that ends a clip.
    pub clip_end: String,
    /// A paragraph that ends the transcript's speech (`---`, `—000—`, `+++++`).
    pub end_marker: String,
    /// Whole paragraphs to drop without ending the turn (stage directions, off-mic asides,
    /// the year's motto, "Descarga audio").
    pub drop_paragraph: String,
    /// Notes to cut out of a kept paragraph ("(Inaudible)", "(Aplausos)").
    pub drop_inline: String,
}

impl Default for CleaningRules {
    fn default() -> Self {
        Self {
            clip_start: r"(?i)^\((?:inicia|comienza|empieza|se proyecta|proyección de)\b[^)]*\)$".into(),
            clip_end: r"(?i)^\((?:finaliza|termina|concluye|fin)\b[^)]*\)$".into(),
            end_marker: r"^(?:[-–—]{3,}|[-–—]+\s*0+\s*[-–—]+|\+{3,}|\*{3,})$".into(),
            drop_paragraph: concat!(
                r"(?i)^(?:\([^()]*\)|\[[^\[\]]*\]|[-–—][^-–—]{1,80}[-–—]?",
                r"|(?:19|20)\d\d\s*[:.,]\s*año de\b.*|descarga(?:r)?\s+(?:el\s+)?audio\b.*)$"
            )
            .into(),
            drop_inline: r"(?i)\s*\((?:inaudible|aplausos?|risas?|música|sic|falla de audio|sin audio|corte de audio)\)".into(),
        }
    }
}

/// [`CleaningRules`] compiled.
#[derive(Debug, Clone)]
pub struct Cleaner {
    clip_start: Regex,
    clip_end: Regex,
    end_marker: Regex,
    drop_paragraph: Regex,
    drop_inline: Regex,
}

impl Cleaner {
    /// Compiles the rules, naming the one that does not compile.
    pub fn new(rules: &CleaningRules) -> Result<Self, String> {
        let compile = |name: &str, pattern: &str| {
            Regex::new(pattern).map_err(|e| format!("corpus.cleaning.{name}: {e}"))
        };
        Ok(Self {
            clip_start: compile("clip_start", &rules.clip_start)?,
            clip_end: compile("clip_end", &rules.clip_end)?,
            end_marker: compile("end_marker", &rules.end_marker)?,
            drop_paragraph: compile("drop_paragraph", &rules.drop_paragraph)?,
            drop_inline: compile("drop_inline", &rules.drop_inline)?,
        })
    }

    /// The kept speaker's words: one string per paragraph, each turn ending with an empty
    /// string so turn boundaries survive; and the name of the kept speaker heard first.
    pub fn keep<'s>(
        &self,
        paragraphs: impl IntoIterator<Item = Paragraph>,
        speakers: &DaySpeakers<'s>,
    ) -> Kept<'s> {
        let mut kept = Kept::default();
        let mut current: Option<&'s str> = None;
        let mut in_clip = false;
        let mut seen: HashMap<String, Option<&'s str>> = HashMap::new();
        for paragraph in paragraphs {
            let text = normalize(&paragraph.text);
            let explicit_label = paragraph.label.is_some();
            let (label, text) = match paragraph.label {
                Some(label) => (Some(normalize(&label)), text),
                None => match split_label(&text) {
                    Some((label, rest)) => (Some(label.to_string()), rest.to_string()),
                    None => (None, text),
                },
            };
            // Inside a clip nothing counts, labels in the text included: the voices are
            // recorded ones, and whoever spoke before the clip speaks again after it. A
            // label given apart (a new block of the plain-text dataset) ends the clip.
            if in_clip && !explicit_label {
                in_clip = !self.clip_end.is_match(&text);
                continue;
            }
            in_clip = false;
            if let Some(label) = label {
                kept.end_turn();
                // A transcript repeats a handful of labels hundreds of times.
                current = match seen.get(&label) {
                    Some(speaker) => *speaker,
                    None => {
                        let speaker = speakers.classify(&label);
                        seen.insert(label, speaker);
                        speaker
                    }
                };
                if kept.speaker.is_none() {
                    kept.speaker = current;
                }
            } else if paragraph.all_bold && !text.is_empty() && !self.is_note(&text) {
                // An unlabelled bold paragraph is a reporter's question.
                kept.end_turn();
                current = None;
                continue;
            }
            if self.clip_start.is_match(&text) {
                in_clip = true;
                continue;
            }
            if self.end_marker.is_match(&text) {
                kept.end_turn();
                current = None;
                continue;
            }
            if current.is_none()
                || self.clip_end.is_match(&text)
                || self.drop_paragraph.is_match(&text)
            {
                continue;
            }
            let text = self.drop_inline.replace_all(&text, "");
            let text = text.trim();
            if !text.is_empty() {
                kept.paragraphs.push(text.to_string());
                kept.open_turn = true;
            }
        }
        kept.end_turn();
        kept
    }

    fn is_note(&self, text: &str) -> bool {
        self.clip_start.is_match(text)
            || self.clip_end.is_match(text)
            || self.end_marker.is_match(text)
            || self.drop_paragraph.is_match(text)
    }
}

/// The result of [`Cleaner::keep`].
#[derive(Debug, Default)]
pub struct Kept<'s> {
    /// Kept paragraphs; an empty string marks the end of a turn.
    pub paragraphs: Vec<String>,
    /// The first kept speaker whose label appeared.
    pub speaker: Option<&'s str>,
    open_turn: bool,
}

impl Kept<'_> {
    fn end_turn(&mut self) {
        if self.open_turn {
            self.paragraphs.push(String::new());
            self.open_turn = false;
        }
    }

    /// The kept text: paragraphs one per line, turns separated by a blank line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for p in &self.paragraphs {
            if p.is_empty() {
                out.push('\n');
            } else {
                out.push_str(p);
                out.push('\n');
            }
        }
        out.trim_end().to_string()
    }
}

/// Splits a speaker label off the start of a normalised paragraph. A label is a run of
/// mostly upper-case words (at most 200 characters) before the first colon:
/// `PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR:`, `PARDO :—`, `OBRADOR:Buenos`.
pub fn split_label(text: &str) -> Option<(&str, &str)> {
    let start = text.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '-' | '–' | '—' | '«' | '“' | '"')
    });
    let colon = start.find(':')?;
    let label = start[..colon].trim_end();
    if !(2..=200).contains(&label.chars().count()) {
        return None;
    }
    let rest = start[colon + 1..].trim_start();
    let rest = rest
        .strip_prefix(['-', '–', '—'])
        .map_or(rest, str::trim_start);
    (looks_like_label(label) || label.starts_with('(') && looks_like_label(&label[1..]))
        .then_some((label, rest))
}

/// A speaker label is mostly upper-case letters (at least three) and starts with a letter.
pub fn looks_like_label(label: &str) -> bool {
    let (upper, lower) = label.chars().fold((0usize, 0usize), |(u, l), c| {
        (
            u + usize::from(c.is_uppercase()),
            l + usize::from(c.is_lowercase()),
        )
    });
    label.chars().next().is_some_and(char::is_alphabetic) && upper >= 3 && lower * 10 <= upper
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speakers::{Speakers, default_speakers};
    use jiff::civil::date;

    fn p(text: &str) -> Paragraph {
        Paragraph {
            label: None,
            text: text.into(),
            all_bold: false,
        }
    }

    fn keep(paragraphs: Vec<Paragraph>) -> String {
        let speakers = Speakers::new(&default_speakers()).unwrap();
        let cleaner = Cleaner::new(&CleaningRules::default()).unwrap();
        cleaner
            .keep(paragraphs, &speakers.on(date(2021, 6, 28)))
            .text()
    }

    #[test]
    fn labels_in_every_shape() {
        assert_eq!(
            split_label("PRESIDENTE ANDRÉS:Buenos días"),
            Some(("PRESIDENTE ANDRÉS", "Buenos días"))
        );
        assert_eq!(
            split_label("CLAUDIA SHEINBAUM PARDO :— Gracias"),
            Some(("CLAUDIA SHEINBAUM PARDO", "Gracias"))
        );
        assert_eq!(
            split_label("PREGUNTA (VIDEOLLAMADA): ¿Qué?"),
            Some(("PREGUNTA (VIDEOLLAMADA)", "¿Qué?"))
        );
        assert_eq!(split_label("PREGUNTA:"), Some(("PREGUNTA", "")));
        assert_eq!(split_label("2023: Año de Francisco Villa"), None);
        assert_eq!(split_label("Les digo: no"), None);
        assert_eq!(split_label("Primero: que se cumpla"), None);
    }

    #[test]
    fn turns_continue_over_unlabelled_paragraphs_and_end_at_any_label() {
        let text = keep(vec![
            p("MODERADOR: Buenos días."),
            p("PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR: Buenos días. (Aplausos)"),
            p("Vamos a empezar."),
            p("(INICIA VIDEO)"),
            p("VOZ MUJER: Un anuncio."),
            p("Más anuncio."),
            p("(FINALIZA VIDEO)"),
            p("Sigo yo."),
            p("PREGUNTA: ¿Y la refinería?"),
            p("Otra pregunta."),
            p("PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR: (Inaudible)"),
            p("—Adelante—"),
            p("Ya terminamos."),
            p("---"),
            p("2021: Año de la Independencia"),
        ]);
        assert_eq!(
            text,
            "Buenos días.\nVamos a empezar.\nSigo yo.\n\nYa terminamos."
        );
    }

    #[test]
    fn an_unlabelled_bold_paragraph_is_a_question_that_ends_the_turn() {
        let text = keep(vec![
            p("PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR: Sí."),
            Paragraph {
                label: None,
                text: "¿Y el aeropuerto?".into(),
                all_bold: true,
            },
            p("Respuesta de otro."),
        ]);
        assert_eq!(text, "Sí.");
    }

    #[test]
    fn separate_labels_work_like_inline_ones() {
        let speakers = Speakers::new(&default_speakers()).unwrap();
        let cleaner = Cleaner::new(&CleaningRules::default()).unwrap();
        let day = speakers.on(date(2019, 8, 2));
        let kept = cleaner.keep(
            vec![
                Paragraph {
                    label: Some("MODERADOR".into()),
                    text: "Preside.".into(),
                    all_bold: false,
                },
                Paragraph {
                    label: Some("PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR".into()),
                    text: "Así es.".into(),
                    all_bold: false,
                },
                p("Muchas gracias."),
            ],
            &day,
        );
        assert_eq!(kept.text(), "Así es.\nMuchas gracias.");
        assert_eq!(kept.speaker, Some("Andrés Manuel López Obrador"));
    }
}
