//! The HTTP surface: GraphQL (POST/GET, GraphiQL, graphql-ws), the domains' REST
//! routes, `/health`, `/metrics`, and the cross-cutting layers (metrics, tracing, CORS,
//! write access, load shedding, JSON errors). [`crate::server`] runs what this builds.

mod graphiql;
mod graphql;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::Semaphore;
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    trace::TraceLayer,
};

use crate::{
    error::AppError,
    feed::{FastPath, FeedRoute},
    guard::{self, WriteAccess},
    node::Node,
    server::{Prelude, Site},
    telemetry,
};

/// What the public listener serves: the router, and the feed's fast path in front of it
/// unless `FEED_FAST_PATH=false` or CORS is on (its headers come from the router's layer).
pub fn app(state: Node) -> Site {
    let config = &state.config;
    let inflight = Arc::new(Semaphore::new(config.http.max_inflight_requests.max(1)));

    // Domain REST routes choose their own body limits and timeouts (uploads stream GBs).
    let mut shed = Router::new()
        .merge(graphql::routes(&state))
        .merge(crate::intake::routes().with_state(state.intake.clone()))
        .merge(crate::uploads::routes().with_state(state.uploads.clone()));
    // With an admin listener, `/metrics` lives there only.
    if config.http.admin_listen.is_none() {
        shed = shed.route("/metrics", get(public_metrics));
    }
    let shed = shed.layer(middleware::from_fn_with_state(inflight.clone(), guard::shed_load));

    // The feed gateway answers from memory at static-file speed: it is merged after every
    // layer (it counts its own requests with pre-registered handles, only reads, answers
    // JSON errors itself), and takes its request slot itself.
    let feed_route = FeedRoute::new(state.feed.clone(), inflight);
    let prelude = (config.feed.feed_fast_path && config.cors_origins.is_empty())
        .then(|| Arc::new(FastPath::new(feed_route.clone())) as Arc<dyn Prelude>);
    let feed = feed_route.routes();
    let feed = if config.cors_origins.is_empty() { feed } else { feed.layer(cors(&config.cors_origins)) };

    let mut router = Router::new().merge(shed);
    if config.graphql.graphql_introspection {
        // GraphiQL's assets; the page itself is `GET /graphql` for browsers.
        router = router.merge(graphiql::routes());
    }
    let router = router
        .route("/health", get(public_health))
        .layer(middleware::from_fn_with_state(state.clone(), write_access))
        .layer(cors(&config.cors_origins))
        .layer(TraceLayer::new_for_http())
        .layer(middleware::from_fn(telemetry::track_http))
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        // The feed's answers are JSON already (its 503 too): outside every layer.
        .merge(feed)
        .with_state(state);
    Site { router, prelude }
}

/// The admin listener's router (`ADMIN_LISTEN`): the detailed `/health` and `/metrics`.
pub fn admin(state: Node) -> Router {
    Router::new()
        .route("/health", get(detailed_health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

/// The detailed report for the admin listener, or for `ADMIN_TOKEN` holders and everyone
/// when neither is configured; otherwise the overall status only (load balancers need no
/// more, and the checks name internal addresses and paths).
async fn public_health(State(state): State<Node>, headers: HeaderMap) -> Response {
    let (status, mut report) = state.health().await;
    if !shows_admin_detail(&state, &headers) {
        report = json!({ "status": report["status"] });
    }
    (status, Json(report)).into_response()
}

async fn detailed_health(State(state): State<Node>) -> Response {
    let (status, report) = state.health().await;
    (status, Json(report)).into_response()
}

async fn public_metrics(State(state): State<Node>, headers: HeaderMap) -> Response {
    if !shows_admin_detail(&state, &headers) {
        return AppError::Unauthenticated.into_response();
    }
    metrics(State(state)).await
}

/// Whether a request on the public listener may see operational detail.
fn shows_admin_detail(state: &Node, headers: &HeaderMap) -> bool {
    let http = &state.config.http;
    match (&http.admin_listen, &http.admin_token) {
        (Some(_), _) => false,
        (None, Some(token)) => guard::is_admin(Some(token), headers),
        (None, None) => true,
    }
}

async fn metrics(State(state): State<Node>) -> Response {
    // Job counts and the upload backlog are cluster-wide facts: read them at scrape time
    // (the backlog from its cached read when fresh).
    if let Ok(counts) = state.shared.jobs.counts().await {
        for (status, count) in counts {
            metrics::gauge!("emporium_jobs", "status" => status).set(count as f64);
        }
    }
    crate::uploads::refresh_metrics(&state.uploads).await;
    let body = telemetry::metrics_handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Notes in the request whether it may write; REST write routes enforce it with
/// [`guard::require_write`], GraphQL mutations through the schema's write check.
async fn write_access(State(state): State<Node>, mut request: Request, next: Next) -> Response {
    let allowed = guard::may_write(&state.config.api_tokens, request.headers());
    request.extensions_mut().insert(WriteAccess(allowed));
    next.run(request).await
}

async fn not_found(method: Method, uri: axum::http::Uri) -> AppError {
    AppError::not_found(format!("no route for {method} {}", uri.path()))
}

/// The last word on every error response: a 4xx or 5xx that is not JSON yet (axum's 405
/// and extractor rejections, a timeout's 504) becomes `{"error": {"code", "message"}}`,
/// keeping its status and headers (`Allow` on a 405). Short plain-text explanations are
/// kept as the message; anything else gets the status's reason.
async fn json_errors(request: Request, next: Next) -> Response {
    const MAX_KEPT_TEXT: usize = 1024;
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json") || value.contains("+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text =
        axum::body::to_bytes(body, MAX_KEPT_TEXT).await.ok().and_then(|bytes| String::from_utf8(bytes.into()).ok());
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let message = text.map(|text| text.trim().to_string()).filter(|text| !text.is_empty()).unwrap_or(reason);
    let body = json!({ "error": { "code": code_for(status), "message": message } });
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}

/// The `code` of an error response made from a bare status.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "BAD_REQUEST"
        }
        StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
        StatusCode::FORBIDDEN => "FORBIDDEN",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::NOT_ACCEPTABLE => "NOT_ACCEPTABLE",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "TIMEOUT",
        StatusCode::SERVICE_UNAVAILABLE => "UPSTREAM_UNAVAILABLE",
        status if status.is_client_error() => "BAD_REQUEST",
        _ => "INTERNAL",
    }
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<&String> = origins.iter().filter(|origin| !origin.trim().is_empty()).collect();
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::ACCEPT,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            // What Apollo clients send.
            HeaderName::from_static("apollographql-client-name"),
            HeaderName::from_static("apollographql-client-version"),
            HeaderName::from_static("apollo-require-preflight"),
        ])
        .expose_headers([header::RETRY_AFTER, header::ETAG]);
    if origins.iter().any(|origin| origin.trim() == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> =
            origins.iter().filter_map(|origin| HeaderValue::from_str(origin.trim()).ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}
