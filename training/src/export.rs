//! The corpus for people and other tools: statistics per source, and the clean chunks as
//! text or JSON Lines.

use std::collections::BTreeMap;
use std::io::Write;

use jiff::civil::Date;
use serde::Serialize;

use crate::CorpusError;
use crate::segment::chunks;
use crate::store::{Corpus, StoreError};

/// Size and span of one source's transcripts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceStats {
    /// Source name, or `all` for the whole corpus.
    pub source: String,
    /// Stored transcripts.
    pub transcripts: usize,
    /// Characters of clean text (line breaks not counted).
    pub characters: usize,
    /// Chunks of at most `corpus.chunk_chars` characters.
    pub chunks: usize,
    /// Oldest transcript's day.
    pub first: Date,
    /// Newest transcript's day.
    pub last: Date,
}

/// Statistics per source (sorted by name) and for the whole corpus (source `all`).
pub fn stats(corpus: &Corpus) -> Vec<SourceStats> {
    let mut by_source: BTreeMap<String, SourceStats> = BTreeMap::new();
    for e in corpus.entries() {
        for name in [e.source.as_str(), ALL] {
            let s = by_source
                .entry(name.to_string())
                .or_insert_with(|| SourceStats {
                    source: name.to_string(),
                    transcripts: 0,
                    characters: 0,
                    chunks: 0,
                    first: e.date,
                    last: e.date,
                });
            s.transcripts += 1;
            s.characters += e.chars;
            s.chunks += e.chunks;
            s.first = s.first.min(e.date);
            s.last = s.last.max(e.date);
        }
    }
    let all = by_source.remove(ALL);
    by_source.into_values().chain(all).collect()
}

/// The pseudo-source that totals every source.
const ALL: &str = "all";

/// How `corpus export` writes chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One chunk per line, a blank line between transcripts.
    Text,
    /// One JSON object per chunk: date, source, url, speaker, text.
    Jsonl,
}

#[derive(Serialize)]
struct ChunkRecord<'a> {
    date: Date,
    source: &'a str,
    url: &'a str,
    speaker: &'a str,
    text: &'a str,
}

/// Writes every transcript's chunks, oldest first.
pub fn export(
    corpus: &Corpus,
    chunk_chars: usize,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<(), CorpusError> {
    let broken = |e: std::io::Error| CorpusError::Input(format!("cannot write the export: {e}"));
    for entry in corpus.entries() {
        let t = corpus.read(entry)?;
        let pieces = chunks(t.paragraphs(), chunk_chars);
        match format {
            ExportFormat::Text => {
                for chunk in &pieces {
                    writeln!(out, "{chunk}").map_err(broken)?;
                }
                writeln!(out).map_err(broken)?;
            }
            ExportFormat::Jsonl => {
                for chunk in &pieces {
                    let record = ChunkRecord {
                        date: t.date,
                        source: &t.source,
                        url: &t.url,
                        speaker: &t.speaker,
                        text: chunk,
                    };
                    let line = serde_json::to_string(&record).map_err(|e| StoreError::Io {
                        path: corpus.dir().to_path_buf(),
                        problem: e.to_string(),
                    })?;
                    writeln!(out, "{line}").map_err(broken)?;
                }
            }
        }
    }
    Ok(())
}
