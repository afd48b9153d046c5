//! The public "mananeras" plain-text dataset as one archive (a `.tar.gz` of its repository,
//! as GitHub serves it): checked whole before anything is stored, so a truncated download,
//! a wrong file, a path that escapes, a link or a zip bomb is an error that touches nothing.
//!
//! Nothing is written to disk from the archive: its files are read in memory, which is why a
//! path that escapes its folder is refused rather than followed (an archive that has one was
//! not made by `git archive` or GitHub).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Caps on what an archive may hold (`[[scrape.archives]]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveLimits {
    /// Largest download (the compressed archive).
    pub max_bytes: u64,
    /// Largest total of the files once unpacked (a zip bomb stops here).
    pub max_unpacked_bytes: u64,
    /// Largest single file.
    pub max_file_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        // The dataset in 2026-12: 63 MB compressed, 193 MB unpacked, files under 1 MB.
        Self {
            max_bytes: 512 << 20,
            max_unpacked_bytes: 2 << 30,
            max_file_bytes: 16 << 20,
        }
    }
}

/// Why an archive was refused. Nothing was stored when one is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "the archive's SHA-256 is {actual}, not the configured {expected}: it changed or was damaged on the way; fetch it again, or update sha256 if the new one is trusted"
    )]
    Checksum { expected: String, actual: String },
    #[error(
        "the archive is not a complete .tar.gz ({0}): the download was cut short or the file is something else; fetch it again"
    )]
    Unreadable(String),
    #[error(
        "the archive's entry `{0}` escapes its folder (an absolute path or `..`); refusing the whole archive"
    )]
    Escapes(String),
    #[error(
        "the archive's entry `{0}` is a link; the dataset has none, so refusing the whole archive"
    )]
    Link(String),
    #[error(
        "the archive unpacks to more than {limit} bytes (max_unpacked_bytes){at}; it is not the dataset, or the limit needs raising"
    )]
    TooLarge { limit: u64, at: String },
    #[error(
        "the archive holds no `articulos/YYYY/<mes>/DD--slug.txt` files: it is not the mananeras dataset"
    )]
    NotTheDataset,
}

/// One transcript file of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetFile {
    /// Its place in the dataset from `articulos/` on, which is how imports recognise it.
    pub path: PathBuf,
    pub content: Vec<u8>,
}

/// The lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks `archive` whole (its checksum when `expected_sha256` is set, every entry, the
/// limits, the gzip trailer) and returns the number of dataset files in it.
pub fn check(
    archive: &[u8],
    expected_sha256: &str,
    limits: &ArchiveLimits,
) -> Result<usize, ArchiveError> {
    let expected = expected_sha256.trim().to_ascii_lowercase();
    if !expected.is_empty() {
        let actual = sha256_hex(archive);
        if actual != expected {
            return Err(ArchiveError::Checksum { expected, actual });
        }
    }
    let mut files = 0;
    walk(archive, limits, &mut |_| files += 1)?;
    if files == 0 {
        return Err(ArchiveError::NotTheDataset);
    }
    Ok(files)
}

/// Reads every dataset file of a [`check`]ed archive, `batch` at a time, into `each`.
pub fn read_files(
    archive: &[u8],
    limits: &ArchiveLimits,
    batch: usize,
    each: &mut dyn FnMut(Vec<DatasetFile>),
) -> Result<(), ArchiveError> {
    let mut pending = Vec::with_capacity(batch);
    walk(archive, limits, &mut |file| {
        pending.push(file);
        if pending.len() >= batch {
            each(std::mem::take(&mut pending));
        }
    })?;
    if !pending.is_empty() {
        each(pending);
    }
    Ok(())
}

/// Unpacks `archive` in memory, giving each dataset file to `each` and enforcing every rule.
fn walk(
    archive: &[u8],
    limits: &ArchiveLimits,
    each: &mut dyn FnMut(DatasetFile),
) -> Result<(), ArchiveError> {
    let unreadable = |e: std::io::Error| ArchiveError::Unreadable(e.to_string());
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    let mut unpacked = 0u64;
    for entry in tar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = PathBuf::from(&name);
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(ArchiveError::Escapes(name));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(ArchiveError::Link(name));
        }
        let size = entry.header().size().map_err(unreadable)?;
        unpacked += size;
        if unpacked > limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_unpacked_bytes,
                at: format!(" at `{name}`"),
            });
        }
        if !kind.is_file() {
            continue;
        }
        let Some(path) = dataset_path(&path) else {
            continue;
        };
        if size > limits.max_file_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_file_bytes,
                at: format!(": `{name}` alone is {size} bytes (max_file_bytes)"),
            });
        }
        let mut content = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(limits.max_file_bytes + 1)
            .read_to_end(&mut content)
            .map_err(unreadable)?;
        if content.len() as u64 != size {
            return Err(ArchiveError::Unreadable(format!(
                "`{name}` holds {} bytes, its header says {size}",
                content.len()
            )));
        }
        each(DatasetFile { path, content });
    }
    // The gzip trailer (length and CRC) is only checked at the stream's end: read to it.
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(unreadable)?;
    Ok(())
}

/// `articulos/YYYY/<mes>/DD--slug.txt`, from wherever the archive puts `articulos`.
fn dataset_path(path: &Path) -> Option<PathBuf> {
    let parts: Vec<&std::ffi::OsStr> = path.iter().collect();
    let at = parts.iter().position(|p| *p == "articulos")?;
    let rest = &parts[at..];
    let is_text = path.extension().is_some_and(|e| e == "txt");
    (rest.len() == 4 && is_text).then(|| rest.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.tar.gz` of `(path, content)` regular files.
    fn archive(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    const FILE: &str = "mananeras-main/articulos/2019/agosto/02--conferencia.txt";

    #[test]
    fn dataset_files_are_found_under_any_top_folder() {
        let bytes = archive(&[
            ("mananeras-main/readme.md", "hola"),
            (FILE, "Título\n---\nX\n"),
            ("mananeras-main/articulos/notas.txt", "no"),
        ]);
        assert_eq!(check(&bytes, "", &ArchiveLimits::default()), Ok(1));
        let mut seen = Vec::new();
        read_files(&bytes, &ArchiveLimits::default(), 10, &mut |b| {
            seen.extend(b)
        })
        .unwrap();
        assert_eq!(
            seen,
            [DatasetFile {
                path: "articulos/2019/agosto/02--conferencia.txt".into(),
                content: b"T\xc3\xadtulo\n---\nX\n".to_vec(),
            }]
        );
    }

    #[test]
    fn a_wrong_checksum_a_cut_download_and_other_archives_are_refused() {
        let bytes = archive(&[(FILE, "Título\n---\nX\n")]);
        let limits = ArchiveLimits::default();
        let good = sha256_hex(&bytes);
        assert_eq!(check(&bytes, &good.to_uppercase(), &limits), Ok(1));
        let wrong = "0".repeat(64);
        assert!(matches!(
            check(&bytes, &wrong, &limits),
            Err(ArchiveError::Checksum { .. })
        ));
        for cut in [bytes.len() - 4, bytes.len() / 2, 10] {
            let err = check(&bytes[..cut], "", &limits).unwrap_err();
            assert!(matches!(err, ArchiveError::Unreadable(_)), "{cut}: {err}");
        }
        let other = archive(&[("proyecto/src/main.rs", "fn main() {}")]);
        assert_eq!(check(&other, "", &limits), Err(ArchiveError::NotTheDataset));
        assert!(matches!(
            check(b"PK\x03\x04 a zip", "", &limits),
            Err(ArchiveError::Unreadable(_))
        ));
    }

    #[test]
    fn escaping_paths_links_and_bombs_are_refused() {
        let limits = ArchiveLimits {
            max_bytes: 1 << 20,
            max_unpacked_bytes: 1000,
            max_file_bytes: 100,
        };
        // `tar::Builder` refuses to write `..`; write the name into the header directly.
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..22].copy_from_slice(b"../articulos/x/y/z.txt");
        header.set_size(0);
        header.set_cksum();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        builder.append(&header, &[][..]).unwrap();
        let escaping = builder.into_inner().unwrap().finish().unwrap();
        assert!(matches!(
            check(&escaping, "", &limits),
            Err(ArchiveError::Escapes(_))
        ));

        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(
                &mut link,
                "m/articulos/2019/agosto/01--x.txt",
                "/etc/passwd",
            )
            .unwrap();
        let linked = builder.into_inner().unwrap().finish().unwrap();
        assert!(matches!(
            check(&linked, "", &limits),
            Err(ArchiveError::Link(_))
        ));

        let big = "a".repeat(101);
        let one_big = archive(&[(FILE, &big)]);
        assert!(matches!(
            check(&one_big, "", &limits),
            Err(ArchiveError::TooLarge { limit: 100, .. })
        ));
        let zeros = "0".repeat(90);
        let many: Vec<(String, &str)> = (0..12)
            .map(|i| {
                (
                    format!("m/articulos/2019/agosto/{i:02}--x.txt"),
                    zeros.as_str(),
                )
            })
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        assert!(matches!(
            check(&archive(&many), "", &limits),
            Err(ArchiveError::TooLarge { limit: 1000, .. })
        ));
    }
}
