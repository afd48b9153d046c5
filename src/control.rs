//! The control socket: a Unix socket (owner-only) on which a running daemon takes admin
//! requests from `mananera status`, `mananera retrain` and `mananera rollback`. One JSON
//! request line in, one JSON answer line out: `{"ok": true, "result": …}` or
//! `{"ok": false, "code": …, "error": …}`.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::admin::{Admin, RefusalKind, Refused, Request};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// How long a client has to send its request.
const READ_WITHIN: Duration = Duration::from_secs(5);

/// Listens on `path` (replacing a stale socket, refusing one a live daemon answers on).
pub async fn listen(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                format!(
                    "cannot create {} for the control socket: {e}",
                    dir.display()
                )
            })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} (serve.control_socket) exists and is not a socket; remove it or configure another path",
                path.display()
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another mananera daemon answers on the control socket {} (serve.control_socket); stop it or configure another path",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            format!(
                "cannot remove the stale control socket {}: {e}",
                path.display()
            )
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        format!(
            "cannot listen on the control socket {}: {e}",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict the control socket {}: {e}", path.display()))?;
    Ok(listener)
}

/// Answers requests on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, admin: Arc<Admin>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let admin = Arc::clone(&admin);
                tokio::spawn(mananera_health::timed("control-answer", async move {
                    answer(stream, &admin).await
                }));
            }
            Err(error) => {
                tracing::warn!(%error, "the control socket failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, admin: &Admin) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let reply = match tokio::time::timeout(READ_WITHIN, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => match admin.handle(request, "cli").await {
                Ok(result) => json!({ "ok": true, "result": result }),
                Err(Refused { code, error }) => {
                    json!({ "ok": false, "code": code, "error": error })
                }
            },
            Err(e) => json!({
                "ok": false,
                "code": RefusalKind::BadRequest,
                "error": format!("not a request ({e}); send one line such as {{\"command\":\"status\"}}"),
            }),
        },
        Ok(Err(e)) => {
            json!({ "ok": false, "code": RefusalKind::BadRequest, "error": e.to_string() })
        }
        Err(_) => {
            json!({ "ok": false, "code": RefusalKind::BadRequest, "error": "no request within 5 s" })
        }
    };
    let mut text = reply.to_string();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Why a client request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No daemon listens there.
    NoDaemon(String),
    /// The daemon refused.
    Refused(Refused),
    /// Anything else (permissions, a broken answer).
    Other(String),
}

/// Sends `request` to the daemon at `path` and returns its result.
pub fn request(path: &Path, request: &Request) -> Result<Value, ClientError> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon(format!(
                "no daemon answers on the control socket {} ({e}); is `mananera serve` running with the same settings (serve.control_socket)?",
                path.display()
            ))
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Other(format!(
            "not allowed to use the control socket {} ({e}); run as the daemon's user or root",
            path.display()
        )),
        _ => ClientError::Other(format!("cannot reach the control socket {}: {e}", path.display())),
    })?;
    let mut line = serde_json::to_string(request).map_err(|e| ClientError::Other(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| ClientError::Other(format!("cannot send the request: {e}")))?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| ClientError::Other(format!("no answer from the daemon: {e}")))?;
    let answer: Value = serde_json::from_str(answer.trim())
        .map_err(|e| ClientError::Other(format!("the daemon's answer is unreadable ({e})")))?;
    if answer["ok"] == true {
        Ok(answer["result"].clone())
    } else {
        let code = serde_json::from_value(answer["code"].clone()).unwrap_or(RefusalKind::Failed);
        Err(ClientError::Refused(Refused {
            code,
            error: answer["error"].as_str().unwrap_or("refused").to_string(),
        }))
    }
}

/// The control socket's path: `serve.control_socket`, else `$RUNTIME_DIRECTORY/control.sock`
/// (systemd's `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR/mananera/control.sock`, else
/// `control.sock` in the state directory.
pub fn socket_path(config: &crate::config::Config) -> PathBuf {
    if !config.serve.control_socket.is_empty() {
        return PathBuf::from(&config.serve.control_socket);
    }
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        return PathBuf::from(dir).join("control.sock");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("mananera/control.sock");
    }
    config.state_dir().join("control.sock")
}
