//! A loopback Discord: the REST routes the bot uses (reached through serenity's proxy
//! setting) and a WebSocket gateway speaking the documented opcodes — HELLO, IDENTIFY,
//! READY, heartbeats, dispatches, RECONNECT and RESUME.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

pub const APP_ID: &str = "700000000000000001";
pub const GUILD_ID: &str = "700000000000000002";
pub const CHANNEL_ID: &str = "700000000000000003";

/// One REST call the bot made.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The id of the message a follow-up created.
    pub created: Option<String>,
    /// A follow-up the fake created but never answered ([`FakeDiscord::swallow_followups`]).
    pub swallowed: bool,
}

/// One message the gateway received from the bot.
#[derive(Debug, Clone)]
pub struct GatewayFrame {
    pub connection: usize,
    pub op: u64,
    pub d: Value,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    frames: Vec<GatewayFrame>,
    /// Edits still to answer with 429.
    edits_to_refuse: usize,
    /// Edits still to answer with a 500 and a body that is not JSON.
    edits_to_break: usize,
    next_message_id: u64,
    /// Senders to the live gateway connections, newest last.
    connections: Vec<mpsc::UnboundedSender<Value>>,
    seq: u64,
    /// Answer the next RESUME with INVALID_SESSION (not resumable).
    refuse_resume: bool,
    /// Every REST answer waits this long.
    delay: Duration,
    /// Follow-ups still to create (recorded, like Discord posting them) and never answer.
    followups_to_swallow: usize,
    /// The shard count `GET /gateway/bot` recommends (1 when unset).
    shards: u64,
    /// Dispatches go to the connection that identified as this shard (else the newest).
    target_shard: Option<u64>,
}

/// The fake: its REST address (for `discord.api_proxy`) and what it saw.
#[derive(Clone)]
pub struct FakeDiscord {
    pub rest_url: String,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl FakeDiscord {
    pub async fn start() -> FakeDiscord {
        let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_url = format!("ws://{}", gateway.local_addr().unwrap());
        let fake = FakeDiscord {
            rest_url: format!("http://{}", rest.local_addr().unwrap()),
            inner: Arc::new(Mutex::new(Inner {
                next_message_id: 800_000_000_000_000_000,
                ..Default::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let app = Router::new()
            .fallback(rest_call)
            .with_state((fake.clone(), gateway_url));
        tokio::spawn(async move { axum::serve(rest, app).await.unwrap() });
        let accepting = fake.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = gateway.accept().await.unwrap();
                tokio::spawn(accepting.clone().connection(stream));
            }
        });
        fake
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    pub fn frames(&self) -> Vec<GatewayFrame> {
        self.inner.lock().unwrap().frames.clone()
    }

    /// Every REST call is answered `delay` late.
    pub fn delay_answers(&self, delay: Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    /// The next `n` follow-ups are created (they count as posted) but never answered.
    pub fn swallow_followups(&self, n: usize) {
        self.inner.lock().unwrap().followups_to_swallow = n;
    }

    /// The next `n` edits are answered 500 with an HTML body (not the JSON Discord sends).
    pub fn break_edits(&self, n: usize) {
        self.inner.lock().unwrap().edits_to_break = n;
    }

    /// The next `n` edits are answered 429.
    pub fn refuse_edits(&self, n: usize) {
        self.inner.lock().unwrap().edits_to_refuse = n;
    }

    /// Waits until `check` holds for what the fake saw, or panics after `limit`.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&[Call], &[GatewayFrame]) -> Option<T>,
    ) -> T {
        let found = super::wait_until(&self.changed, limit, || {
            let inner = self.inner.lock().unwrap();
            check(&inner.calls, &inner.frames)
        })
        .await;
        found.unwrap_or_else(|| {
            let (calls, frames) = (self.calls(), self.frames());
            panic!("fake discord: no {what} in {limit:?}; calls: {calls:#?}\nframes: {frames:#?}")
        })
    }

    /// `GET /gateway/bot` recommends `n` shards.
    pub fn recommend_shards(&self, n: u64) {
        self.inner.lock().unwrap().shards = n;
    }

    /// Later dispatches go to the connection that identified as `shard`.
    pub fn dispatch_to_shard(&self, shard: u64) {
        self.inner.lock().unwrap().target_shard = Some(shard);
    }

    /// The `[id, total]` of every IDENTIFY, in order.
    pub fn identified_shards(&self) -> Vec<(u64, u64)> {
        self.frames()
            .iter()
            .filter(|f| f.op == 2)
            .map(|f| shard_of(&f.d))
            .collect()
    }

    /// Sends a dispatch event on the newest gateway connection (or the target shard's).
    pub fn dispatch(&self, event: &str, d: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.seq += 1;
        let frame = json!({"op": 0, "t": event, "s": inner.seq, "d": d});
        let target = inner.target_shard.and_then(|shard| {
            inner
                .frames
                .iter()
                .rev()
                .find(|f| f.op == 2 && shard_of(&f.d).0 == shard)
                .map(|f| f.connection)
        });
        let connection = match target {
            Some(number) => &inner.connections[number - 1],
            None => inner.connections.last().expect("no gateway connection"),
        };
        connection.send(frame).unwrap();
    }

    /// Tells the bot to reconnect (op 7).
    pub fn reconnect(&self) {
        let inner = self.inner.lock().unwrap();
        let _ = inner
            .connections
            .last()
            .expect("no gateway connection")
            .send(json!({"op": 7, "d": null}));
    }

    /// Closes the newest gateway connection without a word, as a network failure would.
    pub fn drop_connection(&self) {
        let inner = self.inner.lock().unwrap();
        let _ = inner
            .connections
            .last()
            .expect("no gateway connection")
            .send(Value::Null);
    }

    /// The next RESUME is answered with INVALID_SESSION (`d: false`): the bot must identify
    /// again.
    pub fn refuse_next_resume(&self) {
        self.inner.lock().unwrap().refuse_resume = true;
    }

    /// Someone typed `/<name> tema:<topic>`; returns the interaction's token.
    pub fn slash(&self, name: &str, topic: Option<&str>, user_id: &str, guild: bool) -> String {
        self.slash_option(name, topic.map(|t| ("tema", t)), user_id, guild)
    }

    /// Someone typed `/<name> <option>:<value>`; returns the interaction's token.
    pub fn slash_option(
        &self,
        name: &str,
        option: Option<(&str, &str)>,
        user_id: &str,
        guild: bool,
    ) -> String {
        let id = {
            let mut inner = self.inner.lock().unwrap();
            inner.next_message_id += 1;
            inner.next_message_id
        };
        let token = format!("itoken{id}");
        let user = json!({"id": user_id, "username": format!("user{user_id}"),
            "discriminator": "0", "global_name": null, "avatar": null});
        let options: Vec<Value> = option
            .map(|(name, value)| json!({"name": name, "type": 3, "value": value}))
            .into_iter()
            .collect();
        let mut d = json!({
            "id": id.to_string(),
            "application_id": APP_ID,
            "type": 2,
            "data": {"id": "900000000000000001", "name": name, "type": 1, "options": options},
            "channel_id": CHANNEL_ID,
            "channel": {"id": CHANNEL_ID, "type": 0},
            "token": token,
            "version": 1,
            "app_permissions": "0",
            "locale": "es-419",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "context": if guild { 0 } else { 1 },
            "attachment_size_limit": 10485760,
        });
        if guild {
            d["guild_id"] = json!(GUILD_ID);
            d["guild_locale"] = json!("es-419");
            d["member"] = json!({"user": user, "roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00",
                "deaf": false, "mute": false, "flags": 0, "permissions": "0"});
        } else {
            d["user"] = user;
        }
        self.dispatch("INTERACTION_CREATE", d);
        token
    }

    fn record(&self, call: Call) {
        self.inner.lock().unwrap().calls.push(call);
        self.changed.notify_waiters();
    }

    fn message(&self, content: &Value) -> Value {
        let id = {
            let mut inner = self.inner.lock().unwrap();
            inner.next_message_id += 1;
            inner.next_message_id
        };
        json!({
            "id": id.to_string(), "channel_id": CHANNEL_ID, "type": 0,
            "author": {"id": APP_ID, "username": "mananera", "discriminator": "0", "bot": true,
                       "global_name": null, "avatar": null},
            "content": content.clone(), "timestamp": "2026-11-27T00:00:00.000000+00:00",
            "edited_timestamp": null, "tts": false, "mention_everyone": false, "mentions": [],
            "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "flags": 0,
        })
    }

    async fn connection(self, stream: tokio::net::TcpStream) {
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let (mut sink, mut source) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let number = {
            let mut inner = self.inner.lock().unwrap();
            inner.connections.push(tx.clone());
            inner.connections.len()
        };
        tx.send(json!({"op": 10, "d": {"heartbeat_interval": 41250}}))
            .unwrap();
        loop {
            tokio::select! {
                out = rx.recv() => {
                    let Some(out) = out else { return };
                    if out.is_null() {
                        return;
                    }
                    if sink.send(Message::text(out.to_string())).await.is_err() {
                        return;
                    }
                }
                incoming = source.next() => {
                    let Some(Ok(message)) = incoming else { return };
                    let Message::Text(text) = message else { continue };
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    let op = frame["op"].as_u64().unwrap();
                    {
                        let mut inner = self.inner.lock().unwrap();
                        inner.frames.push(GatewayFrame { connection: number, op, d: frame["d"].clone() });
                    }
                    self.changed.notify_waiters();
                    match op {
                        1 => tx.send(json!({"op": 11, "d": null})).unwrap(),
                        2 => {
                            let (id, total) = shard_of(&frame["d"]);
                            let mut inner = self.inner.lock().unwrap();
                            inner.seq += 1;
                            let ready = json!({"op": 0, "t": "READY", "s": inner.seq, "d": {
                                "v": 10,
                                "user": {"id": APP_ID, "username": "mananera", "discriminator": "0",
                                         "bot": true, "global_name": null, "avatar": null},
                                "guilds": [{"id": GUILD_ID, "unavailable": true}],
                                "session_id": "session-1",
                                "resume_gateway_url": "ws://127.0.0.1:1",
                                "shard": [id, total],
                                "application": {"id": APP_ID, "flags": 0},
                            }});
                            tx.send(ready).unwrap();
                        }
                        6 => {
                            let mut inner = self.inner.lock().unwrap();
                            if std::mem::take(&mut inner.refuse_resume) {
                                tx.send(json!({"op": 9, "d": false})).unwrap();
                                continue;
                            }
                            inner.seq += 1;
                            tx.send(json!({"op": 0, "t": "RESUMED", "s": inner.seq, "d": {}})).unwrap();
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

async fn rest_call(
    State((fake, gateway_url)): State<(FakeDiscord, String)>,
    method: Method,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    let delay = fake.inner.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let path = uri.path().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.trim_start_matches("/api/v10/").split('/').collect();
    let call = Call {
        at: Instant::now(),
        method: method.to_string(),
        path: path.clone(),
        body: body.clone(),
        created: None,
        swallowed: false,
    };
    let ok = |value: Value| (StatusCode::OK, axum::Json(value)).into_response();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["gateway", "bot"]) | ("GET", ["gateway"]) => ok(json!({
            "url": gateway_url, "shards": fake.inner.lock().unwrap().shards.max(1),
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        })),
        ("PUT", ["applications", _, "guilds", _, "commands"])
        | ("PUT", ["applications", _, "commands"]) => {
            fake.record(call);
            let commands: Vec<Value> = body
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, mut c)| {
                    c["id"] = json!(format!("90000000000000000{}", i + 1));
                    c["application_id"] = json!(APP_ID);
                    c["version"] = json!("1");
                    c["type"] = json!(1);
                    c
                })
                .collect();
            ok(Value::Array(commands))
        }
        ("POST", ["interactions", _, _, "callback"]) => {
            fake.record(call);
            StatusCode::NO_CONTENT.into_response()
        }
        ("PATCH", ["webhooks", _, _, "messages", _]) => {
            let broken = {
                let mut inner = fake.inner.lock().unwrap();
                let broken = inner.edits_to_break > 0;
                inner.edits_to_break = inner.edits_to_break.saturating_sub(1);
                broken
            };
            if broken {
                fake.record(Call {
                    method: "PATCH 500".into(),
                    ..call
                });
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<html><body>upstream error</body></html>",
                )
                    .into_response();
            }
            let refuse = {
                let mut inner = fake.inner.lock().unwrap();
                let refuse = inner.edits_to_refuse > 0;
                inner.edits_to_refuse = inner.edits_to_refuse.saturating_sub(1);
                refuse
            };
            let mut call = call;
            if refuse {
                call.method = "PATCH 429".into();
                fake.record(call);
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "2"), ("x-ratelimit-scope", "user")],
                    axum::Json(json!({"message": "You are being rate limited.", "retry_after": 2.0, "global": false, "code": 0})),
                )
                    .into_response();
            }
            fake.record(call);
            ok(fake.message(&body["content"]))
        }
        ("POST", ["webhooks", _, _]) => {
            let message = fake.message(&body["content"]);
            let swallow = {
                let mut inner = fake.inner.lock().unwrap();
                let swallow = inner.followups_to_swallow > 0;
                inner.followups_to_swallow = inner.followups_to_swallow.saturating_sub(1);
                swallow
            };
            fake.record(Call {
                created: message["id"].as_str().map(str::to_string),
                swallowed: swallow,
                ..call
            });
            if swallow {
                std::future::pending::<()>().await;
            }
            ok(message)
        }
        _ => {
            fake.record(Call {
                method: format!("UNKNOWN {method}"),
                ..call
            });
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "Unknown route", "code": 0})),
            )
                .into_response()
        }
    }
}

/// The `[id, total]` an IDENTIFY names (`[0, 1]` when it names none).
fn shard_of(identify: &Value) -> (u64, u64) {
    let shard = &identify["shard"];
    (
        shard[0].as_u64().unwrap_or(0),
        shard[1].as_u64().unwrap_or(1),
    )
}

/// What the bot's messages show in the end: the reply's edits, then its follow-ups in order.
pub fn final_pages(calls: &[Call], token: &str) -> Vec<String> {
    let mut original = String::new();
    let mut followups: Vec<(String, String)> = Vec::new();
    for call in calls.iter().filter(|c| c.path.contains(token)) {
        let content = call.body["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match (call.method.as_str(), call.path.rsplit('/').next().unwrap()) {
            ("PATCH", "@original") => original = content,
            ("PATCH", id) => {
                if let Some(f) = followups.iter_mut().find(|(i, _)| i == id) {
                    f.1 = content;
                }
            }
            ("POST", last) if last == token => {
                followups.push((call.created.clone().unwrap(), content));
            }
            _ => {}
        }
    }
    std::iter::once(original)
        .chain(followups.into_iter().map(|(_, c)| c))
        .collect()
}
