//! Publishing an accepted version to the generation server (`[publish]`): the files a
//! server loads — the merged checkpoint vLLM and TGI read, a GGUF for llama.cpp — written
//! under `publish.dir/<version>/` with a `current` link to the newest, then a hook (a
//! command, or an HTTP call) that makes the server load it.
//!
//! The work is `mananera publish` (the nightly run starts it as a child, with the training's
//! limits); the daemon then waits for the server to report the version before serving it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The name of the link to the newest published version.
pub const CURRENT: &str = "current";
/// What a complete published version holds, written last.
pub const MANIFEST: &str = "published.json";
/// Written in a published version's directory once its hooks succeeded.
pub const TOLD: &str = "told";

/// `[publish]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Where versions are published; empty publishes nothing.
    pub dir: String,
    /// Write the merged checkpoint (a plain BLOOM checkpoint: vLLM, TGI, transformers).
    pub merged: bool,
    /// Write a GGUF of this type for llama.cpp (`f16` or `f32`); empty writes none.
    pub gguf: String,
    /// A command run after the files are written (argv, no shell), e.g.
    /// `["systemctl", "restart", "vllm"]`; its environment names the version and files.
    pub hook: Vec<String>,
    /// An http(s) address POSTed the same facts as JSON after the files are written.
    pub hook_url: String,
    /// Seconds the hook may take.
    pub hook_timeout_s: u64,
    /// Seconds the daemon waits for the generation server (`engine.backend = "openai"`) to
    /// report the published version; past it the run fails and the old version stays.
    pub wait_s: u64,
    /// Published versions kept (the current one always is).
    pub keep: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            merged: true,
            gguf: String::new(),
            hook: Vec::new(),
            hook_url: String::new(),
            hook_timeout_s: 600,
            wait_s: 900,
            keep: 2,
        }
    }
}

impl PublishConfig {
    /// True when versions are published.
    pub fn enabled(&self) -> bool {
        !self.dir.trim().is_empty()
    }

    /// Refuses settings that would publish nothing usable or wait for ever.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !matches!(self.gguf.as_str(), "" | "f16" | "f32") {
            return Err(format!(
                "publish.gguf = \"{}\": use \"f16\", \"f32\", or \"\" for no GGUF",
                self.gguf
            ));
        }
        if !self.merged && self.gguf.is_empty() {
            return Err(
                "publish.merged = false and publish.gguf = \"\": nothing would be published; turn one on, or empty publish.dir".into(),
            );
        }
        if self.hook.first().is_some_and(|c| c.trim().is_empty()) {
            return Err("publish.hook: the first element must be the command to run".into());
        }
        if !self.hook_url.is_empty() {
            let url = reqwest::Url::parse(&self.hook_url)
                .map_err(|e| format!("publish.hook_url = \"{}\": {e}", self.hook_url))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "publish.hook_url = \"{}\": use an http(s) address",
                    self.hook_url
                ));
            }
        }
        for (key, value) in [
            ("hook_timeout_s", self.hook_timeout_s),
            ("wait_s", self.wait_s),
        ] {
            if value == 0 {
                return Err(format!("publish.{key} = 0: it must be at least 1"));
            }
        }
        if self.keep == 0 {
            return Err(
                "publish.keep = 0: at least the current version is kept; use 1 or more".into(),
            );
        }
        Ok(())
    }
}

/// Checks that `dir` can hold published versions (created when missing): at start-up and
/// on reload, so a wrong path is refused before a night's training is spent.
pub fn check_writable(dir: &Path) -> Result<(), String> {
    let refused = |e: std::io::Error| {
        format!(
            "publish.dir = \"{}\" cannot be written ({e}); create it and give the daemon's user write access, or empty publish.dir",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(refused)?;
    tempfile::Builder::new()
        .prefix(".write-test")
        .tempfile_in(dir)
        .map(drop)
        .map_err(refused)
}

/// What `publish.dir/<version>/published.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub version: String,
    /// The name the server should serve it as: `engine.backend_model-<version>`.
    pub model_name: String,
    pub base_model: String,
    /// The merged checkpoint's directory, if written.
    pub merged: Option<PathBuf>,
    /// The GGUF file, if written.
    pub gguf: Option<PathBuf>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// The version `dir/current` points at, if any.
pub fn current(dir: &Path) -> Option<String> {
    let target = std::fs::read_link(dir.join(CURRENT)).ok()?;
    let id = target.file_name()?.to_str()?.to_string();
    dir.join(&id).join(MANIFEST).is_file().then_some(id)
}

/// True once the hooks of published `version` succeeded (the server was told).
pub fn told(dir: &Path, version: &str) -> bool {
    dir.join(version).join(TOLD).is_file()
}

/// The name a server serves a published version under.
pub fn model_name(backend_model: &str, version: &str) -> String {
    format!("{}-{version}", backend_model.trim())
}

/// How a hook ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the hook {command} could not start: {error}")]
    Start { command: String, error: String },
    #[error("the hook {command} ran past publish.hook_timeout_s ({seconds} s) and was killed")]
    Timeout { command: String, seconds: u64 },
    #[error("the hook {command} failed ({status}){output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("the hook address {url} {why}")]
    Url { url: String, why: String },
}

/// Runs the configured hooks for `published`: the command, then the HTTP call.
pub fn run_hooks(
    config: &PublishConfig,
    published: &Published,
    dir: &Path,
) -> Result<(), HookError> {
    let timeout = Duration::from_secs(config.hook_timeout_s);
    if let Some((program, args)) = config.hook.split_first() {
        run_command(program, args, published, dir, timeout)?;
    }
    if !config.hook_url.is_empty() {
        post(&config.hook_url, published, timeout)?;
    }
    Ok(())
}

fn run_command(
    program: &str,
    args: &[String],
    published: &Published,
    dir: &Path,
    timeout: Duration,
) -> Result<(), HookError> {
    use std::process::{Command, Stdio};
    let command = std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let output_file = tempfile::tempfile().map_err(|e| HookError::Start {
        command: command.clone(),
        error: e.to_string(),
    })?;
    let started = Command::new(program)
        .args(args)
        .env("MANANERA_VERSION", &published.version)
        .env("MANANERA_MODEL_NAME", &published.model_name)
        .env("MANANERA_PUBLISHED_DIR", dir.join(&published.version))
        .env("MANANERA_MERGED_DIR", path(&published.merged))
        .env("MANANERA_GGUF", path(&published.gguf))
        .stdin(Stdio::null())
        .stdout(
            output_file
                .try_clone()
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        )
        .stderr(
            output_file
                .try_clone()
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        )
        .spawn();
    let mut child = started.map_err(|e| HookError::Start {
        command: command.clone(),
        error: e.to_string(),
    })?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout {
                    command,
                    seconds: timeout.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(HookError::Start {
                    command,
                    error: e.to_string(),
                });
            }
        }
    };
    if status.success() {
        tracing::info!(%command, "the publish hook succeeded");
        return Ok(());
    }
    Err(HookError::Failed {
        command,
        status: status.to_string(),
        output: tail(output_file),
    })
}

/// The last lines the hook printed, as ": …" (empty when it printed nothing).
fn tail(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines[lines.len().saturating_sub(5)..].join(" | ");
    if last.is_empty() {
        String::new()
    } else {
        format!(": {}", last.chars().take(1000).collect::<String>())
    }
}

fn post(url: &str, published: &Published, timeout: Duration) -> Result<(), HookError> {
    let failed = |why: String| HookError::Url {
        url: url.to_string(),
        why,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("could not be called: {e}")))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| failed(format!("could not be called: {e}")))?;
        let response = client
            .post(url)
            .json(published)
            .send()
            .await
            .map_err(|e| failed(format!("did not answer: {e}")))?;
        let status = response.status();
        if status.is_success() {
            tracing::info!(%url, "the publish hook address accepted the version");
            Ok(())
        } else {
            Err(failed(format!("answered {status}")))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_publish_nothing_or_wait_for_ever_are_refused() {
        let on = PublishConfig {
            dir: "/srv/publish".into(),
            ..PublishConfig::default()
        };
        assert!(on.validate().is_ok());
        assert!(
            PublishConfig::default().validate().is_ok(),
            "off by default"
        );
        let bad = [
            PublishConfig {
                gguf: "q4".into(),
                ..on.clone()
            },
            PublishConfig {
                merged: false,
                ..on.clone()
            },
            PublishConfig {
                hook_url: "ftp://x/".into(),
                ..on.clone()
            },
            PublishConfig {
                wait_s: 0,
                ..on.clone()
            },
            PublishConfig {
                keep: 0,
                ..on.clone()
            },
            PublishConfig {
                hook: vec![" ".into()],
                ..on.clone()
            },
        ];
        for config in bad {
            let e = config.validate().unwrap_err();
            assert!(e.starts_with("publish."), "{e}");
        }
    }

    #[test]
    fn a_failing_or_slow_hook_says_so_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let published = Published {
            version: "v0002".into(),
            model_name: "mananera-v0002".into(),
            base_model: "tiny".into(),
            merged: None,
            gguf: None,
            created: 0,
        };
        let sh = |script: &str, timeout_s: u64| PublishConfig {
            dir: dir.path().display().to_string(),
            hook: vec!["sh".into(), "-c".into(), script.into()],
            hook_timeout_s: timeout_s,
            ..PublishConfig::default()
        };
        assert!(
            run_hooks(
                &sh("test \"$MANANERA_MODEL_NAME\" = mananera-v0002", 10),
                &published,
                dir.path()
            )
            .is_ok()
        );
        let failed = run_hooks(
            &sh("echo no such unit >&2; exit 3", 10),
            &published,
            dir.path(),
        )
        .unwrap_err();
        assert!(failed.to_string().contains("no such unit"), "{failed}");
        let slow = run_hooks(&sh("sleep 5", 1), &published, dir.path()).unwrap_err();
        assert!(matches!(slow, HookError::Timeout { .. }), "{slow}");
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_refused_with_the_setting() {
        let e = check_writable(Path::new("/proc/mananera-publish")).unwrap_err();
        assert!(
            e.starts_with("publish.dir = \"/proc/mananera-publish\""),
            "{e}"
        );
    }
}
