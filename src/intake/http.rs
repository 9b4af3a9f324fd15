//! `POST /v1/intake`: one message or an array of messages → 202 with our ids, as soon
//! as they are durably queued.

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    middleware,
    response::IntoResponse,
    routing::post,
};
use futures::StreamExt as _;
use serde_json::json;

use super::submit;
use crate::{
    error::{AppError, AppResult},
    state::AppState,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/intake", post(submit_messages))
        .route_layer(middleware::from_fn(crate::http::require_write))
}

/// 202 `{"ids": [..], "count": n}`: our ids, in the order of the submitted messages.
async fn submit_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<impl IntoResponse> {
    let limit = state.config.intake.intake_max_body_bytes;
    let timeout = state.config.http.request_timeout;
    let bytes = tokio::time::timeout(timeout, read_limited(&headers, body, limit))
        .await
        .map_err(|_| AppError::bad_input("the body did not arrive within the request timeout"))??;
    let messages = submit::parse_body(&bytes)?;
    let rows = submit::queue(&state, messages).await?;
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "ids": ids, "count": ids.len() }))))
}

/// The whole body, refused with 413 as soon as it is known to exceed `limit`.
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> AppResult<Vec<u8>> {
    let too_large = || AppError::PayloadTooLarge(format!("the body exceeds INTAKE_MAX_BODY_BYTES ({limit} bytes)"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| AppError::bad_input(format!("reading the body failed: {error}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
