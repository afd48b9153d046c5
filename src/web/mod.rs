//! The web front end (axum): the page, `POST /api/generate` (JSON or server-sent events),
//! `GET /api/status`, the admin API (`/api/admin/*`), `/healthz`, `/readyz` and `/metrics`.

mod admin;
mod api;
mod conn;

pub use conn::ConnectionLimits;

use std::sync::{Arc, OnceLock};

use crate::language::Language;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::admin::Admin;
use crate::service::Speeches;
use crate::service::metrics::Metrics;
use crate::stall::RuntimeHealth;
use mananera_engine::SamplingParams;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Set once the model is loaded.
    pub speeches: Arc<OnceLock<Arc<Speeches>>>,
    pub metrics: Arc<Metrics>,
    /// Status, retrain, cancel and rollback.
    pub admin: Arc<Admin>,
    /// Defaults for the sampling settings a request leaves out.
    pub defaults: SamplingParams,
    /// The language of the texts people read (the page, the API's `message`).
    pub language: Language,
    /// The voices the page offers, the default first.
    pub voices: Vec<String>,
    /// When set, `/api/*` needs `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    /// What the stall watchdog found, for `/healthz`.
    pub runtime_health: Arc<RuntimeHealth>,
    /// Open connections and their timeouts.
    pub connections: ConnectionLimits,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/generate", post(api::generate))
        .route("/api/status", get(admin::status))
        .route("/api/admin/retrain", post(admin::retrain))
        .route("/api/admin/cancel", post(admin::cancel))
        .route("/api/admin/rollback", post(admin::rollback))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Serves the routes on `listener` until `shutdown` resolves, then waits (a bounded time)
/// for open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.connections.clone();
    conn::serve(listener, router(state), limits, shutdown).await
}

/// The page, its voice menu filled with `state.voices` (the default first).
async fn page(State(state): State<AppState>) -> impl IntoResponse {
    // Lets a test block a runtime worker, as a blocking call slipped onto it would.
    crate::failpoint::hit("web.page");
    // Voice ids are lowercase letters, digits, `-` and `_`: nothing to escape.
    let options: String = state
        .voices
        .iter()
        .map(|v| format!("<option value=\"{v}\">{v}</option>"))
        .collect();
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        )],
        Html(include_str!("page.html").replace("<!--VOICES-->", &options)),
    )
}

/// 200 while the process answers and its runtime has not stalled lately; 503 with the
/// reason otherwise.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.runtime_health.problem() {
        None => axum::Json(serde_json::json!({ "status": "ok" })).into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "stalled", "error": problem })),
        )
            .into_response(),
    }
}

/// 200 with the served version once requests can be answered; 503 while the model loads or
/// while the generation server (`engine.backend = "openai"`) is down.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.speeches.get() {
        Some(s) => match s.unavailable() {
            None => axum::Json(serde_json::json!({
                "ready": true,
                "model_version": s.version(),
            }))
            .into_response(),
            Some((why, retry_after_s)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, retry_after_s.to_string())],
                axum::Json(serde_json::json!({
                    "ready": false,
                    "model_version": s.version(),
                    "error": why,
                    "retry_after_s": retry_after_s,
                })),
            )
                .into_response(),
        },
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading",
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(s) = state.speeches.get() {
        s.refresh_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such page: the API is POST /api/generate and GET /api/status; see also /healthz, /readyz, /metrics",
    )
}

/// A JSON error body: `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}
