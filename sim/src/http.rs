//! The HTTP face of the simulator: the offers-service contract, the feeds and the
//! `/_control` routes, on one router.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::state::{OffersError, RegisterError, product_key};
use crate::{FeedFault, OffersFault, Simulator};

/// How long `FeedFault::Hang` sleeps: "forever" for any client.
const HANG: Duration = Duration::from_secs(3600);
/// Chunk size of the streamed `Huge` body.
const HUGE_CHUNK: usize = 64 * 1024;

#[derive(Clone)]
struct App {
    sim: Simulator,
    /// Turns true when the serving `RunningSim` shuts down, to cut `Slow`/`Hang` sleeps and
    /// `Huge` streams short. `None` when embedded via [`router`]: nothing to stop then.
    stop: Option<watch::Receiver<bool>>,
}

impl App {
    /// Sleep `d`; false if shutdown interrupted it.
    async fn sleep(&self, d: Duration) -> bool {
        match &self.stop {
            None => {
                tokio::time::sleep(d).await;
                true
            }
            Some(rx) => {
                let mut rx = rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(d) => true,
                    // A dropped sender (Err) disables this branch: keep sleeping.
                    Ok(_) = rx.wait_for(|s| *s) => false,
                }
            }
        }
    }
}

/// The router alone, for embedding. Routes:
///
/// Offers service: `POST /auth`, `POST /products/register`, `GET /products/{id}/offers`.
/// Feeds: `GET /feeds/{n}`.
/// Control (JSON bodies, 204 on success, 404 for an unknown feed, 400 for a bad body):
/// - `POST /_control/offers/fault` `{"mode":"ok"|"down"|"unauthorized"|"reject_tokens"|"malformed"}` or
///   `{"mode":"slow","ms":5000}`
/// - `POST /_control/offers/tick`
/// - `POST /_control/offers/forget_tokens` (old tokens get 401 until a new `POST /auth`)
/// - `POST /_control/feeds/{n}/fault` `{"mode":"ok"|"error500"|"object"|"numbers"|
///   "non_strings"|"invalid_utf8"|"hang"}` or `{"mode":"huge","bytes":104857600}`
/// - `POST /_control/feeds/{n}/tick` (also unpins)
/// - `PUT /_control/feeds/{n}/items` `["abcdefgh", ...]` (pins)
/// - `GET /_control/stats` (200, [`crate::SimStats`] as JSON)
///
/// The router does not run the tick timers: see [`Simulator::spawn_tickers`].
pub fn router(sim: Simulator) -> Router {
    router_with_stop(sim, None)
}

pub(crate) fn router_with_stop(sim: Simulator, stop: Option<watch::Receiver<bool>>) -> Router {
    Router::new()
        .route("/auth", post(auth))
        .route("/products/register", post(register))
        .route("/products/{id}/offers", get(offers))
        .route("/feeds/{n}", get(feed))
        .route("/_control/offers/fault", post(ctl_offers_fault))
        .route("/_control/offers/tick", post(ctl_offers_tick))
        .route("/_control/offers/forget_tokens", post(ctl_offers_forget_tokens))
        .route("/_control/feeds/{n}/fault", post(ctl_feed_fault))
        .route("/_control/feeds/{n}/tick", post(ctl_feed_tick))
        .route("/_control/feeds/{n}/items", put(ctl_feed_items))
        .route("/_control/stats", get(ctl_stats))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .layer(middleware::from_fn(log_request))
        .with_state(App { sim, stop })
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    tracing::debug!(
        %method,
        %uri,
        status = res.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sim request"
    );
    res
}

fn error(status: StatusCode, code: &str, msg: &str) -> Response {
    (status, axum::Json(json!({ "code": code, "msg": msg }))).into_response()
}

fn json_bytes(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut res = (status, body.into()).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn unauthorized(msg: &str) -> Response {
    error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", msg)
}

// ---- offers service ---------------------------------------------------------------------

/// Apply the offers fault mode: `Some(response)` short-circuits the route (`auth`: the
/// route is `/auth`).
async fn offers_fault_gate(app: &App, auth: bool) -> Option<Response> {
    match app.sim.offers_fault() {
        OffersFault::Ok => None,
        OffersFault::RejectTokens if auth => None,
        OffersFault::RejectTokens => Some(unauthorized("token rejected (simulated)")),
        OffersFault::Down => {
            Some(error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "offers service is down (simulated)"))
        }
        OffersFault::Unauthorized => Some(unauthorized("token rejected (simulated)")),
        OffersFault::Slow(d) => {
            if app.sleep(d).await {
                None
            } else {
                Some(error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "simulator shutting down"))
            }
        }
        OffersFault::Malformed => Some(json_bytes(StatusCode::OK, r#"{"not": "what you expected""#)),
    }
}

/// The real service takes the token in a header literally named `Bearer`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get("bearer").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

async fn auth(State(app): State<App>) -> Response {
    app.sim.lock().stats.auth_calls += 1;
    if let Some(res) = offers_fault_gate(&app, true).await {
        return res;
    }
    let token = app.sim.lock().issue_token();
    (StatusCode::CREATED, axum::Json(json!({ "access_token": token }))).into_response()
}

async fn register(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    app.sim.lock().stats.register_calls += 1;
    if let Some(res) = offers_fault_gate(&app, false).await {
        return res;
    }
    let Some(token) = bearer(&headers) else {
        return unauthorized("missing Bearer header");
    };
    // Auth before body validation, like the real service.
    if !app.sim.lock().token_known(&token) {
        return unauthorized("unknown token");
    }
    let bad = |msg: &str| error(StatusCode::BAD_REQUEST, "BAD_REQUEST", msg);
    // Parse by hand (not `Json<T>`) so any content type is accepted and every rejection
    // uses the service's error shape.
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad("body must be a JSON object");
    };
    let Some(id) = body.get("id") else {
        return bad("missing id");
    };
    let Some(key) = product_key(id) else {
        return bad("id must be a non-empty string or an integer");
    };
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return bad("missing or non-string name");
    };
    if body.get("description").is_some_and(|d| !d.is_string()) {
        return bad("description must be a string");
    }
    let result = app.sim.lock().register(&token, key.clone());
    match result {
        Ok(()) => {
            tracing::debug!(product = %key, %name, "sim registered product");
            (StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response()
        }
        Err(RegisterError::Conflict) => {
            error(StatusCode::CONFLICT, "CONFLICT", &format!("product {key} already registered"))
        }
        Err(RegisterError::UnknownToken) => unauthorized("unknown token"),
    }
}

async fn offers(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    app.sim.lock().stats.offers_calls += 1;
    if let Some(res) = offers_fault_gate(&app, false).await {
        return res;
    }
    let Some(token) = bearer(&headers) else {
        return unauthorized("missing Bearer header");
    };
    let result = app.sim.lock().offers(&token, &id);
    match result {
        Ok(offers) => (StatusCode::OK, axum::Json(offers)).into_response(),
        Err(OffersError::UnknownToken) => unauthorized("unknown token"),
        Err(OffersError::NotFound) => {
            error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("product {id} not registered"))
        }
    }
}

// ---- feeds ------------------------------------------------------------------------------

fn feed_index(app: &App, n: &str) -> Option<usize> {
    n.parse::<usize>().ok().filter(|&n| n < app.sim.feed_count())
}

fn no_feed(n: &str) -> Response {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("no feed {n}"))
}

async fn feed(State(app): State<App>, Path(n): Path<String>) -> Response {
    let Some(i) = feed_index(&app, &n) else {
        return no_feed(&n);
    };
    let (fault, items) = {
        let mut state = app.sim.lock();
        state.stats.feed_requests[i] += 1;
        let feed = &state.feeds[i];
        let items = matches!(feed.fault, FeedFault::Ok | FeedFault::NonStrings).then(|| feed.items.clone());
        (feed.fault, items)
    };
    match fault {
        FeedFault::Ok => (StatusCode::OK, axum::Json(items.unwrap_or_default())).into_response(),
        FeedFault::Error500 => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "feed failed (simulated)"),
        FeedFault::Object => json_bytes(StatusCode::OK, r#"{"a":1}"#),
        FeedFault::Numbers => json_bytes(StatusCode::OK, "[1,2,3]"),
        FeedFault::NonStrings => {
            let mut items: Vec<Value> = items.unwrap_or_default().into_iter().map(Value::String).collect();
            items.extend([json!(1), Value::Null, json!(true), json!({"a": 1}), json!(["x"])]);
            (StatusCode::OK, axum::Json(items)).into_response()
        }
        FeedFault::Huge(bytes) => json_bytes(StatusCode::OK, huge_body(bytes, app.stop.clone())),
        FeedFault::InvalidUtf8 => json_bytes(StatusCode::OK, &b"[\"\xff\xfe\"]"[..]),
        FeedFault::Hang => {
            app.sleep(HANG).await;
            error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "simulator shutting down")
        }
    }
}

/// A valid JSON array of unique 8-char hex strings of roughly `bytes` bytes (exactly
/// `11 * n + 1` for `n` items), generated chunk by chunk so 100 MB never sits in memory.
fn huge_body(bytes: usize, stop: Option<watch::Receiver<bool>>) -> Body {
    // Each item is `"xxxxxxxx"` (10 bytes) plus a separator; plus the brackets.
    let total_items = (bytes.saturating_sub(1) / 11).max(1);
    let per_chunk = HUGE_CHUNK / 11;
    let stream = futures_util::stream::unfold(0usize, move |next| {
        let stop = stop.clone();
        async move {
            let stopping = stop.as_ref().is_some_and(|s| *s.borrow());
            if next > total_items || stopping {
                return None;
            }
            if next == total_items {
                // Sentinel step: the closing bracket.
                return Some((Ok::<_, Infallible>(Bytes::from_static(b"]")), next + 1));
            }
            let end = (next + per_chunk).min(total_items);
            let mut chunk = Vec::with_capacity((end - next) * 11 + 1);
            for i in next..end {
                chunk.push(if i == 0 { b'[' } else { b',' });
                // Wrapping keeps 8 hex digits; unique below 2^32 items (~47 GB).
                chunk.extend_from_slice(format!("\"{:08x}\"", i as u32).as_bytes());
            }
            Some((Ok(Bytes::from(chunk)), end))
        }
    });
    Body::from_stream(stream)
}

// ---- control ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum OffersFaultBody {
    Ok,
    Down,
    Unauthorized,
    RejectTokens,
    Slow { ms: u64 },
    Malformed,
}

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum FeedFaultBody {
    Ok,
    #[serde(alias = "error_500")]
    Error500,
    Object,
    Numbers,
    NonStrings,
    Huge {
        bytes: usize,
    },
    InvalidUtf8,
    Hang,
}

/// Control bodies: serde's message goes back to the caller as a 400.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_control_body(msg: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", msg)
}

async fn ctl_offers_fault(State(app): State<App>, body: Bytes) -> Response {
    let fault = match parse::<OffersFaultBody>(&body) {
        Ok(OffersFaultBody::Ok) => OffersFault::Ok,
        Ok(OffersFaultBody::Down) => OffersFault::Down,
        Ok(OffersFaultBody::Unauthorized) => OffersFault::Unauthorized,
        Ok(OffersFaultBody::RejectTokens) => OffersFault::RejectTokens,
        Ok(OffersFaultBody::Slow { ms }) => OffersFault::Slow(Duration::from_millis(ms)),
        Ok(OffersFaultBody::Malformed) => OffersFault::Malformed,
        Err(e) => return bad_control_body(&e),
    };
    app.sim.set_offers_fault(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_offers_tick(State(app): State<App>) -> Response {
    app.sim.tick_offers();
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_offers_forget_tokens(State(app): State<App>) -> Response {
    app.sim.forget_tokens();
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_feed_fault(State(app): State<App>, Path(n): Path<String>, body: Bytes) -> Response {
    let Some(i) = feed_index(&app, &n) else {
        return no_feed(&n);
    };
    let fault = match parse::<FeedFaultBody>(&body) {
        Ok(FeedFaultBody::Ok) => FeedFault::Ok,
        Ok(FeedFaultBody::Error500) => FeedFault::Error500,
        Ok(FeedFaultBody::Object) => FeedFault::Object,
        Ok(FeedFaultBody::Numbers) => FeedFault::Numbers,
        Ok(FeedFaultBody::NonStrings) => FeedFault::NonStrings,
        Ok(FeedFaultBody::Huge { bytes }) => FeedFault::Huge(bytes),
        Ok(FeedFaultBody::InvalidUtf8) => FeedFault::InvalidUtf8,
        Ok(FeedFaultBody::Hang) => FeedFault::Hang,
        Err(e) => return bad_control_body(&e),
    };
    app.sim.set_feed_fault(i, fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_feed_tick(State(app): State<App>, Path(n): Path<String>) -> Response {
    let Some(i) = feed_index(&app, &n) else {
        return no_feed(&n);
    };
    app.sim.tick_feed(i);
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_feed_items(State(app): State<App>, Path(n): Path<String>, body: Bytes) -> Response {
    let Some(i) = feed_index(&app, &n) else {
        return no_feed(&n);
    };
    match parse::<Vec<String>>(&body) {
        Ok(items) => {
            app.sim.set_feed_items(i, items);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_control_body(&e),
    }
}

async fn ctl_stats(State(app): State<App>) -> Response {
    axum::Json(app.sim.stats()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> Vec<u8> {
        axum::body::to_bytes(body, usize::MAX).await.expect("body").to_vec()
    }

    #[tokio::test]
    async fn huge_body_is_a_valid_array_of_the_requested_size() {
        for bytes in [0usize, 1, 11, 12, 1000, 200_000] {
            let out = collect(huge_body(bytes, None)).await;
            let items: Vec<String> = serde_json::from_slice(&out).expect("valid JSON array");
            assert_eq!(out.len(), items.len() * 11 + 1);
            assert!(out.len() <= bytes.max(12), "{bytes}: {}", out.len());
            assert!(out.len() + 11 > bytes, "{bytes}: {}", out.len());
            let unique: std::collections::HashSet<_> = items.iter().collect();
            assert_eq!(unique.len(), items.len());
        }
    }

    #[tokio::test]
    async fn huge_body_stops_on_shutdown() {
        let (tx, rx) = watch::channel(false);
        tx.send_replace(true);
        let out = collect(huge_body(10_000_000, Some(rx))).await;
        assert!(out.is_empty());
    }
}
