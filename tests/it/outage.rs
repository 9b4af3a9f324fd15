//! Failing fast and clearly (issue #24, item 4): with Postgres, Redis or the object store
//! unreachable, requests answer within 5 s with 503 (or, for GraphQL as
//! `application/json`, 200 as GraphQL over HTTP says), `Retry-After` and
//! `UPSTREAM_UNAVAILABLE`; `/health` is 503 within 5 s and 200 again once the dependency
//! is back, without restarting the node; jobs run again; the node never panics.
//!
//! Each test owns the dependency it stops (a private Postgres or Redis on its own port,
//! an S3 endpoint on a closed loopback port), whatever `DATABASE_URL`/`REDIS_URL` say.

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};

use crate::support::{NodeProcess, PrivatePostgres, PrivateRedis, TestEnv, eventually};

/// The issue's budget for an answer (and for `/health` to turn 503) while a dependency is down.
const BUDGET: Duration = Duration::from_secs(5);
/// How long recovery may take once the dependency is back (generous: not a stated budget).
const RECOVERY: Duration = Duration::from_secs(60);

const READ: &str = "{ products(first: 5) { nodes { id name } } }";
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
    took: Duration,
}

impl Answer {
    /// The `extensions.code` of every GraphQL error, or the REST error's `code`.
    fn codes(&self) -> Vec<String> {
        if let Some(errors) = self.body["errors"].as_array() {
            return errors
                .iter()
                .filter_map(|error| error["extensions"]["code"].as_str())
                .map(str::to_string)
                .collect();
        }
        self.body["error"]["code"].as_str().map(|code| vec![code.to_string()]).unwrap_or_default()
    }

    /// Within the budget, with `status`, a `Retry-After` of at least a second, and every
    /// error (at least one) `UPSTREAM_UNAVAILABLE`.
    fn assert_unavailable(&self, status: u16, what: &str) {
        eprintln!("{what}: {} in {:?}, Retry-After {:?}", self.status, self.took, self.retry_after);
        assert!(self.took < BUDGET, "{what}: answered after {:?}, beyond {BUDGET:?}: {self:?}", self.took);
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert!(self.retry_after.is_some_and(|seconds| seconds >= 1), "{what}: no Retry-After: {self:?}");
        let codes = self.codes();
        assert!(!codes.is_empty() && codes.iter().all(|code| code == "UPSTREAM_UNAVAILABLE"), "{what}: {self:?}");
    }
}

fn client() -> reqwest::Client {
    // Far beyond the budget, so a slow answer fails the budget assertion with its time
    // rather than the client with a timeout.
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get(RETRY_AFTER).and_then(|value| value.to_str().ok()).and_then(|value| value.parse().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer { status, retry_after, body, took: started.elapsed() }
}

async fn graphql(http: &reqwest::Client, node: &NodeProcess, query: &str, accept: &str) -> Answer {
    let request = http
        .post(node.url("/graphql"))
        .header(ACCEPT, accept)
        .header(CONTENT_TYPE, "application/json")
        .json(&json!({ "query": query }));
    answer(request).await
}

async fn create_product(http: &reqwest::Client, node: &NodeProcess, name: &str) -> Answer {
    let query = format!(r#"mutation {{ createProduct(input: {{ name: "{name}", description: "outage" }}) {{ id }} }}"#);
    graphql(http, node, &query, "application/json").await
}

async fn upload(http: &reqwest::Client, node: &NodeProcess, sku: &str) -> Answer {
    let body = format!(r#"[{{"id": "{sku}", "name": "{sku}"}}]"#);
    answer(http.post(node.url("/v1/products")).header(CONTENT_TYPE, "application/json").body(body)).await
}

async fn health(http: &reqwest::Client, node: &NodeProcess) -> Answer {
    answer(http.get(node.url("/health"))).await
}

/// Waits for `/health` to be 200 again.
async fn healthy_again(http: &reqwest::Client, node: &NodeProcess, what: &str) {
    eventually(RECOVERY, &format!("/health to be 200 again after {what}"), || async {
        (health(http, node).await.status == 200).then_some(())
    })
    .await;
}

/// An upload accepted now is ingested: its job is claimed and runs (no worker is stuck).
async fn upload_is_ingested(http: &reqwest::Client, node: &NodeProcess, sku: &str) {
    let accepted = upload(http, node, sku).await;
    assert_eq!(accepted.status, 200, "upload after recovery: {accepted:?}");
    let id = accepted.body["upload_id"].as_str().expect("upload_id").to_string();
    let status = eventually(RECOVERY, &format!("upload {id} to be ingested"), || async {
        let state: Value = http.get(node.url(&format!("/v1/uploads/{id}"))).send().await.ok()?.json().await.ok()?;
        state["status"].as_str().filter(|status| matches!(*status, "succeeded" | "failed")).map(str::to_string)
    })
    .await;
    assert_eq!(status, "succeeded", "upload {id} after recovery");
}

/// The node is still the same process and never panicked.
fn assert_alive_and_calm(node: &mut NodeProcess) {
    assert!(node.is_running(), "the node exited:\n{}", node.stderr());
    let log = node.stderr();
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_fails_fast_and_recovers_without_a_restart() {
    let env = TestEnv::new().await;
    let mut postgres = PrivatePostgres::start().await;
    let mut node = NodeProcess::spawn_logged(&env, &[("DATABASE_URL", postgres.url.as_str())]).await;
    let http = client();
    assert_eq!(health(&http, &node).await.status, 200, "healthy before the outage");
    assert_eq!(create_product(&http, &node, "before").await.codes(), Vec::<String>::new());
    assert_eq!(upload(&http, &node, "before").await.status, 200);

    postgres.stop();
    let health_down = health(&http, &node).await;
    eprintln!("/health: {} in {:?}", health_down.status, health_down.took);
    assert!(health_down.took < BUDGET, "/health took {:?}: {health_down:?}", health_down.took);
    assert_eq!(health_down.status, 503, "{health_down:?}");
    assert_eq!(health_down.body["checks"]["database"]["status"], "down", "{health_down:?}");

    // GraphQL as application/json: 200 whatever happened (GraphQL over HTTP), with Retry-After.
    graphql(&http, &node, READ, "application/json").await.assert_unavailable(200, "a read as application/json");
    // As application/graphql-response+json with no data: 503 (docs/graphql.md).
    let read = graphql(&http, &node, READ, GRAPHQL_RESPONSE).await;
    read.assert_unavailable(503, "a read as application/graphql-response+json");
    assert!(read.body["data"].is_null(), "{read:?}");
    create_product(&http, &node, "during").await.assert_unavailable(200, "a mutation");
    let mutation = "mutation { createProduct(input: { name: \"during\", description: \"x\" }) { id } }";
    graphql(&http, &node, mutation, GRAPHQL_RESPONSE).await.assert_unavailable(503, "a mutation (graphql-response)");
    upload(&http, &node, "during").await.assert_unavailable(503, "POST /v1/products");
    // Still within the budget on the next request: nothing piles up behind the outage.
    upload(&http, &node, "during-again").await.assert_unavailable(503, "POST /v1/products again");

    postgres.restart().await;
    healthy_again(&http, &node, "Postgres came back").await;
    let read = graphql(&http, &node, READ, "application/json").await;
    assert!(read.codes().is_empty() && read.body["data"]["products"]["nodes"].is_array(), "{read:?}");
    assert!(read.retry_after.is_none(), "{read:?}");
    let created = create_product(&http, &node, "after").await;
    assert!(created.codes().is_empty() && created.body["data"]["createProduct"]["id"].is_string(), "{created:?}");
    upload_is_ingested(&http, &node, "after").await;
    assert_alive_and_calm(&mut node);
    node.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_uploads_fast_and_recovers_without_a_restart() {
    let env = TestEnv::new().await;
    let mut redis = PrivateRedis::start().await.expect("redis-server is needed for this test (install Redis)");
    let mut node = NodeProcess::spawn_logged(&env, &[("REDIS_URL", redis.url.as_str())]).await;
    let http = client();
    assert_eq!(health(&http, &node).await.status, 200, "healthy before the outage");

    redis.kill();
    let health_down = health(&http, &node).await;
    eprintln!("/health: {} in {:?}", health_down.status, health_down.took);
    assert!(health_down.took < BUDGET, "/health took {:?}: {health_down:?}", health_down.took);
    assert_eq!(health_down.status, 503, "{health_down:?}");
    assert_eq!(health_down.body["checks"]["redis"]["status"], "down", "{health_down:?}");
    // Uploads need the cluster's dedup window: refused, never accepted unchecked.
    upload(&http, &node, "during").await.assert_unavailable(503, "POST /v1/products");
    // GraphQL does not need Redis (events fall back to this node): it keeps answering.
    let read = graphql(&http, &node, READ, GRAPHQL_RESPONSE).await;
    assert!(read.took < BUDGET && read.status == 200 && read.codes().is_empty(), "{read:?}");

    redis.restart().await;
    healthy_again(&http, &node, "Redis came back").await;
    upload_is_ingested(&http, &node, "after").await;
    assert_alive_and_calm(&mut node);
    node.kill().await;
}

/// An S3 endpoint that never answers a connection attempt, as a host that is down or
/// behind a dropping firewall: a loopback listener whose accept queue is full (Linux then
/// drops new SYNs, so `connect` waits). A closed port is refused at once and object_store
/// gave up on it within about 2 s even before; this one took 5 s per try, tried again
/// for up to 3 minutes.
struct Blackhole {
    addr: std::net::SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<tokio::net::TcpStream>,
}

impl Blackhole {
    async fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut queued = Vec::new();
        for _ in 0..3 {
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
                queued.push(stream);
            }
        }
        let probe = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await;
        assert!(probe.is_err(), "the accept queue is full: a new connection must wait, got {probe:?}");
        Self { addr, _listener: listener, _queued: queued }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_object_store_fails_uploads_fast() {
    let env = TestEnv::new().await;
    let blackhole = Blackhole::start().await;
    let endpoint = format!("http://{}", blackhole.addr);
    let s3 = [
        ("OBJECT_STORE_URL", "s3://emporium-outage"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        // Every body spooled, as large ones are (small ones are kept in the database).
        ("UPLOAD_INLINE_MAX_BYTES", "0"),
    ];
    let mut node = NodeProcess::spawn_logged(&env, &s3).await;
    let http = client();

    let health_down = health(&http, &node).await;
    eprintln!("/health: {} in {:?}", health_down.status, health_down.took);
    assert!(health_down.took < BUDGET, "/health took {:?}: {health_down:?}", health_down.took);
    assert_eq!(health_down.status, 503, "{health_down:?}");
    assert_eq!(health_down.body["checks"]["object_store"]["status"], "down", "{health_down:?}");
    upload(&http, &node, "nowhere").await.assert_unavailable(503, "POST /v1/products");
    upload(&http, &node, "nowhere-again").await.assert_unavailable(503, "POST /v1/products again");
    // The catalog does not need the object store.
    let read = graphql(&http, &node, READ, "application/json").await;
    assert!(read.took < BUDGET && read.status == 200 && read.codes().is_empty(), "{read:?}");
    assert_alive_and_calm(&mut node);
    node.kill().await;
}
