//! `mananera publish [VERSION]`: writes an accepted version where the generation server
//! loads it (`publish.dir/<version>/`: the merged checkpoint, a GGUF), points
//! `publish.dir/current` at it, keeps `publish.keep` versions, and runs the hook (a version
//! whose hook failed is published again by the next run, its files kept).

use std::path::{Path, PathBuf};

use mananera_model::checkpoint::Checkpoint;
use mananera_model::versions::Status;
use mananera_training::tune::merge::export_merged;
use serde::Serialize;

use super::train::{GgufKind, base, failure, named_version, write_gguf};
use super::{Context, Format, Run, print_json};
use crate::config::Config;
use crate::exit::{Exit, Failure};
use crate::publish::{self, CURRENT, MANIFEST, Published, TOLD};

/// Flags of `mananera publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The version to publish: an id (v0003) or "current".
    #[arg(default_value = "current")]
    pub version: String,
    /// Write the files again even when the version is already published.
    #[arg(long)]
    pub force: bool,
}

impl Run for PublishArgs {
    fn run(&self, ctx: &Context) -> Result<(), Failure> {
        run(&ctx.config, &self.version, self.force, ctx.format)
    }
}

/// What `publish --format json` prints.
#[derive(Debug, Serialize)]
struct Summary {
    #[serde(flatten)]
    published: Published,
    /// False when the version was already published and its files were kept.
    written: bool,
    /// Set when the hook failed (the files are published; the server was not told).
    hook_error: Option<String>,
}

fn run(config: &Config, version: &str, force: bool, format: Format) -> Result<(), Failure> {
    let dir = config.publish_dir().ok_or_else(|| {
        Failure::usage(
            "publish.dir is empty: set it to the directory the generation server loads models from",
        )
    })?;
    publish::check_writable(&dir).map_err(Failure::usage)?;
    let io = |what: &str, e: std::io::Error| {
        Failure::new(
            Exit::Internal,
            format!("cannot {what} in {}: {e}", dir.display()),
        )
    };
    let _lock = mananera_model::fsio::lock_dir(&dir)
        .map_err(|e| io("take the lock", e))?
        .ok_or_else(|| {
            Failure::new(
                Exit::Busy,
                format!(
                    "another `mananera publish` is writing to {}; wait for it",
                    dir.display()
                ),
            )
        })?;
    let record = named_version(&config.versions_dir(), version)?;
    if record.status != Status::Accepted {
        return Err(Failure::usage(format!(
            "{} was not accepted by its validation check; publish an accepted version (mananera versions lists them)",
            record.id
        )));
    }
    let model_name = publish::model_name(&config.engine.backend_model, &record.id);
    let manifest_path = dir.join(&record.id).join(MANIFEST);
    let existing: Option<Published> = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (published, written) = match existing {
        Some(p) if !force && p.model_name == model_name => (p, false),
        _ => (write(config, &dir, &record, &model_name)?, true),
    };
    point_current(&dir, &record.id).map_err(|e| io("point current at the version", e))?;
    prune(&dir, config.publish.keep, &record.id);
    tracing::info!(version = %record.id, dir = %dir.display(), written, "version published");
    let told = dir.join(&record.id).join(TOLD);
    let _ = std::fs::remove_file(&told);
    let hook_error = publish::run_hooks(&config.publish, &published, &dir)
        .err()
        .map(|e| e.to_string());
    if hook_error.is_none() {
        mananera_model::fsio::write_atomic(&told, b"the hooks succeeded\n")
            .map_err(|e| io("record the hooks' success", e))?;
    }
    let summary = Summary {
        published,
        written,
        hook_error,
    };
    match format {
        Format::Json | Format::Jsonl => print_json(&summary)?,
        Format::Text => println!(
            "published {} as {} in {}{}",
            summary.published.version,
            summary.published.model_name,
            dir.display(),
            if written { "" } else { " (already there)" }
        ),
    }
    match summary.hook_error {
        None => Ok(()),
        Some(e) => Err(Failure::new(
            Exit::Partial,
            format!("{e}; the files are published, but the server was not told"),
        )),
    }
}

/// Writes the version's files into a staging directory in `dir`, then renames it to
/// `dir/<version>` (a version already there is replaced whole).
fn write(
    config: &Config,
    dir: &Path,
    record: &mananera_model::versions::Version,
    model_name: &str,
) -> Result<Published, Failure> {
    let io = |what: String, e: std::io::Error| {
        Failure::new(Exit::Internal, format!("cannot {what}: {e}"))
    };
    let staging = tempfile::Builder::new()
        .prefix(".publishing-")
        .tempdir_in(dir)
        .map_err(|e| io(format!("stage files in {}", dir.display()), e))?;
    let (base, _) = base(config)?;
    let versions = config.versions_dir();
    let final_dir = dir.join(&record.id);
    let merged_dir = staging.path().join("merged");
    export_merged(&base, &versions, record, &merged_dir).map_err(failure)?;
    let gguf = match config.publish.gguf.as_str() {
        "" => None,
        kind => {
            let kind = if kind == "f32" {
                GgufKind::F32
            } else {
                GgufKind::F16
            };
            let file = format!("{model_name}.gguf");
            let merged = Checkpoint::local(&merged_dir)?;
            write_gguf(&merged, kind, model_name, &staging.path().join(&file))?;
            Some(final_dir.join(file))
        }
    };
    if !config.publish.merged {
        std::fs::remove_dir_all(&merged_dir)
            .map_err(|e| io(format!("remove {}", merged_dir.display()), e))?;
    }
    let published = Published {
        version: record.id.clone(),
        model_name: model_name.to_string(),
        base_model: record.base_model.clone(),
        merged: config.publish.merged.then(|| final_dir.join("merged")),
        gguf,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let manifest = serde_json::to_vec_pretty(&published)
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot write the manifest: {e}")))?;
    mananera_model::fsio::write_atomic(&staging.path().join(MANIFEST), &manifest)
        .map_err(|e| io("write the manifest".into(), e))?;
    if final_dir.exists() {
        let old = tempfile::Builder::new()
            .prefix(".replaced-")
            .tempdir_in(dir)
            .map_err(|e| io(format!("replace {}", final_dir.display()), e))?;
        std::fs::rename(&final_dir, old.path().join("old"))
            .map_err(|e| io(format!("replace {}", final_dir.display()), e))?;
    }
    let staged: PathBuf = staging.keep();
    std::fs::rename(&staged, &final_dir)
        .map_err(|e| io(format!("move the files to {}", final_dir.display()), e))?;
    sync_dir(dir).map_err(|e| io(format!("sync {}", dir.display()), e))?;
    Ok(published)
}

/// Points `dir/current` at `version` atomically (a new link renamed over the old).
fn point_current(dir: &Path, version: &str) -> std::io::Result<()> {
    if publish::current(dir).as_deref() == Some(version) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{CURRENT}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, dir.join(CURRENT))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes published versions beyond the newest `keep` (never `current`), and what a
/// publish that died mid-way left behind.
fn prune(dir: &Path, keep: usize, current: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut versions = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(".publishing-") || name.starts_with(".replaced-") {
            // Ours is renamed already: these are left over, or being removed.
            let _ = std::fs::remove_dir_all(&path);
        } else if path.join(MANIFEST).is_file() && !path.is_symlink() {
            versions.push(name);
        }
    }
    versions.sort();
    let excess = versions.len().saturating_sub(keep);
    for old in versions.into_iter().take(excess).filter(|v| v != current) {
        match std::fs::remove_dir_all(dir.join(&old)) {
            Ok(()) => tracing::info!(version = %old, "removed an old published version"),
            Err(error) => {
                tracing::warn!(version = %old, %error, "cannot remove an old published version")
            }
        }
    }
}
