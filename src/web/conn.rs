//! The web server's connections, served by hyper under limits that keep a flood of slow or
//! idle clients from locking everyone out: at most `serve.max_connections` open (past it a
//! new one is closed at once), `serve.header_timeout_s` to send a request's headers, and
//! `serve.idle_timeout_s` without a byte read or written before a connection is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use mananera_health::{Incident, timed};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::ServeConfig;

/// The connection limits, from `[serve]`.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl From<&ServeConfig> for ConnectionLimits {
    fn from(serve: &ServeConfig) -> Self {
        Self {
            max_connections: serve.max_connections.max(1),
            header_timeout: Duration::from_secs(serve.header_timeout_s.max(1)),
            idle_timeout: Duration::from_secs(serve.idle_timeout_s.max(1)),
        }
    }
}

/// After the shutdown signal, open connections get this long to finish their answers (a
/// speech's stream ends within the generations' grace period).
const DRAIN_WITHIN: Duration = Duration::from_secs(60);

/// Accepts connections on `listener` and serves `app` on each until `shutdown` resolves;
/// then lets open answers finish (bounded by [`DRAIN_WITHIN`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let closing = tokio_util::sync::CancellationToken::new();
    let accept_failing = Incident::new("web_accept", "accepting web connections");
    let over_cap = Incident::new(
        "web_connection_cap",
        "the web connection cap (serve.max_connections)",
    );
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_failing.resolved();
                accepted
            }
            Err(e) => {
                // Out of file descriptors, typically: wait for some to be freed.
                accept_failing.failed(&e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            over_cap.failed(&format!(
                "{} connections open; closing one from {peer}",
                limits.max_connections
            ));
            drop(stream);
            continue;
        };
        over_cap.resolved();
        let app = app.clone();
        let limits = limits.clone();
        let closed = closing.clone();
        connections.spawn(timed("http", async move {
            let answering = Arc::new(AtomicUsize::new(0));
            let io = TokioIo::new(Idle::new(
                stream,
                limits.idle_timeout,
                Arc::clone(&answering),
            ));
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let mut app = app.clone();
                    let answer = Answering::new(&answering);
                    async move {
                        let response = app.call(request).await;
                        drop(answer);
                        response
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => log_end(result),
                () = closed.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    log_end(connection.await);
                }
            }
            drop(permit);
        }));
    }
    closing.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN_WITHIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "web connections still open at exit"
        );
    }
    Ok(())
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "a web connection ended with an error");
    }
}

/// A request of a connection whose answer is being prepared: the client is waiting on us,
/// not idle (a speech asked for whole can take minutes in a busy queue).
struct Answering(Arc<AtomicUsize>);

impl Answering {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection that fails with `TimedOut` once `timeout` passes without a byte read or
/// written while hyper waits on it and no answer is being prepared.
struct Idle {
    stream: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    answering: Arc<AtomicUsize>,
}

impl Idle {
    fn new(stream: TcpStream, timeout: Duration, answering: Arc<AtomicUsize>) -> Self {
        Self {
            stream,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            answering,
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    /// `Pending` stays pending unless the deadline passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.answering.load(Ordering::SeqCst) > 0 {
            self.progressed();
            return Ok(());
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection was idle too long (serve.idle_timeout_s)",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Idle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.check(cx)?;
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, data) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.check(cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
