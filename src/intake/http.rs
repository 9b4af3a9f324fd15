//! `POST /v1/intake`: one message or an array of messages → 202 with our ids, as soon
//! as they are durably queued.

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    middleware,
    response::IntoResponse,
    routing::post,
};
use serde_json::json;

use super::{Intake, IntakeMessage, submit};
use crate::{
    error::{AppError, AppResult},
    global_id,
    guard::{BodyError, read_limited, require_write},
};

pub fn routes() -> Router<Intake> {
    Router::new().route("/v1/intake", post(submit_messages).route_layer(middleware::from_fn(require_write)))
}

/// 202 `{"ids": [..], "node_ids": [..], "count": n}`: our row ids and the same messages'
/// GraphQL ids (`intakeMessage(id:)`, `node(id:)`), in the order of the submitted messages.
async fn submit_messages(State(state): State<Intake>, headers: HeaderMap, body: Body) -> AppResult<impl IntoResponse> {
    let limit = state.config.intake_max_body_bytes;
    let timeout = state.request_timeout;
    let bytes = tokio::time::timeout(timeout, read_limited(&headers, body, limit))
        .await
        .map_err(|_| AppError::bad_input("the body did not arrive within the request timeout"))?
        .map_err(|error| match error {
            BodyError::TooLarge => {
                AppError::PayloadTooLarge(format!("the body exceeds INTAKE_MAX_BODY_BYTES ({limit} bytes)"))
            }
            BodyError::Broken(reason) => AppError::bad_input(reason),
        })?;
    let messages = submit::parse_body(&bytes)?;
    let rows = submit::queue(&state, messages).await?;
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let node_ids: Vec<String> = ids.iter().map(|id| global_id::of::<IntakeMessage>(*id).0).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "ids": ids, "node_ids": node_ids, "count": ids.len() }))))
}
