//! The word limit of the original demo (100 words), without cutting a sentence in half when
//! its end is near: past the limit generation stops at the next sentence end, or at a word
//! boundary once a short grace is used up.

/// Word budget of one generated text.
#[derive(Debug, Clone, Copy)]
pub struct WordLimit {
    soft: usize,
    hard: usize,
}

/// What to do with the next piece of text.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Emit it and keep going.
    Continue,
    /// Emit it, then stop: the limit is reached at a sentence end.
    StopAfter,
    /// Emit only the first `n` bytes (dropping a word past the grace), then stop.
    StopWithin(usize),
}

impl WordLimit {
    /// A limit of `max_words` (0 = none). The grace allows a fifth more words, at least 10.
    pub fn new(max_words: usize) -> Option<Self> {
        (max_words > 0).then(|| Self {
            soft: max_words,
            hard: max_words.saturating_add((max_words / 5).max(10)),
        })
    }

    /// Judges `delta` appended to the text released so far.
    pub fn judge(&self, so_far: &str, delta: &str) -> Verdict {
        let mut words = count_words(so_far);
        let mut in_word = so_far
            .chars()
            .next_back()
            .is_some_and(|c| !c.is_whitespace());
        // Where the whitespace before the current position began, so a cut drops it too.
        let mut gap_start = 0;
        for (at, c) in delta.char_indices() {
            if c.is_whitespace() {
                if in_word {
                    gap_start = at;
                }
                in_word = false;
            } else if !in_word {
                in_word = true;
                words += 1;
                if words > self.hard {
                    return Verdict::StopWithin(gap_start);
                }
            }
        }
        if words >= self.soft && ends_sentence(&format!("{so_far}{delta}")) {
            Verdict::StopAfter
        } else {
            Verdict::Continue
        }
    }
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// True when `text` ends with sentence punctuation, possibly followed by closing quotes or brackets.
fn ends_sentence(text: &str) -> bool {
    let trimmed = text
        .trim_end()
        .trim_end_matches(['"', '\'', '»', '”', '’', ')', ']']);
    trimmed.ends_with(['.', '!', '?', '…'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_the_limit_everything_continues() {
        let limit = WordLimit::new(5).unwrap();
        assert_eq!(limit.judge("uno dos.", " tres"), Verdict::Continue);
    }

    #[test]
    fn past_the_limit_it_stops_at_the_sentence_end() {
        let limit = WordLimit::new(3).unwrap();
        assert_eq!(
            limit.judge("uno dos tres cuatro", " cinco"),
            Verdict::Continue
        );
        assert_eq!(
            limit.judge("uno dos tres cuatro cinco", "."),
            Verdict::StopAfter
        );
        assert_eq!(limit.judge("uno dos tres", "?»"), Verdict::StopAfter);
    }

    #[test]
    fn without_a_sentence_end_it_stops_before_the_first_word_past_the_grace() {
        let limit = WordLimit::new(2).unwrap(); // grace 10 → hard 12
        let so_far = (1..=12)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            limit.judge(&so_far, "x"),
            Verdict::Continue,
            "x continues word 12"
        );
        assert_eq!(limit.judge(&so_far, " trece"), Verdict::StopWithin(0));
        assert_eq!(limit.judge(&so_far, "x, y"), Verdict::StopWithin(2));
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(WordLimit::new(0).is_none());
    }
}
