//! Bulk uploads: `POST /v1/products`, the dedup window, streaming validation,
//! durable ingestion, and the cluster guarantees (three processes sharing Postgres and
//! Redis; a node killed mid-ingestion).

use std::{
    collections::HashSet,
    io::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{SinkExt as _, StreamExt as _};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{NodeProcess, TestApp, TestEnv, eventually};

/// The documented example body, byte for byte (`curl -d '[{"id": "123", "name": "mesa"}]'`).
const EXAMPLE_BODY: &[u8] = br#"[{"id": "123", "name": "mesa"}]"#;

/// What the client saw.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u64>,
    pub(crate) body: Value,
}

/// POSTs like `curl -d` does: `Content-Type: application/x-www-form-urlencoded`.
pub(crate) async fn post_products(http: &reqwest::Client, base: &str, body: impl Into<reqwest::Body>) -> Answer {
    let response = http
        .post(format!("{base}/v1/products"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("POST /v1/products");
    let status = response.status().as_u16();
    let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer { status, retry_after, body }
}

fn base(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

/// A body of `count` products with ids `<prefix>-<i>`.
pub(crate) fn products(prefix: &str, count: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(count * 64);
    body.push(b'[');
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        write!(body, r#"{{"id":"{prefix}-{i}","name":"product {i}","price":{}}}"#, i * 10).expect("write");
    }
    body.push(b']');
    body
}

async fn upload_state(http: &reqwest::Client, base: &str, id: &str) -> Value {
    http.get(format!("{base}/v1/uploads/{id}")).send().await.expect("GET upload").json().await.expect("json")
}

/// Waits until the upload finished; returns it.
async fn finished(http: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Value {
    eventually(timeout, &format!("upload {id} to finish"), || async {
        let upload = upload_state(http, base, id).await;
        matches!(upload["status"].as_str(), Some("succeeded" | "failed")).then_some(upload)
    })
    .await
}

pub(crate) async fn scalar(db: &impl sea_orm::ConnectionTrait, sql: &str) -> i64 {
    let row = db.query_one_raw(emporium::db::stmt(db, sql, [])).await.expect("query").expect("row");
    row.try_get_by_index::<i64>(0).expect("integer")
}

/// Spooled bodies left in the local object store.
pub(crate) fn spool_files(env: &TestEnv) -> Vec<String> {
    let dir = env.dir.path().join("objects").join("uploads");
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn documented_example_200_then_403_then_200_after_the_window() {
    let env = TestEnv::new().await;
    let window = Duration::from_secs(2);
    let app = TestApp::spawn_with(&env, |config| config.uploads.dedup_window = window).await;
    let base = base(&app);

    let first = post_products(&app.http, &base, EXAMPLE_BODY).await;
    let accepted_at = Instant::now();
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["status"], "queued");
    let upload_id = first.body["upload_id"].as_str().expect("upload_id is a string").to_string();

    let second = post_products(&app.http, &base, EXAMPLE_BODY).await;
    assert_eq!(second.status, 403, "{second:?}");
    assert_eq!(second.body["error"]["code"], "FORBIDDEN");
    let retry_after = second.retry_after.expect("Retry-After on 403");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after} for a 2 s window");

    // Once the window has passed (from the acceptance, not from the 403), it is accepted again.
    tokio::time::sleep((accepted_at + window + Duration::from_millis(100)).saturating_duration_since(Instant::now()))
        .await;
    let third = post_products(&app.http, &base, EXAMPLE_BODY).await;
    assert_eq!(third.status, 200, "{third:?}");
    assert_ne!(third.body["upload_id"].as_str(), Some(upload_id.as_str()));

    // And the product arrives, by sku.
    let upload = finished(&app.http, &base, &upload_id, Duration::from_secs(30)).await;
    assert_eq!(upload["status"], "succeeded", "{upload:#}");
    assert_eq!((upload["items_total"].as_i64(), upload["items_done"].as_i64()), (Some(1), Some(1)));
    assert_eq!(upload["bytes"].as_u64(), Some(EXAMPLE_BODY.len() as u64));
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products WHERE sku = '123' AND name = 'mesa'").await, 1);
    app.stop().await;
}

/// 13:00:00 → 200, 13:09:59 → 403 (and 403s do not extend the window), 13:10:00 → 200,
/// on the in-process window with its clock pinned.
#[tokio::test]
async fn window_boundary_to_the_millisecond_with_a_controlled_clock() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.redis_url = None).await;
    let clock = app.node.uploads.dedup.clock().expect("in-process window");
    let base = base(&app);
    let t0 = 1_519_909_200_000; // 2018-03-01T13:00:00Z
    clock.pin(t0);
    assert_eq!(post_products(&app.http, &base, EXAMPLE_BODY).await.status, 200);

    for (offset_ms, retry_after) in [(1, 600), (300_000, 300), (599_000, 1), (599_999, 1)] {
        clock.pin(t0 + offset_ms);
        let refused = post_products(&app.http, &base, EXAMPLE_BODY).await;
        assert_eq!(refused.status, 403, "at +{offset_ms} ms: {refused:?}");
        assert_eq!(refused.retry_after, Some(retry_after), "at +{offset_ms} ms");
    }
    clock.pin(t0 + 600_000);
    assert_eq!(post_products(&app.http, &base, EXAMPLE_BODY).await.status, 200, "at exactly 10 minutes");
    clock.pin(t0 + 600_001);
    assert_eq!(post_products(&app.http, &base, EXAMPLE_BODY).await.retry_after, Some(600), "a new window began");
    app.stop().await;
}

/// With Redis the window is a key with a PX expiry: refused until it expires, then
/// accepted; refusals do not extend it.
#[tokio::test]
async fn redis_window_expires_on_time_and_refusals_do_not_extend_it() {
    let env = TestEnv::new().await;
    let Some(redis_url) = env.redis_url.clone() else {
        eprintln!("skipped: REDIS_URL is not set");
        return;
    };
    let window = Duration::from_millis(1500);
    let app = TestApp::spawn_with(&env, |config| config.uploads.dedup_window = window).await;
    let base = base(&app);
    assert_eq!(app.node.uploads.dedup.mode(), "redis");
    let accepted = post_products(&app.http, &base, EXAMPLE_BODY).await;
    let accepted_at = Instant::now();
    assert_eq!(accepted.status, 200, "{accepted:?}");

    let client = redis::Client::open(redis_url).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("redis");
    let digest = blake3::hash(EXAMPLE_BODY).to_hex().to_string();
    let key = format!("{}:upload:{digest}", env.redis_prefix);
    let value: String = redis::cmd("GET").arg(&key).query_async(&mut redis).await.expect("GET");
    assert_eq!(value, format!("accepted:{}", accepted.body["upload_id"].as_str().expect("id")));
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.expect("PTTL");
    assert!(pttl > 0 && pttl <= 1500, "PTTL {pttl}");

    // Refusals at 0.5 s and 1 s leave the expiry where it was.
    for at in [500, 1000] {
        tokio::time::sleep((accepted_at + Duration::from_millis(at)).saturating_duration_since(Instant::now())).await;
        let refused = post_products(&app.http, &base, EXAMPLE_BODY).await;
        assert_eq!(refused.status, 403, "{refused:?}");
        assert_eq!(refused.retry_after, Some(1));
    }
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.expect("PTTL");
    assert!(pttl <= 500, "the window was extended: {pttl} ms left");
    tokio::time::sleep((accepted_at + window + Duration::from_millis(50)).saturating_duration_since(Instant::now()))
        .await;
    assert_eq!(post_products(&app.http, &base, EXAMPLE_BODY).await.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn racing_identical_bodies_on_one_node_give_exactly_one_200() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let base = base(&app);
    let body = products("race", 50);
    let answers = futures::future::join_all((0..20).map(|_| post_products(&app.http, &base, body.clone()))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 19, "{statuses:?}");
    assert!(answers.iter().filter(|a| a.status == 403).all(|a| a.retry_after.is_some_and(|s| s >= 1)));
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM uploads").await, 1);
    app.stop().await;
}

/// The database is the window's source of truth: an embedded node that restarts (its
/// in-process window empty) still refuses a body accepted less than the window ago, with
/// the time left, and puts the entry back so the next refusal needs no database.
#[tokio::test]
async fn a_restarted_node_still_refuses_a_body_accepted_within_the_window() {
    let env = TestEnv::new().await;
    let in_process = |config: &mut emporium::config::Config| config.redis_url = None;
    let app = TestApp::spawn_with(&env, in_process).await;
    assert_eq!(post_products(&app.http, &base(&app), EXAMPLE_BODY).await.status, 200);
    app.stop().await;

    let app = TestApp::spawn_with(&env, in_process).await;
    assert_eq!(app.node.uploads.dedup.local_entries(), 0, "a restarted node's window starts empty");
    let refused = post_products(&app.http, &base(&app), EXAMPLE_BODY).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.retry_after.is_some_and(|left| (540..=600).contains(&left)), "{refused:?}");
    assert_eq!(app.node.uploads.dedup.local_entries(), 1, "the window is back on the fast path");
    assert_eq!(scalar(&env.db().await, "SELECT COUNT(*) FROM uploads").await, 1);
    app.stop().await;
}

/// Redis loses its keys (a restart without persistence, a failover, eviction): a body
/// accepted before is still refused on every node, 30 copies racing over three nodes
/// included; and a new body racing over them is accepted exactly once.
#[tokio::test]
async fn after_redis_loses_its_keys_the_window_still_holds_on_every_node() {
    let Some(redis) = crate::support::PrivateRedis::start().await else {
        eprintln!("skipped: no redis-server binary on this machine");
        return;
    };
    let env = TestEnv::new().await;
    let url = redis.url.clone();
    // One after the other: an embedded node takes the data folder's lock while it migrates.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestApp::spawn_with(&env, |config| config.redis_url = Some(url.clone())).await);
    }
    assert!(nodes.iter().all(|node| node.node.uploads.dedup.mode() == "redis"));
    let bases: Vec<String> = nodes.iter().map(base).collect();
    let http = reqwest::Client::new();
    let body = products("flushed", 20);
    assert_eq!(post_products(&http, &bases[0], body.clone()).await.status, 200);

    redis.flush().await;
    let answers = futures::future::join_all((0..30).map(|i| {
        let (http, base, body) = (http.clone(), bases[i % 3].clone(), body.clone());
        async move { post_products(&http, &base, body).await }
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses.iter().all(|status| *status == 403), "{statuses:?}");
    assert!(answers.iter().all(|a| a.retry_after.is_some_and(|left| (540..=600).contains(&left))), "{answers:?}");

    redis.flush().await;
    let fresh = products("after-flush", 20);
    let answers = futures::future::join_all((0..30).map(|i| {
        let (http, base, body) = (http.clone(), bases[i % 3].clone(), fresh.clone());
        async move { post_products(&http, &base, body).await }
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(scalar(&env.db().await, "SELECT COUNT(*) FROM uploads").await, 2);
    for node in nodes {
        node.stop().await;
    }
}

/// Nodes that share a database but no window (in-process windows): identical bodies
/// racing over them are committed exactly once, by the database's check alone.
#[tokio::test]
async fn identical_bodies_racing_over_nodes_without_a_shared_window_commit_once() {
    let env = TestEnv::new().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestApp::spawn_with(&env, |config| config.redis_url = None).await);
    }
    let bases: Vec<String> = nodes.iter().map(base).collect();
    let http = reqwest::Client::new();
    let body = products("no-shared-window", 20);
    let answers = futures::future::join_all((0..30).map(|i| {
        let (http, base, body) = (http.clone(), bases[i % 3].clone(), body.clone());
        async move { post_products(&http, &base, body).await }
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 29, "{statuses:?}");
    assert_eq!(scalar(&env.db().await, "SELECT COUNT(*) FROM uploads").await, 1);
    for node in nodes {
        node.stop().await;
    }
}

/// Each bad input gets its status and a precise reason; nothing is stored, no window
/// opens (the same bad body twice is 400 twice), existing products stay as they were.
#[tokio::test]
async fn bad_inputs_get_their_status_and_nothing_is_lost() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let base = base(&app);
    let db = env.db().await;

    let good = post_products(&app.http, &base, products("keep", 3)).await;
    assert_eq!(good.status, 200);
    let id = good.body["upload_id"].as_str().expect("id").to_string();
    assert_eq!(finished(&app.http, &base, &id, Duration::from_secs(30)).await["status"], "succeeded");
    let before = scalar(&db, "SELECT COUNT(*) FROM products").await;
    let names_before = scalar(&db, "SELECT COUNT(*) FROM products WHERE name LIKE 'product %'").await;
    assert_eq!(before, 3);

    let mut gzip = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03];
    gzip.extend_from_slice(b"\x8b\xae\x56\xca\x4c\x51\xb2\x52\x32\x34\x32\x56\xd2\x51");
    let mut huge_name = br#"[{"id":"keep-1","name":""#.to_vec();
    huge_name.resize(huge_name.len() + 100 * 1024 * 1024, b'a');
    huge_name.extend_from_slice(br#""}]"#);
    let mut huge_field = br#"[{"id":"keep-1","name":"x","blob":""#.to_vec();
    huge_field.resize(huge_field.len() + 100 * 1024 * 1024, b'b');
    huge_field.extend_from_slice(br#""}]"#);
    let deep = format!(r#"[{{"id":"keep-1","name":"x","a":{}1{}}}]"#, "[".repeat(100), "]".repeat(100));

    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        ("truncated JSON", br#"[{"id": "keep-1", "name": "chang"#.to_vec(), 32, "unexpected end"),
        ("object instead of array", br#"{"id": "keep-1", "name": "changed"}"#.to_vec(), 0, "must be a JSON array"),
        // A name over its limit is an item's problem, but this item also passes the size
        // of an item (128 KiB), which refuses the body.
        ("100 MB name", huge_name, 1 + 128 * 1024, "larger than"),
        ("100 MB field", huge_field, 1 + 128 * 1024, "larger than"),
        ("deep nesting", deep.into_bytes(), 31 + 62, "nesting deeper"),
        ("invalid UTF-8", b"[{\"id\": \"keep-1\", \"name\": \"chang\xe9d\"}]".to_vec(), 33, "invalid UTF-8"),
        ("gzip without Content-Encoding", gzip, 0, "gzip"),
        ("trailing garbage", br#"[{"id": "keep-1", "name": "changed"}] ]"#.to_vec(), 38, "after the end"),
        ("empty body", Vec::new(), 0, "empty body"),
    ];
    for (what, body, offset, reason) in cases {
        for attempt in 0..2 {
            let answer = post_products(&app.http, &base, body.clone()).await;
            assert_eq!(answer.status, 400, "{what} (attempt {attempt}): {:?}", answer.body);
            let error = &answer.body["error"];
            assert_eq!(error["code"], "BAD_USER_INPUT", "{what}");
            assert_eq!(error["offset"].as_u64(), Some(offset), "{what}: {error}");
            assert!(error["reason"].as_str().is_some_and(|r| r.contains(reason)), "{what}: {error}");
            assert!(error["line"].as_u64().is_some() && error["column"].as_u64().is_some(), "{what}");
        }
    }

    // Problems of one item refuse the body under REJECT_EVERYTHING (under the other
    // policies they cost the item: tests/it/upload_items.rs), naming the item and field.
    let item_cases: Vec<(&str, &[u8], &str, &str)> = vec![
        ("item without id", br#"[{"name": "changed"}]"#, "id", "missing"),
        ("boolean id", br#"[{"id": true, "name": "changed"}]"#, "id", "string or an integer"),
        ("fractional id", br#"[{"id": 1.5, "name": "changed"}]"#, "id", "fraction"),
        ("object id", br#"[{"id": {"v": 1}, "name": "changed"}]"#, "id", "found an object"),
        ("null id", br#"[{"id": null, "name": "changed"}]"#, "id", "found null"),
    ];
    for (what, body, field, reason) in item_cases {
        let answer = app
            .http
            .post(format!("{base}/v1/products?errorPolicy=REJECT_EVERYTHING"))
            .body(body.to_vec())
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status(), 400, "{what}");
        let answer: Value = answer.json().await.expect("json");
        let error = &answer["error"]["item_errors"][0];
        assert_eq!((error["index"].as_u64(), error["field"].as_str()), (Some(0), Some(field)), "{what}: {answer}");
        assert!(error["reason"].as_str().is_some_and(|r| r.contains(reason)), "{what}: {answer}");
    }

    // Compressed bodies are refused outright, even when declared.
    let declared = app
        .http
        .post(format!("{base}/v1/products"))
        .header("content-encoding", "gzip")
        .body(EXAMPLE_BODY)
        .send()
        .await
        .expect("post");
    assert_eq!(declared.status(), 400);

    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM uploads").await, 1, "a refused body left an upload");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, before);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products WHERE name LIKE 'product %'").await, names_before);
    eventually(Duration::from_secs(10), "spools of refused bodies to be removed", || async {
        spool_files(&env).is_empty().then_some(())
    })
    .await;
    app.stop().await;
}

/// A client that sends an invalid start and then nothing more (a slow client, a stuck
/// one) gets its 400 at once, not when the idle timeout ends the upload.
#[tokio::test]
async fn an_invalid_body_is_refused_while_its_client_is_still_sending() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.uploads.upload_idle_timeout = Duration::from_secs(120)).await;
    let start = futures::stream::iter([Ok::<_, std::io::Error>(br#"{"id": "1", "name": "a"}, "#.to_vec())]);
    let body = reqwest::Body::wrap_stream(start.chain(futures::stream::pending()));
    let answer = tokio::time::timeout(Duration::from_secs(30), post_products(&app.http, &base(&app), body))
        .await
        .expect("no answer while the body was still open");
    assert_eq!(answer.status, 400, "{answer:?}");
    let reason = answer.body["error"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("must be a JSON array"), "{answer:?}");
    app.stop().await;
}

#[tokio::test]
async fn too_large_is_413_from_content_length_or_mid_stream() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.uploads.max_upload_bytes = 1024).await;
    let base = base(&app);
    let body = products("big", 100);
    assert!(body.len() > 1024);

    let declared = post_products(&app.http, &base, body.clone()).await;
    assert_eq!(declared.status, 413, "{declared:?}");

    // Chunked, without Content-Length: refused once the count passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(300).map(|c| Ok(c.to_vec())).collect();
    let streamed = post_products(&app.http, &base, reqwest::Body::wrap_stream(futures::stream::iter(chunks))).await;
    assert_eq!(streamed.status, 413, "{streamed:?}");

    assert_eq!(post_products(&app.http, &base, products("small", 3)).await.status, 200);
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM uploads").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn writes_need_a_token_when_api_tokens_is_set() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.api_tokens = vec!["s3cret".into()]).await;
    let base = base(&app);
    assert_eq!(post_products(&app.http, &base, EXAMPLE_BODY).await.status, 401);
    let response = app
        .http
        .post(format!("{base}/v1/products"))
        .bearer_auth("s3cret")
        .body(EXAMPLE_BODY)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    app.stop().await;
}

/// Progress is visible over REST, GraphQL queries and the `uploadProgress` subscription,
/// which sees each committed batch and ends when the upload succeeds.
#[tokio::test]
async fn progress_over_rest_graphql_and_subscription() {
    let env = TestEnv::new().await;
    // No workers at first: the subscription starts while the upload is still queued.
    let app = TestApp::spawn_with(&env, |config| {
        config.jobs.job_workers = 0;
        config.uploads.upload_batch_size = 500;
    })
    .await;
    let base = base(&app);
    let answer = post_products(&app.http, &base, products("prog", 2400)).await;
    assert_eq!(answer.status, 200);
    // REST takes the row number; GraphQL the global id that REST answers beside it.
    let id = answer.body["upload_id"].as_str().expect("id").to_string();
    let node_id = answer.body["node_id"].as_str().expect("node_id").to_string();
    assert_eq!(crate::support::row_of(&node_id).to_string(), id);

    let queued = upload_state(&app.http, &base, &id).await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["items_total"], 2400);
    assert_eq!(queued["digest"].as_str().map(str::len), Some(64));

    let mut events = subscribe(
        app.addr,
        "subscription($id: ID!) { uploadProgress(id: $id) { id status itemsDone itemsTotal productsCreated } }",
        json!({ "id": node_id }),
    )
    .await;
    let first = events.next().await.expect("current state first");
    assert_eq!(first["status"], "QUEUED");
    assert_eq!(first["id"], node_id.as_str());

    // Only the uploads' own jobs: the registration jobs this upload creates would
    // otherwise queue ahead of the re-run below on this single worker.
    let mut registry = emporium::jobs::JobRegistry::default();
    emporium::uploads::register_jobs(&app.node.uploads, &mut registry);
    let workers = emporium::jobs::Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 1);
    let mut seen = vec![first];
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("progress") {
        seen.push(event);
    }
    let done: Vec<i64> = seen.iter().map(|e| e["itemsDone"].as_i64().unwrap_or(-1)).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress went backwards: {done:?}");
    for batch_end in [500, 1000, 1500, 2000, 2400] {
        assert!(done.contains(&batch_end), "no event after the batch ending at {batch_end}: {done:?}");
    }
    let last = seen.last().expect("events");
    assert_eq!(last["status"], "SUCCEEDED");
    assert_eq!(last["productsCreated"], 2400);

    let data = app
        .gql_ok(
            "query($id: ID!) { upload(id: $id) { status bytes digest itemsTotal itemsDone itemsFailed error createdAt finishedAt }
               uploads(first: 10) { totalCount nodes { id status } } }",
            json!({ "id": node_id }),
        )
        .await;
    let upload = &data["upload"];
    assert_eq!(upload["status"], "SUCCEEDED");
    assert_eq!(upload["itemsDone"], 2400);
    assert_eq!(upload["itemsFailed"], 0);
    assert_eq!(upload["digest"], queued["digest"]);
    assert!(upload["finishedAt"].is_string() && upload["error"].is_null());
    assert_eq!(data["uploads"]["totalCount"], 1);
    assert_eq!(data["uploads"]["nodes"][0]["id"], node_id.as_str());
    let nothing = emporium::global_id::encode("Upload", 999_999).0;
    let missing = app.gql(&format!("{{ upload(id: \"{nothing}\") {{ id }} }}"), json!({})).await;
    assert!(missing.get("errors").is_none(), "{missing}");
    assert!(missing["data"]["upload"].is_null(), "{missing}");
    for malformed in ["x", "999999", id.as_str()] {
        let bad = app.gql(&format!("{{ upload(id: \"{malformed}\") {{ id }} }}"), json!({})).await;
        assert_eq!(crate::support::error_code(&bad).as_deref(), Some("BAD_USER_INPUT"), "{malformed}: {bad}");
    }
    assert_eq!(app.http.get(format!("{base}/v1/uploads/999999")).send().await.expect("get").status(), 404);

    // The spool is gone after success.
    eventually(Duration::from_secs(10), "the spool to be deleted", || async {
        spool_files(&env).is_empty().then_some(())
    })
    .await;
    workers.shutdown().await;
    app.stop().await;
}

/// A job re-run resumes after the last committed batch: progress recorded as done is
/// skipped (here the first 1000 items, never actually written, stay absent), and a
/// second run of a finished job changes nothing.
#[tokio::test]
async fn ingestion_resumes_after_the_last_committed_batch_and_reruns_change_nothing() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let base = base(&app);
    let answer = post_products(&app.http, &base, products("resume", 2500)).await;
    assert_eq!(answer.status, 200);
    let id: i64 = answer.body["upload_id"].as_str().expect("id").parse().expect("numeric id");
    let db = env.db().await;
    // As if a previous attempt committed the first batch and then died.
    db.execute_raw(emporium::db::stmt(
        &db,
        "UPDATE uploads SET status = 'ingesting', items_done = 1000 WHERE id = $1",
        [id.into()],
    ))
    .await
    .expect("update");

    // Only the uploads' own jobs: the registration jobs this upload creates would
    // otherwise queue ahead of the re-run below on this single worker.
    let mut registry = emporium::jobs::JobRegistry::default();
    emporium::uploads::register_jobs(&app.node.uploads, &mut registry);
    let workers = emporium::jobs::Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 1);
    let upload = finished(&app.http, &base, &id.to_string(), Duration::from_secs(60)).await;
    assert_eq!(upload["status"], "succeeded", "{upload:#}");
    assert_eq!(upload["items_done"], 2500);
    assert_eq!(upload["products_created"], 1500);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, 1500);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products WHERE sku = 'resume-999'").await, 0);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products WHERE sku = 'resume-1000'").await, 1);

    // Delivered again (at-least-once): nothing changes.
    let job = emporium::jobs::NewJob::new("uploads.ingest", &json!({ "upload_id": id }));
    let again = app.state.jobs.enqueue(&app.state.db, job).await.expect("enqueue");
    eventually(Duration::from_secs(30), "the re-run to finish", || async {
        let job = app.state.jobs.get(again).await.ok().flatten()?;
        (job.status == "succeeded").then_some(())
    })
    .await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, 1500);
    let upload = upload_state(&app.http, &base, &id.to_string()).await;
    assert_eq!((upload["items_done"].as_i64(), upload["products_created"].as_i64()), (Some(2500), Some(1500)));
    workers.shutdown().await;
    app.stop().await;
}

/// Items the catalog refuses (a name that is blank once trimmed of Unicode spaces, which
/// the scan does not see) are skipped and reported; the others are ingested.
#[tokio::test]
async fn items_the_catalog_refuses_are_skipped_and_reported() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let base = base(&app);
    let body = "[{\"id\":\"ok-1\",\"name\":\"fine\"},{\"id\":\"bad-1\",\"name\":\"\u{2003}\"},{\"id\":\"ok-2\",\"name\":\"fine\"}]";
    let answer = post_products(&app.http, &base, body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let id = answer.body["upload_id"].as_str().expect("id").to_string();
    let upload = finished(&app.http, &base, &id, Duration::from_secs(30)).await;
    assert_eq!(upload["status"], "succeeded");
    assert_eq!(upload["items_done"], 3);
    assert_eq!(upload["items_failed"], 1);
    assert_eq!(upload["item_errors"][0]["index"], 1);
    assert_eq!(upload["item_errors"][0]["sku"], "bad-1");
    assert_eq!(upload["item_errors"][0]["field"], "name");
    assert!(upload["item_errors"][0]["reason"].as_str().is_some_and(|r| r.contains("empty")), "{upload:#}");
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, 2);
    app.stop().await;
}

/// Redis unreachable (here: the node's only path to it is cut) → 503 with Retry-After,
/// never a silently accepted upload; nothing is stored.
#[tokio::test]
async fn redis_unreachable_is_503_never_a_silent_acceptance() {
    let env = TestEnv::new().await;
    let Some(redis_url) = env.redis_url.clone() else {
        eprintln!("skipped: REDIS_URL is not set");
        return;
    };
    let proxy = TcpProxy::start(&redis_url).await;
    let app = TestApp::spawn_with(&env, |config| config.redis_url = Some(proxy.url.clone())).await;
    let base = base(&app);
    assert_eq!(post_products(&app.http, &base, EXAMPLE_BODY).await.status, 200);

    proxy.cut();
    let refused = post_products(&app.http, &base, products("while-down", 3)).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.retry_after.is_some_and(|s| s >= 1), "{refused:?}");
    assert_eq!(refused.body["error"]["code"], "UPSTREAM_UNAVAILABLE");
    // The duplicate is not accepted either.
    assert_eq!(post_products(&app.http, &base, EXAMPLE_BODY).await.status, 503);
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM uploads").await, 1);
    app.stop().await;
}

/// Three `emporium serve` processes sharing Postgres and Redis: 30 identical bodies at
/// once, spread over the three → one 200, 29 × 403; 30 different bodies → 30 × 200; every
/// accepted upload is ingested.
#[tokio::test]
async fn cluster_of_three_one_window_for_all() {
    let env = TestEnv::new().await;
    if !env.is_postgres() || env.redis_url.is_none() {
        eprintln!("skipped: the cluster test needs DATABASE_URL (Postgres) and REDIS_URL");
        return;
    }
    let nodes = futures::future::join_all((0..3).map(|_| NodeProcess::spawn(&env, &[("DEDUP_WINDOW", "120s")]))).await;
    let bases: Vec<String> = nodes.iter().map(|node| node.url("")).collect();
    let http = reqwest::Client::new();

    let same = products("cluster-same", 200);
    let answers = futures::future::join_all((0..30).map(|i| {
        let (http, base, body) = (http.clone(), bases[i % 3].clone(), same.clone());
        async move { post_products(&http, &base, body).await }
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 29, "{statuses:?}");

    let different = futures::future::join_all((0..30).map(|i| {
        let (http, base) = (http.clone(), bases[i % 3].clone());
        async move { post_products(&http, &base, products(&format!("cluster-{i}"), 100)).await }
    }))
    .await;
    assert!(different.iter().all(|a| a.status == 200), "{:?}", different.iter().map(|a| a.status).collect::<Vec<_>>());

    let mut ids: Vec<String> =
        different.iter().map(|a| a.body["upload_id"].as_str().expect("id").to_string()).collect();
    ids.extend(
        answers.iter().filter(|a| a.status == 200).map(|a| a.body["upload_id"].as_str().expect("id").to_string()),
    );
    for (i, id) in ids.iter().enumerate() {
        let upload = finished(&http, &bases[i % 3], id, Duration::from_secs(120)).await;
        assert_eq!(upload["status"], "succeeded", "{upload:#}");
    }
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, 200 + 30 * 100);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM uploads").await, 31);
    for node in nodes {
        node.kill().await;
    }
}

/// kill -9 of the node ingesting a large upload: another node finishes the job from the
/// last committed batch; every distinct sku exists once, created exactly once.
#[tokio::test]
async fn a_node_killed_mid_ingestion_is_finished_by_another() {
    let env = TestEnv::new().await;
    // 60 000 items over 45 000 distinct skus (every fourth repeats an earlier one).
    let count = 60_000;
    let mut body = Vec::with_capacity(count * 60);
    body.push(b'[');
    let mut distinct = HashSet::new();
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        let sku = if i % 4 == 3 { i - 3 } else { i };
        distinct.insert(sku);
        write!(body, r#"{{"id":{sku},"name":"item {i}","n":{i}}}"#).expect("write");
    }
    body.push(b']');

    // A lease long enough that heartbeats delayed by SQLite write contention (the
    // ingestion's 45,000 registration jobs) never let the same node claim the job twice.
    let first = NodeProcess::spawn(&env, &[("UPLOAD_BATCH_SIZE", "500"), ("JOB_LEASE", "15s")]).await;
    let http = reqwest::Client::new();
    let answer = post_products(&http, &first.url(""), body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let id = answer.body["upload_id"].as_str().expect("id").to_string();
    let done_at_kill = eventually(Duration::from_secs(60), "ingestion to start", || async {
        let upload = upload_state(&http, &first.url(""), &id).await;
        upload["items_done"].as_i64().filter(|done| *done > 0)
    })
    .await;
    first.kill().await;
    assert!(done_at_kill < count as i64, "ingestion finished before the kill; make the upload larger");

    let second = NodeProcess::spawn(&env, &[("UPLOAD_BATCH_SIZE", "500"), ("JOB_LEASE", "15s")]).await;
    let upload = finished(&http, &second.url(""), &id, Duration::from_secs(180)).await;
    assert_eq!(upload["status"], "succeeded", "{upload:#}");
    assert_eq!(upload["items_done"].as_i64(), Some(count as i64));
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, distinct.len() as i64);
    assert_eq!(upload["products_created"].as_i64(), Some(distinct.len() as i64), "a batch was applied twice");
    second.kill().await;
}

/// A graphql-ws subscription as a stream of the subscribed field's payloads; ends when
/// the server completes it.
pub(crate) async fn subscribe(
    addr: SocketAddr,
    query: &str,
    variables: Value,
) -> futures::stream::BoxStream<'static, Value> {
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
    let mut request = format!("ws://{addr}/graphql/ws").into_client_request().expect("request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket");
    socket.send(Message::text(json!({ "type": "connection_init" }).to_string())).await.expect("init");
    loop {
        let message = socket.next().await.expect("ack").expect("message");
        let text: Value = serde_json::from_str(message.to_text().unwrap_or("{}")).unwrap_or(Value::Null);
        if text["type"] == "connection_ack" {
            break;
        }
    }
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } });
    socket.send(Message::text(subscribe.to_string())).await.expect("subscribe");
    async_stream::stream! {
        while let Some(Ok(message)) = socket.next().await {
            let Ok(text) = message.to_text() else { continue };
            let Ok(value) = serde_json::from_str::<Value>(text) else { continue };
            match value["type"].as_str() {
                Some("next") => {
                    let data = &value["payload"]["data"];
                    let field = data.as_object().and_then(|o| o.values().next().cloned()).unwrap_or(Value::Null);
                    yield field;
                }
                Some("complete") | Some("error") => break,
                _ => {}
            }
        }
    }
    .boxed()
}

/// A loopback TCP forwarder to Redis that can be cut, to make Redis unreachable for one
/// node without touching the shared server.
struct TcpProxy {
    url: String,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    async fn start(redis_url: &str) -> Self {
        let mut url = url::Url::parse(redis_url).expect("REDIS_URL");
        let target = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(6379));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(port)).expect("port");
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept_tasks = tasks.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_tasks.lock().expect("lock").push(task);
            }
        });
        tasks.lock().expect("lock").insert(0, acceptor);
        Self { url: url.to_string(), tasks }
    }

    /// Closes the listener and every forwarded connection.
    fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}
