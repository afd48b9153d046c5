//! A loopback OpenAI-compatible completion server, as vLLM, TGI and llama.cpp's
//! `llama-server` speak it: `GET /v1/models`, and `POST /v1/completions` with `stream: true`
//! answered as server-sent events (`data: {choices:[{text, finish_reason}]}` … `data:
//! [DONE]`). Tests switch how it behaves: speaking, refusing with a status, never
//! answering, stalling mid-answer, sending garbage.
#![allow(dead_code)] // each test binary uses part of it

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the fake answers completions.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A speech of `words` words (fewer when `max_tokens` is lower), one per event.
    Speak { words: usize, delay: Duration },
    /// This status, with `Retry-After` when given, to completions (and to `/v1/models` when
    /// `models_too`).
    Status {
        code: u16,
        retry_after: Option<u64>,
        models_too: bool,
    },
    /// Accepts the request and never answers it.
    Hang,
    /// Sends one piece of the speech, then nothing more (the connection stays open).
    Stall,
    /// A 200 stream whose events are not JSON.
    Garbage,
}

#[derive(Debug)]
struct Inner {
    models: Vec<String>,
    mode: Mode,
    /// Bodies of the completion requests, in order.
    requests: Vec<Value>,
    /// Streams that ended because the client went away before the speech did.
    abandoned: usize,
    models_calls: usize,
    /// What publish hooks POSTed to `/admin/load`.
    loads: Vec<Value>,
}

/// The fake: its base URL (for `engine.backend_url`) and what it saw.
#[derive(Clone)]
pub struct FakeOpenAi {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeOpenAi {
    /// Serves `models` and speaks 40-word speeches.
    pub async fn start(models: &[&str]) -> FakeOpenAi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeOpenAi {
            url: format!("http://{}", listener.local_addr().unwrap()),
            inner: Arc::new(Mutex::new(Inner {
                models: models.iter().map(|m| m.to_string()).collect(),
                mode: Mode::Speak {
                    words: 40,
                    delay: Duration::from_millis(5),
                },
                requests: Vec::new(),
                abandoned: 0,
                models_calls: 0,
                loads: Vec::new(),
            })),
        };
        let app = Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/completions", post(completions))
            .route("/admin/load", post(load))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner().mode = mode;
    }

    pub fn set_models(&self, models: &[&str]) {
        self.inner().models = models.iter().map(|m| m.to_string()).collect();
    }

    /// The completion requests' bodies so far.
    pub fn requests(&self) -> Vec<Value> {
        self.inner().requests.clone()
    }

    /// Streams the client closed before their end.
    pub fn abandoned(&self) -> usize {
        self.inner().abandoned
    }

    /// What publish hooks POSTed to `/admin/load`.
    pub fn loads(&self) -> Vec<Value> {
        self.inner().loads.clone()
    }

    pub fn models_calls(&self) -> usize {
        self.inner().models_calls
    }
}

/// The speech the fake writes for `model`: word `i` is `palabra<i>ñ` (a two-byte letter in
/// every piece), a sentence ending every tenth, led by the model's id.
pub fn speech(model: &str, words: usize) -> Vec<String> {
    (0..words)
        .map(|i| match i {
            0 => format!("{model}:"),
            i if i % 10 == 9 => format!(" palabra{i}ñ."),
            i => format!(" palabra{i}ñ"),
        })
        .collect()
}

/// A publish hook's POST (`publish.hook_url`): the fake "restarts" serving the version it
/// names, under its `model_name`.
async fn load(State(fake): State<FakeOpenAi>, body: axum::Json<Value>) -> Response {
    let Some(name) = body["model_name"].as_str() else {
        return status(400, None);
    };
    let mut inner = fake.inner();
    inner.models = vec![name.to_string()];
    inner.loads.push(body.0.clone());
    axum::Json(json!({"loaded": name})).into_response()
}

async fn list_models(State(fake): State<FakeOpenAi>) -> Response {
    let (models, mode) = {
        let mut inner = fake.inner();
        inner.models_calls += 1;
        (inner.models.clone(), inner.mode.clone())
    };
    if let Mode::Status {
        code,
        retry_after,
        models_too: true,
    } = mode
    {
        return status(code, retry_after);
    }
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "owned_by": "fake"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn status(code: u16, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(code).unwrap();
    let mut headers = HeaderMap::new();
    if let Some(s) = retry_after {
        headers.insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
    }
    let body = json!({"error": {"message": format!("fake says {code}"), "type": "server_error"}});
    (code, headers, axum::Json(body)).into_response()
}

async fn completions(State(fake): State<FakeOpenAi>, body: axum::Json<Value>) -> Response {
    let body = body.0;
    let mode = {
        let mut inner = fake.inner();
        inner.requests.push(body.clone());
        inner.mode.clone()
    };
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let event = |v: Value| Bytes::from(format!("data: {v}\n\n"));
    match mode {
        Mode::Status {
            code, retry_after, ..
        } => return status(code, retry_after),
        Mode::Hang => {
            std::future::pending::<()>().await;
        }
        Mode::Garbage => {
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from("data: <html>oops</html>\n\n")).await;
            });
        }
        Mode::Stall => {
            tokio::spawn(async move {
                let first =
                    json!({"choices": [{"text": "Buenos", "index": 0, "finish_reason": null}]});
                let _ = tx.send(event(first)).await;
                tx.closed().await;
            });
        }
        Mode::Speak { words, delay } => {
            let pieces = speech(&model, words.min(max_tokens));
            let finish = if words > max_tokens { "length" } else { "stop" };
            tokio::spawn(async move {
                let n = pieces.len();
                for (i, text) in pieces.into_iter().enumerate() {
                    let finish = (i + 1 == n).then_some(finish);
                    let chunk = json!({"id": "cmpl-1", "object": "text_completion", "model": model,
                        "choices": [{"text": text, "index": 0, "finish_reason": finish}]});
                    if tx.send(event(chunk)).await.is_err() {
                        fake.inner().abandoned += 1;
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
                let usage = json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}});
                let _ = tx.send(event(usage)).await;
                let _ = tx.send(Bytes::from("data: [DONE]\n\n")).await;
            });
        }
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}
