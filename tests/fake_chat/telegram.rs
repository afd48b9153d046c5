//! A loopback Telegram Bot API: `/bot<token>/<method>` (method names matched without regard
//! to case, as the real server does), with long-polled getUpdates and 429 `retry_after`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const BOT_ID: i64 = 5_000_000_001;
pub const BOT_USERNAME: &str = "mananera_bot";

/// One API call the bot made.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    /// Lowercase.
    pub method: String,
    pub token: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    updates: Vec<Value>,
    next_update: i64,
    next_message: i64,
    /// Calls of these methods still to answer with 429.
    refuse: Vec<(String, usize)>,
}

/// The fake: its base URL (for `telegram.api_url`) and what it saw.
#[derive(Clone)]
pub struct FakeTelegram {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    news: Arc<Notify>,
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeTelegram {
            url: format!("http://{}", listener.local_addr().unwrap()),
            inner: Arc::new(Mutex::new(Inner {
                next_update: 1,
                next_message: 100,
                ..Default::default()
            })),
            news: Arc::new(Notify::new()),
        };
        let app = Router::new().fallback(call).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// The next `n` calls of `method` (lowercase) are answered 429, retry after 2 s.
    pub fn refuse(&self, method: &str, n: usize) {
        self.inner.lock().unwrap().refuse.push((method.into(), n));
    }

    /// A person sends `text` in a chat; `chat_id` > 0 is a private chat, < 0 a group.
    /// `reply_to` is the id of a message of the bot being replied to.
    pub fn user_says(&self, chat_id: i64, user_id: i64, text: &str, reply_to: Option<i64>) {
        let mut inner = self.inner.lock().unwrap();
        let chat = if chat_id > 0 {
            json!({"id": chat_id, "type": "private", "first_name": "Persona"})
        } else {
            json!({"id": chat_id, "type": "group", "title": "Grupo"})
        };
        inner.next_message += 1;
        let mut message = json!({
            "message_id": inner.next_message,
            "date": 1_795_000_000,
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Persona"},
            "text": text,
        });
        if text.starts_with('/') {
            let len = text
                .split_whitespace()
                .next()
                .unwrap()
                .encode_utf16()
                .count();
            message["entities"] = json!([{"type": "bot_command", "offset": 0, "length": len}]);
        }
        if let Some(id) = reply_to {
            message["reply_to_message"] = json!({
                "message_id": id, "date": 1_795_000_000, "chat": chat,
                "from": bot_user(), "text": "…",
            });
        }
        let update_id = inner.next_update;
        inner.next_update += 1;
        inner
            .updates
            .push(json!({"update_id": update_id, "message": message}));
        drop(inner);
        self.news.notify_waiters();
    }

    /// The update a person sending `text` in private chat `chat_id` makes, as Telegram
    /// posts it to a webhook.
    pub fn update_for(&self, chat_id: i64, text: &str) -> Value {
        self.user_says(chat_id, chat_id, text, None);
        let mut inner = self.inner.lock().unwrap();
        inner.updates.pop().unwrap()
    }

    /// Waits until `check` holds for the calls so far, or panics after `limit`.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&[Call]) -> Option<T>,
    ) -> T {
        let found = super::wait_until(&self.news, limit, || {
            check(&self.inner.lock().unwrap().calls)
        })
        .await;
        found.unwrap_or_else(|| {
            let calls = self.calls();
            panic!("fake telegram: no {what} in {limit:?}; calls: {calls:#?}")
        })
    }

    fn record(&self, call: Call) {
        self.inner.lock().unwrap().calls.push(call);
        self.news.notify_waiters();
    }
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "Mañanera", "username": BOT_USERNAME})
}

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

/// The fields of a `multipart/form-data` body (how teloxide sends methods that may carry
/// files), as a JSON object of strings.
fn form_fields(content_type: &str, body: &[u8]) -> Option<Value> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let text = String::from_utf8_lossy(body);
    let mut fields = serde_json::Map::new();
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.split("name=\"").nth(1)?.split('"').next()?;
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        fields.insert(name.to_string(), Value::String(value.to_string()));
    }
    Some(Value::Object(fields))
}

async fn call(
    State(fake): State<FakeTelegram>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/');
    let Some((token, method)) = path
        .strip_prefix("bot")
        .and_then(|rest| rest.split_once('/'))
    else {
        return axum::Json(json!({"ok": false, "error_code": 404, "description": "Not Found"}))
            .into_response();
    };
    let method = method.to_lowercase();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let body: Value = if content_type.starts_with("multipart/form-data") {
        form_fields(content_type, &body).unwrap_or(Value::Null)
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    if method == "getupdates" {
        fake.record(Call {
            at: Instant::now(),
            method: method.clone(),
            token: token.to_string(),
            body: body.clone(),
        });
        return get_updates(fake, &body).await;
    }
    let refused = {
        let mut inner = fake.inner.lock().unwrap();
        match inner
            .refuse
            .iter_mut()
            .find(|(m, n)| *m == method && *n > 0)
        {
            Some((_, n)) => {
                *n -= 1;
                true
            }
            None => false,
        }
    };
    let mut recorded = Call {
        at: Instant::now(),
        method: method.clone(),
        token: token.to_string(),
        body: body.clone(),
    };
    if refused {
        recorded.method = format!("{method} 429");
        fake.record(recorded);
        return axum::Json(json!({"ok": false, "error_code": 429,
            "description": "Too Many Requests: retry after 2", "parameters": {"retry_after": 2}}))
        .into_response();
    }
    fake.record(recorded);
    let message = |id: i64| {
        json!({
            "message_id": id, "date": 1_795_000_000,
            "chat": {"id": body["chat_id"], "type": if body["chat_id"].as_i64().unwrap_or(0) > 0 { "private" } else { "group" },
                     "first_name": "Persona", "title": "Grupo"},
            "from": bot_user(), "text": body["text"],
        })
    };
    match method.as_str() {
        "getme" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "Mañanera", "username": BOT_USERNAME,
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "can_connect_to_business": false,
            "has_main_web_app": false,
        })),
        "getwebhookinfo" => {
            ok(json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0}))
        }
        "deletewebhook" | "setwebhook" | "setmycommands" | "sendchataction" => ok(json!(true)),
        "sendmessage" => {
            let id = {
                let mut inner = fake.inner.lock().unwrap();
                inner.next_message += 1;
                inner.next_message
            };
            ok(message(id))
        }
        "editmessagetext" => ok(message(body["message_id"].as_i64().unwrap_or(0))),
        _ => axum::Json(
            json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"}),
        )
        .into_response(),
    }
}

async fn get_updates(fake: FakeTelegram, body: &Value) -> Response {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = fake.news.notified();
        let pending: Vec<Value> = {
            let mut inner = fake.inner.lock().unwrap();
            // Confirmed updates are forgotten, as the real server does.
            inner
                .updates
                .retain(|u| u["update_id"].as_i64().unwrap() >= offset);
            inner.updates.clone()
        };
        if !pending.is_empty() {
            return ok(Value::Array(pending));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return ok(json!([]));
        }
    }
}

/// What the bot's messages in `chat` show in the end, in order, and the calls that made them.
pub fn final_messages(calls: &[Call], chat: i64, after: usize) -> Vec<String> {
    let mut messages: Vec<(i64, String)> = Vec::new();
    let mut next_id = None;
    for call in &calls[after..] {
        if call.body["chat_id"] != json!(chat) {
            continue;
        }
        let text = call.body["text"].as_str().unwrap_or_default().to_string();
        match call.method.as_str() {
            "sendmessage" => {
                messages.push((next_id.take().unwrap_or(-1), text));
            }
            "editmessagetext" => {
                let id = call.body["message_id"].as_i64().unwrap();
                if let Some(m) = messages.iter_mut().find(|(i, _)| *i == id) {
                    m.1 = text;
                } else if let Some(m) = messages.iter_mut().find(|(i, _)| *i == -1) {
                    *m = (id, text);
                }
            }
            _ => {}
        }
    }
    messages.into_iter().map(|(_, t)| t).collect()
}
