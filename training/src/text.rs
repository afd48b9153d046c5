//! Text normalisation shared by every input: NFC, one kind of space, no invisible marks.

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
        collapse(raw.chars(), raw.len())
    } else {
        collapse(raw.nfc(), raw.len())
    }
}

/// Spaces collapsed, invisible marks dropped, trimmed.
fn collapse(chars: impl Iterator<Item = char>, len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut pending_space = false;
    for c in chars {
        if is_invisible(c) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
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

/// Stable SHA-256 of `text`, as lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash of the words alone (letters and digits, lower-cased): two copies of one transcript
/// that differ only in spacing, punctuation or line breaks share it.
pub fn fingerprint(text: &str) -> String {
    let words: String = text
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    sha256_hex(&words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_unifies_spaces_and_drops_invisible_marks() {
        let raw = "\u{200E}PRESIDENTE\u{a0}ANDRE\u{301}S  \n MANUEL\u{feff}:\tBuenos ";
        assert_eq!(normalize(raw), "PRESIDENTE ANDRÉS MANUEL: Buenos");
    }

    #[test]
    fn compact_label_folds_typos_of_spacing_and_accents() {
        assert_eq!(compact_label("LÓ'PEZ OBRADOR"), "LOPEZOBRADOR");
        assert_eq!(compact_label("PRESIDENT E"), "PRESIDENTE");
        assert_eq!(compact_label("PEÑA"), "PENA");
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
