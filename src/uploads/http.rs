//! REST: `POST /v1/products` (the upload route) and `GET /v1/uploads/{id}`.

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Uploads,
    model::{self, ErrorPolicy, ItemError, UploadRecord},
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
/// store or object storage is down, or when the backlog of uploads waiting for ingestion
/// is at `UPLOAD_BACKLOG_MAX_UPLOADS` or `UPLOAD_BACKLOG_MAX_BYTES` (nothing stored).
///
/// Items with errors are handled by the error policy (`?errorPolicy=` or the
/// `Emporium-Error-Policy` header; `REJECT_FAILED_ROWS` by default): with
/// `REJECT_EVERYTHING` the first one found refuses the body (400 naming the item), with
/// the others they are reported in the answer (`items_failed`, `item_errors`) and handled
/// at ingestion. An unknown policy is 400 before the body is read.
async fn post_products(
    State(state): State<Uploads>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let policy = error_policy(params.error_policy.as_deref(), &headers)?;
        // Before a byte of the body is read: a refusal stores nothing and claims no window.
        let declared = receive::declared_length(&headers);
        state.backlog.admit(&state.db, declared).await?;
        let received = receive::receive(&state, &headers, body, policy).await?;
        if declared.is_none()
            && let Err(error) = state.backlog.admit(&state.db, Some(received.summary.bytes)).await
        {
            // A chunked body's size is known only now; still before the window is claimed.
            receive::discard(&state, &received.body);
            return Err(error.into());
        }
        receive::accept(&state, received).await
    }
    .await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(Rejection::Invalid(_)) => "invalid",
        Err(Rejection::Items(_)) => "items_refused",
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
        Err(Rejection::Items(errors)) => items_refused(&errors),
        Err(Rejection::App(error)) => error.into_response(),
    }
}

/// The header that chooses the error policy (as `?errorPolicy=` does).
pub const ERROR_POLICY_HEADER: &str = "emporium-error-policy";

/// The query parameters of `POST /v1/products`.
#[derive(Debug, Deserialize)]
struct UploadParams {
    #[serde(rename = "errorPolicy")]
    error_policy: Option<String>,
}

/// The request's error policy: the query parameter or the header (both: they must agree).
fn error_policy(query: Option<&str>, headers: &HeaderMap) -> Result<ErrorPolicy, AppError> {
    let from_header = match headers.get(ERROR_POLICY_HEADER) {
        Some(value) => Some(
            value.to_str().map_err(|_| AppError::bad_input("the Emporium-Error-Policy header is not visible ASCII"))?,
        ),
        None => None,
    };
    let parse = |value: &str, source: &str| {
        ErrorPolicy::parse(value).ok_or_else(|| {
            AppError::bad_input(format!(
                "unknown error policy `{}` ({source}): expected REJECT_EVERYTHING, REJECT_FAILED_ROWS (the default) \
                 or IGNORE_FAILED",
                value.escape_debug()
            ))
        })
    };
    let from_query = query.map(|value| parse(value, "query parameter `errorPolicy`")).transpose()?;
    let from_header = from_header.map(|value| parse(value, "header Emporium-Error-Policy")).transpose()?;
    match (from_query, from_header) {
        (Some(query), Some(header)) if query != header => Err(AppError::bad_input(format!(
            "the query parameter `errorPolicy` ({}) and the Emporium-Error-Policy header ({}) disagree",
            query.name(),
            header.name()
        ))),
        (query, header) => Ok(query.or(header).unwrap_or_default()),
    }
}

/// 400 for `REJECT_EVERYTHING`: the item with errors, in the usual error shape.
fn items_refused(errors: &[ItemError]) -> Response {
    let described: Vec<String> = errors.iter().map(|error| format!("`{}` {}", error.field, error.reason)).collect();
    let (index, sku) = errors.first().map(|error| (error.index, error.sku.as_str())).unwrap_or((0, ""));
    let sku = if sku.is_empty() { String::new() } else { format!(" (sku `{}`)", sku.escape_debug()) };
    let message = format!(
        "item {index}{sku}: {}; with errorPolicy REJECT_EVERYTHING nothing of the upload was accepted",
        described.join("; ")
    );
    let body = json!({
        "error": {
            "code": "BAD_USER_INPUT",
            "message": message,
            "error_policy": ErrorPolicy::RejectEverything,
            "item_errors": errors,
        }
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
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
    /// Items with at least one error.
    items_failed: i64,
    /// The first of their errors.
    item_errors: Vec<ItemError>,
    error_policy: ErrorPolicy,
    products_created: i64,
    products_updated: i64,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<UploadRecord> for UploadView {
    fn from(record: UploadRecord) -> Self {
        let item_errors = record.item_errors();
        let error_policy = record.error_policy();
        Self {
            id: record.id.to_string(),
            node_id: global_id::of::<super::graphql::Upload>(record.id).0,
            status: record.status,
            bytes: record.bytes,
            digest: record.digest,
            items_total: record.items_total,
            items_done: record.items_done,
            items_failed: record.items_rejected,
            item_errors,
            error_policy,
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
