//! One stored transcript and its file format: a `key: value` header, a blank line, then the
//! kept speaker's words (one paragraph per line, turns separated by a blank line).
//! Readable with `less`, diffable with `git`.

use jiff::civil::Date;

/// A cleaned transcript as stored in the corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// Day of the conference.
    pub date: Date,
    /// Source name (`gob`, `lopezobrador`, `mananeras` for the plain-text dataset...).
    pub source: String,
    /// Where it came from: the page's address, or `import:<path>` for imported files.
    pub url: String,
    /// Other addresses that served the same text.
    pub aliases: Vec<String>,
    pub title: String,
    /// The kept speaker (the president of the day by default).
    pub speaker: String,
    /// HTTP validators, for conditional re-fetches under `--full`.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The clean text.
    pub text: String,
}

/// Why a transcript file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct FormatError {
    line: usize,
    problem: String,
}

/// Header values are one line each.
fn one_line(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Transcript {
    /// The file's content.
    pub fn to_file(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 512);
        let mut field = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(&one_line(value));
            out.push('\n');
        };
        field("date", &self.date.to_string());
        field("source", &self.source);
        field("url", &self.url);
        for alias in &self.aliases {
            field("alias", alias);
        }
        field("title", &self.title);
        field("speaker", &self.speaker);
        if let Some(etag) = &self.etag {
            field("etag", etag);
        }
        if let Some(lm) = &self.last_modified {
            field("last-modified", lm);
        }
        out.push('\n');
        out.push_str(&self.text);
        out.push('\n');
        out
    }

    /// Reads a file written by [`Transcript::to_file`].
    pub fn from_file(content: &str) -> Result<Self, FormatError> {
        let fail = |line: usize, problem: String| FormatError { line, problem };
        let (header, text) = content
            .split_once("\n\n")
            .ok_or_else(|| fail(1, "no blank line after the header".into()))?;
        let mut date = None;
        let mut t = Transcript {
            date: Date::default(),
            source: String::new(),
            url: String::new(),
            aliases: Vec::new(),
            title: String::new(),
            speaker: String::new(),
            etag: None,
            last_modified: None,
            text: text.trim_end_matches('\n').to_string(),
        };
        for (i, line) in header.lines().enumerate() {
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| fail(i + 1, format!("{line:?} is not `key: value`")))?;
            let value = value.to_string();
            match key {
                "date" => {
                    date = Some(
                        value
                            .parse::<Date>()
                            .map_err(|e| fail(i + 1, format!("date {value:?}: {e}")))?,
                    )
                }
                "source" => t.source = value,
                "url" => t.url = value,
                "alias" => t.aliases.push(value),
                "title" => t.title = value,
                "speaker" => t.speaker = value,
                "etag" => t.etag = Some(value),
                "last-modified" => t.last_modified = Some(value),
                other => return Err(fail(i + 1, format!("unknown header field {other:?}"))),
            }
        }
        t.date = date.ok_or_else(|| fail(1, "no `date:` field".into()))?;
        if t.source.is_empty() || t.url.is_empty() {
            return Err(fail(1, "`source:` and `url:` are required".into()));
        }
        Ok(t)
    }

    /// The kept paragraphs, without turn separators.
    pub fn paragraphs(&self) -> impl Iterator<Item = &str> {
        self.text.lines().filter(|l| !l.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip() {
        let t = Transcript {
            date: jiff::civil::date(2021, 6, 28),
            source: "gob".into(),
            url: "https://www.gob.mx/x".into(),
            aliases: vec!["https://www.gob.mx/y".into()],
            title: "Versión\nestenográfica".into(),
            speaker: "Andrés Manuel López Obrador".into(),
            etag: Some("\"abc\"".into()),
            last_modified: None,
            text: "Buenos días.\nVamos.\n\nOtra vez.".into(),
        };
        let back = Transcript::from_file(&t.to_file()).unwrap();
        assert_eq!(back.title, "Versión estenográfica");
        assert_eq!(
            Transcript {
                title: t.title.clone(),
                ..back
            },
            t
        );
    }

    #[test]
    fn broken_files_name_the_line() {
        let err = Transcript::from_file("date: 2021-02-30\nsource: a\nurl: b\n\ntext").unwrap_err();
        assert!(err.to_string().starts_with("line 1: date"), "{err}");
        assert!(Transcript::from_file("no header").is_err());
    }
}
