//! The service frame: health, GraphQL surface, write protection, limits.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{NodeProcess, TestApp, TestEnv, error_code};

#[tokio::test]
async fn health_lists_every_dependency_and_is_200() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let response = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    for dependency in ["database", "redis", "object_store", "jobs", "offers_service", "feeds"] {
        assert!(body["checks"][dependency]["status"].is_string(), "{dependency} missing in {body:#}");
    }
    assert_eq!(body["checks"]["database"]["status"], "up");
    app.stop().await;
}

#[tokio::test]
async fn mutations_need_a_token_when_api_tokens_is_set() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.api_tokens = vec!["s3cret".into()]).await;
    // A well-formed id of a job that does not exist.
    let mutation =
        format!("mutation {{ retryJob(id: \"{}\") {{ id }} }}", emporium::global_id::encode("Job", 999_999).0);
    let mutation = mutation.as_str();

    let response = app.http.post(app.url("/graphql")).json(&json!({ "query": mutation })).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&body).as_deref(), Some("UNAUTHENTICATED"));

    // With the token the mutation runs (and fails on its own merits: no such job).
    let body = app.gql_as(Some("s3cret"), mutation, json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"));

    // Reads stay public.
    let body = app.gql("{ jobCounts { queued } }", json!({})).await;
    assert_eq!(body["data"]["jobCounts"]["queued"], 0);
    app.stop().await;
}

/// Where a graphql-ws client puts its token.
#[derive(Clone, Copy)]
enum TokenIn {
    UpgradeHeader,
    InitPayload,
}

/// Runs one operation over graphql-ws (graphql-transport-ws) and returns the server's
/// first answer to it (`next` or `error`), with `token` in the upgrade request.
async fn over_websocket(app: &TestApp, token: Option<&str>, query: &str) -> Value {
    over_websocket_with(app, token, TokenIn::UpgradeHeader, query).await
}

async fn over_websocket_with(app: &TestApp, token: Option<&str>, token_in: TokenIn, query: &str) -> Value {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    let mut request = app.url("/graphql/ws").replacen("http", "ws", 1).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
    let mut init = json!({ "type": "connection_init" });
    match (token, token_in) {
        (Some(token), TokenIn::UpgradeHeader) => {
            request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
        }
        (Some(token), TokenIn::InitPayload) => init["payload"] = json!({ "Authorization": format!("Bearer {token}") }),
        (None, _) => {}
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(Message::Text(init.to_string().into())).await.unwrap();
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query } });
    socket.send(Message::Text(subscribe.to_string().into())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("an answer in time");
        let Some(Ok(Message::Text(text))) = frame else { panic!("socket closed: {frame:?}") };
        let message: Value = serde_json::from_str(&text).unwrap();
        if matches!(message["type"].as_str(), Some("next" | "error")) {
            return message;
        }
    }
}

/// The `extensions.code` of each error in a graphql-ws answer (`next` carries a response,
/// `error` a list of errors).
fn websocket_codes(message: &Value) -> Vec<String> {
    let errors = match message["type"].as_str() {
        Some("error") => message["payload"].as_array().cloned().unwrap_or_default(),
        _ => message["payload"]["errors"].as_array().cloned().unwrap_or_default(),
    };
    errors.iter().map(|error| error["extensions"]["code"].as_str().unwrap_or("<none>").to_string()).collect()
}

#[tokio::test]
async fn websocket_operations_get_the_same_write_check_and_error_codes() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.api_tokens = vec!["s3cret".into()]).await;
    // A well-formed id of a job that does not exist.
    let mutation =
        format!("mutation {{ retryJob(id: \"{}\") {{ id }} }}", emporium::global_id::encode("Job", 999_999).0);
    let mutation = mutation.as_str();

    let refused = over_websocket(&app, None, mutation).await;
    assert_eq!(websocket_codes(&refused), ["UNAUTHENTICATED"], "{refused:#}");
    let wrong_token = over_websocket(&app, Some("guess"), mutation).await;
    assert_eq!(websocket_codes(&wrong_token), ["UNAUTHENTICATED"], "{wrong_token:#}");
    // With the token the mutation runs (and fails on its own merits: no such job).
    let allowed = over_websocket(&app, Some("s3cret"), mutation).await;
    assert_eq!(websocket_codes(&allowed), ["NOT_FOUND"], "{allowed:#}");
    // Browsers cannot set headers on a WebSocket: the token may come in `connection_init`.
    let in_payload = over_websocket_with(&app, Some("s3cret"), TokenIn::InitPayload, mutation).await;
    assert_eq!(websocket_codes(&in_payload), ["NOT_FOUND"], "{in_payload:#}");
    let wrong_in_payload = over_websocket_with(&app, Some("guess"), TokenIn::InitPayload, mutation).await;
    assert_eq!(websocket_codes(&wrong_in_payload), ["UNAUTHENTICATED"], "{wrong_in_payload:#}");

    // async-graphql's own errors get a code over the socket as over HTTP.
    let unknown_field = over_websocket(&app, None, "{ noSuchField }").await;
    assert_eq!(websocket_codes(&unknown_field), ["GRAPHQL_VALIDATION_FAILED"], "{unknown_field:#}");
    let read = over_websocket(&app, None, "{ jobCounts { queued } }").await;
    assert_eq!(read["payload"]["data"]["jobCounts"]["queued"], 0, "{read:#}");
    app.stop().await;
}

#[tokio::test]
async fn several_nodes_starting_together_migrate_once_and_all_serve() {
    let env = TestEnv::new().await;
    let (a, b, c) =
        tokio::join!(NodeProcess::spawn(&env, &[]), NodeProcess::spawn(&env, &[]), NodeProcess::spawn(&env, &[]));
    for node in [&a, &b, &c] {
        let health: Value = reqwest::get(node.url("/health")).await.unwrap().json().await.unwrap();
        assert_eq!(health["checks"]["database"]["status"], "up", "{health:#}");
    }
    for node in [a, b, c] {
        node.kill().await;
    }
}

/// Runs the binary with `env` and returns (exit code, stderr).
async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_emporium"));
    command.args(args).env_clear().env("DATA_DIR", dir.path()).envs(env.iter().copied()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("exits in time").unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn assert_one_clear_error(code: Option<i32>, stderr: &str, mentions: &str) {
    assert_eq!(code, Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(mentions), "`{mentions}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn bad_configuration_fails_with_one_clear_line() {
    let quiet = ("RUST_LOG", "off");
    let (code, stderr) = run_binary(&["serve"], &[quiet, ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")]).await;
    assert_one_clear_error(code, &stderr, "cannot connect to the database");

    let (code, stderr) = run_binary(&["serve"], &[quiet, ("DATABASE_URL", "definitely not a url")]).await;
    assert_one_clear_error(code, &stderr, "database");

    let (code, stderr) = run_binary(&["serve"], &[quiet, ("REDIS_URL", "redis://127.0.0.1:1")]).await;
    assert_one_clear_error(code, &stderr, "cannot connect to Redis");

    let (code, stderr) = run_binary(&["serve"], &[quiet, ("FEED_SOURCES", "ftp://x/feed@15s")]).await;
    assert_one_clear_error(code, &stderr, "feed source");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_binary(&["serve"], &[quiet, ("LISTEN", addr.as_str())]).await;
    assert_one_clear_error(code, &stderr, &format!("cannot listen on {addr}"));
}

#[tokio::test]
async fn schema_command_prints_the_sdl() {
    let (code, _) = run_binary(&["schema"], &[]).await;
    assert_eq!(code, Some(0));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_emporium")).arg("schema").output().unwrap();
    let sdl = String::from_utf8(output.stdout).unwrap();
    assert!(sdl.contains("type Query {"), "{sdl}");
    assert!(sdl.contains("type Mutation {"), "{sdl}");
}

#[tokio::test]
async fn graphiql_for_browsers_queries_over_get_and_no_mutations_over_get() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let page = app.http.get(app.url("/graphql")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().to_lowercase().contains("graphiql"));

    let body: Value =
        app.http.get(app.url("/graphql?query=%7BjobCounts%7Bqueued%7D%7D")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["data"]["jobCounts"]["queued"], 0, "{body:#}");

    let mutation = "mutation%7BretryJob(id:%221%22)%7Bid%7D%7D";
    let response = app.http.get(app.url(&format!("/graphql?query={mutation}"))).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body).as_deref(), Some("METHOD_NOT_ALLOWED"), "{body:#}");
    app.stop().await;
}

#[tokio::test]
async fn overly_deep_queries_are_refused() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    // 13 levels through the introspection types (`ofType` chains do not count: tools nest
    // them 9 deep, and the schema's wrappers bound what they return).
    let mut query = String::from("name");
    for _ in 0..6 {
        query = format!("fields {{ type {{ {query} }} }}");
    }
    let deep = format!("{{ __schema {{ types {{ {query} }} }} }}");
    let body = app.gql(&deep, json!({})).await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("15 levels deep") && message.contains("GRAPHQL_MAX_DEPTH"), "{body:#}");
    assert_eq!(error_code(&body).as_deref(), Some("DEPTH_LIMIT_EXCEEDED"));
    assert!(body["data"].is_null());

    let body = app.gql("{ jobCounts { queued ", json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("GRAPHQL_PARSE_FAILED"), "syntax errors carry a code too: {body:#}");
    let body = app.gql("query($id: ID!) { job(id: $id) { id } }", json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"), "missing variables too: {body:#}");
    app.stop().await;
}

#[tokio::test]
async fn cors_preflight_allows_configured_origins_only() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.cors_origins = vec!["https://shop.example".into()]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    // The feed too: with origins configured it is served through the CORS layer.
    let feed = app.http.get(app.url("/v1/feed")).header("origin", "https://shop.example").send().await.unwrap();
    assert_eq!(feed.status(), 200);
    assert_eq!(feed.headers()["access-control-allow-origin"], "https://shop.example");
    app.stop().await;
}

#[tokio::test]
async fn metrics_expose_requests_latency_and_job_counts() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    app.gql_ok("{ jobCounts { queued } }", json!({})).await;
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("emporium_http_requests_total{route=\"/graphql\",method=\"POST\",status=\"200\"}"), "{text}");
    assert!(text.contains("emporium_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("emporium_jobs{status=\"failed\"}"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn sigterm_stops_the_node_gracefully() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let status = node.terminate().await;
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
}

#[tokio::test]
async fn health_turns_503_when_a_critical_dependency_dies() {
    let Some(mut redis) = crate::support::PrivateRedis::start().await else {
        eprintln!("skipped: no redis-server binary on this machine");
        return;
    };
    let redis_url = redis.url.clone();

    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.redis_url = Some(redis_url.clone())).await;
    let response = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    redis.kill();
    let response = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "down");
    assert_eq!(body["checks"]["redis"]["status"], "down", "{body:#}");
    assert_eq!(body["checks"]["database"]["status"], "up");
    app.stop().await;
}
