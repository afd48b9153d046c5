//! Property tests of the cleaner: any HTML parses and cleans without panicking, and a
//! transcript mixing the president's words with everyone else's never yields a word that
//! was not the president's.

use mananera_training::Cleaning;
use mananera_training::page::Page;
use mananera_training::scrape::ScrapeConfig;
use mananera_training::source::Source;
use mananera_training::speakers::default_speakers;
use mananera_training::turns::CleaningRules;
use proptest::prelude::*;

fn gob() -> Source {
    Source::new(&ScrapeConfig::default().sources[0]).unwrap()
}

fn cleaning() -> Cleaning {
    Cleaning::new(&default_speakers(), &CleaningRules::default()).unwrap()
}

/// Who a generated paragraph belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Voice {
    President,
    Other,
}

/// Labels of the president (with the typos and quirks real pages have).
const PRESIDENT: &[&str] = &[
    "PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
    "PRESIDENTE ANDR&Eacute;S MANUEL L&Oacute;PEZ OBRADOR",
    "PRSIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
    "PRESIDENTE ANDRÉS&nbsp;MANUEL LÓPEZ OBRADOR",
    "&#8206;PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR",
];

/// Labels of everyone else, look-alikes included.
const OTHERS: &[&str] = &[
    "PREGUNTA",
    "INTERLOCUTORA",
    "MODERADOR",
    "VOZ MUJER",
    "EXPRESIDENTE DE MÉXICO, ANDRÉS MANUEL LÓPEZ OBRADOR",
    "VOZ DEL PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR MANIPULADA CON INTELIGENCIA ARTIFICIAL",
    "MANUEL BARTLETT DÍAZ, DIRECTOR GENERAL DE LA CFE",
    "PREGUNTA (VIDEOLLAMADA)",
];

/// How a label is marked up.
fn label_html(label: &str, style: u8) -> String {
    match style % 5 {
        0 => format!("<strong>{label}:</strong> "),
        1 => format!("<b>{label}:</b>&nbsp;"),
        2 => format!("{label}:"),
        3 => format!("<strong>{label}</strong><strong>:</strong> "),
        _ => format!("<strong>{label} :—</strong>"),
    }
}

/// A paragraph (or clip) of the generated transcript.
#[derive(Debug, Clone)]
enum Block {
    /// A labelled turn start by a speaker, then its words.
    Turn {
        voice: Voice,
        label: usize,
        style: u8,
        words: usize,
    },
    /// An unlabelled paragraph continuing the current turn.
    More { words: usize, wrap: u8 },
    /// A bold question without label, followed by more question text.
    BoldQuestion { words: usize },
    /// A stage direction or aside.
    Note(u8),
    /// A clip holding other voices (and a clip of the president).
    Clip { words: usize },
    /// An end marker.
    End(u8),
    /// A paragraph with several turns separated by <br>.
    Broken {
        first: Voice,
        second: Voice,
        words: usize,
    },
}

fn block() -> impl Strategy<Value = Block> {
    let voice = prop_oneof![Just(Voice::President), Just(Voice::Other)];
    prop_oneof![
        4 => (voice.clone(), 0..8usize, any::<u8>(), 1..12usize)
            .prop_map(|(voice, label, style, words)| Block::Turn { voice, label, style, words }),
        3 => (1..12usize, any::<u8>()).prop_map(|(words, wrap)| Block::More { words, wrap }),
        1 => (1..8usize).prop_map(|words| Block::BoldQuestion { words }),
        1 => any::<u8>().prop_map(Block::Note),
        1 => (1..8usize).prop_map(|words| Block::Clip { words }),
        1 => any::<u8>().prop_map(Block::End),
        1 => (voice.clone(), voice, 1..6usize)
            .prop_map(|(first, second, words)| Block::Broken { first, second, words }),
    ]
}

/// Words tagged with their speaker: `presidente7`, `otro3`. A kept word must be a
/// `presidente` one.
fn words(voice: Voice, n: usize, counter: &mut usize) -> String {
    let tag = match voice {
        Voice::President => "presidente",
        Voice::Other => "otro",
    };
    (0..n)
        .map(|_| {
            *counter += 1;
            format!("{tag}{counter}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn render(blocks: &[Block]) -> String {
    let mut html = String::from(
        "<html><head><title>Versión estenográfica</title></head><body><dl><dd>28 de junio de 2021</dd></dl><div class=\"article-body\">",
    );
    let mut current = Voice::Other;
    let mut n = 0;
    let label = |voice: Voice, i: usize| match voice {
        Voice::President => PRESIDENT[i % PRESIDENT.len()],
        Voice::Other => OTHERS[i % OTHERS.len()],
    };
    for block in blocks {
        match block {
            Block::Turn {
                voice,
                label: i,
                style,
                words: w,
            } => {
                current = *voice;
                let text = words(*voice, *w, &mut n);
                html += &format!("<p>{}{text}.</p>\n", label_html(label(*voice, *i), *style));
            }
            Block::More { words: w, wrap } => {
                let text = words(current, *w, &mut n);
                html += &match wrap % 4 {
                    0 => format!("<p>{text}.</p>\n"),
                    1 => format!("<div><p><span>{text}</span> (Inaudible).</p></div>\n"),
                    2 => format!("<p><em>{text}</em>&#8203;.</p>\n"),
                    _ => format!("<p>{text}, <strong>dicho con énfasis</strong>.</p>\n"),
                };
            }
            Block::BoldQuestion { words: w } => {
                current = Voice::Other;
                let q = words(Voice::Other, *w, &mut n);
                let more = words(Voice::Other, *w, &mut n);
                html += &format!("<p><strong>¿{q}?</strong></p>\n<p>{more}.</p>\n");
            }
            Block::Note(kind) => {
                html += match kind % 4 {
                    0 => "<p>(Aplausos)</p>\n",
                    1 => "<p>—Adelante—</p>\n",
                    2 => "<p>(Inaudible)</p>\n",
                    _ => "<p>2021: Año de la Independencia</p>\n",
                };
            }
            Block::Clip { words: w } => {
                let other = words(Voice::Other, *w, &mut n);
                let archive = words(Voice::Other, *w, &mut n);
                html += &format!(
                    "<p>(INICIA VIDEO)</p>\n<p>VOZ MUJER: {other}.</p>\n<p>{}{archive}.</p>\n<p>(FINALIZA VIDEO)</p>\n",
                    label_html(PRESIDENT[0], 0)
                );
            }
            Block::End(kind) => {
                current = Voice::Other;
                html += ["<p>---</p>\n", "<p>—000—</p>\n", "<p>+++++</p>\n"][*kind as usize % 3];
            }
            Block::Broken {
                first,
                second,
                words: w,
            } => {
                let a = words(*first, *w, &mut n);
                let b = words(*second, *w, &mut n);
                current = *second;
                html += &format!(
                    "<p>{}{a}.<br>{}{b}.</p>\n",
                    label_html(label(*first, 1), 0),
                    label_html(label(*second, 2), 1)
                );
            }
        }
    }
    html + "</div></body></html>"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn only_the_presidents_words_are_kept(blocks in prop::collection::vec(block(), 1..40)) {
        let html = render(&blocks);
        let article = Page::parse(&html).article(&gob(), &html).unwrap();
        let kept = cleaning().clean(article.date, article.paragraphs);
        let said: Vec<&str> = html
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.starts_with("presidente") && w.len() > "presidente".len())
            .collect();
        match kept {
            Ok(cleaned) => {
                for word in cleaned.text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                    prop_assert!(!word.starts_with("otro"), "kept another speaker's word {word} in {}", cleaned.text);
                }
                // Nothing the president said is lost (clips only hold other voices here).
                for word in &said {
                    prop_assert!(cleaned.text.split(|c: char| !c.is_alphanumeric()).any(|w| w == *word), "lost {word}");
                }
            }
            Err(reason) => prop_assert!(said.is_empty(), "{reason}, yet the president said {said:?}"),
        }
    }

    #[test]
    fn arbitrary_html_never_panics(html in "(<[a-z/!]{0,3}[^<>]{0,20}>?|[^<]{0,30}|&[a-z#0-9]{0,6};?|PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR:|\\(INICIA VIDEO\\)|<br>|<p>|<strong>|</div>|<div class=\"article-body\">){0,60}") {
        let page = Page::parse(&html);
        let _ = page.check_challenge(&ScrapeConfig::default().challenge_titles);
        if let Ok(article) = page.article(&gob(), &html) {
            let _ = cleaning().clean(article.date, article.paragraphs);
        }
        let with_date = format!("<dd>1 de mayo de 2020</dd><div class=\"article-body\">{html}");
        if let Ok(article) = Page::parse(&with_date).article(&gob(), &with_date) {
            let _ = cleaning().clean(article.date, article.paragraphs);
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_segmenter(text in "\\PC{0,400}", max in 1usize..200) {
        let chunks = mananera_training::segment::chunks([text.as_str()], max);
        for chunk in &chunks {
            let longest_word = chunk.split(' ').map(|w| w.chars().count()).max().unwrap_or(0);
            prop_assert!(chunk.chars().count() <= max || longest_word > max);
        }
    }
}
