//! The daemon's sled store (prompt cache and user limits), opened so that a damaged one never
//! stops the daemon: it is moved aside with a warning and a new, empty one takes its place.
//!
//! sled reports some damage and silently drops what it cannot read for the rest (it takes
//! unreadable log segments for torn writes). So a clean shutdown also records how many keys
//! the store holds (`<dir>.clean`); a store that opens with fewer is damaged too.

use std::path::{Path, PathBuf};

/// The store could not be opened, even fresh.
#[derive(Debug, thiserror::Error)]
#[error("the state store at {}: {message}", dir.display())]
pub struct StoreError {
    dir: PathBuf,
    message: String,
}

/// Opens (or creates) the store in `dir`. One that cannot be read is renamed to
/// `<dir>.corrupt-<ms>` and replaced; one locked by another process is an error.
pub fn open(dir: &Path) -> Result<sled::Db, StoreError> {
    let fail = |message: String| StoreError {
        dir: dir.to_path_buf(),
        message,
    };
    let recorded = take_clean_marker(dir);
    match open_db(dir) {
        Ok(db) => match recorded {
            Some(expected) if key_count(&db) < expected => {
                let found = key_count(&db);
                drop(db);
                let problem = format!(
                    "it held {expected} keys at the last clean shutdown but {found} now (damaged files)"
                );
                move_aside(dir, &problem).map_err(fail)?;
                open_db(dir).map_err(fail)
            }
            _ => Ok(db),
        },
        Err(first) if first.contains("lock") => Err(fail(format!(
            "in use by another process ({first}); stop the running daemon or set serve.state_dir to another directory"
        ))),
        Err(first) => {
            move_aside(dir, &first).map_err(fail)?;
            open_db(dir).map_err(fail)
        }
    }
}

/// Flushes the store and records its size for the next start's check.
pub fn close(db: &sled::Db, dir: &Path) -> Result<(), String> {
    db.flush().map_err(|e| e.to_string())?;
    let count = key_count(db).to_string();
    mananera_training::fsio::write_atomic(&marker_path(dir), count.as_bytes())
        .map_err(|e| e.to_string())
}

/// Reads and removes the clean-shutdown record: a crash before the next clean shutdown must
/// not leave an old one behind.
fn take_clean_marker(dir: &Path) -> Option<usize> {
    let path = marker_path(dir);
    let count = std::fs::read_to_string(&path).ok()?.trim().parse().ok();
    let _ = std::fs::remove_file(&path);
    count
}

fn marker_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".clean");
    dir.with_file_name(name)
}

fn key_count(db: &sled::Db) -> usize {
    db.tree_names()
        .iter()
        .filter_map(|name| db.open_tree(name).ok())
        .map(|tree| tree.len())
        .sum()
}

fn move_aside(dir: &Path, problem: &str) -> Result<(), String> {
    let aside = aside_path(dir);
    tracing::warn!(
        dir = %dir.display(),
        moved_to = %aside.display(),
        problem,
        "the state store is unreadable: moving it aside and starting an empty one"
    );
    std::fs::rename(dir, &aside).map_err(|e| {
        format!("unreadable ({problem}) and cannot be moved aside ({e}); remove it by hand")
    })
}

/// Opens sled, turning its errors and its panics on damaged files into a message.
fn open_db(dir: &Path) -> Result<sled::Db, String> {
    let dir = dir.to_path_buf();
    let opened = std::panic::catch_unwind(move || sled::Config::new().path(dir).open());
    match opened {
        // Reading every tree once catches damage that opening alone does not.
        Ok(Ok(db)) => match db.checksum() {
            Ok(_) => Ok(db),
            Err(e) => Err(e.to_string()),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sled failed while reading it (damaged files)".into()),
    }
}

fn aside_path(dir: &Path) -> PathBuf {
    let ms = super::now_ms();
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{ms}"));
    dir.with_file_name(name)
}
