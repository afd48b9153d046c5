//! `GET /api/status` (behind the API token when there is one) and the admin API
//! (`POST /api/admin/retrain|cancel|rollback`), which is off unless the API has a token.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::api::unauthorized;
use super::{AppState, error};
use crate::admin::{RefusalKind, Refused, Request};

pub(super) async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    axum::Json(state.admin.status().await).into_response()
}

pub(super) async fn retrain(State(state): State<AppState>, headers: HeaderMap) -> Response {
    act(&state, &headers, Request::Retrain).await
}

pub(super) async fn cancel(State(state): State<AppState>, headers: HeaderMap) -> Response {
    act(&state, &headers, Request::Cancel).await
}

/// Body: `{"version": "v0002"}`, or empty / `{}` for the version before the current one.
pub(super) async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        version: Option<String>,
    }
    let version = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Body>(&body) {
            Ok(b) => b.version,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "the body is not a rollback ({e}); send {{\"version\": \"v0002\"}} or nothing"
                    ),
                );
            }
        }
    };
    act(&state, &headers, Request::Rollback { version }).await
}

async fn act(state: &AppState, headers: &HeaderMap, request: Request) -> Response {
    if state.api_token.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API is off: give the API a token (serve.api_token_file, $MANANERA_API_TOKEN or the api-token credential), or use `mananera retrain|rollback` on the server",
        );
    }
    if let Some(refused) = unauthorized(state, headers) {
        return refused;
    }
    match state.admin.handle(request, "api").await {
        Ok(result) => axum::Json(result).into_response(),
        Err(Refused {
            code,
            error: message,
        }) => {
            let status = match code {
                RefusalKind::InProgress | RefusalKind::NotRunning => StatusCode::CONFLICT,
                RefusalKind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
                RefusalKind::BadRequest | RefusalKind::Failed => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (
                status,
                axum::Json(serde_json::json!({ "error": message, "code": code })),
            )
                .into_response()
        }
    }
}
