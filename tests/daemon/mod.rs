//! Drives the real `mananera serve` binary over loopback HTTP: start it on port 0, read its
//! address from stdout, talk to it, stop it with a signal.
#![allow(dead_code)] // each test binary uses part of these helpers

pub mod evidence;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_mananera");

/// Every speech runs to its `max_new_tokens`: no end of text before, so no test depends on
/// where a sampled speech of a random model happens to stop.
pub const WHOLE_LENGTH: &str = "generation.min_new_tokens=100000";

/// The tiny fixture model: fast, real tokenizer.
pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-bloom-4h")
}

/// A random model big enough that a 512-token generation takes about a second, so tests can
/// act while it runs. Written once per test binary.
pub fn slow_model() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(BIN)
            .args([
                "random-model",
                "--hidden",
                "256",
                "--layers",
                "8",
                "--heads",
                "8",
            ])
            .args(["--vocab", "4096"])
            .arg(dir.path().join("m"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        dir
    });
    dir.path().join("m")
}

/// `serve.state_dir="<dir>"`, for `--set`.
pub fn state_dir_setting(dir: &Path) -> String {
    format!("serve.state_dir={:?}", dir.display().to_string())
}

/// Runs `mananera cache <verb>` on the store in `dir`, with extra arguments.
pub fn cache_command(verb: &str, dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["cache", verb])
        .args(extra)
        .arg("--set")
        .arg(state_dir_setting(dir))
        .output()
        .unwrap()
}

/// A running daemon; a panic of the test that started it prints its evidence
/// ([`evidence`]).
pub struct Daemon {
    child: Arc<Mutex<Child>>,
    pub url: String,
    pub state_dir: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `mananera serve` with `model`, the state in `state_dir`, and extra `--set`s.
    pub fn start(model: &Path, state_dir: &Path, sets: &[&str]) -> Daemon {
        Self::start_with_env(model, state_dir, sets, &[])
    }

    /// [`Daemon::start`] with extra environment variables (the bots' tokens).
    pub fn start_with_env(
        model: &Path,
        state_dir: &Path,
        sets: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let daemon = Self::start_unready(model, state_dir, sets, env);
        daemon.wait_ready();
        daemon
    }

    /// [`Daemon::start_with_env`] without waiting for `/readyz`: once it listens.
    pub fn start_unready(
        model: &Path,
        state_dir: &Path,
        sets: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let stderr = state_dir.with_extension("log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--set")
            .arg(state_dir_setting(state_dir))
            .env_remove("MANANERA_API_TOKEN")
            .env_remove("MANANERA_DISCORD_TOKEN")
            .env_remove("MANANERA_TELEGRAM_TOKEN")
            .env_remove("CREDENTIALS_DIRECTORY")
            // The control socket goes in the state directory, one per test daemon.
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            // No test reaches the real transcript sites; tests of the schedule turn it on.
            .env("MANANERA_NIGHTLY_ENABLED", "false")
            .env("XDG_DATA_HOME", state_dir.join("data"))
            .envs(env.iter().copied())
            .env("MANANERA_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for s in sets {
            cmd.args(["--set", s]);
        }
        Self::spawn_unready(cmd, state_dir, stderr)
    }

    /// Starts a prepared command and waits until it listens and the model is loaded.
    pub fn spawn(cmd: Command, state_dir: &Path, stderr: PathBuf) -> Daemon {
        let daemon = Self::spawn_unready(cmd, state_dir, stderr);
        daemon.wait_ready();
        daemon
    }

    /// Starts a prepared command and waits until it listens.
    pub fn spawn_unready(mut cmd: Command, state_dir: &Path, stderr: PathBuf) -> Daemon {
        let mut child = cmd.spawn().expect("start mananera serve");
        let stdout = child.stdout.take().unwrap();
        let child = Arc::new(Mutex::new(child));
        evidence::register(&child, stderr.clone());
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("mananera listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            })
            .to_string();
        Daemon {
            child,
            url,
            state_dir: state_dir.to_path_buf(),
            stderr,
        }
    }

    /// Waits (up to a minute) for `/readyz` to answer 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if status_of(&self.url, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("not ready in 60 s; log:\n{}", self.log());
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self) -> (ExitStatus, String) {
        signal(self.pid(), "TERM");
        let status = wait_with_timeout(&self.child, Duration::from_secs(300));
        let log = self.log();
        (status, log)
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        evidence::forget(&self.child);
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

fn wait_with_timeout(child: &Mutex<Child>, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        // Locked only while looking, so the evidence hook can see the child too.
        let exited = child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_wait()
            .unwrap();
        if let Some(status) = exited {
            return status;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status code of `GET path` over a plain blocking connection (for readiness polling).
pub fn status_of(url: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let host = url.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// A finished HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub json: Value,
}

/// `POST /api/generate` with a JSON body, waiting for the whole answer.
pub async fn generate(url: &str, body: &Value) -> Reply {
    send(
        reqwest::Client::new()
            .post(format!("{url}/api/generate"))
            .json(body),
    )
    .await
}

/// Sends a prepared request and reads its JSON answer.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    Reply {
        status,
        retry_after,
        json,
    }
}

/// An open server-sent-events answer.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// `POST /api/generate` asking for events; panics unless the answer is 200.
    pub async fn open(url: &str, body: &Value) -> EventStream {
        let response = reqwest::Client::new()
            .post(format!("{url}/api/generate"))
            .header("accept", "text/event-stream")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (name, data as JSON), or None at the end of the stream.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let chunk = self.response.chunk().await.unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads to the end: the concatenated deltas and the final event.
    pub async fn finish(mut self, mut text: String) -> (String, String, Value) {
        while let Some((name, data)) = self.next().await {
            match name.as_str() {
                "delta" => text.push_str(data["text"].as_str().unwrap()),
                _ => return (text, name, data),
            }
        }
        panic!("the stream ended without a done or error event");
    }
}

/// GET `/metrics` and return the value of the series `name` (with labels as written).
pub async fn metric(url: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
