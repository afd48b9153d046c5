//! The daemon's sled store (prompt cache and user limits), opened so that a damaged one never
//! stops the daemon: it is moved aside with a warning and a new, empty one takes its place.

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
    match open_db(dir) {
        Ok(db) => Ok(db),
        Err(first) if first.contains("lock") => Err(fail(format!(
            "in use by another process ({first}); stop the running daemon or set serve.state_dir to another directory"
        ))),
        Err(first) => {
            let aside = aside_path(dir);
            tracing::warn!(
                dir = %dir.display(),
                moved_to = %aside.display(),
                error = %first,
                "the state store is unreadable: moving it aside and starting an empty one"
            );
            std::fs::rename(dir, &aside).map_err(|e| {
                fail(format!(
                    "unreadable ({first}) and cannot be moved aside ({e}); remove it by hand"
                ))
            })?;
            open_db(dir).map_err(fail)
        }
    }
}

/// Opens sled, turning its errors and its panics on damaged files into a message.
fn open_db(dir: &Path) -> Result<sled::Db, String> {
    let dir = dir.to_path_buf();
    let opened = std::panic::catch_unwind(move || sled::Config::new().path(dir).open());
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sled failed while reading it (damaged files)".into()),
    }
}

fn aside_path(dir: &Path) -> PathBuf {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{ms}"));
    dir.with_file_name(name)
}
