//! The intake pipeline, black-box: REST and GraphQL submission, files in the
//! bucket folders, the output queue of notices (REST, GraphQL pages, graphql-ws replay and
//! live), failures, path safety, health, and a node killed in the middle of 10,000 messages.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use emporium::{db::stmt, intake::BucketRoute};
use futures::{SinkExt as _, StreamExt as _};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, FromQueryResult, TransactionTrait as _};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _, http::HeaderValue};

use crate::support::{NodeProcess, TestApp, TestEnv, error_code, eventually, row_of};

/// The documented example message, as a client would send it (its multi-line summary
/// is not valid JSON, so it is on one line here).
const EXAMPLE_ROMANCE: &str = r#"{
     "id": "12345",
     "title": "LoremIpsum",
     "author": "John Doe",
     "year": "1960",
     "genre": "romance",
     "summary": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."
    }"#;

const EXAMPLE_SCIFI: &str = r#"{"id": "67890", "title": "Foundation", "author": "Isaac Asimov", "year": 1951, "genre": "scifi", "summary": "Psychohistory and the fall of an empire."}"#;

const NOTICE_FIELDS: &str = "id sequence cursor intakeMessageId messageId title genre bucket key storedAt";

/// The GraphQL id of intake message `row` (REST answers row numbers).
fn message_id(row: i64) -> String {
    emporium::global_id::encode("IntakeMessage", row).0
}

fn message(title: &str, genre: &str, summary: &str) -> String {
    json!({ "id": format!("m-{summary}"), "title": title, "author": "Tester", "year": "2026", "genre": genre, "summary": summary })
        .to_string()
}

async fn post_intake(http: &reqwest::Client, base: &str, body: impl Into<String>) -> reqwest::Response {
    http.post(format!("{base}/v1/intake"))
        .header("content-type", "application/json")
        .body(body.into())
        .send()
        .await
        .expect("intake request")
}

/// Submits and expects 202; returns our ids.
async fn submit(http: &reqwest::Client, base: &str, body: impl Into<String>) -> Vec<i64> {
    let response = post_intake(http, base, body).await;
    let status = response.status();
    let answer: Value = response.json().await.expect("json answer");
    assert_eq!(status, 202, "{answer:#}");
    answer["ids"].as_array().expect("ids").iter().map(|id| id.as_i64().expect("numeric id")).collect()
}

#[derive(Debug, FromQueryResult)]
struct Row {
    id: i64,
    status: String,
    bucket: Option<String>,
    object_name: String,
    body: String,
    reason: Option<String>,
    processed_at: Option<i64>,
}

async fn rows(db: &DatabaseConnection) -> Vec<Row> {
    Row::find_by_statement(stmt(
        db,
        "SELECT id, status, bucket, object_name, body, reason, processed_at FROM intake_messages ORDER BY id",
        [],
    ))
    .all(db)
    .await
    .expect("rows")
}

async fn count_by_status(db: &DatabaseConnection) -> HashMap<String, i64> {
    #[derive(FromQueryResult)]
    struct Count {
        status: String,
        n: i64,
    }
    Count::find_by_statement(stmt(db, "SELECT status, COUNT(*) AS n FROM intake_messages GROUP BY status", []))
        .all(db)
        .await
        .expect("counts")
        .into_iter()
        .map(|count| (count.status, count.n))
        .collect()
}

/// Waits until no message is queued any more and returns the counts.
async fn settled(db: &DatabaseConnection, timeout: Duration) -> HashMap<String, i64> {
    eventually(timeout, "every intake message to be processed", || async {
        let counts = count_by_status(db).await;
        (counts.get("queued").copied().unwrap_or(0) == 0 && !counts.is_empty()).then_some(counts)
    })
    .await
}

fn objects_dir(env: &TestEnv) -> PathBuf {
    env.dir.path().join("objects")
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A graphql-ws (graphql-transport-ws) client with one subscription.
struct Subscriber {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Subscriber {
    async fn start(addr: SocketAddr, query: &str) -> Self {
        let mut request = format!("ws://{addr}/graphql/ws").into_client_request().expect("ws request");
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("graphql-transport-ws"));
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
        ws.send(Message::Text(json!({ "type": "connection_init" }).to_string().into())).await.expect("init");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("connection_ack in time");
            if let Some(Ok(Message::Text(text))) = frame {
                let message: Value = serde_json::from_str(&text).expect("json frame");
                if message["type"] == "connection_ack" {
                    break;
                }
            } else {
                panic!("websocket closed before connection_ack: {frame:?}");
            }
        }
        let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query } });
        ws.send(Message::Text(subscribe.to_string().into())).await.expect("subscribe");
        Self { ws }
    }

    /// The next event's `data`, or `None` after `timeout` or when the connection ends.
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = match tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?? {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(_) => return None,
            };
            let message: Value = serde_json::from_str(&text).expect("json frame");
            match message["type"].as_str() {
                Some("next") => {
                    assert!(message["payload"]["errors"].is_null(), "subscription error: {message:#}");
                    return Some(message["payload"]["data"].clone());
                }
                Some("ping") => {
                    let _ = self.ws.send(Message::Text(json!({ "type": "pong" }).to_string().into())).await;
                }
                Some("error") => panic!("subscription refused: {message:#}"),
                Some("complete") => return None,
                _ => {}
            }
        }
    }

    /// Subscribes to the whole output queue (`fromStart: true`): in a test's fresh database
    /// that is every notice, whenever the subscription is set up.
    async fn from_start(addr: SocketAddr) -> Self {
        Self::start(addr, &format!("subscription {{ intakeProcessed(fromStart: true) {{ {NOTICE_FIELDS} }} }}")).await
    }

    /// The next notice, or `None` after `timeout` or when the connection ends.
    async fn next_notice(&mut self, timeout: Duration) -> Option<Value> {
        self.next(timeout).await.map(|data| data["intakeProcessed"].clone())
    }

    /// Notices received within `idle` of each other.
    async fn drain(&mut self, idle: Duration) -> Vec<Value> {
        let mut notices = Vec::new();
        while let Some(notice) = self.next_notice(idle).await {
            notices.push(notice);
        }
        notices
    }

    /// The errors the subscription was refused with (`next` with errors, or `error`).
    async fn refusal(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("an answer in time");
            let Some(Ok(Message::Text(text))) = frame else { panic!("connection ended without a refusal: {frame:?}") };
            let message: Value = serde_json::from_str(&text).expect("json frame");
            match message["type"].as_str() {
                Some("next") if !message["payload"]["errors"].is_null() => return message["payload"]["errors"].clone(),
                Some("error") => return message["payload"].clone(),
                Some("next") => panic!("expected a refusal, got {message:#}"),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn the_example_messages_land_in_their_genre_buckets_as_their_exact_json_with_notices() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let mut subscriber = Subscriber::from_start(app.addr).await;

    // One message alone, one in an array: both shapes are accepted.
    let romance_ids = submit(&app.http, &app.url(""), EXAMPLE_ROMANCE).await;
    let scifi_ids = submit(&app.http, &app.url(""), format!("[{EXAMPLE_SCIFI}]")).await;
    assert_eq!((romance_ids.len(), scifi_ids.len()), (1, 1));

    let db = env.db().await;
    let counts = settled(&db, Duration::from_secs(30)).await;
    assert_eq!(counts.get("stored"), Some(&2), "{counts:?}");

    let objects = objects_dir(&env);
    assert_eq!(std::fs::read_to_string(objects.join("romance/LoremIpsum.json")).unwrap(), EXAMPLE_ROMANCE);
    assert_eq!(std::fs::read_to_string(objects.join("scifi/Foundation.json")).unwrap(), EXAMPLE_SCIFI);

    let data = app
        .gql_ok(
            "{ intakeMessages(status: STORED) { totalCount nodes { id messageId title genre status bucket key json reason processedAt } } }",
            json!({}),
        )
        .await;
    let list = &data["intakeMessages"];
    assert_eq!(list["totalCount"], 2);
    let first = &list["nodes"][0];
    assert_eq!(first["id"], message_id(romance_ids[0]));
    assert_eq!(first["messageId"], "12345");
    assert_eq!(first["status"], "STORED");
    assert_eq!(first["bucket"], "romance");
    assert_eq!(first["key"], "LoremIpsum.json");
    assert_eq!(first["json"], EXAMPLE_ROMANCE);
    assert!(first["reason"].is_null() && first["processedAt"].is_string());
    let second = &list["nodes"][1];
    assert_eq!((second["messageId"].as_str(), second["bucket"].as_str()), (Some("67890"), Some("scifi")));
    assert_eq!(second["key"], "Foundation.json");

    let mut notices = Vec::new();
    while notices.len() < 2 {
        notices.push(subscriber.next_notice(Duration::from_secs(10)).await.expect("a notice for each stored message"));
    }
    notices.sort_by_key(|notice| row_of(notice["intakeMessageId"].as_str().expect("intakeMessageId")));
    assert_eq!(notices[0]["intakeMessageId"], message_id(romance_ids[0]));
    assert_eq!(notices[1]["intakeMessageId"], message_id(scifi_ids[0]));
    assert_eq!(notices[0]["messageId"], "12345");
    assert_eq!((notices[0]["bucket"].as_str(), notices[0]["key"].as_str()), (Some("romance"), Some("LoremIpsum.json")));
    assert_eq!((notices[1]["bucket"].as_str(), notices[1]["key"].as_str()), (Some("scifi"), Some("Foundation.json")));
    assert!(subscriber.drain(Duration::from_millis(500)).await.is_empty(), "no further notices");
    app.stop().await;
}

#[tokio::test]
async fn invalid_submissions_are_refused_whole_and_name_the_field() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.intake.intake_max_body_bytes = 4096).await;
    let base = app.url("");

    let cases = [
        (
            format!("[{}, {{\"title\": \"\", \"genre\": \"romance\"}}]", message("ok", "romance", "1")),
            "messages[1].title",
        ),
        (r#"{"title": "x", "genre": 5}"#.to_string(), "messages[0].genre"),
        (r#"{"title": "x", "genre": "romance", "year": true}"#.to_string(), "messages[0].year"),
        (r#"{"title": "x", "genre": "romance", "id": {"nested": 1}}"#.to_string(), "messages[0].id"),
        (r#"{"genre": "romance"}"#.to_string(), "messages[0].title"),
        (r#"{"title": "nul\u0000byte", "genre": "romance"}"#.to_string(), "messages[0].title"),
        ("[]".to_string(), "no messages"),
        ("not json".to_string(), "not valid JSON"),
        ("[1, 2]".to_string(), "messages[0]: must be a JSON object"),
    ];
    for (body, named) in cases {
        let response = post_intake(&app.http, &base, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "BAD_USER_INPUT");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(named), "`{text}` should name {named}");
    }

    let too_big = format!("[{}]", vec![message("big", "romance", &"s".repeat(500)); 10].join(","));
    let response = post_intake(&app.http, &base, too_big).await;
    assert_eq!(response.status(), 413);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "BAD_USER_INPUT");

    // GraphQL applies the same rules.
    let body = app
        .gql(
            "mutation($m: [IntakeMessageInput!]!) { submitIntake(messages: $m) { id } }",
            json!({ "m": [{ "title": "fine", "genre": "romance" }, { "title": "  ", "genre": "romance" }] }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"));
    assert!(body["errors"][0]["message"].as_str().unwrap_or_default().contains("messages[1].title"), "{body:#}");

    // Nothing of any refused request was queued.
    let db = env.db().await;
    assert!(rows(&db).await.is_empty());
    let data = app.gql_ok("{ intakeCounts { queued stored failed } jobCounts { queued } }", json!({})).await;
    assert_eq!(data["intakeCounts"], json!({ "queued": 0, "stored": 0, "failed": 0 }));
    assert_eq!(data["jobCounts"]["queued"], 0);
    app.stop().await;
}

#[tokio::test]
async fn writes_need_a_token_when_api_tokens_is_set() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.api_tokens = vec!["s3cret".into()]).await;
    let response = post_intake(&app.http, &app.url(""), EXAMPLE_ROMANCE).await;
    assert_eq!(response.status(), 401);
    let response =
        app.http.post(app.url("/v1/intake")).bearer_auth("s3cret").body(EXAMPLE_ROMANCE).send().await.unwrap();
    assert_eq!(response.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn graphql_submissions_are_written_as_compact_standard_json() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let data = app
        .gql_ok(
            "mutation($m: [IntakeMessageInput!]!) { submitIntake(messages: $m) { id messageId status key } }",
            json!({ "m": [
                { "id": "g-1", "title": "Dune", "author": "Frank Herbert", "year": "1965", "genre": "SciFi", "summary": "Spice." },
                { "title": "Emma", "genre": "romance" }
            ] }),
        )
        .await;
    let submitted = data["submitIntake"].as_array().unwrap();
    assert_eq!(submitted.len(), 2);
    assert_eq!(submitted[0]["status"], "QUEUED");
    assert_eq!(submitted[0]["messageId"], "g-1");
    assert_eq!(submitted[0]["key"], "Dune.json");

    let db = env.db().await;
    settled(&db, Duration::from_secs(30)).await;
    let objects = objects_dir(&env);
    // Genres match case-insensitively: `SciFi` goes to the scifi bucket.
    assert_eq!(
        std::fs::read_to_string(objects.join("scifi/Dune.json")).unwrap(),
        r#"{"id":"g-1","title":"Dune","author":"Frank Herbert","year":"1965","genre":"SciFi","summary":"Spice."}"#
    );
    assert_eq!(
        std::fs::read_to_string(objects.join("romance/Emma.json")).unwrap(),
        r#"{"title":"Emma","genre":"romance"}"#
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_genre_is_queued_then_dead_lettered_with_its_reason() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let ids = submit(
        &app.http,
        &app.url(""),
        format!("[{}, {}]", message("Known", "romance", "a"), message("Unknown", "Fantasy", "b")),
    )
    .await;
    let db = env.db().await;
    let counts = settled(&db, Duration::from_secs(30)).await;
    assert_eq!((counts.get("stored"), counts.get("failed")), (Some(&1), Some(&1)), "{counts:?}");

    let data = app
        .gql_ok(
            "{ intakeMessages(status: FAILED) { totalCount nodes { id title status reason bucket processedAt } } }",
            json!({}),
        )
        .await;
    let failed = &data["intakeMessages"];
    assert_eq!(failed["totalCount"], 1);
    assert_eq!(failed["nodes"][0]["id"], message_id(ids[1]));
    assert_eq!(failed["nodes"][0]["reason"], "no bucket for genre fantasy");
    assert!(failed["nodes"][0]["bucket"].is_null());
    assert!(!objects_dir(&env).join("fantasy").exists());
    let data = app.gql_ok("{ intakeCounts { queued stored failed } }", json!({})).await;
    assert_eq!(data["intakeCounts"], json!({ "queued": 0, "stored": 1, "failed": 1 }));
    app.stop().await;
}

#[tokio::test]
async fn buckets_come_from_the_configured_genre_map() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        config.intake.intake_buckets = vec![
            BucketRoute { genre: "romance".into(), bucket: "romance-books".into() },
            BucketRoute { genre: "horror".into(), bucket: "horror".into() },
        ];
    })
    .await;
    submit(
        &app.http,
        &app.url(""),
        format!("[{}, {}, {}]", message("R", "romance", "1"), message("H", "horror", "2"), message("S", "scifi", "3")),
    )
    .await;
    let db = env.db().await;
    settled(&db, Duration::from_secs(30)).await;
    let objects = objects_dir(&env);
    assert!(objects.join("romance-books/R.json").is_file());
    assert!(objects.join("horror/H.json").is_file());
    let rows = rows(&db).await;
    assert_eq!(rows[2].status, "failed", "scifi is not configured here");
    assert_eq!(rows[2].reason.as_deref(), Some("no bucket for genre scifi"));
    app.stop().await;
}

#[tokio::test]
async fn messages_of_a_genre_are_written_in_submission_order_so_the_later_title_wins() {
    let env = TestEnv::new().await;
    // This node only accepts (no workers), one message per job: many jobs wait in one FIFO group.
    let intake = TestApp::spawn_with(&env, |config| {
        config.jobs.job_workers = 0;
        config.intake.intake_batch_size = 1;
    })
    .await;
    let base = intake.url("");
    let mut expected = HashMap::new();
    for round in 0..6 {
        let batch: Vec<String> = (0..4)
            .map(|i| {
                let title = ["Same", "Other"][i % 2];
                let genre = ["romance", "scifi"][(i / 2) % 2];
                let body = message(title, genre, &format!("round {round} item {i}"));
                expected.insert(format!("{genre}/{title}.json"), body.clone());
                body
            })
            .collect();
        submit(&intake.http, &base, format!("[{}]", batch.join(","))).await;
    }
    // And a request whose own messages share a title.
    let last = message("Inner", "romance", "second");
    submit(&intake.http, &base, format!("[{}, {last}]", message("Inner", "romance", "first"))).await;
    expected.insert("romance/Inner.json".into(), last);

    // Four workers would run these jobs concurrently if the genre's order were not kept.
    let workers = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 4).await;
    let db = env.db().await;
    let counts = settled(&db, Duration::from_secs(60)).await;
    assert_eq!(counts.get("stored"), Some(&26), "{counts:?}");
    let objects = objects_dir(&env);
    for (path, body) in &expected {
        assert_eq!(&std::fs::read_to_string(objects.join(path)).unwrap(), body, "{path} holds the latest submission");
    }
    workers.stop().await;
    intake.stop().await;
}

#[tokio::test]
async fn no_title_writes_outside_its_bucket() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let long = "L".repeat(10_000);
    let mut long_variant = "L".repeat(9_999);
    long_variant.push('M');
    let titles: Vec<String> = [
        "../escape",
        "../../../../etc/passwd",
        "/absolute/path",
        "C:\\Windows\\win.ini",
        "back\\slash",
        "..",
        ".",
        "....",
        ".hidden",
        "a/b/c",
        "%2e%2e%2fencoded",
        "ctrl\u{1}\u{1f}\u{7f}chars",
        "new\nline\ttab\r",
        "bidi\u{202e}txt.exe",
        "~tilde#hash?query*star",
        " leading space",
        "Case",
        "case",
        "CASE",
        "Coração 🙂",
        long.as_str(),
        long_variant.as_str(),
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    let bodies: Vec<String> =
        titles.iter().enumerate().map(|(i, title)| message(title, "romance", &i.to_string())).collect();
    submit(&app.http, &app.url(""), format!("[{}]", bodies.join(","))).await;

    let db = env.db().await;
    let counts = settled(&db, Duration::from_secs(30)).await;
    assert_eq!(counts.get("stored"), Some(&(titles.len() as i64)), "{counts:?}");

    // Every file in the whole test folder is either the database or directly in the bucket.
    let root = env.dir.path();
    let bucket = objects_dir(&env).join("romance");
    let files = walk(root);
    let mut in_bucket = Vec::new();
    for file in &files {
        if file.parent() == Some(root.join("data").as_path()) {
            continue;
        }
        assert_eq!(file.parent(), Some(bucket.as_path()), "{} is outside the bucket folder", file.display());
        in_bucket.push(file.clone());
    }
    // One file per title: case variants and long titles stay distinct.
    assert_eq!(in_bucket.len(), titles.len(), "{in_bucket:#?}");
    for row in rows(&db).await {
        let path = bucket.join(&row.object_name);
        assert!(row.object_name.len() <= 255, "{} bytes", row.object_name.len());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), row.body, "{}", path.display());
    }
    app.stop().await;
}

#[tokio::test]
async fn storage_errors_are_retried_and_end_failed_after_the_last_attempt() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_max_attempts = 3).await;
    // A regular file where a bucket folder belongs: every write into it fails (even as root).
    let objects = objects_dir(&env);
    std::fs::write(objects.join("romance"), "in the way").unwrap();
    std::fs::write(objects.join("scifi"), "in the way").unwrap();
    let ids = submit(
        &app.http,
        &app.url(""),
        format!("[{}, {}]", message("Recovers", "romance", "r"), message("Never", "scifi", "s")),
    )
    .await;

    let job_of = |id: i64| {
        let app = &app;
        async move {
            let data = app
                .gql_ok("query($id: ID!) { intakeMessage(id: $id) { jobId } }", json!({ "id": message_id(id) }))
                .await;
            data["intakeMessage"]["jobId"].as_str().unwrap().to_string()
        }
    };
    let romance_job = job_of(ids[0]).await;
    eventually(Duration::from_secs(20), "a failed attempt on the romance job", || async {
        let data = app.gql_ok("query($id: ID!) { job(id: $id) { lastError } }", json!({ "id": romance_job })).await;
        data["job"]["lastError"].as_str().map(str::to_string)
    })
    .await;
    std::fs::remove_file(objects.join("romance")).unwrap();

    let db = env.db().await;
    settled(&db, Duration::from_secs(30)).await;
    let rows = rows(&db).await;
    assert_eq!(rows[0].status, "stored", "the romance write succeeds once storage is back");
    assert!(objects.join("romance/Recovers.json").is_file());
    assert_eq!(rows[1].status, "failed");
    let reason = rows[1].reason.clone().unwrap_or_default();
    assert!(reason.starts_with("storage error after 3 attempts"), "{reason}");
    let scifi_job = job_of(ids[1]).await;
    let data = app.gql_ok("query($id: ID!) { job(id: $id) { status attempts } }", json!({ "id": scifi_job })).await;
    assert_eq!(data["job"], json!({ "status": "FAILED", "attempts": 3 }));
    app.stop().await;
}

#[tokio::test]
async fn a_message_written_by_the_job_ahead_of_its_own_is_failed_only_by_its_own_job() {
    let env = TestEnv::new().await;
    // Queue two romance messages as two jobs of one FIFO group while no worker runs: the
    // first job then takes the second's message too (it drains the group's backlog).
    let intake = TestApp::spawn_with(&env, |config| {
        config.jobs.job_workers = 0;
        config.jobs.job_max_attempts = 2;
        config.intake.intake_batch_size = 1;
    })
    .await;
    let objects = objects_dir(&env);
    std::fs::write(objects.join("romance"), "in the way").unwrap();
    let first = message("First", "romance", "1");
    let second = message("Second", "romance", "2");
    let ids = submit(&intake.http, &intake.url(""), format!("[{first}, {second}]")).await;
    let status = |id: i64| {
        let intake = &intake;
        async move {
            let data = intake
                .gql_ok("query($id: ID!) { intakeMessage(id: $id) { status jobId } }", json!({ "id": message_id(id) }))
                .await;
            data["intakeMessage"].clone()
        }
    };
    assert_ne!(status(ids[0]).await["jobId"], status(ids[1]).await["jobId"], "one job per message");

    // Slow retries, so the second job's own attempts are still ahead when the first job gives up.
    let workers = TestApp::spawn_with(&env, |config| {
        config.jobs.job_backoff_base = Duration::from_secs(2);
        config.jobs.job_backoff_max = Duration::from_secs(2);
    })
    .await;
    eventually(Duration::from_secs(30), "the first message to fail", || async {
        (status(ids[0]).await["status"] == "FAILED").then_some(())
    })
    .await;
    assert_eq!(status(ids[1]).await["status"], "QUEUED", "the second message still has its own job's attempts");
    std::fs::remove_file(objects.join("romance")).unwrap();
    eventually(Duration::from_secs(30), "the second message to be stored by its own job", || async {
        (status(ids[1]).await["status"] == "STORED").then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(objects.join("romance/Second.json")).unwrap(), second);
    assert!(!objects.join("romance/First.json").exists(), "the failed message was never written");
    workers.stop().await;
    intake.stop().await;
}

#[tokio::test]
async fn messages_whose_job_was_lost_are_dead_lettered_by_the_sweep() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let ids = submit(&app.http, &app.url(""), message("Orphan", "romance", "o")).await;
    let db = env.db().await;
    // Its job died on the last attempt (what `fail_abandoned` records).
    db.execute_raw(stmt(
        &db,
        "UPDATE jobs SET status = 'failed', last_error = 'worker lost (lease expired) on the last attempt'",
        [],
    ))
    .await
    .unwrap();
    emporium::intake::reconcile(&app.node.intake).await.unwrap();
    let rows = rows(&db).await;
    assert_eq!(rows[0].id, ids[0]);
    assert_eq!(rows[0].status, "failed");
    assert_eq!(rows[0].reason.as_deref(), Some("processing failed: worker lost (lease expired) on the last attempt"));
    assert!(rows[0].processed_at.is_some());
    app.stop().await;
}

#[tokio::test]
async fn a_rerun_clears_the_staging_file_of_an_interrupted_write() {
    let env = TestEnv::new().await;
    let intake = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let body = message("Interrupted", "romance", "i");
    submit(&intake.http, &intake.url(""), body.clone()).await;
    // What a node killed inside a write leaves: the job's attempt spent, a staging file.
    let db = env.db().await;
    db.execute_raw(stmt(&db, "UPDATE jobs SET attempts = 1", [])).await.unwrap();
    let bucket = objects_dir(&env).join("romance");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("Interrupted.json#1"), "half a wri").unwrap();

    let worker = TestApp::spawn(&env).await;
    settled(&db, Duration::from_secs(30)).await;
    let files = walk(&bucket);
    assert_eq!(files, vec![bucket.join("Interrupted.json")]);
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), body);
    worker.stop().await;
    intake.stop().await;
}

#[tokio::test]
async fn lists_page_and_filter() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let bodies: Vec<String> = (0..5).map(|i| message(&format!("P{i}"), "romance", &i.to_string())).collect();
    let ids = submit(&app.http, &app.url(""), format!("[{}]", bodies.join(","))).await;
    let page = "query($after: String) { intakeMessages(first: 2, after: $after, status: QUEUED) {
        totalCount pageInfo { hasNextPage endCursor } nodes { id status } } }";
    let first = app.gql_ok(page, json!({})).await;
    assert_eq!(first["intakeMessages"]["totalCount"], 5);
    assert_eq!(first["intakeMessages"]["nodes"][0]["id"], message_id(ids[0]));
    assert_eq!(first["intakeMessages"]["pageInfo"]["hasNextPage"], true);
    let cursor = first["intakeMessages"]["pageInfo"]["endCursor"].clone();
    let second = app.gql_ok(page, json!({ "after": cursor })).await;
    assert_eq!(second["intakeMessages"]["nodes"][0]["id"], message_id(ids[2]));
    let by_client_id =
        app.gql_ok(r#"{ intakeMessages(messageId: "m-3") { totalCount nodes { title } } }"#, json!({})).await;
    assert_eq!(by_client_id["intakeMessages"]["nodes"][0]["title"], "P3");
    let stored = app.gql_ok("{ intakeMessages(status: STORED) { totalCount } }", json!({})).await;
    assert_eq!(stored["intakeMessages"]["totalCount"], 0);
    let bad = app.gql(r#"{ intakeMessages(after: "garbage") { totalCount } }"#, json!({})).await;
    assert_eq!(error_code(&bad).as_deref(), Some("BAD_USER_INPUT"));
    app.stop().await;
}

#[tokio::test]
async fn health_reports_the_queue_and_turns_503_when_storage_is_unreachable() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        config.jobs.job_workers = 0;
        config.intake.intake_max_wait = Duration::from_millis(1);
    })
    .await;
    let health = |app: &TestApp| {
        let request = app.http.get(app.url("/health"));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = health(&app).await;
    assert_eq!(status, 200);
    assert_eq!(body["checks"]["intake"]["status"], "up");
    assert_eq!(body["checks"]["intake"]["queue_depth"], 0);
    assert!(body["checks"]["intake"]["oldest_waiting_age_ms"].is_null());
    assert_eq!(body["checks"]["intake"]["buckets"], json!({ "romance": "romance", "scifi": "scifi" }));

    let bodies: Vec<String> = (0..3).map(|i| message(&format!("W{i}"), "scifi", &i.to_string())).collect();
    submit(&app.http, &app.url(""), format!("[{}]", bodies.join(","))).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "a backlog is not an outage");
    let intake = &body["checks"]["intake"];
    assert_eq!(intake["queue_depth"], 3);
    assert_eq!(intake["jobs_waiting"], 1);
    assert!(intake["oldest_waiting_age_ms"].as_i64().unwrap_or(-1) >= 20, "{intake:#}");
    assert_eq!(intake["status"], "degraded", "older than INTAKE_MAX_WAIT");

    // The object store's folder replaced by a regular file: nothing can be written.
    let objects = objects_dir(&env);
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::write(&objects, "not a folder").unwrap();
    let (status, body) = health(&app).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["checks"]["object_store"]["status"], "down");

    std::fs::remove_file(&objects).unwrap();
    std::fs::create_dir(&objects).unwrap();
    let (status, _) = health(&app).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submissions_are_each_stored_and_announced_once() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let mut subscriber = Subscriber::from_start(app.addr).await;
    let clients = 8;
    let requests = 10;
    let per_request = 20;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let http = app.http.clone();
        let base = app.url("");
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for request in 0..requests {
                let bodies: Vec<String> = (0..per_request)
                    .map(|i| {
                        let genre = ["romance", "scifi"][i % 2];
                        message(&format!("c{client}-r{request}-{i}"), genre, &format!("{client}/{request}/{i}"))
                    })
                    .collect();
                ids.extend(submit(&http, &base, format!("[{}]", bodies.join(","))).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    let total = clients * requests * per_request;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), total, "every message got its own id");

    let db = env.db().await;
    let counts = settled(&db, Duration::from_secs(60)).await;
    assert_eq!(counts.get("stored"), Some(&(total as i64)), "{counts:?}");
    let files = walk(&objects_dir(&env));
    assert_eq!(files.len(), total);

    let notices = subscriber.drain(Duration::from_secs(2)).await;
    let announced: HashSet<String> = notices.iter().map(|notice| notice["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(notices.len(), total, "one notice per message");
    assert_eq!(announced.len(), total, "no message announced twice");
    app.stop().await;
}

#[tokio::test]
async fn notices_reach_subscribers_on_other_nodes() {
    let env = TestEnv::new().await;
    if env.redis_url.is_none() {
        eprintln!("skipped: cross-node events need REDIS_URL (embedded mode has one node)");
        return;
    }
    // The subscriber's node runs no jobs; another node does the writing.
    let front = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let worker = TestApp::spawn(&env).await;
    let mut subscriber = Subscriber::from_start(front.addr).await;
    submit(
        &front.http,
        &front.url(""),
        format!("[{}, {}]", message("X1", "romance", "1"), message("X2", "scifi", "2")),
    )
    .await;
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let notice = subscriber.next_notice(Duration::from_secs(15)).await.expect("notices from the other node");
        keys.push(notice["key"].as_str().unwrap().to_string());
    }
    keys.sort();
    assert_eq!(keys, ["X1.json", "X2.json"]);
    worker.stop().await;
    front.stop().await;
}

/// Collects the `intakeProcessed(fromStart: true)` notices of a node process in the
/// background until its connection ends; `reached` fires once `count` have come.
fn collect_notices(addr: SocketAddr, count: usize) -> (tokio::task::JoinHandle<Vec<Value>>, oneshot::Receiver<()>) {
    let (fire, reached) = oneshot::channel();
    let collector = tokio::spawn(async move {
        let mut subscriber = Subscriber::from_start(addr).await;
        let mut notices = Vec::new();
        let mut fire = Some(fire);
        while let Some(notice) = subscriber.next_notice(Duration::from_secs(3600)).await {
            notices.push(notice);
            if notices.len() >= count {
                fire.take().map(|fire| fire.send(()));
            }
        }
        notices
    });
    (collector, reached)
}

/// Reads the whole queue over REST from `after`, following `next_after`, `limit` at a time.
async fn read_queue(http: &reqwest::Client, base: &str, mut after: i64, limit: u64) -> Vec<Value> {
    let mut notices = Vec::new();
    loop {
        let response =
            http.get(format!("{base}/v1/intake/notices?after={after}&limit={limit}")).send().await.expect("read");
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.expect("json");
        let batch = page["notices"].as_array().expect("notices").clone();
        assert!(batch.len() as u64 <= limit, "{} notices for limit {limit}", batch.len());
        let next_after = page["next_after"].as_i64().expect("next_after");
        assert_eq!(next_after, batch.last().map_or(after, |notice| notice["sequence"].as_i64().expect("sequence")));
        let has_more = page["has_more"].as_bool().expect("has_more");
        notices.extend(batch);
        after = next_after;
        if !has_more {
            return notices;
        }
    }
}

/// The database's own count: notices, messages with exactly one notice, stored messages
/// without one, and notices of messages that are not stored.
async fn notice_census(db: &DatabaseConnection) -> (i64, i64, i64, i64) {
    #[derive(FromQueryResult)]
    struct Census {
        notices: i64,
        with_one: i64,
        stored_without: i64,
        not_stored: i64,
    }
    let census = Census::find_by_statement(stmt(
        db,
        "SELECT
            (SELECT COUNT(*) FROM intake_notices) AS notices,
            (SELECT COUNT(*) FROM (SELECT intake_message_id FROM intake_notices GROUP BY intake_message_id
                HAVING COUNT(*) = 1) AS once) AS with_one,
            (SELECT COUNT(*) FROM intake_messages m WHERE m.status = 'stored'
                AND NOT EXISTS (SELECT 1 FROM intake_notices n WHERE n.intake_message_id = m.id)) AS stored_without,
            (SELECT COUNT(*) FROM intake_notices n JOIN intake_messages m ON m.id = n.intake_message_id
                WHERE m.status <> 'stored') AS not_stored",
        [],
    ))
    .one(db)
    .await
    .expect("census")
    .expect("a row");
    (census.notices, census.with_one, census.stored_without, census.not_stored)
}

/// Sequence numbers of notices, checked to grow strictly (queue order, no repeat).
fn increasing_sequences(notices: &[Value]) -> Vec<i64> {
    let sequences: Vec<i64> = notices.iter().map(|notice| notice["sequence"].as_i64().expect("sequence")).collect();
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]), "not in strictly increasing order: {sequences:?}");
    sequences
}

#[tokio::test]
async fn a_node_killed_while_processing_10000_messages_leaves_each_stored_exactly_once() {
    const TOTAL: usize = 10_000;
    let env = TestEnv::new().await;
    // Node A writes slowly enough to be caught in the middle.
    let node_a = NodeProcess::spawn(&env, &[("INTAKE_WRITE_CONCURRENCY", "2"), ("INTAKE_BATCH_SIZE", "50")]).await;
    let (notices_a, _) = collect_notices(node_a.addr, usize::MAX);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let http = reqwest::Client::new();
    let base = node_a.url("");
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut ids = Vec::new();
    for chunk in 0..10 {
        let bodies: Vec<String> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                let genre = ["romance", "scifi"][i % 2];
                let body = message(&format!("kill-{i:05}"), genre, &format!("body {i}"));
                expected.insert(format!("{genre}/kill-{i:05}.json"), body.clone());
                body
            })
            .collect();
        ids.extend(submit(&http, &base, format!("[{}]", bodies.join(","))).await);
    }
    assert_eq!(ids.len(), TOTAL);

    let db = env.db().await;
    let stored_before_kill = eventually(Duration::from_secs(120), "node A to store some messages", || async {
        let stored = count_by_status(&db).await.get("stored").copied().unwrap_or(0);
        (stored >= 1000).then_some(stored)
    })
    .await;
    node_a.kill().await;
    let at_kill = count_by_status(&db).await.get("stored").copied().unwrap_or(0);
    assert!(
        at_kill < TOTAL as i64,
        "node A finished before it was killed ({stored_before_kill} stored); nothing was tested"
    );
    eprintln!("node A killed with {at_kill} of {TOTAL} messages stored");

    let node_b = NodeProcess::spawn(&env, &[]).await;
    let (notices_b, all_seen_by_b) = collect_notices(node_b.addr, TOTAL);
    let counts = settled(&db, Duration::from_secs(240)).await;
    assert_eq!(counts.get("stored"), Some(&(TOTAL as i64)), "{counts:?}");

    // Each file present once, with its message's exact JSON, and nothing else in the store.
    let objects = objects_dir(&env);
    let files = walk(&objects);
    assert_eq!(
        files.len(),
        TOTAL,
        "stray files: {:?}",
        files.iter().filter(|f| !f.to_string_lossy().ends_with(".json")).take(5).collect::<Vec<_>>()
    );
    for file in &files {
        let relative = file.strip_prefix(&objects).unwrap().to_string_lossy().to_string();
        let body = expected.get(&relative).unwrap_or_else(|| panic!("unexpected file {relative}"));
        assert_eq!(&std::fs::read_to_string(file).unwrap(), body, "{relative}");
    }

    // Exactly one notice per stored message, in the database.
    assert_eq!(notice_census(&db).await, (TOTAL as i64, TOTAL as i64, 0, 0), "notices, once, missing, stray");

    // A consumer that reads the queue from cursor 0 after the crash, over REST, following
    // `next_after`: every message's notice, none twice, in queue order.
    let consumed = read_queue(&http, &node_b.url(""), 0, 1000).await;
    assert_eq!(consumed.len(), TOTAL);
    increasing_sequences(&consumed);
    let notice_ids: HashSet<&str> = consumed.iter().map(|notice| notice["node_id"].as_str().unwrap()).collect();
    assert_eq!(notice_ids.len(), TOTAL, "distinct notices");
    let announced: HashSet<i64> = consumed.iter().map(|notice| notice["intake_message_id"].as_i64().unwrap()).collect();
    assert_eq!(announced, ids.iter().copied().collect::<HashSet<i64>>(), "one notice per message");

    // Subscribers: node B's, started after the crash, replayed the queue from its start:
    // every notice once, in order; node A's, live until A died, saw none twice.
    tokio::time::timeout(Duration::from_secs(120), all_seen_by_b)
        .await
        .expect("node B's subscriber to receive every notice")
        .expect("its collector");
    node_b.terminate().await;
    let seen_b = notices_b.await.unwrap();
    assert_eq!(seen_b.len(), TOTAL, "no notice delivered twice");
    assert_eq!(increasing_sequences(&seen_b), increasing_sequences(&consumed));
    let seen_a = notices_a.await.unwrap();
    assert!(!seen_a.is_empty(), "node A's subscriber saw the processing");
    increasing_sequences(&seen_a);
    let rows = rows(&db).await;
    assert!(rows.iter().all(|row| row.status == "stored" && row.bucket.is_some() && row.processed_at.is_some()));
}

/// Submits `count` messages (titles `prefix-i`, genres alternating) and waits until they
/// are all processed; returns their ids.
async fn submit_and_settle(app: &TestApp, db: &DatabaseConnection, prefix: &str, count: usize) -> Vec<i64> {
    let bodies: Vec<String> = (0..count)
        .map(|i| message(&format!("{prefix}-{i:03}"), ["romance", "scifi"][i % 2], &format!("{prefix} {i}")))
        .collect();
    let ids = submit(&app.http, &app.url(""), format!("[{}]", bodies.join(","))).await;
    settled(db, Duration::from_secs(60)).await;
    ids
}

#[tokio::test]
async fn the_output_queue_has_one_notice_per_stored_message_over_rest_graphql_and_node() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let db = env.db().await;
    let mut ids = submit_and_settle(&app, &db, "queue", 23).await;
    // An unknown genre fails: no notice for it.
    let failed = submit(&app.http, &app.url(""), message("Nowhere", "fantasy", "f")).await;
    settled(&db, Duration::from_secs(30)).await;
    ids.extend(submit_and_settle(&app, &db, "more", 7).await);
    assert_eq!(notice_census(&db).await, (30, 30, 0, 0), "notices, once, missing, stray");

    // REST, 7 at a time from cursor 0: every stored message once, in queue order.
    let consumed = read_queue(&app.http, &app.url(""), 0, 7).await;
    assert_eq!(consumed.len(), 30);
    let sequences = increasing_sequences(&consumed);
    let mut announced: Vec<i64> = consumed.iter().map(|notice| notice["intake_message_id"].as_i64().unwrap()).collect();
    announced.sort_unstable();
    assert_eq!(announced, ids, "one notice per stored message");
    assert!(!announced.contains(&failed[0]));
    // (Genres are written by jobs of their own, so the queue's order is per commit, not by id.)
    let first =
        consumed.iter().find(|notice| notice["intake_message_id"] == ids[0]).expect("the first message's notice");
    assert_eq!(first["intake_message_node_id"], message_id(ids[0]));
    assert_eq!((first["title"].as_str(), first["genre"].as_str()), (Some("queue-000"), Some("romance")));
    assert_eq!((first["bucket"].as_str(), first["key"].as_str()), (Some("romance"), Some("queue-000.json")));
    assert_eq!(first["message_id"], "m-queue 0");
    assert!(first["stored_at"].is_string());
    // Reading on from the middle gives the rest; from the end, nothing, and the same cursor.
    let rest = read_queue(&app.http, &app.url(""), sequences[9], 100).await;
    assert_eq!(rest, consumed[10..]);
    let end: Value = app
        .http
        .get(app.url(&format!("/v1/intake/notices?after={}", sequences[29])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(end, json!({ "notices": [], "next_after": sequences[29], "has_more": false }));

    // GraphQL pages through the same queue, 8 at a time.
    let page = "query($after: String) { intakeNotices(first: 8, after: $after) {
        totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id sequence cursor intakeMessageId } } } }";
    let mut after = Value::Null;
    let mut paged = Vec::new();
    loop {
        let data = app.gql_ok(page, json!({ "after": after })).await;
        let connection = &data["intakeNotices"];
        assert_eq!(connection["totalCount"], 30);
        for edge in connection["edges"].as_array().unwrap() {
            assert_eq!(edge["cursor"], edge["node"]["cursor"], "a notice's cursor is its edge's");
            paged.push(edge["node"].clone());
        }
        if connection["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = connection["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(paged.len(), 30);
    for (node, notice) in paged.iter().zip(&consumed) {
        assert_eq!(node["id"], notice["node_id"]);
        assert_eq!(node["sequence"], notice["sequence"]);
        assert_eq!(node["intakeMessageId"], notice["intake_message_node_id"]);
    }
    // Newest first, and backward paging, as every connection.
    let newest = app
        .gql_ok(
            "{ intakeNotices(first: 2, orderBy: {field: SEQUENCE, direction: DESC}) { nodes { sequence } } }",
            json!({}),
        )
        .await;
    assert_eq!(newest["intakeNotices"]["nodes"], json!([{ "sequence": sequences[29] }, { "sequence": sequences[28] }]));
    let last = app.gql_ok("{ intakeNotices(last: 1) { nodes { sequence } } }", json!({})).await;
    assert_eq!(last["intakeNotices"]["nodes"], json!([{ "sequence": sequences[29] }]));

    // node(id:) refetches a notice.
    let id = paged[4]["id"].as_str().unwrap();
    assert!(id.parse::<i64>().is_err(), "opaque: {id}");
    let data = app
        .gql_ok(
            "query($id: ID!) { node(id: $id) { __typename id ... on IntakeNotice { sequence title key intakeMessageId } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data["node"]["__typename"], "IntakeNotice");
    assert_eq!(data["node"]["id"], id);
    assert_eq!(data["node"]["sequence"], consumed[4]["sequence"]);
    assert_eq!(data["node"]["title"], consumed[4]["title"]);
    assert_eq!(data["node"]["key"], consumed[4]["key"]);
    assert_eq!(data["node"]["intakeMessageId"], consumed[4]["intake_message_node_id"]);
    let bad = app.gql(r#"{ intakeNotices(after: "garbage") { totalCount } }"#, json!({})).await;
    assert_eq!(error_code(&bad).as_deref(), Some("BAD_USER_INPUT"));
    app.stop().await;
}

#[tokio::test]
async fn notice_reads_over_rest_refuse_bad_parameters_and_cap_the_limit() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let db = env.db().await;
    submit_and_settle(&app, &db, "bounds", 3).await;
    let read = |query: &str| {
        let request = app.http.get(app.url(&format!("/v1/intake/notices{query}")));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response.headers()["content-type"].to_str().unwrap_or_default().to_string();
            assert!(content_type.starts_with("application/json"), "{content_type}");
            (status, response.json::<Value>().await.unwrap())
        }
    };
    for (query, named) in [
        ("?after=-1", "`after`"),
        ("?after=abc", "`after`"),
        ("?after=", "`after`"),
        ("?after=1.5", "`after`"),
        ("?after=99999999999999999999", "`after`"),
        ("?limit=0", "`limit`"),
        ("?limit=1001", "`limit`"),
        ("?limit=-1", "`limit`"),
        ("?limit=ten", "`limit`"),
        ("?after=1&after=2", "`after`"),
        ("?afer=1", "`afer`"),
        ("?after=%00", "`after`"),
    ] {
        let (status, body) = read(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "BAD_USER_INPUT", "{query}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{query}: `{message}` should name {named}");
    }
    // The bounds themselves are accepted; no parameter means from the start, 100 at most.
    for query in ["?limit=1", "?limit=1000", "?after=0", "?after=9223372036854775807", ""] {
        let (status, body) = read(query).await;
        assert_eq!(status, 200, "{query}: {body}");
    }
    let (_, one) = read("?limit=1").await;
    assert_eq!(one["notices"].as_array().unwrap().len(), 1);
    assert_eq!(one["has_more"], true);
    let (_, all) = read("").await;
    assert_eq!(all["notices"].as_array().unwrap().len(), 3);
    assert_eq!(all["has_more"], false);
    let (_, beyond) = read("?after=9223372036854775807").await;
    assert_eq!(beyond, json!({ "notices": [], "next_after": i64::MAX, "has_more": false }));
    app.stop().await;
}

#[tokio::test]
async fn a_subscription_with_a_cursor_replays_the_queue_then_goes_live_without_a_repeat() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let db = env.db().await;
    submit_and_settle(&app, &db, "before", 10).await;
    let earlier = read_queue(&app.http, &app.url(""), 0, 100).await;
    assert_eq!(earlier.len(), 10);
    let data = app.gql_ok("{ intakeNotices(first: 4) { pageInfo { endCursor } } }", json!({})).await;
    let cursor = data["intakeNotices"]["pageInfo"]["endCursor"].as_str().expect("a cursor").to_string();

    let after = |cursor: &str| format!("subscription {{ intakeProcessed(after: \"{cursor}\") {{ {NOTICE_FIELDS} }} }}");
    let mut subscriber = Subscriber::start(app.addr, &after(&cursor)).await;
    // The replay: the six notices after the cursor, in queue order.
    let mut received = Vec::new();
    while received.len() < 6 {
        received.push(subscriber.next_notice(Duration::from_secs(20)).await.expect("the replayed notices"));
    }
    let replayed: Vec<&Value> = received.iter().map(|notice| &notice["id"]).collect();
    assert_eq!(replayed, earlier[4..].iter().map(|notice| &notice["node_id"]).collect::<Vec<_>>());

    // Live: messages stored after the replay come next, each once.
    let later = submit_and_settle(&app, &db, "after", 5).await;
    while received.len() < 11 {
        received.push(subscriber.next_notice(Duration::from_secs(20)).await.expect("the live notices"));
    }
    let live: HashSet<String> =
        received[6..].iter().map(|notice| notice["intakeMessageId"].as_str().unwrap().into()).collect();
    assert_eq!(live, later.iter().map(|id| message_id(*id)).collect::<HashSet<_>>());
    let sequences = increasing_sequences(&received);
    // Nothing more: a repeat of any of them would show here (and break the order above).
    let extra = subscriber.drain(Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "notices delivered twice: {extra:#?}");

    // The queue agrees: the notices after the cursor are exactly those delivered.
    let queue = read_queue(&app.http, &app.url(""), 0, 100).await;
    assert_eq!(increasing_sequences(&queue)[4..], sequences[..]);

    // A reconnecting consumer gives the cursor of the last notice it handled: the rest only.
    let resume = received[7]["cursor"].as_str().unwrap();
    let mut again = Subscriber::start(app.addr, &after(resume)).await;
    let mut rest = Vec::new();
    while rest.len() < 3 {
        rest.push(again.next_notice(Duration::from_secs(20)).await.expect("the notices after the cursor"));
    }
    assert_eq!(rest, received[8..]);

    // `genre` narrows the replay too; bad arguments are refused.
    let scifi =
        format!("subscription {{ intakeProcessed(fromStart: true, genre: \" SciFi \") {{ {NOTICE_FIELDS} }} }}");
    let mut scifi = Subscriber::start(app.addr, &scifi).await;
    let mut genres = Vec::new();
    while genres.len() < 7 {
        let notice = scifi.next_notice(Duration::from_secs(20)).await.expect("the scifi notices");
        genres.push(notice["genre"].as_str().unwrap().to_string());
    }
    assert!(genres.iter().all(|genre| genre == "scifi"), "{genres:?}");
    for (arguments, named) in [
        (format!("after: \"{cursor}\", fromStart: true"), "not both"),
        ("after: \"garbage\"".to_string(), "not a valid cursor"),
        ("genre: \" \"".to_string(), "`genre`"),
    ] {
        let query = format!("subscription {{ intakeProcessed({arguments}) {{ id }} }}");
        let errors = Subscriber::start(app.addr, &query).await.refusal().await;
        assert_eq!(errors[0]["extensions"]["code"], "BAD_USER_INPUT", "{arguments}: {errors}");
        assert!(errors[0]["message"].as_str().unwrap_or_default().contains(named), "{arguments}: {errors}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_subscription_without_a_cursor_starts_after_the_latest_notice() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let db = env.db().await;
    submit_and_settle(&app, &db, "old", 4).await;
    let latest =
        read_queue(&app.http, &app.url(""), 0, 100).await.last().expect("notices")["sequence"].as_i64().unwrap();

    let query = format!("subscription {{ intakeProcessed {{ {NOTICE_FIELDS} }} }}");
    let mut subscriber = Subscriber::start(app.addr, &query).await;
    // The subscription's start is not announced: store new messages until one comes through.
    let mut first = None;
    for attempt in 0..20 {
        submit(&app.http, &app.url(""), message(&format!("new-{attempt}"), "romance", "n")).await;
        if let Some(notice) = subscriber.next_notice(Duration::from_secs(3)).await {
            first = Some(notice);
            break;
        }
    }
    let first = first.expect("a live notice");
    assert!(first["sequence"].as_i64().unwrap() > latest, "an old notice was replayed: {first:#}");
    assert!(first["title"].as_str().unwrap().starts_with("new-"), "{first:#}");
    app.stop().await;
}

#[tokio::test]
async fn nul_in_any_intake_string_is_refused_at_the_edge_naming_the_field() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    for (field, body) in [
        ("title", r#"{"title": "a\u0000b", "genre": "romance"}"#),
        ("genre", r#"{"title": "t", "genre": "rom\u0000ance"}"#),
        ("id", r#"{"id": "\u0000", "title": "t", "genre": "romance"}"#),
        ("author", r#"{"title": "t", "genre": "romance", "author": "x\u0000"}"#),
        ("year", r#"{"title": "t", "genre": "romance", "year": "19\u000060"}"#),
        ("summary", r#"{"title": "t", "genre": "romance", "summary": "\u0000"}"#),
    ] {
        let response = post_intake(&app.http, &app.url(""), body).await;
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "BAD_USER_INPUT");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(&format!("messages[0].{field}: must not contain NUL")), "{text}");
    }
    // A raw NUL byte is not JSON at all.
    let response = post_intake(&app.http, &app.url(""), "{\"title\": \"a\0b\", \"genre\": \"romance\"}").await;
    assert_eq!(response.status(), 400);

    let submit = "mutation($m: [IntakeMessageInput!]!) { submitIntake(messages: $m) { id } }";
    for (field, input) in [
        ("title", json!({ "title": "a\u{0}b", "genre": "romance" })),
        ("summary", json!({ "title": "t", "genre": "romance", "summary": "s\u{0}" })),
    ] {
        let body = app.gql(submit, json!({ "m": [input] })).await;
        assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"), "{body:#}");
        let text = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(text.contains(&format!("messages[0].{field}: must not contain NUL")), "{text}");
    }
    // A filter that would reach the database.
    let body = app
        .gql("query($id: String) { intakeMessages(messageId: $id) { totalCount } }", json!({ "id": "m\u{0}" }))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"), "{body:#}");
    assert!(body["errors"][0]["message"].as_str().unwrap_or_default().contains("`messageId`"), "{body:#}");

    let db = env.db().await;
    assert!(rows(&db).await.is_empty(), "nothing was queued");
    app.stop().await;
}

#[tokio::test]
async fn on_postgres_notices_wait_for_the_notice_lock_so_they_commit_in_sequence_order() {
    let env = TestEnv::new().await;
    if !env.is_postgres() {
        eprintln!("skipped: SQLite has one writer at a time, which orders commits already");
        return;
    }
    let app = TestApp::spawn(&env).await;
    let db = env.db().await;
    // What a writer that took a lower sequence and has not committed yet holds.
    let holder = db.begin().await.unwrap();
    holder
        .execute_raw(stmt(
            &holder,
            "SELECT pg_advisory_xact_lock($1)",
            [emporium::intake::NOTICE_ORDER_LOCK_KEY.into()],
        ))
        .await
        .unwrap();
    let ids = submit(&app.http, &app.url(""), message("Ordered", "romance", "o")).await;

    // The store job writes its object, then waits for the lock before its notices.
    eventually(Duration::from_secs(30), "the store job to wait for the notice lock", || async {
        let waiting = db
            .query_one_raw(stmt(
                &db,
                "SELECT COUNT(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = $1",
                [(emporium::intake::NOTICE_ORDER_LOCK_KEY & 0xffff_ffff).into()],
            ))
            .await
            .unwrap()
            .and_then(|row| row.try_get::<i64>("", "n").ok())
            .unwrap_or(0);
        (waiting == 1).then_some(())
    })
    .await;
    assert!(objects_dir(&env).join("romance/Ordered.json").is_file(), "written before the lock");
    let queue = read_queue(&app.http, &app.url(""), 0, 100).await;
    assert!(queue.is_empty(), "no notice before the earlier writer commits: {queue:#?}");
    assert_eq!(rows(&db).await[0].status, "queued", "the stored state waits with its notice");

    holder.commit().await.unwrap();
    settled(&db, Duration::from_secs(30)).await;
    let queue = read_queue(&app.http, &app.url(""), 0, 100).await;
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0]["intake_message_id"], ids[0]);
    app.stop().await;
}

#[tokio::test]
async fn a_notice_whose_wake_up_event_was_lost_still_reaches_subscribers() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let ids = submit(
        &app.http,
        &app.url(""),
        format!("[{}, {}]", message("S1", "romance", "1"), message("S2", "romance", "2")),
    )
    .await;
    let db = env.db().await;
    // A store that committed on a node that died before publishing: the row and its
    // notice, and no event on the bus.
    let store_silently = |id: i64| {
        let db = &db;
        async move {
            db.execute_raw(stmt(
                db,
                "UPDATE intake_messages SET status = 'stored', bucket = 'romance', processed_at = 1 WHERE id = $1",
                [id.into()],
            ))
            .await
            .unwrap();
            db.execute_raw(stmt(
                db,
                "INSERT INTO intake_notices (intake_message_id, title, genre, bucket, object_name, stored_at)
                 VALUES ($1, 'S', 'romance', 'romance', 'S.json', 1)",
                [id.into()],
            ))
            .await
            .unwrap();
        }
    };
    store_silently(ids[0]).await;
    let query = format!("subscription {{ intakeProcessed(fromStart: true) {{ {NOTICE_FIELDS} }} }}");
    let mut subscriber = Subscriber::start(app.addr, &query).await;
    let first = subscriber.next_notice(Duration::from_secs(30)).await.expect("the replay");
    assert_eq!(first["intakeMessageId"], message_id(ids[0]));
    // The subscriber is live now; only its periodic re-read can find this one.
    store_silently(ids[1]).await;
    let second = subscriber.next_notice(Duration::from_secs(30)).await.expect("the periodic re-read finds it");
    assert_eq!(second["intakeMessageId"], message_id(ids[1]));
    app.stop().await;
}

#[tokio::test]
async fn messages_stored_before_the_notices_migration_get_their_notices_from_it() {
    use migration::MigratorTrait as _;
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let db = env.db().await;
    let ids = submit_and_settle(&app, &db, "earlier", 6).await;
    app.stop().await;
    // Back to the schema before the notices, with the messages stored (the notices
    // migration and every later one undone).
    let migrations = migration::Migrator::migrations();
    let notices = migrations
        .iter()
        .position(|migration| migration.name() == "m20261205_000010_intake_notices")
        .expect("the notices migration");
    let undo = u32::try_from(migrations.len() - notices).expect("few migrations");
    migration::Migrator::down(&db, Some(undo)).await.expect("migration down");
    let gone = db.query_one_raw(stmt(&db, "SELECT COUNT(*) AS n FROM intake_notices", [])).await;
    assert!(gone.is_err(), "the notices migration is undone, and its table is gone");

    migration::Migrator::up(&db, None).await.expect("migration up");
    assert_eq!(notice_census(&db).await, (6, 6, 0, 0), "notices, once, missing, stray");
    let app = TestApp::spawn(&env).await;
    let queue = read_queue(&app.http, &app.url(""), 0, 100).await;
    let mut announced: Vec<i64> = queue.iter().map(|notice| notice["intake_message_id"].as_i64().unwrap()).collect();
    announced.sort_unstable();
    assert_eq!(announced, ids);
    app.stop().await;
}
