//! Request-level protections that the domains apply to their own routes: the write check
//! (a bearer token from `API_TOKENS`), the admin check (`ADMIN_TOKEN`), load shedding
//! (`MAX_INFLIGHT_REQUESTS`), and reading a body within a size limit.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use tokio::sync::Semaphore;

use crate::error::AppError;

/// Whether the caller presented a token that allows writes (or none is required). The
/// assembly inserts it into every request; see [`require_write`].
#[derive(Debug, Clone, Copy)]
pub struct WriteAccess(pub bool);

/// Layer for REST routes that write: 401 without a valid token. Put it on the method
/// (`post(handler).route_layer(…)`) so other methods still get 405.
pub async fn require_write(request: Request, next: Next) -> Response {
    match request.extensions().get::<WriteAccess>() {
        Some(WriteAccess(true)) => next.run(request).await,
        _ => AppError::Unauthenticated.into_response(),
    }
}

/// Whether `headers` allow writes: no tokens configured, or a bearer token among them.
pub fn may_write(tokens: &[String], headers: &HeaderMap) -> bool {
    tokens.is_empty() || bearer(headers).is_some_and(|presented| presented_one_of(tokens, presented))
}

/// The bearer token of an `Authorization` value (`Bearer <token>`).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    authorization.strip_prefix("Bearer ").map(str::trim)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(bearer_token)
}

/// Whether `presented` is one of `tokens`, in time that depends on neither the tokens'
/// contents nor their lengths: every token is compared, as blake3 hashes, whose `==` is
/// constant-time.
pub fn presented_one_of(tokens: &[String], presented: &str) -> bool {
    let presented = blake3::hash(presented.as_bytes());
    tokens.iter().fold(false, |found, token| found | (blake3::hash(token.as_bytes()) == presented))
}

/// Whether `headers` carry the admin token (`None` configured: nobody does).
pub fn is_admin(admin_token: Option<&str>, headers: &HeaderMap) -> bool {
    admin_token
        .is_some_and(|token| bearer(headers).is_some_and(|presented| presented_one_of(&[token.into()], presented)))
}

/// Beyond `MAX_INFLIGHT_REQUESTS` concurrent requests, answer 503 at once instead of queueing.
pub async fn shed_load(State(slots): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    match slots.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => shed(),
    }
}

/// The answer to a request beyond `MAX_INFLIGHT_REQUESTS`.
pub fn shed() -> Response {
    metrics::counter!("emporium_http_shed_total").increment(1);
    AppError::unavailable("this node is at its request limit; retry shortly", Some(1)).into_response()
}

/// Why a body could not be read within its limit.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the limit: declared so, or found so while reading.
    TooLarge,
    /// The connection failed or the client stopped sending.
    Broken(String),
}

/// The whole body, refused as soon as it is known to exceed `limit` (its `Content-Length`
/// says so, or the bytes read so far do): a client cannot make the node buffer more.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    use futures::StreamExt as _;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let capacity = declared.map_or(0, |length| usize::try_from(length).unwrap_or(limit).min(limit));
    let mut bytes = Vec::with_capacity(capacity);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| BodyError::Broken(format!("reading the body failed: {error}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn tokens_are_checked_when_configured() {
        let mut headers = HeaderMap::new();
        assert!(may_write(&[], &headers));
        let tokens = vec!["s3cret".to_string()];
        assert!(!may_write(&tokens, &headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer wrong!"));
        assert!(!may_write(&tokens, &headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(may_write(&tokens, &headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(!may_write(&tokens, &headers));
    }

    #[test]
    fn a_token_of_another_length_or_a_prefix_is_refused() {
        let tokens = vec!["s3cret".to_string(), "other-token".to_string()];
        for wrong in ["", "s", "s3cre", "s3cret!", "s3cret s3cret", "S3CRET"] {
            assert!(!presented_one_of(&tokens, wrong), "{wrong:?}");
        }
        assert!(presented_one_of(&tokens, "other-token"));
    }

    #[test]
    fn the_admin_token_is_needed_when_set_and_nobody_is_admin_without_one() {
        let mut headers = HeaderMap::new();
        assert!(!is_admin(None, &headers));
        assert!(!is_admin(Some("t0k3n"), &headers));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t0k3n"));
        assert!(is_admin(Some("t0k3n"), &headers));
        assert!(!is_admin(None, &headers));
    }
}
