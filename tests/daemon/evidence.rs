//! Keeps the evidence of a failed test: when a test thread panics while daemons it started
//! are registered, the panic message is followed by each daemon's log tail, whether it is
//! alive (or how it exited) and, if alive, every thread's stack. The hook runs before
//! unwinding deletes the test's temporary directory (where the log lives) and kills the
//! daemon, so a stalled daemon is seen as it was.

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex, Once};
use std::thread::ThreadId;

/// Lines of the daemon's log shown.
const LOG_TAIL_LINES: usize = 60;

/// A daemon a test started: its process, log and the thread of the test that owns it.
struct Registered {
    child: Arc<Mutex<Child>>,
    log: PathBuf,
    owner: ThreadId,
}

static DAEMONS: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Watches `child` until [`forget`]: a panic of the current thread reports on it.
pub fn register(child: &Arc<Mutex<Child>>, log: PathBuf) {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            eprintln!("{}", report(std::thread::current().id()));
        }));
    });
    DAEMONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Registered {
            child: Arc::clone(child),
            log,
            owner: std::thread::current().id(),
        });
}

/// Stops watching `child` (it is being dropped).
pub fn forget(child: &Arc<Mutex<Child>>) {
    DAEMONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|d| !Arc::ptr_eq(&d.child, child));
}

/// What is known of the daemons of thread `owner` (of every registered daemon when the
/// panicking thread owns none, e.g. a tokio worker of the test).
fn report(owner: ThreadId) -> String {
    let Ok(daemons) = DAEMONS.try_lock() else {
        return "(the daemons' registry is busy; no evidence)".into();
    };
    let own: Vec<&Registered> = daemons.iter().filter(|d| d.owner == owner).collect();
    let chosen = if own.is_empty() {
        daemons.iter().collect()
    } else {
        own
    };
    chosen.iter().map(|d| describe(d)).collect()
}

fn describe(daemon: &Registered) -> String {
    let Ok(mut child) = daemon.child.try_lock() else {
        return "(a daemon is being waited for; no evidence)\n".into();
    };
    let pid = child.id();
    let state = match child.try_wait() {
        Ok(Some(status)) => format!("exited: {status}"),
        Ok(None) => "alive".to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    let mut out = format!(
        "\n===== daemon {pid}: {state}; last {} lines of {} =====\n{tail}\n",
        lines.len().min(LOG_TAIL_LINES),
        daemon.log.display()
    );
    if state == "alive" {
        out.push_str(&format!(
            "===== daemon {pid}: threads =====\n{}",
            stacks(pid)
        ));
    }
    out
}

/// Every thread's stack: gdb's backtraces when gdb is there, else what /proc tells of each
/// thread (name, state, where it sleeps in the kernel).
fn stacks(pid: u32) -> String {
    let gdb = std::process::Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt 30"])
        .output();
    if let Ok(out) = gdb
        && out.status.success()
        && !out.stdout.is_empty()
    {
        return String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let mut text = String::from("(no gdb: /proc only)\n");
    for t in mananera::stall::threads(&pid.to_string()) {
        let stack = std::fs::read_to_string(format!("/proc/{pid}/task/{}/stack", t.tid))
            .unwrap_or_default();
        text.push_str(&format!(
            "{} {} state {} wchan {}\n{}\n",
            t.tid,
            t.name,
            t.state,
            t.wchan,
            stack.trim()
        ));
    }
    text
}
