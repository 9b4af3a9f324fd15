//! Per-item outcomes of uploads: an item the database would refuse (a NUL, a number
//! beyond f64, a name over its limit…) costs only itself under the default policy, the
//! whole body under `REJECT_EVERYTHING` (400 at the edge, nothing stored), and only its
//! invalid optional fields under `IGNORE_FAILED`; item errors are reported over REST,
//! GraphQL and the progress subscription. And GraphQL refuses NUL in string inputs with
//! `BAD_USER_INPUT` naming the field.

use std::{io::Write as _, time::Duration};

use futures::StreamExt as _;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::{
    support::{TestApp, TestEnv, error_code, eventually},
    uploads::subscribe,
};

/// What the client saw.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

/// POSTs a body, with `?<query>` and the `Emporium-Error-Policy` header when given.
async fn post(app: &TestApp, query: &str, header: Option<&str>, body: Vec<u8>) -> Answer {
    let mut request =
        app.http.post(app.url(&format!("/v1/products{query}"))).header(CONTENT_TYPE, "application/json").body(body);
    if let Some(policy) = header {
        request = request.header("Emporium-Error-Policy", policy);
    }
    let response = request.send().await.expect("POST /v1/products");
    let status = response.status().as_u16();
    Answer { status, body: response.json().await.unwrap_or(Value::Null) }
}

/// `count` valid items `<prefix>-<i>`, and `extra` (raw JSON items) after item `at`.
fn body_with(prefix: &str, count: usize, at: usize, extra: &[&str]) -> Vec<u8> {
    let mut items: Vec<String> =
        (0..count).map(|i| format!(r#"{{"id":"{prefix}-{i}","name":"product {i}","price":{i}}}"#)).collect();
    for (offset, item) in extra.iter().enumerate() {
        items.insert(at + offset, (*item).to_string());
    }
    let mut body = Vec::new();
    write!(body, "[{}]", items.join(",")).expect("write");
    body
}

async fn upload_state(app: &TestApp, id: &str) -> Value {
    app.http.get(app.url(&format!("/v1/uploads/{id}"))).send().await.expect("GET").json().await.expect("json")
}

async fn finished(app: &TestApp, id: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("upload {id} to finish"), || async {
        let upload = upload_state(app, id).await;
        matches!(upload["status"].as_str(), Some("succeeded" | "failed")).then_some(upload)
    })
    .await
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    let db = env.db().await;
    let row = db.query_one_raw(emporium::db::stmt(&db, sql, [])).await.expect("query").expect("row");
    row.try_get_by_index::<i64>(0).expect("integer")
}

async fn products_like(env: &TestEnv, prefix: &str) -> i64 {
    count(env, &format!("SELECT COUNT(*) FROM products WHERE sku LIKE '{prefix}%'")).await
}

use sea_orm::ConnectionTrait as _;

/// The issue's body: 1,000 valid items and, at index 1000, a name with a JSON-escaped NUL.
fn nul_body(prefix: &str) -> Vec<u8> {
    let bad = format!(r#"{{"id":"{prefix}-bad","name":"a\u0000b"}}"#);
    body_with(prefix, 1000, 1000, &[&bad])
}

#[tokio::test]
async fn a_nul_in_one_name_costs_only_that_item() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let answer = post(&app, "", None, nul_body("nul")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    // The answer already says what the scan found.
    assert_eq!(answer.body["error_policy"], "REJECT_FAILED_ROWS");
    assert_eq!(answer.body["items_failed"], 1, "{:#}", answer.body);
    assert_eq!(answer.body["item_errors"][0]["field"], "name");

    let id = answer.body["upload_id"].as_str().expect("id").to_string();
    let upload = finished(&app, &id).await;
    assert_eq!(upload["status"], "succeeded", "{upload:#}");
    assert_eq!(upload["items_done"], 1001);
    assert_eq!(upload["items_failed"], 1);
    assert_eq!(upload["products_created"], 1000);
    let errors = upload["item_errors"].as_array().expect("item_errors");
    assert_eq!(errors.len(), 1, "{upload:#}");
    assert_eq!(errors[0]["index"], 1000);
    assert_eq!(errors[0]["sku"], "nul-bad");
    assert_eq!(errors[0]["field"], "name");
    assert_eq!(errors[0]["kept"], false);
    let reason = errors[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("NUL") && reason.contains("database"), "{reason}");
    assert_eq!(products_like(&env, "nul-").await, 1000);
    assert_eq!(count(&env, "SELECT COUNT(*) FROM products WHERE sku = 'nul-bad'").await, 0);

    // GraphQL shows the same.
    let node_id = answer.body["node_id"].as_str().expect("node_id");
    let data = app
        .gql_ok(
            "query($id: ID!) { upload(id: $id) { status errorPolicy itemsFailed itemsRejected
                 itemErrors { index sku field reason kept } } }",
            json!({ "id": node_id }),
        )
        .await;
    let upload = &data["upload"];
    assert_eq!(upload["errorPolicy"], "REJECT_FAILED_ROWS");
    assert_eq!((upload["itemsFailed"].as_i64(), upload["itemsRejected"].as_i64()), (Some(1), Some(1)));
    assert_eq!(upload["itemErrors"][0]["index"], 1000);
    assert_eq!(upload["itemErrors"][0]["sku"], "nul-bad");
    assert_eq!(upload["itemErrors"][0]["field"], "name");

    // Item errors never excuse broken JSON: under any policy the body is refused whole.
    for policy in ["REJECT_FAILED_ROWS", "IGNORE_FAILED", "REJECT_EVERYTHING"] {
        let truncated = br#"[{"id":"cut-1","name":"fine"},{"id":"cut-2","name":"a\u0000"#.to_vec();
        let answer = post(&app, "", Some(policy), truncated).await;
        assert_eq!(answer.status, 400, "{policy}: {:?}", answer.body);
        let reason = answer.body["error"]["reason"].as_str().unwrap_or("");
        assert!(reason.contains("unexpected end"), "{policy}: {:?}", answer.body);
    }
    assert_eq!(count(&env, "SELECT COUNT(*) FROM uploads").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn reject_everything_refuses_the_body_at_the_edge_and_stores_nothing() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let body = nul_body("all");
    for (query, header) in [("?errorPolicy=REJECT_EVERYTHING", None), ("", Some("reject_everything"))] {
        let answer = post(&app, query, header, body.clone()).await;
        assert_eq!(answer.status, 400, "{:?}", answer.body);
        let error = &answer.body["error"];
        assert_eq!(error["code"], "BAD_USER_INPUT");
        let message = error["message"].as_str().expect("message");
        for part in ["item 1000", "all-bad", "`name`", "NUL", "REJECT_EVERYTHING"] {
            assert!(message.contains(part), "{part:?} not in {message:?}");
        }
        assert_eq!(error["item_errors"][0]["index"], 1000);
        assert_eq!(error["item_errors"][0]["sku"], "all-bad");
        assert_eq!(error["item_errors"][0]["field"], "name");
    }
    assert_eq!(count(&env, "SELECT COUNT(*) FROM uploads").await, 0);
    assert_eq!(products_like(&env, "all-").await, 0);
    // No dedup window was opened: the same bytes are taken under another policy.
    let answer = post(&app, "?errorPolicy=REJECT_FAILED_ROWS", None, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let upload = finished(&app, answer.body["upload_id"].as_str().expect("id")).await;
    assert_eq!((upload["products_created"].as_i64(), upload["items_failed"].as_i64()), (Some(1000), Some(1)));

    // What only the catalog sees (a name blank beyond ASCII spaces) passes the edge, and
    // the check before ingestion refuses the whole upload: nothing is written.
    let blank = body_with("late", 10, 5, &["{\"id\":\"late-blank\",\"name\":\"\u{2003}\"}"]);
    let answer = post(&app, "?errorPolicy=REJECT_EVERYTHING", None, blank).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let upload = finished(&app, answer.body["upload_id"].as_str().expect("id")).await;
    assert_eq!(upload["status"], "failed", "{upload:#}");
    assert_eq!(upload["error_policy"], "REJECT_EVERYTHING");
    assert_eq!(upload["items_failed"], 1);
    assert_eq!(upload["item_errors"][0]["sku"], "late-blank");
    assert!(upload["error"].as_str().is_some_and(|error| error.contains("REJECT_EVERYTHING")), "{upload:#}");
    assert_eq!(products_like(&env, "late-").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn ignore_failed_keeps_an_item_without_its_invalid_optional_fields() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let body = body_with(
        "ign",
        4,
        2,
        &[
            r#"{"id":"ign-desc","name":"kept","description":"x\u0000y","weight":1e400,"color":"red"}"#,
            r#"{"id":"ign-name","name":"a\u0000b","description":"fine"}"#,
        ],
    );
    let answer = post(&app, "", Some("IGNORE_FAILED"), body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["error_policy"], "IGNORE_FAILED");
    let upload = finished(&app, answer.body["upload_id"].as_str().expect("id")).await;
    assert_eq!(upload["status"], "succeeded", "{upload:#}");
    assert_eq!(upload["items_failed"], 2);
    assert_eq!(upload["products_created"], 5, "{upload:#}");
    let errors: Vec<(i64, &str, &str, bool)> = upload["item_errors"]
        .as_array()
        .expect("item_errors")
        .iter()
        .map(|error| {
            (
                error["index"].as_i64().unwrap_or(-1),
                error["sku"].as_str().unwrap_or(""),
                error["field"].as_str().unwrap_or(""),
                error["kept"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![(2, "ign-desc", "description", true), (2, "ign-desc", "weight", true), (3, "ign-name", "name", false)]
    );
    let db = env.db().await;
    let row = db
        .query_one_raw(emporium::db::stmt(
            &db,
            "SELECT name, description, attributes FROM products WHERE sku = 'ign-desc'",
            [],
        ))
        .await
        .expect("query")
        .expect("the item was kept");
    assert_eq!(row.try_get_by_index::<String>(0).expect("name"), "kept");
    assert_eq!(row.try_get_by_index::<String>(1).expect("description"), "");
    let attributes: Value =
        serde_json::from_str(&row.try_get_by_index::<String>(2).expect("attributes")).expect("attributes JSON");
    assert_eq!(attributes, json!({"color": "red"}));
    assert_eq!(count(&env, "SELECT COUNT(*) FROM products WHERE sku = 'ign-name'").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn out_of_range_numbers_and_long_names_are_reported_per_item() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let long_name = format!(r#"{{"id":"rng-long","name":"{}"}}"#, "n".repeat(201));
    let body = body_with(
        "rng",
        6,
        3,
        &[r#"{"id":"rng-big","name":"big","attrs":{"weight":1e400}}"#, &long_name, r#"{"id":"rng-noname"}"#],
    );
    let answer = post(&app, "", None, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let upload = finished(&app, answer.body["upload_id"].as_str().expect("id")).await;
    assert_eq!(upload["status"], "succeeded", "{upload:#}");
    assert_eq!(upload["items_failed"], 3);
    let errors = upload["item_errors"].as_array().expect("item_errors");
    let fields: Vec<(&str, &str)> = errors
        .iter()
        .map(|error| (error["sku"].as_str().unwrap_or(""), error["field"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(fields, vec![("rng-big", "attrs"), ("rng-long", "name"), ("rng-noname", "name")]);
    assert!(errors[0]["reason"].as_str().is_some_and(|reason| reason.contains("range")), "{errors:?}");
    assert!(errors[1]["reason"].as_str().is_some_and(|reason| reason.contains("200 characters")), "{errors:?}");
    assert!(errors[2]["reason"].as_str().is_some_and(|reason| reason.contains("missing")), "{errors:?}");
    assert_eq!(products_like(&env, "rng-").await, 6);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_error_policy_is_a_clear_400() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let body = body_with("pol", 1, 0, &[]);
    let unknown = post(&app, "?errorPolicy=SKIP_SOME", None, body.clone()).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["error"]["code"], "BAD_USER_INPUT");
    let message = unknown.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("SKIP_SOME") && message.contains("IGNORE_FAILED"), "{message}");
    let header = post(&app, "", Some("nope"), body.clone()).await;
    assert_eq!(header.status, 400);
    assert!(header.body["error"]["message"].as_str().is_some_and(|m| m.contains("Emporium-Error-Policy")));
    let disagree = post(&app, "?errorPolicy=IGNORE_FAILED", Some("REJECT_EVERYTHING"), body).await;
    assert_eq!(disagree.status, 400);
    assert!(disagree.body["error"]["message"].as_str().is_some_and(|m| m.contains("disagree")));
    assert_eq!(count(&env, "SELECT COUNT(*) FROM uploads").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_progress_subscription_shows_item_errors() {
    let env = TestEnv::new().await;
    // No workers at first: the subscription starts while the upload is still queued.
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let answer = post(&app, "", None, nul_body("sub")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let node_id = answer.body["node_id"].as_str().expect("node_id").to_string();
    let mut events = subscribe(
        app.addr,
        "subscription($id: ID!) { uploadProgress(id: $id) { status itemsFailed itemErrors { index sku field } } }",
        json!({ "id": node_id }),
    )
    .await;
    let first = events.next().await.expect("current state first");
    assert_eq!((first["status"].as_str(), first["itemsFailed"].as_i64()), (Some("QUEUED"), Some(0)));

    let mut registry = emporium::jobs::JobRegistry::default();
    emporium::uploads::register_jobs(&app.node.uploads, &mut registry);
    let workers = emporium::jobs::Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 1);
    let mut last = first;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), events.next()).await.expect("progress") {
        last = event;
    }
    assert_eq!(last["status"], "SUCCEEDED", "{last:#}");
    assert_eq!(last["itemsFailed"], 1);
    assert_eq!(last["itemErrors"], json!([{ "index": 1000, "sku": "sub-bad", "field": "name" }]));
    workers.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_failing_ingestion_stores_its_real_cause() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        config.jobs.job_workers = 0;
        config.jobs.job_max_attempts = 1;
    })
    .await;
    let answer = post(&app, "", None, body_with("cause", 3, 0, &[])).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    // The catalog's table is gone: every attempt fails inside the database.
    let db = env.db().await;
    db.execute_unprepared("ALTER TABLE products RENAME TO products_elsewhere").await.expect("rename");
    let mut registry = emporium::jobs::JobRegistry::default();
    emporium::uploads::register_jobs(&app.node.uploads, &mut registry);
    let workers = emporium::jobs::Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 1);
    let upload = finished(&app, answer.body["upload_id"].as_str().expect("id")).await;
    assert_eq!(upload["status"], "failed", "{upload:#}");
    let error = upload["error"].as_str().expect("error");
    assert!(!error.contains("see the server log"), "{error}");
    assert!(error.contains("products"), "the database's own words: {error}");
    workers.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn graphql_refuses_nul_in_string_inputs_naming_the_field() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let product = app
        .gql_ok(
            "mutation { createProduct(input: { name: \"mesa\" }) { id } }",
            json!({}),
        )
        .await["createProduct"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let nul = "a\u{0}b";
    let cases: Vec<(&str, &str, Value)> = vec![
        ("name", "mutation($v: String!) { createProduct(input: { name: $v }) { id } }", json!({ "v": nul })),
        (
            "description",
            "mutation($v: String!) { createProduct(input: { name: \"n\", description: $v }) { id } }",
            json!({ "v": nul }),
        ),
        (
            "attributes",
            "mutation($v: JSON!) { createProduct(input: { name: \"n\", attributes: $v }) { id } }",
            json!({ "v": { "k": nul } }),
        ),
        (
            "name",
            "mutation($id: ID!, $v: String!) { updateProduct(id: $id, input: { name: $v }) { id } }",
            json!({ "id": product, "v": nul }),
        ),
        (
            "description",
            "mutation($id: ID!, $v: String!) { updateProduct(id: $id, input: { description: $v }) { id } }",
            json!({ "id": product, "v": nul }),
        ),
        ("search", "query($v: String!) { products(filter: { search: $v }) { totalCount } }", json!({ "v": nul })),
        ("sku", "query($v: String!) { products(filter: { sku: $v }) { totalCount } }", json!({ "v": nul })),
        (
            "name",
            "mutation($v: String!) { createCustomer(input: { name: $v, email: \"a@b.cz\" }) { id } }",
            json!({ "v": nul }),
        ),
        (
            "email",
            "mutation($v: String!) { createCustomer(input: { name: \"Ana\", email: $v }) { id } }",
            json!({ "v": "a\u{0}@b.cz" }),
        ),
        ("search", "query($v: String!) { customers(filter: { search: $v }) { totalCount } }", json!({ "v": nul })),
        ("artist", "query($v: String!) { records(filter: { artist: $v }) { totalCount } }", json!({ "v": nul })),
        ("genre", "query($v: String!) { records(filter: { genre: $v }) { totalCount } }", json!({ "v": nul })),
        (
            "title",
            "mutation($v: String!) { createRecord(input: { title: $v, artist: \"A\", genre: \"Jazz\", releaseYear: 1959, \
             price: 100, stock: 1 }) { id } }",
            json!({ "v": nul }),
        ),
    ];
    for (field, query, variables) in cases {
        let response = app.gql(query, variables).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{query}: {response:#}");
        let message = response["errors"][0]["message"].as_str().unwrap_or("");
        assert!(message.contains(&format!("`{field}`")), "{query}: the message names `{field}`: {message}");
    }
    // A crafted cursor with a NUL in its text key is refused too, before the database.
    let cursor = base64_url(&format!("NAME:ASC:1:s{nul}"));
    let response = app
        .gql(
            "query($after: String!) { products(first: 1, after: $after, orderBy: { field: NAME }) { totalCount } }",
            json!({ "after": cursor }),
        )
        .await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response:#}");
    app.stop().await;
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
