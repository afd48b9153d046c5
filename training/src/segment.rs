//! Sentences packed into chunks of at most `max_chars` characters, never cut inside a word:
//! the unit the model is trained on (the original project's 1000-character rule).

/// Splits one paragraph into sentences: a sentence ends at `.`, `?`, `!` or `…` (with any
/// closing quotes or brackets) followed by a space.
pub fn sentences(paragraph: &str) -> impl Iterator<Item = &str> {
    let mut rest = paragraph.trim();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if !matches!(c, '.' | '?' | '!' | '…') {
                continue;
            }
            let mut stop = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if matches!(
                    d,
                    '.' | '?' | '!' | '…' | '"' | '\'' | '”' | '’' | '»' | ')' | ']'
                ) {
                    stop = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek().is_some_and(|&(_, d)| d.is_whitespace()) {
                end = stop;
                break;
            }
        }
        let (sentence, tail) = rest.split_at(end);
        rest = tail.trim_start();
        Some(sentence)
    })
}

/// Packs the sentences of `paragraphs` (in order) into chunks of at most `max_chars`
/// characters joined by single spaces. A sentence longer than a chunk is split at the last
/// space that fits; a single word longer than a chunk becomes a chunk of its own.
pub fn chunks<'a>(paragraphs: impl IntoIterator<Item = &'a str>, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    let mut push = |piece: &str, out: &mut Vec<String>| {
        let chars = piece.chars().count();
        let joined = current_chars + usize::from(current_chars > 0) + chars;
        if current_chars > 0 && joined > max_chars {
            out.push(std::mem::take(&mut current));
            current_chars = 0;
        }
        if current_chars > 0 {
            current.push(' ');
            current_chars += 1;
        }
        current.push_str(piece);
        current_chars += chars;
    };
    for paragraph in paragraphs {
        for sentence in sentences(paragraph) {
            for piece in split_long(sentence, max_chars) {
                push(piece, &mut out);
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `text` in pieces of at most `max_chars` characters, cut at spaces.
fn split_long(text: &str, max_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max_chars {
        // The first `max_chars + 1` characters: a space among them ends a piece that fits.
        let window = rest
            .char_indices()
            .nth(max_chars)
            .map_or(rest.len(), |(i, c)| i + c.len_utf8());
        let cut = match rest[..window].rfind(' ') {
            Some(cut) if cut > 0 => cut,
            // One word longer than a chunk: keep it whole.
            _ => rest.find(' ').unwrap_or(rest.len()),
        };
        pieces.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_end_at_terminal_punctuation_followed_by_space() {
        let s: Vec<_> = sentences("Hola. ¿Cómo están?» Bien… Son 3.5 millones! Fin").collect();
        assert_eq!(
            s,
            [
                "Hola.",
                "¿Cómo están?»",
                "Bien…",
                "Son 3.5 millones!",
                "Fin"
            ]
        );
    }

    #[test]
    fn chunks_pack_whole_sentences_up_to_the_limit() {
        let chunks = chunks(["Uno dos. Tres cuatro.", "Cinco seis."], 21);
        assert_eq!(chunks, ["Uno dos. Tres cuatro.", "Cinco seis."]);
    }

    #[test]
    fn a_long_sentence_is_cut_between_words() {
        let sentence = "palabra ".repeat(40);
        let chunks = chunks([sentence.as_str()], 50);
        for chunk in &chunks {
            assert!(chunk.chars().count() <= 50, "{chunk}");
            assert!(chunk.split(' ').all(|w| w == "palabra"), "{chunk}");
        }
        assert_eq!(chunks.join(" ").split(' ').count(), 40);
    }

    #[test]
    fn multibyte_text_is_measured_in_characters() {
        let text = "ñññ ".repeat(300);
        for chunk in chunks([text.as_str()], 1000) {
            assert!(chunk.chars().count() <= 1000);
        }
    }
}
