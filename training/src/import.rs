//! Archives people already have, through the same speaker rules as scraping: saved HTML
//! pages of any configured source, and the public "mananeras" plain-text dataset
//! (`articulos/YYYY/<mes>/DD--slug.txt`: title, publisher, Spanish date, then `---`-separated
//! blocks of a speaker line and its paragraphs). Re-importing changes nothing.

use std::path::{Path, PathBuf};

use jiff::civil::Date;
use rayon::prelude::*;
use serde::Serialize;

use crate::archive::DatasetFile;
use crate::date::{find_date, month_number};
use crate::page::{Article, Page};
use crate::scrape::{Failure, Observer};
use crate::source::Source;
use crate::store::{Corpus, Tally};
use crate::transcript::Transcript;
use crate::turns::{Paragraph, looks_like_label};
use crate::{Cleaning, CorpusError};

/// Source name of transcripts imported from the plain-text dataset.
pub const DATASET_SOURCE: &str = "mananeras";

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Files read.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// What became of the transcripts in them.
    #[serde(flatten)]
    pub tally: Tally,
    /// Files with no words of a kept speaker, with the reason.
    pub skipped: Vec<Failure>,
    /// Files that could not be read as a transcript, with the reason.
    pub failed: Vec<Failure>,
}

impl ImportReport {
    /// Adds another import's counts to this one's.
    pub fn merge(&mut self, other: ImportReport) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.tally.new += other.tally.new;
        self.tally.updated += other.tally.updated;
        self.tally.unchanged += other.tally.unchanged;
        self.tally.duplicates += other.tally.duplicates;
        self.skipped.extend(other.skipped);
        self.failed.extend(other.failed);
    }
}

/// Every importable file under `path` (or `path` itself), in a stable order.
pub fn find_files(path: &Path) -> Result<Vec<PathBuf>, CorpusError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        CorpusError::Input(format!(
            "{}: {e}; give a file or directory to import",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    if meta.is_file() {
        out.push(path.to_path_buf());
    } else {
        walk(path, &mut out)?;
        out.sort();
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CorpusError> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| CorpusError::Input(format!("{}: {e}", dir.display())))?;
    for item in read {
        let path = item
            .map_err(|e| CorpusError::Input(format!("{}: {e}", dir.display())))?
            .path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("txt" | "html" | "htm")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Imports `files` into `corpus`.
pub fn import(
    corpus: &mut Corpus,
    files: &[PathBuf],
    sources: &[Source],
    challenge: &[String],
    cleaning: &Cleaning,
    observer: &dyn Observer,
) -> Result<ImportReport, CorpusError> {
    /// Files read and cleaned in parallel before being stored in order; also how often the
    /// manifest (a cache) is written, which bounds the work a crash leaves.
    const BATCH: usize = 256;
    let mut report = ImportReport::default();
    observer.queued("import", files.len());
    for batch in files.chunks(BATCH) {
        let read: Vec<Read> = batch
            .par_iter()
            .map(|file| read_file(file, sources, challenge, cleaning))
            .collect();
        for (file, read) in batch.iter().zip(read) {
            record(
                corpus,
                &file.display().to_string(),
                read,
                observer,
                &mut report,
            )?;
        }
        corpus.flush()?;
    }
    Ok(report)
}

/// Imports files of the plain-text dataset already in memory (from its archive) into
/// `corpus`, adding to `report`.
pub fn import_dataset_files(
    corpus: &mut Corpus,
    files: Vec<DatasetFile>,
    cleaning: &Cleaning,
    observer: &dyn Observer,
    report: &mut ImportReport,
) -> Result<(), CorpusError> {
    let read: Vec<Read> = files
        .par_iter()
        .map(|file| read_content(&file.path, &file.content, &[], &[], cleaning))
        .collect();
    for (file, read) in files.iter().zip(read) {
        record(
            corpus,
            &file.path.display().to_string(),
            read,
            observer,
            report,
        )?;
    }
    corpus.flush()?;
    Ok(())
}

/// Stores what was read of one file and counts it.
fn record(
    corpus: &mut Corpus,
    name: &str,
    read: Read,
    observer: &dyn Observer,
    report: &mut ImportReport,
) -> Result<(), CorpusError> {
    let word = match read {
        Read::Transcript { bytes, transcript } => {
            report.files += 1;
            report.bytes += bytes;
            report.tally.record(&corpus.add(transcript)?)
        }
        Read::Skipped { bytes, reason } => {
            report.files += 1;
            report.bytes += bytes;
            report.skipped.push(Failure {
                url: name.to_string(),
                reason,
            });
            "skipped"
        }
        Read::Failed { bytes, reason } => {
            report.files += usize::from(bytes.is_some());
            report.bytes += bytes.unwrap_or(0);
            report.failed.push(Failure {
                url: name.to_string(),
                reason,
            });
            "failed"
        }
    };
    observer.done("import", name, word);
    Ok(())
}

/// One file, read and cleaned.
enum Read {
    Transcript {
        bytes: u64,
        transcript: Transcript,
    },
    /// A transcript with no words of a kept speaker.
    Skipped {
        bytes: u64,
        reason: String,
    },
    /// Unreadable (no size) or not a transcript.
    Failed {
        bytes: Option<u64>,
        reason: String,
    },
}

fn read_file(file: &Path, sources: &[Source], challenge: &[String], cleaning: &Cleaning) -> Read {
    match std::fs::read(file) {
        Ok(raw) => read_content(file, &raw, sources, challenge, cleaning),
        Err(e) => Read::Failed {
            bytes: None,
            reason: format!("cannot read: {e}"),
        },
    }
}

/// One file's content, cleaned; `file` says what it is (its extension) and where it lies
/// in the dataset.
fn read_content(
    file: &Path,
    raw: &[u8],
    sources: &[Source],
    challenge: &[String],
    cleaning: &Cleaning,
) -> Read {
    let bytes = raw.len() as u64;
    let text = String::from_utf8_lossy(raw);
    let is_html = matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("html" | "htm")
    );
    let parsed = if is_html {
        read_html(file, &text, sources, challenge)
    } else {
        read_dataset_file(file, &text)
    };
    match parsed {
        Ok((mut transcript, paragraphs)) => match cleaning.clean_titled(
            transcript.date,
            &[&transcript.title, &transcript.url],
            paragraphs,
        ) {
            Ok(cleaned) => {
                transcript.speaker = cleaned.speaker;
                transcript.text = cleaned.text;
                Read::Transcript { bytes, transcript }
            }
            Err(reason) => Read::Skipped { bytes, reason },
        },
        Err(reason) => Read::Failed {
            bytes: Some(bytes),
            reason,
        },
    }
}

/// A saved page of one of `sources`: the source whose hosts hold the page's canonical
/// address, else the first whose body selector matches.
fn read_html(
    file: &Path,
    html: &str,
    sources: &[Source],
    challenge: &[String],
) -> Result<(Transcript, Vec<Paragraph>), String> {
    let page = Page::parse(html);
    page.check_challenge(challenge).map_err(|e| e.to_string())?;
    let mut fallback = None;
    let mut last_error = None;
    for source in sources {
        match page.article(source, html) {
            // The page names its own address on this source: that settles it.
            Ok(article) if article.canonical.is_some() => {
                return Ok(article_transcript(file, source, article));
            }
            Ok(article) => {
                fallback.get_or_insert((source, article));
            }
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    match fallback {
        Some((source, article)) => Ok(article_transcript(file, source, article)),
        None => Err(last_error.unwrap_or_else(|| "no configured source matches this page".into())),
    }
}

/// A saved page's transcript: known by its canonical address, else by the file's absolute path.
fn article_transcript(
    file: &Path,
    source: &Source,
    article: Article,
) -> (Transcript, Vec<Paragraph>) {
    let url = match &article.canonical {
        Some(url) => url.to_string(),
        None => {
            let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
            format!("import:{}", path.display())
        }
    };
    (
        transcript(article.date, source.name(), url, article.title),
        article.paragraphs,
    )
}

fn transcript(date: Date, source: &str, url: String, title: String) -> Transcript {
    Transcript {
        date,
        source: source.to_string(),
        url,
        aliases: Vec::new(),
        title,
        speaker: String::new(),
        etag: None,
        last_modified: None,
        text: String::new(),
    }
}

/// One file of the plain-text dataset.
fn read_dataset_file(file: &Path, content: &str) -> Result<(Transcript, Vec<Paragraph>), String> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let lines: Vec<&str> = content.lines().collect();
    if !lines.iter().any(|l| l.trim() == "---") {
        return Err(
            "not in the mananeras dataset format (no `---` line after the title, publisher and date)"
                .into(),
        );
    }
    let mut parts = lines.split(|line| line.trim() == "---");
    let header: Vec<&str> = parts
        .next()
        .unwrap_or_default()
        .iter()
        .copied()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let title = header
        .first()
        .copied()
        .unwrap_or_default()
        .trim()
        .to_string();
    let date = header
        .iter()
        .skip(1)
        .find_map(|l| find_date(l))
        .or_else(|| date_from_path(file))
        .ok_or("no date: neither the header lines nor the path (articulos/YYYY/<mes>/DD--slug.txt) give one")?;
    let mut paragraphs = Vec::new();
    for block in parts {
        let mut lines = block.iter().map(|l| l.trim()).filter(|l| !l.is_empty());
        let Some(first) = lines.next() else { continue };
        let label = first.trim_end_matches(':').trim();
        // `???` is how the dataset writes a speaker it could not name (in speeches, the
        // president): still a new speaker, whom the title may name.
        if looks_like_label(label) || is_unknown_label(label) {
            let text = lines.next().unwrap_or_default().to_string();
            paragraphs.push(Paragraph {
                label: Some(label.to_string()),
                text,
                all_bold: false,
            });
        } else {
            paragraphs.push(Paragraph {
                label: None,
                text: first.to_string(),
                all_bold: false,
            });
        }
        paragraphs.extend(lines.map(|l| Paragraph {
            label: None,
            text: l.to_string(),
            all_bold: false,
        }));
    }
    Ok((
        transcript(date, DATASET_SOURCE, dataset_url(file), title),
        paragraphs,
    ))
}

/// The dataset's line for a speaker it could not name: question marks only.
fn is_unknown_label(line: &str) -> bool {
    !line.is_empty() && line.chars().all(|c| c == '?')
}

/// `import:mananeras/articulos/…`: the file's place in the dataset, whatever folder it was
/// imported from, so re-imports and partial imports recognise it.
fn dataset_url(file: &Path) -> String {
    let parts: Vec<String> = file
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let from = parts
        .iter()
        .rposition(|p| p == "articulos")
        .unwrap_or(parts.len().saturating_sub(1));
    format!("import:{DATASET_SOURCE}/{}", parts[from..].join("/"))
}

/// `…/YYYY/<mes>/DD--slug.txt`.
fn date_from_path(file: &Path) -> Option<Date> {
    let mut parts = file.iter().rev().map(|p| p.to_string_lossy());
    let name = parts.next()?;
    let month = month_number(&parts.next()?)?;
    let year: i16 = parts.next()?.parse().ok()?;
    let day: i8 = name.split("--").next()?.parse().ok()?;
    Date::new(year, month, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_files_parse_into_labelled_paragraphs() {
        let file = Path::new("/data/mananeras/articulos/2019/agosto/02--conferencia.txt");
        let content = "Versión estenográfica de la conferencia\nPresidencia de la República\n02 de agosto de 2019\n---\nMODERADOR\nPreside este evento.\n---\nPRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR\nAsí es.\nMuchas gracias.\n";
        let (t, paragraphs) = read_dataset_file(file, content).unwrap();
        assert_eq!(t.date, jiff::civil::date(2019, 8, 2));
        assert_eq!(
            t.url,
            "import:mananeras/articulos/2019/agosto/02--conferencia.txt"
        );
        assert_eq!(paragraphs.len(), 3);
        assert_eq!(
            paragraphs[1].label.as_deref(),
            Some("PRESIDENTE ANDRÉS MANUEL LÓPEZ OBRADOR")
        );
        assert_eq!(paragraphs[2].text, "Muchas gracias.");
    }

    #[test]
    fn the_date_falls_back_to_the_path() {
        let file = Path::new("articulos/2020/septiembre/07--x.txt");
        assert_eq!(date_from_path(file), Some(jiff::civil::date(2020, 9, 7)));
        let (t, _) = read_dataset_file(file, "Título\nPresidencia\n\n---\nX\nY\n").unwrap();
        assert_eq!(t.date, jiff::civil::date(2020, 9, 7));
    }

    #[test]
    fn other_text_files_are_refused() {
        let err = read_dataset_file(Path::new("notes.txt"), "hola\nmundo 12 de mayo de 2020\n")
            .unwrap_err();
        assert!(err.contains("dataset format"), "{err}");
    }

    #[test]
    fn a_speech_with_an_unknown_speaker_is_the_presidents_and_an_officials_report_is_not() {
        // Excerpts of three real dataset files (tests/fixtures/README.md).
        let cleaning = Cleaning::new(
            &crate::speakers::default_speakers(),
            &crate::turns::CleaningRules::default(),
        )
        .unwrap();
        let clean = |path: &str, content: &str| {
            let (t, paragraphs) = read_dataset_file(Path::new(path), content).unwrap();
            assert_eq!(paragraphs[0].label.as_deref(), Some("???"), "{path}");
            cleaning.clean_titled(t.date, &[&t.title, &t.url], paragraphs)
        };
        let speech = clean(
            "articulos/2018/diciembre/01--discurso-de-andres-manuel-lopez-obrador-presidente-de-los-estados-unidos-mexicanos.txt",
            include_str!("../../tests/fixtures/cleaning/mananeras/articulos/2018/diciembre/01--discurso-de-andres-manuel-lopez-obrador-presidente-de-los-estados-unidos-mexicanos.txt"),
        )
        .unwrap();
        assert_eq!(speech.speaker, "Andrés Manuel López Obrador");
        assert!(
            speech.text.starts_with("Aquí en el Zócalo"),
            "{}",
            speech.text
        );
        assert!(speech.text.contains("¡Viva México!"));
        // The headline names an event; the file's slug names his message.
        let event = clean(
            "articulos/2019/febrero/03--mensaje-del-presidente-andres-manuel-lopez-obrador-durante-la-presentacion-de-sembrando-vida-en-cordoba.txt",
            include_str!("../../tests/fixtures/cleaning/mananeras/articulos/2019/febrero/03--mensaje-del-presidente-andres-manuel-lopez-obrador-durante-la-presentacion-de-sembrando-vida-en-cordoba.txt"),
        )
        .unwrap();
        assert!(
            event.text.starts_with("Amigas, amigos de Córdoba"),
            "{}",
            event.text
        );
        let report = clean(
            "articulos/2019/octubre/30--informe-culiacan.txt",
            include_str!(
                "../../tests/fixtures/cleaning/mananeras/articulos/2019/octubre/30--informe-culiacan.txt"
            ),
        );
        assert!(report.unwrap_err().contains("no words"));
    }
}
