//! The corpus directory: one file per transcript, a manifest that indexes them, and each
//! source's scraping state.
//!
//! ```text
//! <dir>/manifest.json                          index (rebuilt from the files when stale)
//! <dir>/transcripts/<source>/<year>/<date>--<slug>.txt
//! <dir>/state/<source>.json                    cursor, pending links, validators
//! <dir>/.lock                                  held while a process writes
//! ```
//! Transcript files are the truth; every write is atomic and the manifest is only a cache,
//! so a crash at any instant leaves a corpus that reopens with nothing lost or duplicated.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::segment::chunks;
use crate::text::{fingerprint, sha256_hex};
use crate::transcript::Transcript;
use mananera_model::fsio::{self, write_atomic};

/// A corpus problem, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "corpus {dir}: in use by another mananera process (lock {dir}/.lock is held); wait for it to finish"
    )]
    Locked { dir: PathBuf },
    #[error("{path}: {problem}")]
    Io { path: PathBuf, problem: String },
    #[error(
        "{path}: not a transcript file ({problem}); fix or remove it, the manifest is rebuilt from the files"
    )]
    Corrupt { path: PathBuf, problem: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// What the manifest knows of one transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Path of the file under `transcripts/`.
    pub id: String,
    /// Day of the conference.
    pub date: Date,
    /// Source name.
    pub source: String,
    /// Address it was stored from.
    pub url: String,
    /// Other addresses that served the same text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The page's headline.
    pub title: String,
    /// The kept speaker.
    pub speaker: String,
    /// Characters of clean text.
    pub chars: usize,
    /// Chunks of at most `chunk_chars` characters.
    pub chunks: usize,
    pub sha256: String,
    /// Hash of the words alone, to catch copies that differ in layout only.
    pub fingerprint: String,
    /// Size of the file, to notice files changed behind the manifest's back.
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    chunk_chars: usize,
    transcripts: Vec<Entry>,
}

const MANIFEST_FORMAT: u32 = 1;

/// What [`Corpus::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// A new transcript, stored under this id.
    New(String),
    /// The address was known and its text changed; the file was rewritten.
    Updated(String),
    /// The address was known with the same text.
    Unchanged(String),
    /// Another address already holds this text; the address was recorded as an alias.
    Duplicate(String),
}

/// How many transcripts a run added, changed or found already there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Stored for the first time.
    pub new: usize,
    /// Known addresses whose text changed.
    pub updated: usize,
    /// Known addresses with the same text (or `304 Not Modified`).
    pub unchanged: usize,
    /// Text already stored under another address.
    pub duplicates: usize,
}

impl Tally {
    /// Counts one outcome and names it for logs and progress bars.
    pub fn record(&mut self, added: &Added) -> &'static str {
        match added {
            Added::New(_) => {
                self.new += 1;
                "new"
            }
            Added::Updated(_) => {
                self.updated += 1;
                "updated"
            }
            Added::Unchanged(_) => {
                self.unchanged += 1;
                "unchanged"
            }
            Added::Duplicate(_) => {
                self.duplicates += 1;
                "duplicate"
            }
        }
    }
}

/// The two hashes a transcript is recognised by, computed once per write.
struct Hashes {
    sha256: String,
    fingerprint: String,
}

impl Hashes {
    fn of(text: &str) -> Self {
        Self {
            sha256: sha256_hex(text),
            fingerprint: fingerprint(text),
        }
    }
}

/// An open corpus directory (locked for writing while open).
pub struct Corpus {
    dir: PathBuf,
    chunk_chars: usize,
    entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
    by_url: HashMap<String, usize>,
    by_hash: HashMap<String, usize>,
    dirty: bool,
    _lock: File,
}

/// The key under which an address is known: host, path and query, without scheme,
/// fragment or trailing slash (`http://` and `https://` copies of a page are one page).
pub fn url_key(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => {
            let mut key = format!(
                "{}{}",
                u.host_str().unwrap_or_default().to_ascii_lowercase(),
                u.path().trim_end_matches('/')
            );
            if let Some(q) = u.query() {
                key.push('?');
                key.push_str(q);
            }
            key
        }
        _ => url.to_string(),
    }
}

/// The transcripts the manifest in `dir` lists, read without the lock (none when there is
/// no readable manifest): a quick look for checks, never a base for writes.
pub fn listed(dir: &Path) -> Vec<Entry> {
    std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
        .filter(|m| m.format == MANIFEST_FORMAT)
        .map(|m| m.transcripts)
        .unwrap_or_default()
}

impl Corpus {
    /// Opens (creating if needed) the corpus at `dir`, taking its lock, and brings the
    /// manifest up to date with the transcript files.
    pub fn open(dir: &Path, chunk_chars: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir.join("transcripts")).map_err(io(dir))?;
        let lock = fsio::lock_dir(dir)
            .map_err(io(&dir.join(".lock")))?
            .ok_or_else(|| StoreError::Locked {
                dir: dir.to_path_buf(),
            })?;
        let mut corpus = Self {
            dir: dir.to_path_buf(),
            chunk_chars,
            entries: Vec::new(),
            by_id: HashMap::new(),
            by_url: HashMap::new(),
            by_hash: HashMap::new(),
            dirty: false,
            _lock: lock,
        };
        corpus.reconcile()?;
        Ok(corpus)
    }

    /// The corpus directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every transcript, oldest first.
    pub fn entries(&self) -> Vec<&Entry> {
        let mut sorted: Vec<&Entry> = self.entries.iter().collect();
        sorted.sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
        sorted
    }

    /// The transcript stored for `url` (as its address or an alias).
    pub fn find_url(&self, url: &str) -> Option<&Entry> {
        self.by_url.get(&url_key(url)).map(|&i| &self.entries[i])
    }

    /// Reads a stored transcript.
    pub fn read(&self, entry: &Entry) -> Result<Transcript, StoreError> {
        let path = self.dir.join("transcripts").join(&entry.id);
        let content = std::fs::read_to_string(&path).map_err(io(&path))?;
        Transcript::from_file(&content).map_err(|e| StoreError::Corrupt {
            path,
            problem: e.to_string(),
        })
    }

    /// Stores `t` unless it is already there (same address and text, or the same text under
    /// another address). Writes the file atomically; the manifest follows at [`Corpus::flush`].
    pub fn add(&mut self, t: Transcript) -> Result<Added, StoreError> {
        let hash = sha256_hex(&t.text);
        if let Some(&i) = self.by_url.get(&url_key(&t.url)) {
            let entry = &self.entries[i];
            let id = entry.id.clone();
            if entry.sha256 == hash {
                return Ok(Added::Unchanged(id));
            }
            let old = self.read(entry)?;
            let updated = Transcript {
                aliases: old.aliases,
                url: old.url,
                ..t
            };
            let hashes = Hashes {
                fingerprint: fingerprint(&updated.text),
                sha256: hash,
            };
            self.write(&id, &updated, hashes)?;
            return Ok(Added::Updated(id));
        }
        let print = fingerprint(&t.text);
        let same_text = self
            .by_hash
            .get(&hash)
            .or_else(|| self.by_hash.get(&print))
            .copied();
        if let Some(i) = same_text {
            let mut existing = self.read(&self.entries[i])?;
            let id = self.entries[i].id.clone();
            existing.aliases.push(t.url);
            let hashes = Hashes::of(&existing.text);
            self.write(&id, &existing, hashes)?;
            return Ok(Added::Duplicate(id));
        }
        let id = self.new_id(&t);
        self.write(
            &id,
            &t,
            Hashes {
                sha256: hash,
                fingerprint: print,
            },
        )?;
        Ok(Added::New(id))
    }

    /// A free file name `<source>/<year>/<date>--<slug>.txt` for `t`.
    fn new_id(&self, t: &Transcript) -> String {
        let last = t
            .url
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or_default();
        let last = last
            .strip_suffix(".txt")
            .or_else(|| last.strip_suffix(".html"))
            .unwrap_or(last);
        let last = last.rsplit("--").next().unwrap_or(last);
        let slug: String = last
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(80)
            .collect();
        let slug = slug.trim_matches('-');
        let slug = if slug.is_empty() { "transcript" } else { slug };
        let base = format!("{}/{}/{}--{slug}", t.source, t.date.year(), t.date);
        (1..)
            .map(|n| {
                if n == 1 {
                    format!("{base}.txt")
                } else {
                    format!("{base}-{n}.txt")
                }
            })
            .find(|id| !self.dir.join("transcripts").join(id).exists())
            .unwrap_or_else(|| unreachable!("some suffix is free"))
    }

    /// Writes one transcript file and indexes it.
    fn write(&mut self, id: &str, t: &Transcript, hashes: Hashes) -> Result<(), StoreError> {
        let path = self.dir.join("transcripts").join(id);
        let content = t.to_file();
        write_atomic(&path, content.as_bytes()).map_err(io(&path))?;
        let entry = self.entry(id, t, content.len() as u64, hashes);
        self.index(entry);
        self.dirty = true;
        Ok(())
    }

    fn entry(&self, id: &str, t: &Transcript, bytes: u64, hashes: Hashes) -> Entry {
        Entry {
            id: id.to_string(),
            date: t.date,
            source: t.source.clone(),
            url: t.url.clone(),
            aliases: t.aliases.clone(),
            title: t.title.clone(),
            speaker: t.speaker.clone(),
            chars: t.text.chars().filter(|c| *c != '\n').count(),
            chunks: chunks(t.paragraphs(), self.chunk_chars).len(),
            sha256: hashes.sha256,
            fingerprint: hashes.fingerprint,
            bytes,
        }
    }

    /// Adds or replaces `entry` in the index.
    fn index(&mut self, entry: Entry) {
        let i = match self.by_id.get(&entry.id) {
            Some(&i) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.by_id.insert(entry.id.clone(), self.entries.len());
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        let e = &self.entries[i];
        for url in std::iter::once(&e.url).chain(&e.aliases) {
            self.by_url.insert(url_key(url), i);
        }
        self.by_hash.insert(e.sha256.clone(), i);
        self.by_hash.insert(e.fingerprint.clone(), i);
    }

    /// Writes the manifest if anything changed since it was last written.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        let transcripts = self.entries().into_iter().cloned().collect();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            chunk_chars: self.chunk_chars,
            transcripts,
        };
        let path = self.dir.join("manifest.json");
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Io {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        write_atomic(&path, &json).map_err(io(&path))?;
        self.dirty = false;
        Ok(())
    }

    /// Loads the manifest and re-reads every transcript file it does not describe exactly
    /// (new, changed or missing since it was written), then saves it if that changed it.
    fn reconcile(&mut self) -> Result<(), StoreError> {
        let path = self.dir.join("manifest.json");
        let manifest: Option<Manifest> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|m: &Manifest| {
                m.format == MANIFEST_FORMAT && m.chunk_chars == self.chunk_chars
            });
        if manifest.is_none() && path.exists() {
            tracing::warn!(path = %path.display(), "manifest unreadable or of another format; rebuilding it from the transcript files");
        }
        let known: HashMap<String, Entry> = manifest
            .map(|m| {
                m.transcripts
                    .into_iter()
                    .map(|e| (e.id.clone(), e))
                    .collect()
            })
            .unwrap_or_default();
        let root = self.dir.join("transcripts");
        let mut files = Vec::new();
        list_files(&root, &root, &mut files)?;
        let mut entries = Vec::with_capacity(files.len());
        let mut changed = files.len() != known.len();
        for (id, bytes) in files {
            match known.get(&id) {
                Some(e) if e.bytes == bytes => entries.push(e.clone()),
                _ => {
                    changed = true;
                    let file = root.join(&id);
                    let content = std::fs::read_to_string(&file).map_err(io(&file))?;
                    let t = Transcript::from_file(&content).map_err(|e| StoreError::Corrupt {
                        path: file.clone(),
                        problem: e.to_string(),
                    })?;
                    entries.push(self.entry(&id, &t, bytes, Hashes::of(&t.text)));
                }
            }
        }
        for entry in entries {
            self.index(entry);
        }
        self.dirty = changed || !path.exists();
        self.flush()
    }

    /// A source's scraping state (empty for a new source).
    pub fn state(&self, source: &str) -> Result<SourceState, StoreError> {
        let path = self.state_path(source);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
                path,
                problem: format!("unreadable scraping state ({e}); delete it to rediscover from scratch (stored transcripts are kept)"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SourceState::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Saves a source's scraping state atomically.
    pub fn save_state(&self, source: &str, state: &SourceState) -> Result<(), StoreError> {
        let path = self.state_path(source);
        let json = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Io {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        write_atomic(&path, &json).map_err(io(&path))
    }

    fn state_path(&self, source: &str) -> PathBuf {
        self.dir.join("state").join(format!("{source}.json"))
    }
}

/// Every `*.txt` under `dir`, as (path relative to `root`, size); leftovers of interrupted
/// atomic writes (`.tmp*`) are removed.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> Result<(), StoreError> {
    for item in std::fs::read_dir(dir).map_err(io(dir))? {
        let item = item.map_err(io(dir))?;
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        let meta = item.metadata().map_err(io(&path))?;
        if meta.is_dir() {
            list_files(root, &path, out)?;
        } else if name.starts_with(".tmp") {
            std::fs::remove_file(&path).map_err(io(&path))?;
        } else if name.ends_with(".txt") {
            let id = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((id, meta.len()));
        }
    }
    Ok(())
}

/// Where scraping of one source stands, kept between runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// The newest listing entry seen by the last walk that finished; later walks stop there.
    #[serde(default)]
    pub cursor: Option<Cursor>,
    /// Transcript links found but not yet stored (interrupted or failed); tried first.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Links fetched that hold no transcript to keep, with the reason (not fetched again
    /// unless `--full`).
    #[serde(default)]
    pub skipped: BTreeMap<String, String>,
    /// Failed runs in a row of the pending links that failed.
    #[serde(default)]
    pub failures: BTreeMap<String, u32>,
    /// ETag / Last-Modified of the listing and seed pages, for conditional requests.
    #[serde(default)]
    pub validators: BTreeMap<String, Validators>,
}

/// HTTP cache validators of one page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Validators {
    /// `ETag`, sent back as `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `Last-Modified`, sent back as `If-Modified-Since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

/// Where a finished listing walk began: its newest entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The entry's address, as [`url_key`].
    pub url: String,
    /// The entry's date in the listing, so a walk also stops below it if the entry vanishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<Date>,
}
