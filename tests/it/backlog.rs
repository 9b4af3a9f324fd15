//! Backpressure on uploads: past `UPLOAD_BACKLOG_MAX_UPLOADS` or
//! `UPLOAD_BACKLOG_MAX_BYTES` of accepted-but-not-ingested uploads, `POST /v1/products`
//! answers 503 + `Retry-After`, stores nothing and opens no window; `/health` and
//! `/metrics` show the backlog; once ingestion drains it, the same body is accepted.
//!
//! The accepting node runs no jobs (`JOB_WORKERS=0`), so its backlog only grows; a second
//! node with workers, sharing the database (and Redis), drains it. Node processes, not
//! in-process nodes, so that each `/metrics` is its own node's alone.

use std::time::Duration;

use serde_json::Value;

use crate::{
    support::{NodeProcess, TestEnv, eventually},
    uploads::{post_products, products, scalar, spool_files},
};

async fn health(http: &reqwest::Client, node: &NodeProcess) -> (u16, Value) {
    let response = http.get(node.url("/health")).send().await.expect("GET /health");
    let status = response.status().as_u16();
    (status, response.json().await.expect("health json"))
}

/// The value of an unlabelled sample in the node's `/metrics`.
async fn metric(http: &reqwest::Client, node: &NodeProcess, name: &str) -> Option<f64> {
    let text = http.get(node.url("/metrics")).send().await.expect("GET /metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of a metric's samples over all its labels (absent: none).
async fn metric_sum(http: &reqwest::Client, node: &NodeProcess, name: &str) -> f64 {
    let text = http.get(node.url("/metrics")).send().await.expect("GET /metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts the backlog refusal: 503, `Retry-After`, `UPSTREAM_UNAVAILABLE`, a message
/// naming the full backlog and the bound.
fn assert_backlog_refusal(answer: &crate::uploads::Answer, setting: &str) {
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.retry_after.is_some_and(|seconds| seconds > 0), "Retry-After: {answer:?}");
    assert_eq!(answer.body["error"]["code"], "UPSTREAM_UNAVAILABLE", "{answer:?}");
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("backlog is full") && message.contains(setting), "{message}");
    assert!(message.contains("retry after") || message.contains("send it again after"), "{message}");
}

async fn upload_rows(db: &sea_orm::DatabaseConnection) -> i64 {
    scalar(db, "SELECT COUNT(*) FROM uploads").await
}

/// Waits until every stored upload succeeded.
async fn all_ingested(db: &sea_orm::DatabaseConnection, expected: i64) {
    eventually(Duration::from_secs(120), &format!("{expected} uploads ingested"), || async {
        let done = scalar(db, "SELECT COUNT(*) FROM uploads WHERE status = 'succeeded'").await;
        (done == expected && upload_rows(db).await == expected).then_some(())
    })
    .await;
}

/// Posts `body` until it is accepted, asserting that every refusal meanwhile is the
/// backlog's 503.
async fn accepted_eventually(http: &reqwest::Client, node: &NodeProcess, body: &[u8], setting: &str) -> Value {
    eventually(Duration::from_secs(60), "the refused body to be accepted", || async {
        let answer = post_products(http, &node.url(""), body.to_vec()).await;
        if answer.status == 200 {
            return Some(answer.body);
        }
        assert_backlog_refusal(&answer, setting);
        None
    })
    .await
}

#[tokio::test]
async fn past_the_upload_bound_503_stores_nothing_and_the_same_body_succeeds_once_drained() {
    let env = TestEnv::new().await;
    let bound = [("UPLOAD_BACKLOG_MAX_UPLOADS", "3")];
    let accepting = NodeProcess::spawn(&env, &[bound[0], ("JOB_WORKERS", "0")]).await;
    let http = reqwest::Client::new();
    let db = env.db().await;

    let (healthy_status, healthy) = health(&http, &accepting).await;
    assert_eq!(healthy_status, 200);
    assert_eq!(healthy["checks"]["uploads"]["status"], "up", "{healthy:#}");
    assert_eq!(healthy["checks"]["uploads"]["backlog"]["uploads"], 0, "{healthy:#}");

    let mut bytes = 0;
    for i in 0..3 {
        let body = products(&format!("count-{i}"), 2);
        bytes += body.len();
        let answer = post_products(&http, &accepting.url(""), body).await;
        assert_eq!(answer.status, 200, "upload {i} within the bound: {answer:?}");
    }
    let refused = products("count-refused", 2);
    let answer = post_products(&http, &accepting.url(""), refused.clone()).await;
    assert_backlog_refusal(&answer, "UPLOAD_BACKLOG_MAX_UPLOADS");
    assert!(answer.body["error"]["message"].as_str().unwrap_or_default().contains("3 uploads wait"), "{answer:?}");
    // Nothing stored: no row, no body (small ones are kept in the database); and asked
    // again, still the backlog's answer (a claimed window would make it 403 once the
    // backlog drains, checked below).
    assert_eq!(upload_rows(&db).await, 3);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM upload_bodies").await, 3);
    assert!(spool_files(&env).is_empty(), "{:?}", spool_files(&env));
    assert_backlog_refusal(
        &post_products(&http, &accepting.url(""), refused.clone()).await,
        "UPLOAD_BACKLOG_MAX_UPLOADS",
    );
    assert_eq!(upload_rows(&db).await, 3);

    // Above 80% of the bound: degraded, not down, with the figures.
    let (status, report) = health(&http, &accepting).await;
    assert_eq!(status, 200, "{report:#}");
    let uploads = &report["checks"]["uploads"];
    assert_eq!(uploads["status"], "degraded", "{report:#}");
    assert_eq!(uploads["backlog"]["uploads"], 3, "{report:#}");
    assert_eq!(uploads["backlog"]["bytes"], bytes, "{report:#}");
    assert_eq!(uploads["backlog"]["max_uploads"], 3, "{report:#}");
    assert!(uploads["backlog"]["oldest_waiting_seconds"].as_f64().is_some(), "{report:#}");
    assert_eq!(report["status"], "degraded", "{report:#}");

    assert_eq!(metric(&http, &accepting, "emporium_upload_backlog_uploads").await, Some(3.0));
    assert_eq!(metric(&http, &accepting, "emporium_upload_backlog_bytes").await, Some(bytes as f64));
    let oldest = metric(&http, &accepting, "emporium_upload_backlog_oldest_seconds").await;
    assert!(oldest.is_some_and(|seconds| seconds >= 0.0), "{oldest:?}");

    // A node with workers drains the backlog; the refused body is then accepted where it
    // was refused (no window was opened for it), and ingested too.
    let worker = NodeProcess::spawn(&env, &bound).await;
    all_ingested(&db, 3).await;
    let accepted = accepted_eventually(&http, &accepting, &refused, "UPLOAD_BACKLOG_MAX_UPLOADS").await;
    assert_eq!(accepted["status"], "queued", "{accepted:#}");
    all_ingested(&db, 4).await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, 8);

    eventually(Duration::from_secs(30), "uploads up again in /health", || async {
        let (status, report) = health(&http, &accepting).await;
        assert_eq!(status, 200, "{report:#}");
        (report["checks"]["uploads"]["status"] == "up" && report["checks"]["uploads"]["backlog"]["uploads"] == 0)
            .then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the backlog gauges at 0", || async {
        let uploads = metric(&http, &accepting, "emporium_upload_backlog_uploads").await;
        let bytes = metric(&http, &accepting, "emporium_upload_backlog_bytes").await;
        (uploads == Some(0.0) && bytes == Some(0.0)).then_some(())
    })
    .await;
    // The ingestion rate's counter, on the node that ingested (counted just after the
    // upload's row says it succeeded).
    eventually(Duration::from_secs(30), "emporium_uploads_ingested_total at 4", || async {
        (metric_sum(&http, &worker, "emporium_uploads_ingested_total").await == 4.0).then_some(())
    })
    .await;
    accepting.kill().await;
    worker.kill().await;
}

#[tokio::test]
async fn past_the_byte_bound_503_by_declared_or_streamed_length_then_accepted_once_drained() {
    let env = TestEnv::new().await;
    let bound = [("UPLOAD_BACKLOG_MAX_BYTES", "1000")];
    // Every body spooled, as large ones are: a refused stream's spool must go.
    let accepting = NodeProcess::spawn(&env, &[bound[0], ("JOB_WORKERS", "0"), ("UPLOAD_INLINE_MAX_BYTES", "0")]).await;
    let http = reqwest::Client::new();
    let db = env.db().await;
    // Bodies of chosen sizes (bytes): 600 and 250 fit (850, above 80% of 1000); another
    // 600 or 200 would not.
    let sized = |prefix: &str, size: usize| {
        // `[{…}]` with a `"pad"` field that brings it to `size`.
        let mut body = products(prefix, 1);
        body.truncate(body.len() - "}]".len());
        let pad = size - body.len() - r#","pad":"}]"#.len() - 1;
        body.extend_from_slice(format!(r#","pad":"{}"}}]"#, "x".repeat(pad)).as_bytes());
        assert_eq!(body.len(), size, "{}", String::from_utf8_lossy(&body));
        body
    };
    let first = sized("bytes-first", 600);
    let too_big = sized("bytes-too-big", 600);
    let small = sized("bytes-small", 250);
    let streamed = sized("bytes-streamed", 200);

    assert_eq!(post_products(&http, &accepting.url(""), first.clone()).await.status, 200);
    // 600 waiting + 600 declared > 1000: refused before the body is read.
    let answer = post_products(&http, &accepting.url(""), too_big.clone()).await;
    assert_backlog_refusal(&answer, "UPLOAD_BACKLOG_MAX_BYTES");
    assert_eq!(upload_rows(&db).await, 1);
    // 600 + 250 fits.
    assert_eq!(post_products(&http, &accepting.url(""), small.clone()).await.status, 200);
    // A chunked body declares no length: refused once its size is known, its spool
    // deleted, nothing stored.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = streamed.chunks(64).map(|chunk| Ok(chunk.to_vec())).collect();
    let answer =
        post_products(&http, &accepting.url(""), reqwest::Body::wrap_stream(futures::stream::iter(chunks))).await;
    assert_backlog_refusal(&answer, "UPLOAD_BACKLOG_MAX_BYTES");
    assert_eq!(upload_rows(&db).await, 2);
    eventually(Duration::from_secs(30), "the refused stream's spool to be deleted", || async {
        (spool_files(&env).len() == 2).then_some(())
    })
    .await;

    let (status, report) = health(&http, &accepting).await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["checks"]["uploads"]["status"], "degraded", "{report:#}");
    assert_eq!(report["checks"]["uploads"]["backlog"]["bytes"], 850, "{report:#}");
    assert_eq!(report["checks"]["uploads"]["backlog"]["max_bytes"], 1000, "{report:#}");
    assert_eq!(metric(&http, &accepting, "emporium_upload_backlog_bytes").await, Some(850.0));

    let worker = NodeProcess::spawn(&env, &bound).await;
    all_ingested(&db, 2).await;
    accepted_eventually(&http, &accepting, &too_big, "UPLOAD_BACKLOG_MAX_BYTES").await;
    accepted_eventually(&http, &accepting, &streamed, "UPLOAD_BACKLOG_MAX_BYTES").await;
    all_ingested(&db, 4).await;
    eventually(Duration::from_secs(30), "uploads up again in /health", || async {
        let (_, report) = health(&http, &accepting).await;
        (report["checks"]["uploads"]["status"] == "up").then_some(())
    })
    .await;
    accepting.kill().await;
    worker.kill().await;
}
