//! The nightly run's work happens in child processes of the same binary (`mananera scrape`,
//! `mananera train`): at a lower CPU priority, optionally under a memory cap, and first in
//! line for the OOM killer, so that a crash or an out-of-memory in training never takes the
//! daemon (or the bots' answers) down with it.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::watch;

/// Environment the children must not see: the bots' and API's secrets, and systemd's
/// notification and watchdog settings (which are the daemon's alone).
const HIDDEN_ENV: &[&str] = &[
    "MANANERA_API_TOKEN",
    "MANANERA_DISCORD_TOKEN",
    "MANANERA_TELEGRAM_TOKEN",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "MANANERA_CONFIG",
];

/// How many of a child's last log lines are kept for the run record.
const TAIL_LINES: usize = 12;

/// How a child process runs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Niceness (0–19), or the daemon's own when that is higher (lowering it needs a
    /// privilege).
    pub nice: i32,
    /// Address-space cap in MiB (0: none).
    pub memory_max_mib: u64,
    /// After a cancel, time to finish cleanly before SIGKILL.
    pub stop_grace: Duration,
    /// Past this the child is stopped as a cancel stops it (`None`: no limit).
    pub time_limit: Option<Duration>,
}

/// What a finished child left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Everything it printed on stdout (its `--format json` summary).
    pub stdout: String,
    /// Its last log lines.
    pub tail: Vec<String>,
    /// True when it was asked to stop (a cancel, or its time limit).
    pub cancelled: bool,
    /// True when it was stopped at its time limit.
    pub timed_out: bool,
}

impl Finished {
    /// "exit code 3", "killed by SIGKILL (out of memory, or killed by hand)"…
    pub fn describe(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(libc::SIGKILL)) => {
                "killed by SIGKILL (out of memory, or killed by hand)".into()
            }
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "ended without a status".into(),
        }
    }

    /// How it ended and its last error line (else its last line), with `hint` when it
    /// died of a signal (an allocation failure aborts).
    pub fn reason(&self, hint: Option<&str>) -> String {
        use std::os::unix::process::ExitStatusExt;
        let line = self
            .tail
            .iter()
            .rev()
            .find(|l| l.starts_with("error:") || l.contains("ERROR"))
            .or(self.tail.last())
            .map_or("it logged nothing", String::as_str);
        match hint {
            Some(hint) if self.status.signal().is_some() => {
                format!("{}: {line}; {hint}", self.describe())
            }
            _ => format!("{}: {line}", self.describe()),
        }
    }
}

/// Runs `mananera <args>` with `config` as its settings file until it ends or `cancel`
/// turns true (then SIGTERM, and SIGKILL after the grace). Each log line it writes is
/// logged under `task`.
pub async fn run(
    task: &'static str,
    config: &Path,
    args: &[String],
    limits: &Limits,
    mut cancel: watch::Receiver<bool>,
) -> std::io::Result<Finished> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in HIDDEN_ENV {
        command.env_remove(name);
    }
    let (nice, memory) = (limits.nice, limits.memory_max_mib);
    // SAFETY: only async-signal-safe calls (setpriority, setrlimit, open/write/close)
    // between fork and exec.
    unsafe {
        command.pre_exec(move || lower_priority(nice, memory));
    }
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(task, pid, args = %args.join(" "), "child process started");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let read_stdout = async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    };
    let read_stderr = async move {
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            forward(task, pid, &line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail)
    };
    let grace = limits.stop_grace;
    let time_limit = limits.time_limit;
    let wait = async {
        let mut cancelled = false;
        let mut timed_out = false;
        let out_of_time = async {
            match time_limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            stop = async {
                tokio::select! {
                    () = cancel_asked(&mut cancel) => false,
                    () = out_of_time => true,
                }
            } => {
                cancelled = true;
                timed_out = stop;
                if timed_out {
                    tracing::warn!(task, pid, limit_s = time_limit.unwrap_or_default().as_secs(), "the child process ran past its time limit: stopping it");
                }
                tracing::info!(task, pid, grace_s = grace.as_secs(), "asking the child process to stop");
                signal(pid, libc::SIGTERM);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::warn!(task, pid, "the child process did not stop in time: killing it");
                        child.kill().await?;
                        child.wait().await
                    }
                }
            }
        }?;
        Ok::<_, std::io::Error>((status, cancelled, timed_out))
    };
    let (waited, stdout, tail) = tokio::join!(wait, read_stdout, read_stderr);
    let (status, cancelled, timed_out) = waited?;
    Ok(Finished {
        status,
        stdout,
        tail,
        cancelled,
        timed_out,
    })
}

/// Logs a child's log line at its own level, without its own timestamp and level
/// (`2026-11-27T19:05:00.338987Z  WARN message`); other lines (`error: …`) as they are.
fn forward(task: &'static str, pid: u32, line: &str) {
    let mut parts = line.splitn(2, char::is_whitespace);
    let stamped = parts
        .next()
        .is_some_and(|t| t.len() > 20 && t.ends_with('Z'));
    let rest = parts.next().unwrap_or_default().trim_start();
    let (level, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let message = message.trim_start();
    match (stamped, level) {
        (true, "ERROR") => tracing::error!(task, pid, "{message}"),
        (true, "WARN") => tracing::warn!(task, pid, "{message}"),
        (true, "INFO") => tracing::info!(task, pid, "{message}"),
        (true, "DEBUG" | "TRACE") => tracing::debug!(task, pid, "{message}"),
        _ if line.starts_with("error:") => tracing::error!(task, pid, "{line}"),
        _ => tracing::info!(task, pid, "{line}"),
    }
}

/// Resolves once `cancel` turns true (never if its sender goes away).
async fn cancel_asked(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, signal) };
    }
}

/// In the child before exec: lower priority, an optional memory cap, and first in line for
/// the OOM killer. (Not PR_SET_PDEATHSIG: it fires when the spawning *thread* ends, which in
/// an async runtime is not ours to decide. Under systemd, `KillMode=mixed` ends a child the
/// daemon left behind; a daemon killed outside systemd leaves its child to finish the run.)
fn lower_priority(nice: i32, memory_max_mib: u64) -> std::io::Result<()> {
    // SAFETY: plain syscalls on the calling (child) process.
    unsafe {
        // Lowering niceness below the daemon's own needs a privilege: keep the higher one.
        let own = libc::getpriority(libc::PRIO_PROCESS, 0);
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice.max(own)) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if memory_max_mib > 0 {
            let bytes = memory_max_mib.saturating_mul(1024 * 1024);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Raising one's own OOM score needs no privilege; failing to is harmless.
        let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            let value = b"500";
            libc::write(fd, value.as_ptr().cast(), value.len());
            libc::close(fd);
        }
    }
    Ok(())
}
