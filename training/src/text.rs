//! Text normalisation shared by every input: NFC, one kind of space, no invisible marks.

use sha2::Digest;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// Characters that carry no text but break label matching (zero-width marks, direction
/// marks, soft hyphens, byte-order marks).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
}

/// NFC, every whitespace run (nbsp and friends included) as one space, invisible marks
/// removed, trimmed.
pub fn normalize(raw: &str) -> String {
    // Almost every paragraph is already NFC; skip the (slow) recomposition for those.
    if is_nfc_quick(raw.chars()) == IsNormalized::Yes {
        collapse(raw)
    } else {
        collapse(&raw.nfc().collect::<String>())
    }
}

/// Words joined by single spaces, invisible marks dropped.
fn collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        let start = out.len();
        if !out.is_empty() {
            out.push(' ');
        }
        // Every invisible mark is encoded with a lead byte of C2, E2 or EF.
        if !word.bytes().any(|b| matches!(b, 0xC2 | 0xE2 | 0xEF)) {
            out.push_str(word);
        } else {
            out.extend(word.chars().filter(|&c| !is_invisible(c)));
        }
        // A "word" of invisible marks only leaves no trace.
        if out.len() == start + usize::from(start > 0) {
            out.truncate(start);
        }
    }
    out
}

/// Upper-case ASCII letters and digits only, accents folded: the form in which speaker
/// labels are compared, so `LÓ'PEZ`, `ANDRÉSMANUEL` and `PRESIDENT E` all line up.
pub fn compact_label(label: &str) -> String {
    label
        .nfd()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// `text` normalised ([`normalize`]) with its accents and other combining marks removed
/// (`Mensaje del Presidente Andrés` → `Mensaje del Presidente Andres`); case is kept, so a
/// regular expression folded this way keeps its meaning.
pub fn fold_accents(text: &str) -> String {
    normalize(
        &text
            .nfd()
            .filter(|&c| !unicode_normalization::char::is_combining_mark(c))
            .collect::<String>(),
    )
}

/// Stable SHA-256 of `text`, as lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// Hash of the words alone (letters and digits, lower-cased): two copies of one transcript
/// that differ only in spacing, punctuation or line breaks share it.
pub fn fingerprint(text: &str) -> String {
    let mut words = Vec::with_capacity(text.len());
    let mut utf8 = [0u8; 4];
    for c in text.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                words.push(c.to_ascii_lowercase() as u8);
            }
        } else if c.is_alphanumeric() {
            for lower in c.to_lowercase() {
                words.extend_from_slice(lower.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    hex(&sha2::Sha256::digest(&words))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_unifies_spaces_and_drops_invisible_marks() {
        let raw = "\u{200E}PRESIDENTE\u{a0}ANDRE\u{301}S  \n MANUEL\u{feff}:\tBuenos ";
        assert_eq!(normalize(raw), "PRESIDENTE ANDRÉS MANUEL: Buenos");
        assert_eq!(normalize("\u{200b} a \u{200b}\u{feff} b \u{200b}"), "a b");
    }

    #[test]
    fn compact_label_folds_typos_of_spacing_and_accents() {
        assert_eq!(compact_label("LÓ'PEZ OBRADOR"), "LOPEZOBRADOR");
        assert_eq!(compact_label("PRESIDENT E"), "PRESIDENTE");
        assert_eq!(compact_label("PEÑA"), "PENA");
    }

    #[test]
    fn fold_accents_keeps_case_and_regex_syntax() {
        assert_eq!(
            fold_accents("Mensaje del Presidente  Andre\u{301}s López\u{a0}Obrador"),
            "Mensaje del Presidente Andres Lopez Obrador"
        );
        assert_eq!(
            fold_accents(r"^discurso\b\S+ (?:de|del)"),
            r"^discurso\b\S+ (?:de|del)"
        );
    }

    #[test]
    fn fingerprint_ignores_layout() {
        assert_eq!(
            fingerprint("Hola,  mundo.\nAdiós"),
            fingerprint("hola mundo adiós")
        );
        assert_ne!(fingerprint("hola mundo"), fingerprint("hola mundos"));
    }
}
