//! `POST /v1/intake`: one message or an array of messages → 202 with our ids, as soon
//! as they are durably queued. `GET /v1/intake/notices?after=&limit=`: the output queue.

use axum::{
    Json, Router,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    middleware,
    response::IntoResponse,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::{Intake, IntakeMessage, IntakeNotice, model::Notice, notices, submit};
use crate::{
    db::to_datetime,
    error::{AppError, AppResult},
    global_id,
    guard::{BodyError, read_limited, require_write},
};

pub fn routes() -> Router<Intake> {
    Router::new()
        .route("/v1/intake", post(submit_messages).route_layer(middleware::from_fn(require_write)))
        .route("/v1/intake/notices", get(read_notices))
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

/// Notices per read when `limit` is not given.
const DEFAULT_LIMIT: u64 = 100;

/// A notice as REST returns it.
#[derive(Debug, Serialize)]
struct NoticeView {
    /// The queue position; pass the last one seen as `after`.
    sequence: i64,
    /// The notice's GraphQL id (`node(id:)`).
    node_id: String,
    intake_message_id: i64,
    intake_message_node_id: String,
    /// The client's own id of the message.
    message_id: Option<String>,
    title: String,
    genre: String,
    bucket: String,
    key: String,
    stored_at: DateTime<Utc>,
}

impl From<Notice> for NoticeView {
    fn from(notice: Notice) -> Self {
        Self {
            sequence: notice.sequence,
            node_id: global_id::of::<IntakeNotice>(notice.sequence).0,
            intake_message_id: notice.intake_message_id,
            intake_message_node_id: global_id::of::<IntakeMessage>(notice.intake_message_id).0,
            message_id: notice.message_id,
            title: notice.title,
            genre: notice.genre,
            bucket: notice.bucket,
            key: notice.object_name,
            stored_at: to_datetime(notice.stored_at),
        }
    }
}

/// 200 `{"notices": [..], "next_after": n, "has_more": bool}`: up to `limit` notices with
/// a sequence above `after` (0: from the start), in queue order. `next_after` is the
/// `after` of the next read (the last notice's sequence, or `after` itself when none came);
/// `has_more` says that read has notices waiting already. A notice committed later always
/// has a sequence above every `next_after` handed out before, so following `next_after`
/// misses nothing.
async fn read_notices(State(state): State<Intake>, RawQuery(query): RawQuery) -> AppResult<impl IntoResponse> {
    let read = NoticeRead::parse(query.as_deref())?;
    let mut found = notices::after(&state.db, read.after, read.limit + 1).await?;
    let has_more = found.len() as u64 > read.limit;
    found.truncate(read.limit as usize);
    let next_after = found.last().map_or(read.after, |notice| notice.sequence);
    let notices: Vec<NoticeView> = found.into_iter().map(NoticeView::from).collect();
    Ok(Json(json!({ "notices": notices, "next_after": next_after, "has_more": has_more })))
}

/// The parameters of `GET /v1/intake/notices`.
#[derive(Debug, PartialEq, Eq)]
struct NoticeRead {
    after: i64,
    limit: u64,
}

impl NoticeRead {
    /// `after`: an integer ≥ 0 (default 0); `limit`: 1 to [`notices::MAX_READ`] (default
    /// 100). Anything else, a repeated parameter or an unknown one, is refused: a typo
    /// (`?afer=`) would otherwise silently restart a consumer from the beginning.
    fn parse(query: Option<&str>) -> AppResult<Self> {
        let max = notices::MAX_READ;
        let (mut after, mut limit) = (None, None);
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match name.as_ref() {
                "after" => &mut after,
                "limit" => &mut limit,
                other => {
                    return Err(AppError::bad_input(format!(
                        "unknown parameter `{other}`: this route takes `after` and `limit`"
                    )));
                }
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(AppError::bad_input(format!("`{name}` is given more than once")));
            }
        }
        let after = match after {
            None => 0,
            Some(text) => text.parse::<i64>().ok().filter(|after| *after >= 0).ok_or_else(|| {
                AppError::bad_input(format!(
                    "`after` must be a sequence number (an integer, 0 or more), not `{}`",
                    text.escape_default()
                ))
            })?,
        };
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text.parse::<u64>().ok().filter(|limit| (1..=max).contains(limit)).ok_or_else(|| {
                AppError::bad_input(format!(
                    "`limit` must be an integer from 1 to {max}, not `{}`",
                    text.escape_default()
                ))
            })?,
        };
        Ok(Self { after, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_reads_take_after_and_limit_within_bounds() {
        assert_eq!(NoticeRead::parse(None).ok(), Some(NoticeRead { after: 0, limit: DEFAULT_LIMIT }));
        assert_eq!(NoticeRead::parse(Some("after=42&limit=1000")).ok(), Some(NoticeRead { after: 42, limit: 1000 }));
        for bad in ["after=-1", "after=x", "after=", "limit=0", "limit=1001", "limit=-5", "after=1&after=2", "afer=3"] {
            assert!(matches!(NoticeRead::parse(Some(bad)), Err(AppError::BadInput(_))), "{bad}");
        }
    }
}
