//! REST: `POST /v1/products` (the upload route) and `GET /v1/uploads/{id}`.

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::{
    Uploads,
    model::{self, ItemRejection, UploadRecord},
    receive::{self, Rejection},
    scan::SyntaxError,
};
use crate::{db::to_datetime, error::AppError, global_id};

pub fn routes() -> Router<Uploads> {
    Router::new()
        .route("/v1/products", post(post_products).route_layer(middleware::from_fn(crate::guard::require_write)))
        .route("/v1/uploads/{id}", get(get_upload))
}

/// Takes a JSON array of products, whatever its `Content-Type` (`curl -d` sends
/// `application/x-www-form-urlencoded`). 200 `{"upload_id", "node_id", "status": "queued", …}`; 400 with
/// the position of the first error; 403 + `Retry-After` for a body accepted less than
/// `DEDUP_WINDOW` ago; 413 beyond `MAX_UPLOAD_BYTES`; 503 + `Retry-After` when the dedup
/// store or object storage is down.
async fn post_products(State(state): State<Uploads>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let received = receive::receive(&state, &headers, body).await?;
        receive::accept(&state, received).await
    }
    .await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(Rejection::Invalid(_)) => "invalid",
        Err(Rejection::App(error)) => match error.status() {
            StatusCode::FORBIDDEN => "duplicate",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "error",
        },
    };
    metrics::counter!("emporium_uploads_total", "outcome" => outcome).increment(1);
    match result {
        Ok(accepted) => (StatusCode::OK, Json(accepted)).into_response(),
        Err(Rejection::Invalid(error)) => invalid_body(&error),
        Err(Rejection::App(error)) => error.into_response(),
    }
}

/// 400 in the usual error shape, plus where and why.
fn invalid_body(error: &SyntaxError) -> Response {
    let body = json!({
        "error": {
            "code": "BAD_USER_INPUT",
            "message": error.to_string(),
            "offset": error.offset,
            "line": error.line,
            "column": error.column,
            "reason": error.reason(),
        }
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// An upload as REST returns it.
#[derive(Debug, Serialize)]
struct UploadView {
    id: String,
    node_id: String,
    status: String,
    bytes: i64,
    digest: String,
    items_total: i64,
    items_done: i64,
    items_rejected: i64,
    rejections: Vec<ItemRejection>,
    products_created: i64,
    products_updated: i64,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<UploadRecord> for UploadView {
    fn from(record: UploadRecord) -> Self {
        let rejections = record.rejection_list();
        Self {
            id: record.id.to_string(),
            node_id: global_id::of::<super::graphql::Upload>(record.id).0,
            status: record.status,
            bytes: record.bytes,
            digest: record.digest,
            items_total: record.items_total,
            items_done: record.items_done,
            items_rejected: record.items_rejected,
            rejections,
            products_created: record.products_created,
            products_updated: record.products_updated,
            error: record.error,
            created_at: to_datetime(record.created_at),
            updated_at: to_datetime(record.updated_at),
            finished_at: record.finished_at.map(to_datetime),
        }
    }
}

async fn get_upload(State(state): State<Uploads>, Path(id): Path<String>) -> Result<Json<UploadView>, AppError> {
    let id = id
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::bad_input(format!("`{id}` is not a valid upload id")))?;
    let upload = model::get(&state.db, id).await?.ok_or_else(|| AppError::not_found(format!("no upload {id}")))?;
    Ok(Json(upload.into()))
}
