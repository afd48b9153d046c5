//! What a topic may contain: the same rules for every front end.

/// Normalises a topic as typed: invisible formatting characters (zero-width spaces and
/// joiners, direction marks, BOM) are dropped, whitespace is collapsed; an empty topic, one
/// over `max_chars` characters or one with control characters is refused with a message
/// saying what to change.
pub fn clean(raw: &str, max_chars: usize) -> Result<String, String> {
    if let Some((position, c)) = raw
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !c.is_whitespace())
    {
        return Err(format!(
            "the topic contains a control character (U+{:04X}) at position {}; remove it",
            c as u32,
            position + 1
        ));
    }
    let visible: String = raw.chars().filter(|&c| !is_invisible(c)).collect();
    let topic = visible.split_whitespace().collect::<Vec<_>>().join(" ");
    if topic.is_empty() {
        return Err("the topic is empty: write what the speech should be about".into());
    }
    let chars = topic.chars().count();
    if chars > max_chars {
        return Err(format!(
            "the topic is {chars} characters long; the limit is {max_chars}: shorten it"
        ));
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
    use super::clean;

    #[test]
    fn topics_are_normalised_or_refused_with_a_reason() {
        assert_eq!(
            clean("  el\u{200B} petróleo \n y   Pemex ", 200).unwrap(),
            "el petróleo y Pemex"
        );
        assert_eq!(
            clean("\u{200F}\u{200E}", 200).unwrap_err(),
            "the topic is empty: write what the speech should be about"
        );
        assert!(clean("a\u{7}b", 200).unwrap_err().contains("U+0007"));
        assert!(
            clean(&"x".repeat(201), 200)
                .unwrap_err()
                .contains("201 characters")
        );
        assert_eq!(clean("🇲🇽🎉", 200).unwrap(), "🇲🇽🎉");
    }
}
