//! Many small uploads: bodies up to `UPLOAD_INLINE_MAX_BYTES` are committed in groups
//! with their rows (group commit) and ingested in groups (one transaction, set-based
//! upserts). Each 200 still means durably queued, and each upload still reports its own
//! outcome.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::{
    support::{NodeProcess, TestApp, TestEnv, eventually},
    uploads::{products, scalar},
};

/// A body of one product `sku` (about 200 bytes).
fn one_product(sku: &str, name: &str) -> Vec<u8> {
    format!(r#"[{{"id":"{sku}","name":"{name}","description":"a small upload, one of many, each with its own sku"}}]"#)
        .into_bytes()
}

/// POSTs `bodies` from `clients` concurrent clients, spread over `bases`; the answers in
/// the bodies' order (`None`: the request failed at the transport level).
async fn post_all(bases: &[String], bodies: Vec<Vec<u8>>, clients: usize) -> Vec<Option<(u16, Value)>> {
    post_counting(bases, bodies, clients, &AtomicUsize::new(0)).await
}

/// [`post_all`], counting the 200s in `accepted` as they arrive.
async fn post_counting(
    bases: &[String],
    bodies: Vec<Vec<u8>>,
    clients: usize,
    accepted: &AtomicUsize,
) -> Vec<Option<(u16, Value)>> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().expect("client");
    let gate = Arc::new(Semaphore::new(clients));
    let posts = bodies.into_iter().enumerate().map(|(i, body)| {
        let (http, gate, base) = (http.clone(), gate.clone(), bases[i % bases.len()].clone());
        async move {
            let _turn = gate.acquire().await.expect("semaphore");
            let response = http.post(format!("{base}/v1/products")).body(body).send().await.ok()?;
            let status = response.status().as_u16();
            let body = response.json().await.unwrap_or(Value::Null);
            if status == 200 {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
            Some((status, body))
        }
    });
    futures::future::join_all(posts).await
}

async fn all_succeeded(db: &sea_orm::DatabaseConnection, expected: i64) {
    eventually(Duration::from_secs(120), &format!("{expected} uploads ingested"), || async {
        (scalar(db, "SELECT COUNT(*) FROM uploads WHERE status = 'succeeded'").await == expected).then_some(())
    })
    .await;
}

/// 2,000 distinct small uploads from 64 concurrent clients: every 200 is ingested exactly
/// once, each upload created its one product, the bodies kept in the database are gone
/// afterwards, and the uploads were committed and ingested in groups, not one by one.
#[tokio::test]
async fn two_thousand_small_uploads_from_64_clients_are_each_ingested_once() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let db = env.db().await;
    let bodies: Vec<Vec<u8>> = (0..2000).map(|i| one_product(&format!("many-{i}"), "first")).collect();
    let answers = post_all(&[format!("http://{}", app.addr)], bodies, 64).await;
    let statuses: Vec<u16> = answers.iter().map(|answer| answer.as_ref().map_or(0, |(status, _)| *status)).collect();
    assert!(statuses.iter().all(|status| *status == 200), "{:?}", statuses.iter().collect::<HashSet<_>>());
    let ids: HashSet<&str> =
        answers.iter().flatten().map(|(_, body)| body["upload_id"].as_str().expect("upload_id")).collect();
    assert_eq!(ids.len(), 2000, "each 200 names its own upload");

    all_succeeded(&db, 2000).await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, 2000);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM uploads WHERE products_created = 1 AND items_done = 1").await, 2000);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM upload_bodies").await, 0, "ingested bodies are deleted");
    // Jobs that another upload's job did for them were never started: groups happened.
    let done_by_others = scalar(
        &db,
        "SELECT COUNT(*) FROM jobs WHERE kind = 'uploads.ingest' AND status = 'succeeded' AND attempts = 0",
    )
    .await;
    assert!(done_by_others > 0, "no upload was ingested in a group");
    let metrics = app.http.get(format!("http://{}/metrics", app.addr)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    let batches = metric(&metrics, "emporium_upload_commit_batch_size_count");
    assert!(batches < 2000.0, "2,000 uploads took {batches} commits: none was shared");
    app.stop().await;
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Uploads accepted while no node ingests, then ingested together: each reports what it
/// alone did (one sharing a sku with an earlier one is left for a later group), the error
/// policies hold per upload, and a large (spooled) upload among them is ingested too.
#[tokio::test]
async fn a_group_reports_each_uploads_own_outcome() {
    let env = TestEnv::new().await;
    let accepting = NodeProcess::spawn(&env, &[("JOB_WORKERS", "0")]).await;
    let base = accepting.url("");
    let http = reqwest::Client::new();
    let db = env.db().await;

    let post = |body: Vec<u8>, policy: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let answer = http
                .post(format!("{base}/v1/products?errorPolicy={policy}"))
                .body(body)
                .send()
                .await
                .expect("POST")
                .json::<Value>()
                .await
                .expect("json");
            answer["upload_id"].as_str().unwrap_or_else(|| panic!("accepted: {answer}")).to_string()
        }
    };
    let first = post(br#"[{"id":"g-x","name":"x"},{"id":"g-y","name":"y"}]"#.to_vec(), "REJECT_FAILED_ROWS").await;
    // Shares g-x with the first: renamed, so it updates one product and creates another.
    let second =
        post(br#"[{"id":"g-x","name":"x renamed"},{"id":"g-z","name":"z"}]"#.to_vec(), "REJECT_FAILED_ROWS").await;
    // A name blank beyond ASCII spaces passes the edge; only the catalog's check sees it.
    let blank_name = |first: &str, second: &str| {
        format!("[{{\"id\":\"{first}\",\"name\":\"ok\"}},{{\"id\":\"{second}\",\"name\":\"\u{2003}\"}}]").into_bytes()
    };
    let refused = post(blank_name("g-r1", "g-r2"), "REJECT_EVERYTHING").await;
    let skipped = post(blank_name("g-s1", "g-s2"), "REJECT_FAILED_ROWS").await;
    let large = post(products("g-large", 3000), "REJECT_FAILED_ROWS").await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM upload_bodies").await, 4, "the four small bodies are kept inline");

    let worker = NodeProcess::spawn(&env, &[]).await;
    eventually(Duration::from_secs(60), "every upload to finish", || async {
        (scalar(&db, "SELECT COUNT(*) FROM uploads WHERE status IN ('succeeded', 'failed')").await == 5).then_some(())
    })
    .await;
    let upload = |id: &str| {
        let (http, url) = (http.clone(), worker.url(&format!("/v1/uploads/{id}")));
        async move { http.get(url).send().await.expect("GET").json::<Value>().await.expect("json") }
    };
    let counts = |upload: &Value| {
        (
            upload["status"].as_str().unwrap_or_default().to_string(),
            upload["products_created"].as_i64().unwrap_or(-1),
            upload["products_updated"].as_i64().unwrap_or(-1),
            upload["items_failed"].as_i64().unwrap_or(-1),
        )
    };
    // Two workers may start the two jobs at once, each alone, in either order: whichever
    // went second updated g-x (and its name stuck) and created its other sku.
    let (first, second) = (counts(&upload(&first).await), counts(&upload(&second).await));
    let later_name = match (&first, &second) {
        (a, b) if *a == ("succeeded".into(), 2, 0, 0) && *b == ("succeeded".into(), 1, 1, 0) => "x renamed",
        (a, b) if *a == ("succeeded".into(), 1, 1, 0) && *b == ("succeeded".into(), 2, 0, 0) => "x",
        other => panic!("each upload reports what it alone did: {other:?}"),
    };
    let refused = upload(&refused).await;
    assert_eq!(counts(&refused), ("failed".into(), 0, 0, 1), "{refused:#}");
    assert!(refused["error"].as_str().unwrap_or_default().contains("REJECT_EVERYTHING"), "{refused:#}");
    let skipped = upload(&skipped).await;
    assert_eq!(counts(&skipped), ("succeeded".into(), 1, 0, 1), "{skipped:#}");
    assert_eq!(skipped["item_errors"][0]["index"], 1, "{skipped:#}");
    assert_eq!(counts(&upload(&large).await), ("succeeded".into(), 3000, 0, 0));

    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products WHERE sku LIKE 'g-r%'").await, 0, "nothing of the refused");
    let named = format!("SELECT COUNT(*) FROM products WHERE sku = 'g-x' AND name = '{later_name}'");
    assert_eq!(scalar(&db, &named).await, 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products").await, 2 + 1 + 1 + 3000);
    // Every body is gone, the refused one's too (as a refused spool is).
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM upload_bodies").await, 0);
    accepting.kill().await;
    worker.kill().await;
}

/// `kill -9` in the middle of a stream of small uploads from 64 clients: every upload
/// answered 200 before the kill is ingested after a restart (a 200 comes only once the
/// group transaction holding it committed); those cut off may or may not have been
/// stored, and whatever was stored is ingested once.
#[tokio::test]
async fn kill_9_amid_batches_of_200s_loses_none() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[("JOB_WORKERS", "0")]).await;
    let pid = node.pid();
    let bodies: Vec<Vec<u8>> = (0..1500).map(|i| one_product(&format!("crash-{i}"), "before the crash")).collect();
    let accepted_so_far = AtomicUsize::new(0);
    let bases = [node.url("")];
    let posting = post_counting(&bases, bodies, 64, &accepted_so_far);
    let killing = async {
        eventually(Duration::from_secs(60), "300 uploads accepted", || async {
            (accepted_so_far.load(Ordering::SeqCst) >= 300).then_some(())
        })
        .await;
        let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
        assert!(killed.success());
    };
    let (answers, ()) = tokio::join!(posting, killing);
    node.kill().await;
    let accepted: HashSet<i64> = answers
        .iter()
        .flatten()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body["upload_id"].as_str().and_then(|id| id.parse().ok()).expect("upload_id"))
        .collect();
    let cut_off = answers.iter().filter(|answer| answer.is_none()).count();
    eprintln!("{} answered 200 before the kill, {cut_off} cut off", accepted.len());
    assert!(accepted.len() >= 300 && cut_off > 0, "the kill came amid the stream");

    let db = env.db().await;
    let stored = scalar(&db, "SELECT COUNT(*) FROM uploads").await;
    assert!(stored >= accepted.len() as i64, "{stored} stored, {} answered 200", accepted.len());
    let restarted = NodeProcess::spawn(&env, &[]).await;
    all_succeeded(&db, stored).await;
    for id in &accepted {
        let status =
            scalar(&db, &format!("SELECT COUNT(*) FROM uploads WHERE id = {id} AND status = 'succeeded'")).await;
        assert_eq!(status, 1, "upload {id} answered 200 and was not ingested");
    }
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM products WHERE sku LIKE 'crash-%'").await, stored);
    restarted.kill().await;
}
