//! `POST /api/generate`: a topic and optional sampling settings in; the speech out, as JSON
//! or as server-sent events (`Accept: text/event-stream`): `delta` events with text, then
//! one `done` or `error` event.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{AppState, error};
use crate::language::Language;
use crate::service::limits::Refusal;
use crate::service::queue::{Event, Failure};
use crate::service::{Answer, Rejection, Request};
use crate::texts;
use mananera_engine::{Generation, SamplingParams};

const EXAMPLE: &str = r#"{"topic": "el petróleo", "voice": "amlo", "max_words": 80}"#;
const FIELDS: &str = "topic, voice, temperature, top_k, top_p, repetition_penalty, seed, max_new_tokens, min_new_tokens, max_words";

/// A request body, read.
struct Asked {
    topic: String,
    voice: Option<String>,
    params: SamplingParams,
}

/// Reads the request body: a topic, an optional voice and optional sampling settings (left
/// out or null: the `[generation]` value). Errors name the field.
fn parse_body(text: &str, defaults: &SamplingParams) -> Result<Asked, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("the body is not a valid request ({e}); send JSON like {EXAMPLE}"))?;
    let Value::Object(fields) = value else {
        return Err(format!("the body must be a JSON object like {EXAMPLE}"));
    };
    let mut params = defaults.clone();
    let (mut topic, mut voice) = (None, None);
    for (key, value) in fields {
        if value.is_null() && key != "topic" {
            continue;
        }
        match key.as_str() {
            "topic" => topic = Some(field(&key, value)?),
            "voice" => voice = Some(field(&key, value)?),
            "temperature" => params.temperature = field(&key, value)?,
            "top_k" => params.top_k = field(&key, value)?,
            "top_p" => params.top_p = field(&key, value)?,
            "repetition_penalty" => params.repetition_penalty = field(&key, value)?,
            "seed" => params.seed = Some(field(&key, value)?),
            "max_new_tokens" => params.max_new_tokens = field(&key, value)?,
            "min_new_tokens" => params.min_new_tokens = field(&key, value)?,
            "max_words" => params.max_words = field(&key, value)?,
            other => {
                return Err(format!("unknown field `{other}`; the fields are {FIELDS}"));
            }
        }
    }
    let topic =
        topic.ok_or_else(|| format!("the body has no `topic`; send JSON like {EXAMPLE}"))?;
    Ok(Asked {
        topic,
        voice,
        params,
    })
}

fn field<T: DeserializeOwned>(key: &str, value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("`{key}`: {e}"))
}

pub(super) async fn generate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    let bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is over {} bytes (serve.max_body_bytes); send only a topic and settings",
                    state.max_body_bytes
                ),
            );
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body is not valid UTF-8 (at byte {}); send UTF-8 JSON",
                    e.valid_up_to()
                ),
            );
        }
    };
    let body = match parse_body(text, &state.defaults) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let Some(speeches) = state.speeches.get() else {
        return coded(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            texts::loading(Language::En),
            texts::loading(state.language),
        );
    };
    let streaming = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let request = Request {
        frontend: if streaming { "web" } else { "api" },
        user: format!("web:{}", peer.ip()),
        params: body.params,
        topic: body.topic,
        voice: body.voice,
    };
    match speeches.ask(request).await {
        Err(rejection) => rejected(&rejection, state.language),
        Ok(answer) if streaming => sse(answer, started, state.language).into_response(),
        Ok(answer) => whole(answer, started, state.language).await,
    }
}

/// The 401 for a request without the bearer token the API has (`None`: let it through).
pub(super) fn unauthorized(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let token = state.api_token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    given
        .is_none_or(|g| !constant_time_eq(g.as_bytes(), token.as_bytes()))
        .then(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "this API needs a token: send `Authorization: Bearer <token>` (the token of serve.api_token_file, $MANANERA_API_TOKEN or the api-token credential)",
            )
        })
}

/// An error as JSON: a stable `code`, the English `error` and the `message` a person reads
/// (in `serve.language`).
fn coded(status: StatusCode, code: &str, error: &str, message: &str) -> Response {
    let body = json!({ "code": code, "error": error, "message": message });
    (status, axum::Json(body)).into_response()
}

/// A rejection as a status, a `Retry-After` header where one helps, and a JSON body with its
/// code, the English text and the person's.
fn rejected(rejection: &Rejection, language: Language) -> Response {
    let (status, retry_after) = match rejection {
        Rejection::Invalid(_) => (StatusCode::BAD_REQUEST, None),
        Rejection::Busy(b) => (StatusCode::SERVICE_UNAVAILABLE, Some(b.retry_after_s)),
        Rejection::Refused(Refusal::NotAllowed) => (StatusCode::FORBIDDEN, None),
        Rejection::Refused(Refusal::InFlight) => (StatusCode::TOO_MANY_REQUESTS, None),
        Rejection::Refused(Refusal::RateLimited { retry_after_s }) => {
            (StatusCode::TOO_MANY_REQUESTS, Some(*retry_after_s))
        }
        Rejection::Refused(Refusal::QuotaExhausted { resets_in_s, .. }) => {
            (StatusCode::TOO_MANY_REQUESTS, Some(*resets_in_s))
        }
    };
    let body = json!({
        "code": texts::code(rejection),
        "error": texts::rejection(rejection, Language::En),
        "message": texts::rejection(rejection, language),
        "retry_after_s": retry_after,
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(s) = retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// A failed speech as JSON, like [`coded`].
fn failed(failure: &Failure, language: Language) -> Value {
    let retry_after_s = match failure {
        Failure::Backend { retry_after_s } => Some(*retry_after_s),
        _ => None,
    };
    json!({
        "code": texts::failure_code(failure),
        "error": texts::failure(failure, Language::En),
        "message": texts::failure(failure, language),
        "retry_after_s": retry_after_s,
    })
}

/// Waits for the whole speech and answers with one JSON object.
async fn whole(answer: Answer, started: Instant, language: Language) -> Response {
    let (topic, text, version, voice, generation) = match answer {
        Answer::Cached {
            topic,
            text,
            version,
            voice,
        } => (topic, text, version, voice, None),
        Answer::Streaming {
            topic,
            mut events,
            version,
            voice,
        } => loop {
            match events.recv().await {
                Some(Event::Delta(_)) => {}
                Some(Event::Done(mut g)) => {
                    break (topic, std::mem::take(&mut g.text), version, voice, Some(g));
                }
                Some(Event::Failed(failure)) => {
                    let status = match failure {
                        Failure::Prompt(_) => StatusCode::BAD_REQUEST,
                        _ => StatusCode::SERVICE_UNAVAILABLE,
                    };
                    let mut response =
                        (status, axum::Json(failed(&failure, language))).into_response();
                    if let Failure::Backend { retry_after_s } = failure
                        && let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string())
                    {
                        response.headers_mut().insert(header::RETRY_AFTER, v);
                    }
                    return response;
                }
                None => {
                    let failure = Failure::Model;
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(failed(&failure, language)),
                    )
                        .into_response();
                }
            }
        },
    };
    let mut reply = summary(&topic, &version, &voice, generation.as_ref(), started);
    reply.insert("text".into(), text.into());
    axum::Json(reply).into_response()
}

/// Streams the speech as server-sent events.
fn sse(
    answer: Answer,
    started: Instant,
    language: Language,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (version, voice) = match &answer {
        Answer::Cached { version, voice, .. } | Answer::Streaming { version, voice, .. } => {
            (version.clone(), voice.clone())
        }
    };
    let delta = |text: String| {
        SseEvent::default()
            .event("delta")
            .data(json!({ "text": text }).to_string())
    };
    let done = move |topic: &str, generation: Option<&Generation>| {
        let fields = Value::Object(summary(topic, &version, &voice, generation, started));
        SseEvent::default().event("done").data(fields.to_string())
    };
    let events: Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send + Unpin> = match answer {
        Answer::Cached { topic, text, .. } => {
            Box::new(stream::iter([Ok(delta(text)), Ok(done(&topic, None))]))
        }
        Answer::Streaming { topic, events, .. } => {
            Box::new(Box::pin(stream::unfold(Some(events), move |events| {
                let (topic, done) = (topic.clone(), done.clone());
                async move {
                    let mut events = events?;
                    let event = match events.recv().await {
                        Some(Event::Delta(text)) => return Some((Ok(delta(text)), Some(events))),
                        Some(Event::Done(g)) => done(&topic, Some(&g)),
                        Some(Event::Failed(failure)) => SseEvent::default()
                            .event("error")
                            .data(failed(&failure, language).to_string()),
                        None => SseEvent::default()
                            .event("error")
                            .data(failed(&Failure::Model, language).to_string()),
                    };
                    Some((Ok(event), None))
                }
            })))
        }
    };
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// What every answer says besides the text: `cached` when no generation ran.
fn summary(
    topic: &str,
    version: &str,
    voice: &str,
    generation: Option<&Generation>,
    started: Instant,
) -> serde_json::Map<String, Value> {
    let fields = json!({
        "topic": topic,
        "voice": voice,
        "model_version": version,
        "cached": generation.is_none(),
        "stop_reason": generation.map(|g| g.stop_reason),
        "new_tokens": generation.map(|g| g.timings.new_tokens),
        "seconds": started.elapsed().as_secs_f64(),
    });
    match fields {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// Compares a secret without leaking how much of it matched through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
