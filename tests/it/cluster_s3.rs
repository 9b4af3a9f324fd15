//! The cluster on S3-compatible storage (issue #23, item 5: "the cluster shares the work,
//! and no disk"): node processes sharing Postgres, Redis and a bucket on moto's S3 server
//! ([`PrivateS3`]), each with a working folder of its own, so a spool one node writes can
//! only reach another through S3. Postgres + Redis only (with SQLite there is one node);
//! without moto the tests skip, unless `EMPORIUM_REQUIRE_S3=1` (CI).

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::header::CONTENT_TYPE;
use sea_orm::ConnectionTrait as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::{
    support::{NodeProcess, PrivateS3, TestEnv, eventually},
    uploads::{post_products, scalar},
};

/// Spools' prefix in the bucket (`uploads::receive::SPOOL_PREFIX`).
const SPOOLS: &str = "uploads/";
/// How long a step may take before the test calls it stuck: far beyond a normal run (the
/// 2,000 uploads take about 80 s in all), as machines shared with builds run it 4× slower.
const STUCK: Duration = Duration::from_secs(600);

/// The environment and the S3 server, or `None` (after saying why) when this run cannot
/// have a cluster: SQLite, no Redis, or no moto.
async fn cluster() -> Option<(TestEnv, PrivateS3)> {
    let env = TestEnv::new().await;
    if !env.is_postgres() || env.redis_url.is_none() {
        eprintln!("skipped: the S3 cluster tests need DATABASE_URL (Postgres) and REDIS_URL");
        return None;
    }
    let s3 = PrivateS3::start().await?;
    Some((env, s3))
}

/// A node process on the bucket, with a folder of its own as DATA_DIR and TMPDIR.
struct Node {
    process: NodeProcess,
    folder: TempDir,
}

impl Node {
    async fn spawn(env: &TestEnv, s3: &PrivateS3, extra: &[(&str, &str)]) -> Self {
        let folder = tempfile::tempdir().expect("node folder");
        let tmp = folder.path().join("tmp");
        std::fs::create_dir(&tmp).expect("node temp folder");
        let mut vars: Vec<(&str, String)> = s3.node_env();
        vars.push(("DATA_DIR", folder.path().join("data").display().to_string()));
        vars.push(("TMPDIR", tmp.display().to_string()));
        vars.extend(extra.iter().map(|(key, value)| (*key, value.to_string())));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(key, value)| (*key, value.as_str())).collect();
        // Logged to a file of the environment (not the node's folder), so that the folder
        // holds only what the node itself writes.
        let process = NodeProcess::spawn_logged(env, &vars).await;
        Self { process, folder }
    }

    fn base(&self) -> String {
        self.process.url("")
    }
}

/// Files (not folders) under `folder`, recursively.
fn files_under(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read folder") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// No node wrote a file of its own, and none opened the environment's shared folder
/// store (`TestEnv::env_vars`' `file://` default, overridden here): bodies went through S3.
fn assert_no_disk(env: &TestEnv, folders: &[&TempDir]) {
    for folder in folders {
        let files = files_under(folder.path());
        assert!(files.is_empty(), "a node wrote to its own folder: {files:?}");
    }
    let shared = env.dir.path().join("objects");
    assert!(!shared.exists(), "a node opened the shared folder store {}", shared.display());
}

/// A body of `count` products `<prefix>-<i>`, each about `item_bytes` long (a padded
/// description): sizes chosen independently of the item count.
fn padded_products(prefix: &str, count: usize, item_bytes: usize) -> Vec<u8> {
    let padding = "p".repeat(item_bytes.saturating_sub(prefix.len() + 60));
    let mut body = Vec::with_capacity(count * (item_bytes + 8));
    body.push(b'[');
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        write!(body, r#"{{"id":"{prefix}-{i}","name":"product {i}","description":"{padding}"}}"#).expect("write");
    }
    body.push(b']');
    body
}

async fn upload_state(http: &reqwest::Client, base: &str, id: &str) -> Value {
    http.get(format!("{base}/v1/uploads/{id}")).send().await.expect("GET upload").json().await.expect("json")
}

async fn succeeded(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let upload = eventually(STUCK, &format!("upload {id} to finish"), || async {
        let upload = upload_state(http, base, id).await;
        matches!(upload["status"].as_str(), Some("succeeded" | "failed")).then_some(upload)
    })
    .await;
    assert_eq!(upload["status"], "succeeded", "{upload:#}");
    upload
}

async fn count_skus_like(db: &sea_orm::DatabaseConnection, prefix: &str) -> i64 {
    scalar(db, &format!("SELECT COUNT(*) FROM products WHERE sku LIKE '{prefix}-%'")).await
}

/// What one client request ended as.
enum Sent {
    /// The answer's status and body.
    Answered(u16, Value),
    /// No complete answer: refused, reset, cut mid-body, timed out.
    Transport(String),
}

async fn send(http: &reqwest::Client, base: &str, body: Vec<u8>) -> Sent {
    let response =
        match http.post(format!("{base}/v1/products")).header(CONTENT_TYPE, "application/json").body(body).send().await
        {
            Ok(response) => response,
            Err(error) => return Sent::Transport(error.to_string()),
        };
    let status = response.status().as_u16();
    // A node killed after its status line left has not answered: the body is the answer.
    match response.bytes().await {
        Ok(bytes) => Sent::Answered(status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
        Err(error) => Sent::Transport(error.to_string()),
    }
}

/// 2,000 small uploads (one product each, distinct skus) from 64 clients over three nodes,
/// one of them killed -9 a third of the way: every 200 is ingested exactly once, and no
/// product comes from anything but an accepted body or one whose answer the kill lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_uploads_over_three_nodes_one_killed_each_ingested_once() {
    const UPLOADS: usize = 2_000;
    const CLIENTS: usize = 64;
    const KILL_AFTER: usize = 700;
    const VICTIM: usize = 2;
    let Some((env, s3)) = cluster().await else { return };
    // A 5 s lease (not the environment's 2 s): the machine is busy with three nodes, the
    // S3 server and 64 clients, and a heartbeat late past the lease would let a second
    // node take a job its first still runs. The victim's jobs come back after it anyway.
    let extra = [("JOB_LEASE", "5s")];
    let mut nodes = futures::future::join_all((0..3).map(|_| Node::spawn(&env, &s3, &extra))).await;
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(Node::base).collect());
    let http = reqwest::Client::builder().timeout(STUCK).build().expect("client");
    // The one product of upload `i` (`padded_products` numbers items from 0).
    let sku = |i: usize| format!("s3-small-{i}-0");

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, answered, bases, http) = (next.clone(), answered.clone(), bases.clone(), http.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= UPLOADS {
                        return outcomes;
                    }
                    // One product of about 1 KB: `[{"id": …, "name": …, "description": …}]`.
                    let body = padded_products(&format!("s3-small-{i}"), 1, 1_000);
                    let node = i % bases.len();
                    outcomes.push((i, node, send(&http, &bases[node], body).await));
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    eventually(STUCK, "the first uploads to be answered", || async {
        (answered.load(Ordering::SeqCst) >= KILL_AFTER).then_some(())
    })
    .await;
    let victim = nodes.remove(VICTIM);
    victim.process.kill().await;
    let answered_at_kill = answered.load(Ordering::SeqCst);

    let mut accepted: HashMap<String, String> = HashMap::new(); // upload id → sku
    let mut accepted_by_victim = 0;
    let mut lost: HashSet<String> = HashSet::new(); // skus of requests to the victim with no answer
    let mut unexpected = Vec::new();
    for client in clients {
        for (i, node, sent) in client.await.expect("client task") {
            match sent {
                Sent::Answered(200, body) => {
                    assert_eq!(body["status"], "queued", "{body}");
                    let id = body["upload_id"].as_str().expect("upload_id").to_string();
                    accepted_by_victim += usize::from(node == VICTIM);
                    assert!(accepted.insert(id, sku(i)).is_none(), "an upload id answered twice");
                }
                Sent::Transport(_) if node == VICTIM => {
                    lost.insert(sku(i));
                }
                Sent::Answered(status, body) => unexpected.push(format!("#{i} on node {node}: {status} {body}")),
                Sent::Transport(error) => unexpected.push(format!("#{i} on node {node}: {error}")),
            }
        }
    }
    eprintln!(
        "{} accepted ({accepted_by_victim} by the victim), {} lost with the victim, {answered_at_kill} answered at \
         the kill; all answered in {:?}",
        accepted.len(),
        lost.len(),
        started.elapsed()
    );
    // Live nodes answer every request 200 (distinct bodies, a backlog far from full).
    assert!(unexpected.is_empty(), "{} unexpected answers: {unexpected:#?}", unexpected.len());
    // The kill happened mid-run: the victim had accepted uploads, and then lost requests.
    assert!(accepted_by_victim > 0 && !lost.is_empty(), "the victim was not killed mid-run");
    assert_eq!(accepted.len() + lost.len(), UPLOADS);

    let db = env.db().await;
    eventually(STUCK, "every upload to finish", || async {
        let unfinished = scalar(&db, "SELECT COUNT(*) FROM uploads WHERE status NOT IN ('succeeded', 'failed')").await;
        (unfinished == 0).then_some(())
    })
    .await;
    eprintln!(
        "all ingested in {:?}; multipart uploads the kill left open: {}",
        started.elapsed(),
        s3.pending_multipart_uploads().await.len()
    );
    let rows = db
        .query_all_raw(emporium::db::stmt(
            &db,
            "SELECT id, status, items_done, products_created, products_updated FROM uploads",
            [],
        ))
        .await
        .expect("uploads");
    let mut stored: HashMap<String, (String, i64, i64, i64)> = HashMap::new();
    for row in rows {
        let id: i64 = row.try_get_by_index(0).expect("id");
        let outcome = (
            row.try_get_by_index::<String>(1).expect("status"),
            row.try_get_by_index::<i64>(2).expect("items_done"),
            row.try_get_by_index::<i64>(3).expect("products_created"),
            row.try_get_by_index::<i64>(4).expect("products_updated"),
        );
        stored.insert(id.to_string(), outcome);
    }
    for id in accepted.keys() {
        let outcome = stored.get(id).unwrap_or_else(|| panic!("upload {id} was answered 200 and is not stored"));
        assert_eq!(outcome, &("succeeded".to_string(), 1, 1, 0), "upload {id}: (status, done, created, updated)");
    }
    // The uploads nobody was told about (committed by the victim, the answer lost) were
    // ingested too, once: the victim's requests are all there is beyond the 200s.
    let unanswered: Vec<_> = stored.iter().filter(|(id, _)| !accepted.contains_key(*id)).collect();
    assert!(unanswered.len() <= lost.len(), "{} uploads stored beyond the 200s", unanswered.len());
    for (id, outcome) in &unanswered {
        assert_eq!(*outcome, &("succeeded".to_string(), 1, 1, 0), "unanswered upload {id}");
    }

    let skus: HashSet<String> = db
        .query_all_raw(emporium::db::stmt(&db, "SELECT sku FROM products WHERE sku LIKE 's3-small-%'", []))
        .await
        .expect("products")
        .into_iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("sku"))
        .collect();
    let accepted_skus: HashSet<&String> = accepted.values().collect();
    let missing: Vec<_> = accepted_skus.iter().filter(|sku| !skus.contains(**sku)).collect();
    assert!(missing.is_empty(), "accepted and absent: {missing:?}");
    let extra: Vec<_> = skus.iter().filter(|sku| !accepted_skus.contains(sku)).collect();
    assert!(extra.iter().all(|sku| lost.contains(*sku)), "products from no request: {extra:?}");
    assert_eq!(skus.len(), accepted_skus.len() + unanswered.len(), "one product per ingested upload");

    assert_no_disk(&env, &[&nodes[0].folder, &nodes[1].folder, &victim.folder]);
    for node in nodes {
        node.process.kill().await;
    }
}

/// Bodies over 64 KiB (the largest stored inline) accepted by a node that runs no jobs
/// wait as objects in the bucket; a node with workers and a folder of its own ingests
/// them, deletes the spools, and the products appear. One body of 6 MiB takes two
/// multipart parts (5 MiB each but the last).
#[tokio::test]
async fn a_spool_written_by_one_node_is_ingested_by_another_through_s3() {
    let Some((env, s3)) = cluster().await else { return };
    let intake = Node::spawn(&env, &s3, &[("JOB_WORKERS", "0")]).await;
    let http = reqwest::Client::new();
    // (prefix, items, bytes per item): three bodies of about 200 KB, one of about 6 MiB.
    let shapes = [("s3-big-a", 400, 500), ("s3-big-b", 300, 700), ("s3-big-c", 500, 400), ("s3-huge", 12_000, 550)];
    let mut uploads = Vec::new();
    for (prefix, items, item_bytes) in shapes {
        let body = padded_products(prefix, items, item_bytes);
        assert!(body.len() > 64 * 1024, "{prefix}: {} bytes", body.len());
        let length = body.len() as u64;
        let answer = post_products(&http, &intake.base(), body).await;
        assert_eq!(answer.status, 200, "{prefix}: {answer:?}");
        uploads.push((prefix, items, length, answer.body["upload_id"].as_str().expect("upload_id").to_string()));
    }
    assert!(uploads[3].2 > 5 * 1024 * 1024, "the largest body must need two multipart parts");

    // Queued, with nobody to ingest them: each spool is an object of its body's length.
    for (prefix, _, _, id) in &uploads {
        let upload = upload_state(&http, &intake.base(), id).await;
        assert_eq!(upload["status"], "queued", "{prefix}: {upload:#}");
    }
    let mut lengths: Vec<u64> = s3.objects(SPOOLS).await.into_iter().map(|(_, size)| size).collect();
    lengths.sort_unstable();
    let mut expected: Vec<u64> = uploads.iter().map(|(_, _, length, _)| *length).collect();
    expected.sort_unstable();
    assert_eq!(lengths, expected, "one object per queued body, of its length");

    let worker = Node::spawn(&env, &s3, &[]).await;
    let db = env.db().await;
    for (prefix, items, length, id) in &uploads {
        let upload = succeeded(&http, &worker.base(), id).await;
        assert_eq!(upload["bytes"].as_u64(), Some(*length), "{prefix}");
        assert_eq!(upload["items_done"].as_i64(), Some(*items as i64), "{prefix}: {upload:#}");
        assert_eq!(upload["products_created"].as_i64(), Some(*items as i64), "{prefix}: {upload:#}");
        assert_eq!(count_skus_like(&db, prefix).await, *items as i64, "{prefix}");
    }
    eventually(STUCK, "the ingested spools to be deleted from the bucket", || async {
        s3.objects(SPOOLS).await.is_empty().then_some(())
    })
    .await;
    assert_no_disk(&env, &[&intake.folder, &worker.folder]);
    intake.process.kill().await;
    worker.process.kill().await;
}

/// The dedup window spans the nodes on S3 as it does on a shared folder: a body accepted
/// by one node is refused by the other (403), once, with nothing left in the bucket.
#[tokio::test]
async fn the_dedup_window_holds_across_nodes_on_s3() {
    let Some((env, s3)) = cluster().await else { return };
    let (first, second) = futures::future::join(Node::spawn(&env, &s3, &[]), Node::spawn(&env, &s3, &[])).await;
    let http = reqwest::Client::new();
    let body = padded_products("s3-dedup", 300, 500);
    assert!(body.len() > 64 * 1024, "a body that goes through S3");

    let accepted = post_products(&http, &first.base(), body.clone()).await;
    assert_eq!(accepted.status, 200, "{accepted:?}");
    let refused = post_products(&http, &second.base(), body.clone()).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.body["error"]["code"], "FORBIDDEN", "{refused:?}");
    assert!(refused.retry_after.is_some_and(|seconds| seconds > 0), "{refused:?}");
    let again = post_products(&http, &first.base(), body).await;
    assert_eq!(again.status, 403, "{again:?}");

    let id = accepted.body["upload_id"].as_str().expect("upload_id");
    let upload = succeeded(&http, &second.base(), id).await;
    assert_eq!(upload["products_created"].as_i64(), Some(300), "{upload:#}");
    let db = env.db().await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM uploads").await, 1);
    assert_eq!(count_skus_like(&db, "s3-dedup").await, 300);
    // The refused bodies' spools are deleted as the accepted one's is after ingestion.
    eventually(STUCK, "no spool left in the bucket", || async { s3.objects(SPOOLS).await.is_empty().then_some(()) })
        .await;
    assert_no_disk(&env, &[&first.folder, &second.folder]);
    first.process.kill().await;
    second.process.kill().await;
}

/// A spool on S3 is a multipart upload until the body is complete: a body refused after
/// a part was stored (invalid at its end), and one whose client disconnects mid-body,
/// leave no multipart upload open in the bucket (parts S3 would keep, and bill, unseen
/// by object listings and by the spool sweeper), and no object.
#[tokio::test]
async fn bodies_that_end_early_leave_no_multipart_upload_open() {
    use tokio::io::AsyncWriteExt as _;
    let Some((env, s3)) = cluster().await else { return };
    let node = Node::spawn(&env, &s3, &[]).await;
    let http = reqwest::Client::new();
    let mut body = padded_products("s3-invalid", 12_000, 550);
    assert!(body.len() > 5 * 1024 * 1024, "a part is stored before the error");

    // Invalid only at its last bytes: `[…, {…}, x]`.
    let end = body.len() - 1;
    body.splice(end.., b",x]".iter().copied());
    let refused = post_products(&http, &node.base(), body.clone()).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    eventually(STUCK, "the refused body's multipart upload to be aborted", || async {
        s3.pending_multipart_uploads().await.is_empty().then_some(())
    })
    .await;

    // Half of the body sent, then the connection closed.
    let mut socket = tokio::net::TcpStream::connect(node.process.addr).await.expect("connect");
    let head = format!(
        "POST /v1/products HTTP/1.1\r\nHost: emporium\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(&body[..body.len() - 1024 * 1024]).await.expect("most of the body");
    eventually(STUCK, "the spool's multipart upload to begin", || async {
        (!s3.pending_multipart_uploads().await.is_empty()).then_some(())
    })
    .await;
    drop(socket);
    eventually(STUCK, "the cut body's multipart upload to be aborted", || async {
        s3.pending_multipart_uploads().await.is_empty().then_some(())
    })
    .await;

    assert!(s3.objects(SPOOLS).await.is_empty(), "no spool of a body that was not accepted");
    assert_eq!(scalar(&env.db().await, "SELECT COUNT(*) FROM uploads").await, 0);
    assert_no_disk(&env, &[&node.folder]);
    node.process.kill().await;
}
