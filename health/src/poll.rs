//! Slow polls: a task whose `poll` runs longer than [`SLOW_POLL`] holds one of the runtime's
//! two worker threads the whole time, which is how a daemon stalls. Tasks spawned through
//! [`timed`] have every poll timed; slow ones go to the reporter the daemon installs
//! (metrics and a log line).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A poll longer than this is slow.
pub const SLOW_POLL: Duration = Duration::from_millis(100);

type Reporter = Box<dyn Fn(&'static str, Duration) + Send + Sync>;

static REPORTER: OnceLock<Reporter> = OnceLock::new();

/// Installs what is done with each slow poll (once per process; later calls are ignored).
/// Without one, slow polls are logged.
pub fn set_slow_poll_reporter(report: impl Fn(&'static str, Duration) + Send + Sync + 'static) {
    let _ = REPORTER.set(Box::new(report));
}

/// `future`, with every poll timed and a slow one reported under `task`.
pub fn timed<F: Future>(task: &'static str, future: F) -> Timed<F> {
    Timed { task, future }
}

pin_project_lite::pin_project! {
    /// See [`timed`].
    pub struct Timed<F> {
        task: &'static str,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let started = Instant::now();
        let result = this.future.poll(cx);
        let took = started.elapsed();
        if took > SLOW_POLL {
            match REPORTER.get() {
                Some(report) => report(this.task, took),
                None => tracing::warn!(
                    task = this.task,
                    took_ms = took.as_millis() as u64,
                    "a task held an async worker thread too long"
                ),
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_poll_is_reported_with_its_task() {
        static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        set_slow_poll_reporter(|task, _| SEEN.lock().unwrap().push(task));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut fast = std::pin::pin!(timed("fast", async {}));
        assert!(fast.as_mut().poll(&mut cx).is_ready());
        let mut slow = std::pin::pin!(timed("slow", async {
            std::thread::sleep(Duration::from_millis(150));
        }));
        assert!(slow.as_mut().poll(&mut cx).is_ready());
        assert_eq!(*SEEN.lock().unwrap(), ["slow"]);
    }
}
