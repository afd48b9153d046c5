//! The web page in a real headless Chromium (Debian's `chromium`, installed by `.ci/run`),
//! driven over the DevTools protocol: type a topic, watch the speech stream in, see markup
//! in a topic shown as text, see the busy message.

mod daemon;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{Daemon, EventStream, WHOLE_LENGTH, slow_model};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium showing one page.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    async fn open(url: &str) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut devtools = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                devtools = Some(ws.trim().to_string());
                break;
            }
        }
        let browser_ws = devtools.expect("chromium printed its DevTools address");
        let port = browser_ws
            .strip_prefix("ws://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_string();
        // The page target for our URL.
        let deadline = Instant::now() + Duration::from_secs(30);
        let page_ws = loop {
            let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let found = targets.as_array().unwrap().iter().find_map(|t| {
                (t["type"] == "page" && t["url"].as_str().unwrap_or("").starts_with(url))
                    .then(|| t["webSocketDebuggerUrl"].as_str().unwrap().to_string())
            });
            if let Some(ws) = found {
                break ws;
            }
            assert!(Instant::now() < deadline, "no page target: {targets}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(page_ws).await.unwrap();
        let mut browser = Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        };
        browser
            .wait_for("document.readyState === 'complete' && !!document.getElementById('topic')")
            .await;
        browser
    }

    /// Sends a DevTools command and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(message.into())).await.unwrap();
        while let Some(message) = self.ws.next().await {
            let Message::Text(text) = message.unwrap() else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
        panic!("the DevTools connection closed");
    }

    /// Evaluates JavaScript in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    async fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(condition).await != true {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {condition}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types into the topic box with real key input, then clicks the button.
    async fn ask(&mut self, topic: &str) {
        self.eval(
            "document.getElementById('topic').value = ''; document.getElementById('topic').focus()",
        )
        .await;
        self.call("Input.insertText", json!({"text": topic})).await;
        self.eval("document.getElementById('go').click()").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_streams_a_speech_escapes_markup_and_says_when_the_server_is_busy() {
    let state = tempfile::tempdir().unwrap();
    let sets = [
        "limits.admins=[\"web:127.0.0.1\"]",
        "queue.max_batch=1",
        "queue.capacity=0",
        "generation.temperature=0",
        "generation.max_words=0",
        WHOLE_LENGTH,
        "generation.max_new_tokens=300",
    ];
    let d = Daemon::start(&slow_model(), &state.path().join("s"), &sets);
    let mut page = Browser::open(&format!("{}/", d.url)).await;

    // The voice menu offers the configured voices, the default first; the speech says
    // whose voice wrote it.
    let voices = page
        .eval("[...document.getElementById('voice').options].map(o => o.value).join(',')")
        .await;
    assert_eq!(voices, "amlo,sheinbaum");
    page.eval("document.getElementById('voice').value = 'sheinbaum'")
        .await;

    // The speech appears piece by piece before it is done.
    page.ask("la refinería de Dos Bocas").await;
    let body = "document.getElementById('speech').textContent.length";
    let mut lengths = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = page
            .eval("document.getElementById('speech').dataset.done === '1'")
            .await
            == true;
        lengths.push(page.eval(body).await.as_u64().unwrap());
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the speech never finished");
    }
    let partial: std::collections::BTreeSet<_> = lengths[..lengths.len() - 1].iter().collect();
    assert!(
        partial.len() >= 3,
        "text did not stream in: lengths seen {lengths:?}"
    );
    let shown = page
        .eval("document.getElementById('speech').textContent")
        .await;
    assert!(
        shown
            .as_str()
            .unwrap()
            .starts_with("la refinería de Dos Bocas "),
        "{shown}"
    );
    assert_eq!(
        page.eval("document.getElementById('error').textContent")
            .await,
        ""
    );
    assert!(
        page.eval("document.getElementById('status').textContent")
            .await
            .as_str()
            .unwrap()
            .contains("voz sheinbaum · modelo")
    );

    // The status panel shows the daemon's state from /api/status.
    page.wait_for(
        "document.getElementById('server-schedule').textContent.includes('nightly.enabled = false')",
    )
    .await;
    let model = page
        .eval("document.getElementById('server-model').textContent")
        .await;
    let model = model.as_str().unwrap();
    assert!(
        model.starts_with("m-") && model.contains("cola 0"),
        "{model}"
    );
    assert_eq!(
        page.eval("document.getElementById('server-last').textContent")
            .await,
        "ninguno"
    );

    // Markup in a topic is shown as text, never run.
    let hostile = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
    page.ask(hostile).await;
    page.wait_for("document.getElementById('speech').dataset.done === '1'")
        .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#speech img, #speech script').length")
            .await,
        0
    );
    assert_eq!(page.eval("typeof window.pwned").await, "undefined");
    assert_eq!(
        page.eval("document.querySelector('#speech b').textContent")
            .await,
        format!("{hostile} ")
    );

    // While another request holds the only place, the page says the server is busy.
    let mut running = EventStream::open(
        &d.url,
        &json!({"topic": "otro tema", "max_new_tokens": 512}),
    )
    .await;
    assert_eq!(running.next().await.unwrap().0, "delta");
    page.ask("el petróleo").await;
    page.wait_for("document.getElementById('error').textContent !== ''")
        .await;
    let error = page
        .eval("document.getElementById('error').textContent")
        .await;
    assert!(
        error
            .as_str()
            .unwrap()
            .starts_with("El servidor está ocupado escribiendo otros discursos"),
        "{error}"
    );
    assert_eq!(
        page.eval("document.getElementById('go').disabled").await,
        false
    );
}
