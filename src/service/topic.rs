//! What a topic may contain: the same rules for every front end.

/// Why a topic was refused ([`crate::texts`] says it to a person).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A control character (its code point) at this 1-based position.
    Control {
        code: u32,
        position: usize,
    },
    Empty,
    TooLong {
        chars: usize,
        max: usize,
    },
}

/// Normalises a topic as typed: invisible formatting characters (zero-width spaces and
/// joiners, direction marks, BOM) are dropped, whitespace is collapsed; an empty topic, one
/// over `max_chars` characters or one with control characters is refused.
pub fn clean(raw: &str, max_chars: usize) -> Result<String, Problem> {
    if let Some((position, c)) = raw
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !c.is_whitespace())
    {
        return Err(Problem::Control {
            code: c as u32,
            position: position + 1,
        });
    }
    let visible: String = raw.chars().filter(|&c| !is_invisible(c)).collect();
    let topic = visible.split_whitespace().collect::<Vec<_>>().join(" ");
    if topic.is_empty() {
        return Err(Problem::Empty);
    }
    let chars = topic.chars().count();
    if chars > max_chars {
        return Err(Problem::TooLong {
            chars,
            max: max_chars,
        });
    }
    Ok(topic)
}

/// Format characters that render as nothing.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{00AD}'
    )
}

#[cfg(test)]
mod tests {
    use super::{Problem, clean};

    #[test]
    fn topics_are_normalised_or_refused_with_a_reason() {
        assert_eq!(
            clean("  el\u{200B} petróleo \n y   Pemex ", 200).unwrap(),
            "el petróleo y Pemex"
        );
        assert_eq!(clean("\u{200F}\u{200E}", 200).unwrap_err(), Problem::Empty);
        assert_eq!(
            clean("a\u{7}b", 200).unwrap_err(),
            Problem::Control {
                code: 7,
                position: 2
            }
        );
        assert_eq!(
            clean(&"x".repeat(201), 200).unwrap_err(),
            Problem::TooLong {
                chars: 201,
                max: 200
            }
        );
        assert_eq!(clean("🇲🇽🎉", 200).unwrap(), "🇲🇽🎉");
    }
}
