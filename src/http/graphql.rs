//! GraphQL over HTTP: `POST /graphql` (one operation, or a batch as a JSON array), `GET
//! /graphql` (queries from the query string, GraphiQL for browsers) and graphql-ws at
//! `/graphql/ws`.
//!
//! Every request is bounded before any GraphQL work: the body (or query string, or
//! WebSocket message) by `GRAPHQL_MAX_BODY_BYTES`, a batch by `GRAPHQL_MAX_BATCH`, each
//! document by [`graphql::admit`]'s limits; every answer's errors by `GRAPHQL_MAX_ERRORS`.
//! Failures that are not about a field (a body that is not JSON, a missing query, a
//! wrong content type) answer in the same GraphQL shape, `{"errors": [{"message",
//! "extensions": {"code"}}]}`.
//!
//! Media types follow the GraphQL-over-HTTP draft: a client that accepts
//! `application/graphql-response+json` gets it, with 4xx for requests refused before
//! execution; everyone else gets `application/json` with 200 (the legacy convention).
//! An answer whose errors are all `UPSTREAM_UNAVAILABLE` carries `Retry-After`, and is a
//! 503 in the newer media type when it has no data (docs/graphql.md says why).

use std::sync::Arc;

use async_graphql::{BatchRequest, BatchResponse};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::{
    Extension, Router,
    body::Body,
    extract::{State, WebSocketUpgrade, ws::Message},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;

use crate::{
    error::AppError,
    graphql::{self, AppSchema, Caller, Rules, Transport, persisted::PersistedQueries},
    guard::{self, BodyError, WriteAccess},
    node::Node,
};

/// What the GraphQL routes share.
struct Endpoint {
    schema: AppSchema,
    /// The schema that serves graphql-ws connections (see [`Transport`]).
    websocket_schema: AppSchema,
    rules: Rules,
    persisted: PersistedQueries,
    max_body_bytes: usize,
    max_batch: usize,
    /// GraphiQL is served (it needs introspection).
    graphiql: bool,
}

pub(super) fn routes(state: &Node) -> Router<Node> {
    let config = &state.config.graphql;
    let endpoint = Arc::new(Endpoint {
        schema: graphql::build(Some(state.clone()), Transport::Http),
        websocket_schema: graphql::build(Some(state.clone()), Transport::WebSocket),
        rules: Rules::new(config),
        persisted: PersistedQueries::new(
            config.graphql_persisted_queries_bytes,
            state.shared.redis.clone(),
            &state.config.redis_prefix,
        ),
        max_body_bytes: config.graphql_max_body_bytes,
        max_batch: config.graphql_max_batch.max(1),
        graphiql: config.graphql_introspection,
    });
    let timeout = state.config.http.request_timeout;
    Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, timeout))
        .route("/graphql/ws", get(websocket))
        .layer(Extension(endpoint))
}

/// The media type of the answer, from the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    /// `application/json`: every GraphQL answer is a 200.
    Json,
    /// `application/graphql-response+json`: requests refused before execution are 4xx.
    GraphqlResponse,
}

impl Media {
    const GRAPHQL_RESPONSE: &'static str = "application/graphql-response+json";

    /// The preferred acceptable type; no `Accept` means `application/json`.
    fn negotiate(headers: &HeaderMap) -> Option<Self> {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()) else {
            return Some(Self::Json);
        };
        let accepted: Vec<&str> = accept
            .split(',')
            .filter(|item| !item.split(';').skip(1).any(|param| matches!(param.trim(), "q=0" | "q=0.0" | "q=0.00")))
            .map(|item| item.split(';').next().unwrap_or_default().trim())
            .collect();
        if accepted.iter().any(|media| media.eq_ignore_ascii_case(Self::GRAPHQL_RESPONSE)) {
            Some(Self::GraphqlResponse)
        } else if accepted.iter().any(|media| matches!(*media, "application/json" | "application/*" | "*/*")) {
            Some(Self::Json)
        } else {
            None
        }
    }

    fn content_type(self) -> HeaderValue {
        match self {
            Self::Json => HeaderValue::from_static("application/json; charset=utf-8"),
            Self::GraphqlResponse => HeaderValue::from_static("application/graphql-response+json; charset=utf-8"),
        }
    }
}

/// A GraphQL-shaped answer to a request that never reached GraphQL.
fn refuse(media: Media, status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "errors": [{ "message": message.into(), "extensions": { "code": code } }] });
    answer(media, status, body.to_string().into_bytes(), HeaderMap::new())
}

fn answer(media: Media, status: StatusCode, body: Vec<u8>, mut headers: HeaderMap) -> Response {
    headers.insert(header::CONTENT_TYPE, media.content_type());
    (status, headers, body).into_response()
}

async fn post_graphql(
    Extension(endpoint): Extension<Arc<Endpoint>>,
    Extension(WriteAccess(may_write)): Extension<WriteAccess>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(media) = Media::negotiate(&headers) else {
        return not_acceptable();
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !content_type.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json") {
        let message = "send GraphQL requests as `Content-Type: application/json`";
        return refuse(media, StatusCode::UNSUPPORTED_MEDIA_TYPE, "BAD_REQUEST", message);
    }
    let bytes = match guard::read_limited(&headers, body, endpoint.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return too_large(media, endpoint.max_body_bytes),
        Err(BodyError::Broken(reason)) => return refuse(media, StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    let batch = match parse_batch(&bytes) {
        Ok(batch) => batch,
        Err(Malformed(message)) => return refuse(media, StatusCode::BAD_REQUEST, "BAD_REQUEST", message),
    };
    let caller = Caller { may_write, via_get: false };
    match batch {
        BatchRequest::Single(request) => run_one(&endpoint, media, request, caller).await,
        BatchRequest::Batch(requests) if requests.len() > endpoint.max_batch => {
            let message = format!(
                "{} operations in one batch; at most {} (GRAPHQL_MAX_BATCH)",
                requests.len(),
                endpoint.max_batch
            );
            refuse(media, StatusCode::BAD_REQUEST, "BATCH_LIMIT_EXCEEDED", message)
        }
        BatchRequest::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for request in requests {
                responses.push(run(&endpoint, request, caller).await.response);
            }
            let mut headers = HeaderMap::new();
            let errors = responses.iter().flat_map(|response| response.errors.iter());
            if let Some(seconds) = retry_after_if_unavailable(errors) {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            let body = serde_json::to_vec(&BatchResponse::Batch(responses)).unwrap_or_default();
            answer(media, StatusCode::OK, body, headers)
        }
    }
}

/// A request the endpoint cannot read, and why in words: 400 `BAD_REQUEST`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Malformed(String);

/// One operation (a JSON object) or a batch (a non-empty array), or why the body is
/// neither, in words (serde's message says what and where).
fn parse_batch(bytes: &[u8]) -> Result<BatchRequest, Malformed> {
    let shape = "a GraphQL request is a JSON object with `query` (a string) and optionally \
                 `operationName` (a string), `variables` and `extensions` (objects), or an array of them";
    let explain = |error: serde_json::Error| match error.classify() {
        serde_json::error::Category::Data => Malformed(format!("{shape}: {error}")),
        _ => Malformed(format!("the body is not valid JSON: {error}")),
    };
    match bytes.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(bytes).map(BatchRequest::Single).map_err(explain),
        Some(b'[') => match serde_json::from_slice::<Vec<async_graphql::Request>>(bytes).map_err(explain)? {
            requests if requests.is_empty() => Err(Malformed("the batch is empty: send at least one operation".into())),
            requests => Ok(BatchRequest::Batch(requests)),
        },
        Some(_) => Err(Malformed(format!("the body is not valid JSON, or not an object or array: {shape}"))),
        None => Err(Malformed(format!("the body is empty: {shape}"))),
    }
}

/// GraphiQL for browsers, queries from the query string for everyone else.
async fn get_graphql(
    Extension(endpoint): Extension<Arc<Endpoint>>,
    Extension(WriteAccess(may_write)): Extension<WriteAccess>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let query = uri.query().unwrap_or_default();
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html && query.is_empty() {
        if !endpoint.graphiql {
            return AppError::not_found("GraphiQL is off on this node (GRAPHQL_INTROSPECTION=false)").into_response();
        }
        return super::graphiql::page();
    }
    let Some(media) = Media::negotiate(&headers) else {
        return not_acceptable();
    };
    if query.len() > endpoint.max_body_bytes {
        return too_large(media, endpoint.max_body_bytes);
    }
    match request_from_query_string(query) {
        Ok(request) => run_one(&endpoint, media, request, Caller { may_write, via_get: true }).await,
        Err(Malformed(message)) => refuse(media, StatusCode::BAD_REQUEST, "BAD_REQUEST", message),
    }
}

/// `query`, `operationName` (or `operation_name`), and `variables` and `extensions` as JSON.
fn request_from_query_string(query: &str) -> Result<async_graphql::Request, Malformed> {
    let mut request = async_graphql::Request::new("");
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "query" => request.query = value.into_owned(),
            "operationName" | "operation_name" => request.operation_name = Some(value.into_owned()),
            "variables" => {
                request.variables = serde_json::from_str(&value)
                    .map_err(|error| Malformed(format!("`variables` is not a JSON object: {error}")))?;
            }
            "extensions" => {
                request.extensions = serde_json::from_str(&value)
                    .map_err(|error| Malformed(format!("`extensions` is not a JSON object: {error}")))?;
            }
            _ => {}
        }
    }
    Ok(request)
}

fn too_large(media: Media, limit: usize) -> Response {
    let message = format!("the GraphQL request exceeds GRAPHQL_MAX_BODY_BYTES ({limit} bytes)");
    refuse(media, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message)
}

fn not_acceptable() -> Response {
    let message = "GraphQL answers as application/json or application/graphql-response+json: accept one of them";
    refuse(Media::Json, StatusCode::NOT_ACCEPTABLE, "NOT_ACCEPTABLE", message)
}

const NO_QUERY: &str = "the request has no `query`";

/// One operation's answer.
struct Outcome {
    response: async_graphql::Response,
    /// Refused before execution: it did not parse, validate or pass the limits.
    refused: bool,
}

async fn run(endpoint: &Endpoint, mut request: async_graphql::Request, caller: Caller) -> Outcome {
    let registration = match endpoint.persisted.resolve(&mut request).await {
        Ok(registration) => registration,
        Err(error) => return Outcome { response: async_graphql::Response::from_errors(vec![error]), refused: true },
    };
    if request.query.trim().is_empty() {
        let error = graphql::coded_error(NO_QUERY, "BAD_REQUEST");
        return Outcome { response: async_graphql::Response::from_errors(vec![error]), refused: true };
    }
    let (mut response, shape) = match graphql::admit(&mut request, Some(&caller), &endpoint.rules).await {
        Ok(shape) => {
            if let Some(registration) = registration {
                endpoint.persisted.register(registration, &request.query).await;
            }
            (endpoint.schema.execute(request).await, Some(shape))
        }
        Err(error) => (async_graphql::Response::from_errors(vec![error]), None),
    };
    let refused = graphql::finish(&mut response, &endpoint.rules, shape.as_ref());
    Outcome { response, refused }
}

async fn run_one(endpoint: &Endpoint, media: Media, request: async_graphql::Request, caller: Caller) -> Response {
    let hash_only = request.query.is_empty() && request.extensions.contains_key("persistedQuery");
    if request.query.trim().is_empty() && !hash_only {
        return refuse(media, StatusCode::BAD_REQUEST, "BAD_REQUEST", NO_QUERY);
    }
    let Outcome { mut response, refused } = run(endpoint, request, caller).await;
    let has_code = |code: &str| {
        response.errors.iter().any(|error| {
            error.extensions.as_ref().and_then(|extensions| extensions.get("code"))
                == Some(&async_graphql::Value::from(code))
        })
    };
    let unauthenticated = has_code("UNAUTHENTICATED");
    let retry_after = retry_after_if_unavailable(response.errors.iter());
    let status = if unauthenticated {
        StatusCode::UNAUTHORIZED
    } else if has_code(graphql::MUTATION_OVER_GET) {
        StatusCode::METHOD_NOT_ALLOWED
    } else if has_code(graphql::persisted::NOT_FOUND) {
        // Apollo's link retries with the query on this answer; keep it a 200.
        StatusCode::OK
    } else if refused && media == Media::GraphqlResponse {
        StatusCode::BAD_REQUEST
    } else if retry_after.is_some() && response.data == async_graphql::Value::Null && media == Media::GraphqlResponse {
        // Nothing could run because a dependency is down: tell proxies and monitors so
        // (docs/graphql.md, "When a dependency is down"); the body stays the GraphQL
        // response, which clients of this media type read whatever the status.
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut headers = std::mem::take(&mut response.http_headers);
    if unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    // A request refused before execution has no `data` at all in the newer media type.
    let body = match serde_json::to_value(&response) {
        Ok(mut value) if refused && media == Media::GraphqlResponse => {
            if let Some(object) = value.as_object_mut() {
                object.remove("data");
            }
            serde_json::to_vec(&value)
        }
        _ => serde_json::to_vec(&response),
    };
    answer(media, status, body.unwrap_or_default(), headers)
}

/// When every error (at least one) is `UPSTREAM_UNAVAILABLE`, the longest `retryAfter`
/// among them (seconds; 1 when none says), for a `Retry-After` header; otherwise `None`.
fn retry_after_if_unavailable<'a>(errors: impl Iterator<Item = &'a async_graphql::ServerError>) -> Option<u64> {
    let unavailable = async_graphql::Value::from("UPSTREAM_UNAVAILABLE");
    let mut longest = None;
    for error in errors {
        let extensions = error.extensions.as_ref()?;
        if extensions.get("code") != Some(&unavailable) {
            return None;
        }
        let seconds = match extensions.get("retryAfter") {
            Some(async_graphql::Value::Number(number)) => number.as_u64(),
            _ => None,
        };
        longest = Some(longest.unwrap_or(1).max(seconds.unwrap_or(1)));
    }
    longest
}

/// graphql-ws (and the older subscriptions-transport-ws): subscriptions, and queries or
/// mutations for clients that send everything over one socket. The connection may write
/// when the upgrade request's `Authorization` header allows it, or — browsers cannot set
/// headers on a WebSocket — the `Authorization` field of the `connection_init` payload.
/// With `CORS_ORIGINS` set, a browser's upgrade from another origin is refused (403):
/// CORS does not cover WebSockets, so without this check any page could use a visitor's
/// session. Pings every `GRAPHQL_WS_KEEPALIVE` keep idle subscriptions open through
/// proxies and tell dead peers apart.
async fn websocket(
    State(state): State<Node>,
    Extension(endpoint): Extension<Arc<Endpoint>>,
    Extension(WriteAccess(header_allows)): Extension<WriteAccess>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let origins = &state.config.cors_origins;
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok());
    if let Some(origin) = origin
        && !origins.is_empty()
        && !origins.iter().any(|allowed| allowed.trim() == "*" || allowed.trim() == origin)
    {
        return AppError::Forbidden {
            message: format!("WebSocket connections from {origin} are not allowed (CORS_ORIGINS)"),
            retry_after: None,
        }
        .into_response();
    }
    let tokens = state.config.api_tokens.clone();
    let schema = endpoint.websocket_schema.clone();
    let keepalive = state.config.graphql.graphql_ws_keepalive.max(std::time::Duration::from_secs(1));
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(endpoint.max_body_bytes)
        .max_frame_size(endpoint.max_body_bytes)
        .on_upgrade(move |socket| async move {
            let (mut to_client, from_client) = socket.split();
            let (outgoing, mut queued) = futures::channel::mpsc::channel::<Message>(16);
            let graphql = GraphQLWebSocket::new_with_pair(outgoing, from_client, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let from_payload =
                        payload.get("Authorization").and_then(serde_json::Value::as_str).and_then(guard::bearer_token);
                    let may_write =
                        header_allows || from_payload.is_some_and(|token| guard::presented_one_of(&tokens, token));
                    let mut data = async_graphql::Data::default();
                    data.insert(Caller { may_write, via_get: false });
                    Ok(data)
                })
                .serve();
            // Everything GraphQL sends, with a ping whenever the keep-alive period passes.
            let forward = async move {
                let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
                loop {
                    let message = tokio::select! {
                        message = queued.next() => match message {
                            Some(message) => message,
                            None => break,
                        },
                        _ = pings.tick() => Message::Ping(Default::default()),
                    };
                    if to_client.send(message).await.is_err() {
                        break;
                    }
                }
            };
            tokio::join!(graphql, forward);
        })
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_answer_media_follows_accept() {
        assert_eq!(Media::negotiate(&HeaderMap::new()), Some(Media::Json));
        assert_eq!(Media::negotiate(&accepting("*/*")), Some(Media::Json));
        assert_eq!(Media::negotiate(&accepting("application/json")), Some(Media::Json));
        let both = accepting("application/graphql-response+json, application/json;q=0.9");
        assert_eq!(Media::negotiate(&both), Some(Media::GraphqlResponse));
        assert_eq!(Media::negotiate(&accepting("text/plain")), None);
        assert_eq!(
            Media::negotiate(&accepting("application/graphql-response+json;q=0, application/json")),
            Some(Media::Json)
        );
    }

    #[test]
    fn retry_after_only_when_every_error_is_an_unavailable_dependency() {
        let error = |code: &str, retry_after: Option<u64>| {
            let mut error = graphql::coded_error("x", code);
            if let (Some(seconds), Some(extensions)) = (retry_after, error.extensions.as_mut()) {
                extensions.set("retryAfter", seconds);
            }
            error
        };
        let unavailable = [error("UPSTREAM_UNAVAILABLE", Some(2)), error("UPSTREAM_UNAVAILABLE", Some(5))];
        assert_eq!(retry_after_if_unavailable(unavailable.iter()), Some(5), "the longest wait");
        assert_eq!(retry_after_if_unavailable([error("UPSTREAM_UNAVAILABLE", None)].iter()), Some(1));
        let mixed = [error("UPSTREAM_UNAVAILABLE", Some(2)), error("NOT_FOUND", None)];
        assert_eq!(retry_after_if_unavailable(mixed.iter()), None);
        assert_eq!(retry_after_if_unavailable([].iter()), None, "no error, no Retry-After");
    }

    #[test]
    fn get_requests_take_both_spellings_of_the_operation_name() {
        let request = request_from_query_string("query=%7Ba%7D&operationName=A&variables=%7B%22x%22%3A1%7D").unwrap();
        assert_eq!(request.query, "{a}");
        assert_eq!(request.operation_name.as_deref(), Some("A"));
        let request = request_from_query_string("query=%7Ba%7D&operation_name=B").unwrap();
        assert_eq!(request.operation_name.as_deref(), Some("B"));
        assert!(request_from_query_string("query=%7Ba%7D&variables=nope").is_err());
    }
}
