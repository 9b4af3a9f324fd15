//! The HTTP surface: GraphQL (POST/GET, GraphiQL, graphql-ws), the domains' REST
//! routes, `/health`, `/metrics`, the cross-cutting layers (metrics, tracing, CORS,
//! write protection, load shedding), and the HTTP/1.1 server that runs them.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use async_graphql::http::graphiql_source;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::{
    Extension, Router,
    extract::{Request, State, WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use futures::future::Either;
use hyper::{
    body::Incoming,
    server::conn::http1,
    service::{Service as _, service_fn},
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    trace::TraceLayer,
};

use crate::{
    error::AppError,
    feed::{self, FeedRoute, Replay},
    graphql::{self, AppSchema, Caller, Transport},
    health,
    state::AppState,
    telemetry,
};

/// Whether the caller presented a token that allows writes (or none is required).
#[derive(Debug, Clone, Copy)]
pub struct WriteAccess(pub bool);

/// The schema that serves graphql-ws connections (see [`graphql::Transport`]).
#[derive(Clone)]
struct WebSocketSchema(AppSchema);

/// What a node serves: its router, and the feed route, which the server answers before
/// routing when it can (no CORS layer to pass through): routing and the router's layers
/// would cost it a tenth of its speed.
#[derive(Clone)]
pub struct App {
    router: Router,
    feed_first: Option<FeedRoute>,
}

pub fn app(state: AppState) -> App {
    let inflight = Arc::new(Semaphore::new(state.config.http.max_inflight_requests.max(1)));
    let timeout = state.config.http.request_timeout;
    let schema = graphql::build(Some(state.clone()), &state.config.http, Transport::Http);
    let websocket_schema = graphql::build(Some(state.clone()), &state.config.http, Transport::WebSocket);

    let graphql = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, timeout))
        .route("/graphql/ws", get(graphql_ws))
        .layer(Extension(schema))
        .layer(Extension(WebSocketSchema(websocket_schema)));

    // Domain REST routes choose their own body limits and timeouts (uploads stream GBs).
    let domains: Router<AppState> = Router::new().merge(crate::intake::routes()).merge(crate::uploads::routes());
    let shed = Router::new()
        .merge(graphql)
        .merge(domains)
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(inflight.clone(), shed_load));

    // The feed gateway answers from memory at static-file speed: it is merged after the
    // per-request tracing, metrics and write-access layers (it counts its own requests with
    // pre-registered handles and only reads), and takes its request slot itself.
    let feed = FeedRoute::new(state.feed.clone(), inflight);
    let (feed, feed_first) = if state.config.cors_origins.is_empty() {
        (feed.clone().routes(), Some(feed))
    } else {
        (feed.routes().layer(cors(&state.config.cors_origins)), None)
    };

    let router = Router::new()
        .merge(shed)
        .route("/health", get(health::handler))
        .layer(middleware::from_fn_with_state(state.clone(), write_access))
        .layer(cors(&state.config.cors_origins))
        .layer(TraceLayer::new_for_http())
        .layer(middleware::from_fn(telemetry::track_http))
        .merge(feed)
        .with_state(state);
    App { router, feed_first }
}

async fn graphql_post(
    Extension(schema): Extension<AppSchema>,
    Extension(WriteAccess(may_write)): Extension<WriteAccess>,
    request: GraphQLRequest,
) -> Response {
    execute(&schema, request, Caller { may_write, via_get: false }).await
}

/// graphql-ws (and the older subscriptions-transport-ws): subscriptions, and queries or
/// mutations for clients that send everything over one socket. The connection may write
/// when the upgrade request's `Authorization` header allows it, or — browsers cannot set
/// headers on a WebSocket — the `Authorization` field of the `connection_init` payload.
async fn graphql_ws(
    State(state): State<AppState>,
    Extension(WebSocketSchema(schema)): Extension<WebSocketSchema>,
    Extension(WriteAccess(header_allows)): Extension<WriteAccess>,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let tokens = state.config.api_tokens.clone();
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let from_payload = payload.get("Authorization").and_then(serde_json::Value::as_str);
                    let may_write = header_allows || from_payload.is_some_and(|value| bearer_allows(&tokens, value));
                    let mut data = async_graphql::Data::default();
                    data.insert(Caller { may_write, via_get: false });
                    Ok(data)
                })
                .serve()
        })
        .into_response()
}

/// GraphiQL for browsers, queries for everyone else.
async fn graphql_get(
    Extension(schema): Extension<AppSchema>,
    Extension(WriteAccess(may_write)): Extension<WriteAccess>,
    headers: HeaderMap,
    request: Result<GraphQLRequest, async_graphql_axum::rejection::GraphQLRejection>,
) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    match request {
        Ok(request) if !wants_html => execute(&schema, request, Caller { may_write, via_get: true }).await,
        Err(rejection) if !wants_html => rejection.into_response(),
        _ => Html(graphiql_source("/graphql", Some("/graphql/ws"))).into_response(),
    }
}

/// Runs one HTTP request with the schema's cross-cutting rules (see
/// [`graphql::Transport`]): the write check on the parsed document (async-graphql keeps
/// the parse for the execution), a code on every error.
async fn execute(schema: &AppSchema, request: GraphQLRequest, caller: Caller) -> Response {
    let mut request = request.into_inner();
    // A document that does not parse is left to the execution, which reports where.
    let refusal = request.parsed_query().ok().and_then(|document| graphql::write_refusal(document, Some(&caller)));
    let mut response = match refusal {
        Some(refusal) => async_graphql::Response::from_errors(vec![refusal]),
        None => schema.execute(request).await,
    };
    graphql::give_codes(&mut response.errors);
    let unauthenticated = graphql::is_unauthenticated(&response.errors);
    let mut http = GraphQLResponse::from(response).into_response();
    if unauthenticated {
        *http.status_mut() = StatusCode::UNAUTHORIZED;
        http.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    http
}

async fn metrics(State(state): State<AppState>) -> Response {
    // Job counts are cluster-wide facts: read them at scrape time.
    if let Ok(counts) = state.jobs.counts().await {
        for (status, count) in counts {
            metrics::gauge!("emporium_jobs", "status" => status).set(count as f64);
        }
    }
    let body = telemetry::metrics_handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Notes in the request whether it may write; REST write routes enforce it with
/// [`require_write`], GraphQL mutations through the schema's write guard.
async fn write_access(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let allowed = may_write(&state.config.api_tokens, request.headers());
    request.extensions_mut().insert(WriteAccess(allowed));
    next.run(request).await
}

/// Layer for REST routes that write: 401 without a valid token.
pub async fn require_write(request: Request, next: Next) -> Response {
    match request.extensions().get::<WriteAccess>() {
        Some(WriteAccess(true)) => next.run(request).await,
        _ => AppError::Unauthenticated.into_response(),
    }
}

fn may_write(tokens: &[String], headers: &HeaderMap) -> bool {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    tokens.is_empty() || authorization.is_some_and(|value| bearer_allows(tokens, value))
}

/// Whether an `Authorization` value (`Bearer <token>`) names one of `tokens`.
fn bearer_allows(tokens: &[String], authorization: &str) -> bool {
    authorization
        .strip_prefix("Bearer ")
        .map(str::trim)
        .is_some_and(|presented| tokens.iter().any(|token| constant_time_eq(token.as_bytes(), presented.as_bytes())))
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `app` on `listener` over HTTP/1.1 (with upgrades, for graphql-ws) until
/// `shutdown` resolves; then stops accepting, lets open connections finish their requests,
/// and returns after `grace` at the latest (an open websocket would wait forever).
///
/// Not `axum::serve`: its HTTP/1-or-2 detection and per-connection plumbing cost the feed
/// about 5% of its requests per second (bench/feed.sh), and nothing here speaks h2c.
pub async fn serve(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>, grace: Duration) {
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or the like: back off instead of spinning.
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let stopping = stopping.clone();
        let router = TowerToHyperService::new(app.router.clone());
        let feed_first = app.feed_first.clone();
        let fast_feed = feed_first.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            match feed_first.as_ref().and_then(|feed| feed.answer(&request)) {
                Some(response) => Either::Left(std::future::ready(Ok::<_, Infallible>(response))),
                None => Either::Right(router.call(request)),
            }
        });
        connections.spawn(async move {
            // Without CORS, a connection's leading feed requests are answered on the socket;
            // whatever else comes, from the first other request on, is hyper's.
            let stream = match &fast_feed {
                Some(feed) => match feed::serve_leading_requests(feed, stream, &stopping).await {
                    Some(rest) => rest,
                    None => return,
                },
                None => Replay::new(Bytes::new(), stream),
            };
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping.cancelled() => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!("connections still open after the grace period; leaving them");
    }
}

/// Beyond `MAX_INFLIGHT_REQUESTS` concurrent requests, answer 503 at once instead of queueing.
async fn shed_load(State(slots): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
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

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<&String> = origins.iter().filter(|origin| !origin.trim().is_empty()).collect();
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::IF_NONE_MATCH])
        .expose_headers([header::RETRY_AFTER, header::ETAG]);
    if origins.iter().any(|origin| origin.trim() == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> =
            origins.iter().filter_map(|origin| HeaderValue::from_str(origin.trim()).ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

#[cfg(test)]
mod tests {
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
    }
}
