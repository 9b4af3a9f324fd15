//! Catalog: products, registration with the offers service, offer sync, price
//! history and trends, live updates, N+1 and the failure modes of the offers service.

use std::time::Duration;

use emporium::{
    catalog::{ProductUpsert, UpsertOutcome, sync_offers, upsert_by_sku},
    config::Config,
};
use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
use serde_json::{Value, json};

use crate::support::{TestApp, TestEnv, error_code, eventually, row_of};

const WAIT: Duration = Duration::from_secs(20);

/// Catalog settings for tests: the sync runs only when a test calls it, calls time out
/// fast, and a rejected token is retried after half a second.
fn quiet_sync(config: &mut Config) {
    config.catalog.offers_sync_cron = "0 0 0 1 1 *".into();
    config.catalog.offers_timeout = Duration::from_millis(500);
    config.catalog.offers_unauthorized_probe = Duration::from_millis(500);
}

async fn spawn(env: &TestEnv) -> TestApp {
    TestApp::spawn_with(env, quiet_sync).await
}

const PRODUCT_FIELDS: &str = "id sku name description
    registration { status lastError registeredAt }
    offers { id sourceId price itemsInStock }
    lowestPrice";

async fn create_product(app: &TestApp, name: &str) -> String {
    let data = app
        .gql_ok(
            "mutation($input: CreateProductInput!) { createProduct(input: $input) { id registration { status } } }",
            json!({ "input": { "name": name, "description": format!("{name}, described") } }),
        )
        .await;
    data["createProduct"]["id"].as_str().expect("an id").to_string()
}

async fn product(app: &TestApp, id: &str) -> Value {
    let query = format!("query($id: ID!) {{ product(id: $id) {{ {PRODUCT_FIELDS} }} }}");
    app.gql_ok(&query, json!({ "id": id })).await["product"].clone()
}

/// Waits until the product is registered and has offers; returns it.
async fn registered_with_offers(app: &TestApp, id: &str) -> Value {
    eventually(WAIT, "the product registered with offers", || async {
        let product = product(app, id).await;
        let ready = product["registration"]["status"] == "REGISTERED"
            && product["offers"].as_array().is_some_and(|offers| !offers.is_empty());
        ready.then_some(product)
    })
    .await
}

async fn health(app: &TestApp) -> Value {
    app.http.get(app.url("/health")).send().await.unwrap().json().await.unwrap()
}

/// The offers the simulator lists for a product now, as `(source id, price, stock)`, sorted.
async fn sim_offers(env: &TestEnv, app: &TestApp, id: &str) -> Vec<(String, i64, i64)> {
    let token = text(&app.state.db, "SELECT value FROM settings WHERE key = 'offers.access_token'").await;
    let offers: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/products/{}/offers", env.sim.offers_url(), row_of(id)))
        .header("Bearer", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut offers: Vec<(String, i64, i64)> = offers
        .iter()
        .map(|offer| {
            (offer["id"].to_string(), offer["price"].as_i64().unwrap(), offer["items_in_stock"].as_i64().unwrap())
        })
        .collect();
    offers.sort();
    offers
}

/// Our stored offers of a product as `(source id, price, stock)`, sorted.
async fn stored_offers(app: &TestApp, id: &str) -> Vec<(String, i64, i64)> {
    let mut offers: Vec<(String, i64, i64)> = product(app, id).await["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|offer| {
            (
                offer["sourceId"].as_str().unwrap().to_string(),
                offer["price"].as_i64().unwrap(),
                offer["itemsInStock"].as_i64().unwrap(),
            )
        })
        .collect();
    offers.sort();
    offers
}

/// No offer stored twice, and no history row that repeats the one before it.
async fn assert_no_duplicates(app: &TestApp) {
    let db = &app.state.db;
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM (SELECT product_id, source_id FROM offers GROUP BY product_id, source_id HAVING COUNT(*) > 1) d").await,
        0,
        "duplicate offers"
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM (SELECT product_id, offer_source_id, recorded_at FROM price_history GROUP BY product_id, offer_source_id, recorded_at HAVING COUNT(*) > 1) d").await,
        0,
        "history rows written twice"
    );
    let repeated = scalar(
        db,
        "SELECT COUNT(*) FROM price_history h WHERE h.price IS NOT NULL AND h.price = (
            SELECT p.price FROM price_history p
            WHERE p.product_id = h.product_id AND p.offer_source_id = h.offer_source_id AND p.recorded_at < h.recorded_at
            ORDER BY p.recorded_at DESC LIMIT 1)",
    )
    .await;
    assert_eq!(repeated, 0, "history rows that repeat the previous price");
}

fn item(sku: &str, name: &str, description: Option<&str>) -> ProductUpsert {
    ProductUpsert {
        sku: sku.into(),
        name: name.into(),
        description: description.map(str::to_string),
        attributes: Some(json!({ "source": sku })),
    }
}

async fn scalar(db: &impl sea_orm::ConnectionTrait, sql: &str) -> i64 {
    let row = db.query_one_raw(emporium::db::stmt(db, sql, [])).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// The first column of the one row `sql` returns, as text.
async fn text(db: &impl sea_orm::ConnectionTrait, sql: &str) -> String {
    let row = db.query_one_raw(emporium::db::stmt(db, sql, [])).await.unwrap().expect("a row");
    row.try_get_by_index::<String>(0).unwrap()
}

#[tokio::test]
async fn upsert_by_sku_is_idempotent_last_wins_and_counts() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let state = &*app.node.catalog;
    let batch = vec![
        item("a", "first a", Some("da")),
        item("b", "bee", None),
        item("a", "last a", None),
        item("c", "sea", Some("dc")),
    ];

    let txn = state.db.begin().await.unwrap();
    let outcome = upsert_by_sku(state, &txn, &batch).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(outcome, UpsertOutcome { created: 3, updated: 0 });
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM products").await, 3);
    // One registration job for the batch, naming the three new products.
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM jobs WHERE kind = 'catalog.register'").await, 1);
    let payload = text(&state.db, "SELECT payload FROM jobs WHERE kind = 'catalog.register'").await;
    let mut listed: Vec<i64> = serde_json::from_str::<Value>(&payload).unwrap()["product_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_i64().unwrap())
        .collect();
    listed.sort_unstable();
    listed.dedup();
    let listed = listed.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    assert_eq!(scalar(&state.db, &format!("SELECT COUNT(*) FROM products WHERE id IN ({listed})")).await, 3);
    // Last occurrence wins, and a missing description of a new product is empty.
    let row = state
        .db
        .query_one_raw(emporium::db::stmt(&state.db, "SELECT name, description FROM products WHERE sku = 'a'", []))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<String>("", "name").unwrap(), "last a");
    assert_eq!(row.try_get::<String>("", "description").unwrap(), "");

    // The same batch again: nothing changes, nothing is enqueued.
    let txn = state.db.begin().await.unwrap();
    let again = upsert_by_sku(state, &txn, &batch).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(again, UpsertOutcome { created: 0, updated: 0 });
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM products").await, 3);
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM jobs WHERE kind = 'catalog.register'").await, 1);

    // One changed name, one new sku; `None` leaves the stored description alone.
    let txn = state.db.begin().await.unwrap();
    let outcome = upsert_by_sku(state, &txn, &[item("c", "sea, renamed", None), item("d", "dee", None)]).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(outcome, UpsertOutcome { created: 1, updated: 1 });
    let description = text(&state.db, "SELECT description FROM products WHERE sku = 'c'").await;
    assert_eq!(description, "dc");
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM jobs WHERE kind = 'catalog.register'").await, 2);

    // A rolled-back upsert leaves neither products nor jobs behind.
    let txn = state.db.begin().await.unwrap();
    upsert_by_sku(state, &txn, &[item("e", "eee", None)]).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM products WHERE sku = 'e'").await, 0);
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM jobs WHERE kind = 'catalog.register'").await, 2);

    // An invalid item fails the batch and stores nothing.
    let txn = state.db.begin().await.unwrap();
    let refused = upsert_by_sku(state, &txn, &[item("f", "fine", None), item("g", "", None)]).await;
    assert!(matches!(refused, Err(emporium::error::AppError::BadInput(_))));
    drop(txn);
    assert_eq!(scalar(&state.db, "SELECT COUNT(*) FROM products").await, 4);
    app.stop().await;
}

#[tokio::test]
async fn an_upsert_racing_another_for_a_new_sku_falls_back_and_updates_it_once() {
    let env = TestEnv::new().await;
    if !env.is_postgres() {
        eprintln!("skipped: needs Postgres (SQLite runs one writer at a time, so upserts cannot race)");
        return;
    }
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let first = app.state.db.begin().await.unwrap();
    upsert_by_sku(&app.node.catalog, &first, &[item("x", "from the first", None)]).await.unwrap();
    let state = app.node.catalog.clone();
    let second = tokio::spawn(async move {
        let txn = state.db.begin().await.unwrap();
        let batch = [item("x", "from the second", None), item("y", "why", None)];
        let outcome = upsert_by_sku(&state, &txn, &batch).await.unwrap();
        txn.commit().await.unwrap();
        outcome
    });
    // The second did not see the first's `x` and now waits on it in its plain insert.
    eventually(WAIT, "the second upsert waiting on the first", || async {
        let waiting =
            scalar(&app.state.db, "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").await;
        (waiting > 0).then_some(())
    })
    .await;
    first.commit().await.unwrap();
    let outcome = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert_eq!(outcome, UpsertOutcome { created: 1, updated: 1 });
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM products").await, 2);
    let name = text(&app.state.db, "SELECT name FROM products WHERE sku = 'x'").await;
    assert_eq!(name, "from the second");
    // One registration job each, for the product each created.
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM jobs WHERE kind = 'catalog.register'").await, 2);
    app.stop().await;
}

/// Upserts `skus` as one batch in one transaction; returns the outcome.
async fn upsert_skus(app: &TestApp, skus: &[&str]) -> UpsertOutcome {
    let batch: Vec<ProductUpsert> = skus.iter().map(|sku| item(sku, &format!("product {sku}"), None)).collect();
    let txn = app.state.db.begin().await.unwrap();
    let outcome = upsert_by_sku(&app.node.catalog, &txn, &batch).await.unwrap();
    txn.commit().await.unwrap();
    outcome
}

async fn registration_of(app: &TestApp, sku: &str) -> (String, Option<String>) {
    let sql = format!("SELECT registration_status, registration_error FROM products WHERE sku = '{sku}'");
    let row = app.state.db.query_one_raw(emporium::db::stmt(&app.state.db, &sql, [])).await.unwrap().unwrap();
    (row.try_get("", "registration_status").unwrap(), row.try_get("", "registration_error").unwrap())
}

#[tokio::test]
async fn a_batch_registration_job_registers_only_what_is_pending_and_gives_up_per_product() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        config.jobs.job_workers = 0;
        config.jobs.job_backoff_base = Duration::from_millis(50);
        config.jobs.job_backoff_max = Duration::from_millis(100);
        config.catalog.offers_register_attempts = 2;
    })
    .await;
    let mut registry = emporium::jobs::JobRegistry::default();
    emporium::catalog::register_jobs(&app.node.catalog, &mut registry);

    // One job for a, b and c; b gets registered and c deleted before it runs.
    assert_eq!(upsert_skus(&app, &["a", "b", "c"]).await.created, 3);
    app.state
        .db
        .execute_unprepared("UPDATE products SET registration_status = 'registered' WHERE sku = 'b'")
        .await
        .unwrap();
    app.state.db.execute_unprepared("DELETE FROM products WHERE sku = 'c'").await.unwrap();
    let workers =
        emporium::jobs::Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry.clone(), 1);
    eventually(WAIT, "a registered", || async { (registration_of(&app, "a").await.0 == "registered").then_some(()) })
        .await;
    workers.shutdown().await;
    assert_eq!(env.sim.stats().register_calls, 1, "only the pending product is registered");
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'").await, 1);

    // The service down for both attempts: each product of the batch fails with the reason.
    env.sim.set_offers_fault(sim::OffersFault::Down);
    assert_eq!(upsert_skus(&app, &["d", "e"]).await.created, 2);
    let workers = emporium::jobs::Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 1);
    for sku in ["d", "e"] {
        let (status, error) = eventually(WAIT, "the batch given up", || async {
            let state = registration_of(&app, sku).await;
            (state.0 == "failed").then_some(state)
        })
        .await;
        assert_eq!(status, "failed");
        let error = error.unwrap_or_default();
        assert!(error.starts_with("gave up after 2 attempts") && error.contains("unavailable"), "{sku}: {error}");
    }
    workers.shutdown().await;
    assert_eq!(registration_of(&app, "a").await, ("registered".to_string(), None));
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM jobs WHERE status = 'failed'").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn created_product_registers_syncs_and_shows_a_trend() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await;
    let id = create_product(&app, "Benzinová sekačka").await;

    let registered = registered_with_offers(&app, &id).await;
    assert!(registered["registration"]["lastError"].is_null());
    assert_eq!(stored_offers(&app, &id).await, sim_offers(&env, &app, &id).await);
    let lowest = registered["offers"].as_array().unwrap().iter().map(|offer| offer["price"].as_i64().unwrap()).min();
    assert_eq!(registered["lowestPrice"].as_i64(), lowest);
    assert_eq!(env.sim.stats().auth_calls, 1);

    // A sync without a price tick changes nothing and writes no history.
    let history_before = scalar(&app.state.db, "SELECT COUNT(*) FROM price_history").await;
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.products, report.synced, report.failed, report.price_changes), (1, 1, 0, 0));
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM price_history").await, history_before);

    // After a tick, the sync picks up the new prices and the trend moves.
    env.sim.tick_offers();
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert!(report.price_changes >= 1, "{report:?}");
    assert_eq!(stored_offers(&app, &id).await, sim_offers(&env, &app, &id).await);
    let data = app
        .gql_ok(
            "query($id: ID!) { product(id: $id) {
                lowestPrice
                priceTrend { prices points { at price } firstPrice lastPrice minPrice maxPrice changePercent }
                offers { price priceHistory { price } priceTrend { prices changePercent } }
            } }",
            json!({ "id": id }),
        )
        .await;
    let trend = &data["product"]["priceTrend"];
    let prices = trend["prices"].as_array().unwrap();
    assert_eq!(trend["lastPrice"], data["product"]["lowestPrice"]);
    assert_eq!(prices.first(), Some(&trend["firstPrice"]));
    assert_eq!(trend["points"].as_array().unwrap().len(), prices.len());
    let moved = data["product"]["offers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|offer| offer["priceTrend"]["prices"].as_array().unwrap().len() > 1)
        .collect::<Vec<_>>();
    assert!(!moved.is_empty(), "some offer's price moved: {data:#}");
    for offer in moved {
        let trend = &offer["priceTrend"];
        assert!(trend["changePercent"].is_f64(), "{offer:#}");
        let prices = trend["prices"].as_array().unwrap();
        assert_eq!(prices.last().unwrap(), &offer["price"]);
        assert_eq!(offer["priceHistory"].as_array().unwrap().len(), prices.len());
    }
    // The lowest price's trend has two points whenever the lowest price moved.
    if prices.len() > 1 {
        assert!(trend["changePercent"].is_f64());
    }
    assert_no_duplicates(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_its_code_and_stores_nothing() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await;
    let create = "mutation($input: CreateProductInput!) { createProduct(input: $input) { id sku } }";
    let kept = app.gql_ok(create, json!({ "input": { "name": "kept", "sku": "SKU-1" } })).await;
    let kept_id = kept["createProduct"]["id"].as_str().unwrap().to_string();
    let other = app.gql_ok(create, json!({ "input": { "name": "other", "sku": "SKU-2" } })).await;
    let other_id = other["createProduct"]["id"].as_str().unwrap().to_string();
    let products = || scalar(&app.state.db, "SELECT COUNT(*) FROM products");
    let jobs = || scalar(&app.state.db, "SELECT COUNT(*) FROM jobs");
    let (products_before, jobs_before) = (products().await, jobs().await);

    let refused_inputs = [
        (json!({ "name": "" }), "BAD_USER_INPUT"),
        (json!({ "name": "   " }), "BAD_USER_INPUT"),
        // Beyond GRAPHQL_MAX_BODY_BYTES: refused before it is parsed.
        (json!({ "name": "x".repeat(10 * 1024 * 1024) }), "PAYLOAD_TOO_LARGE"),
        (json!({ "name": "x".repeat(201) }), "BAD_USER_INPUT"),
        (json!({ "name": "ok", "description": "d".repeat(10_001) }), "BAD_USER_INPUT"),
        (json!({ "name": "ok", "sku": "s".repeat(101) }), "BAD_USER_INPUT"),
        (json!({ "name": "ok", "sku": "" }), "BAD_USER_INPUT"),
        (json!({ "name": "ok", "attributes": [1, 2] }), "BAD_USER_INPUT"),
        (json!({ "name": "dup", "sku": "SKU-1" }), "CONFLICT"),
        (json!({ "name": "dup", "sku": " SKU-1 " }), "CONFLICT"),
    ];
    for (input, code) in refused_inputs {
        let response = app.gql(create, json!({ "input": input })).await;
        assert_eq!(
            error_code(&response).as_deref(),
            Some(code),
            "{}",
            &response.to_string()[..300.min(response.to_string().len())]
        );
    }

    let update = "mutation($id: ID!, $input: UpdateProductInput!) { updateProduct(id: $id, input: $input) { id } }";
    // Well-formed ids of products that do not exist.
    let ghost = emporium::global_id::encode("Product", 999_999).0;
    for (id, input, code) in [
        (other_id.as_str(), json!({ "sku": "SKU-1" }), "CONFLICT"),
        (other_id.as_str(), json!({ "name": "" }), "BAD_USER_INPUT"),
        (other_id.as_str(), json!({}), "BAD_USER_INPUT"),
        (ghost.as_str(), json!({ "name": "ghost" }), "NOT_FOUND"),
        // A row number is not an id.
        ("999999", json!({ "name": "ghost" }), "BAD_USER_INPUT"),
        ("not-an-id", json!({ "name": "ghost" }), "BAD_USER_INPUT"),
    ] {
        let response = app.gql(update, json!({ "id": id, "input": input })).await;
        assert_eq!(error_code(&response).as_deref(), Some(code), "{response:#}");
    }
    let delete_ghost = format!("mutation {{ deleteProduct(id: \"{ghost}\") }}");
    let register_ghost = format!("mutation {{ registerProduct(id: \"{ghost}\") {{ id }} }}");
    for (query, code) in [
        ("{ product(id: \"abc\") { id } }", "BAD_USER_INPUT"),
        ("{ product(id: \"-5\") { id } }", "BAD_USER_INPUT"),
        ("{ product(id: \"99999999999999999999999\") { id } }", "BAD_USER_INPUT"),
        ("{ products(first: 100000) { nodes { id } } }", "COMPLEXITY_LIMIT_EXCEEDED"),
        ("{ products(first: -1) { nodes { id } } }", "BAD_USER_INPUT"),
        ("{ products(after: \"garbage\") { nodes { id } } }", "BAD_USER_INPUT"),
        (delete_ghost.as_str(), "NOT_FOUND"),
        ("mutation { deleteProduct(id: \"999999\") }", "BAD_USER_INPUT"),
        ("mutation { deleteProduct(id: \"x\") }", "BAD_USER_INPUT"),
        (register_ghost.as_str(), "NOT_FOUND"),
        ("mutation { registerProduct(id: \"999999\") { id } }", "BAD_USER_INPUT"),
        ("subscription { offerPriceChanged(productId: \"0\") { price } }", "BAD_REQUEST"),
    ] {
        let response = app.gql(query, json!({})).await;
        assert_eq!(error_code(&response).as_deref(), Some(code), "{query}: {response:#}");
    }
    let period = format!(
        "{{ product(id: \"{kept_id}\") {{ priceTrend(from: \"2026-02-01T00:00:00Z\", to: \"2026-01-01T00:00:00Z\") {{ prices }} }} }}"
    );
    assert_eq!(error_code(&app.gql(&period, json!({})).await).as_deref(), Some("BAD_USER_INPUT"));
    let too_long = format!(
        "{{ product(id: \"{kept_id}\") {{ priceTrend(from: \"2025-01-01T00:00:00Z\", to: \"2026-01-01T00:00:00Z\") {{ prices }} }} }}"
    );
    assert_eq!(error_code(&app.gql(&too_long, json!({})).await).as_deref(), Some("BAD_USER_INPUT"));
    // The same limit when `to` is omitted (it means now): 60 days back is refused, naming the limit.
    let sixty_days_ago = (chrono::Utc::now() - chrono::Duration::days(60)).to_rfc3339();
    for selection in ["priceTrend(from: $from) { prices }", "offers { priceHistory(from: $from) { price } }"] {
        let query = format!("query($id: ID!, $from: DateTime) {{ product(id: $id) {{ {selection} }} }}");
        let refused = app.gql(&query, json!({ "id": kept_id, "from": sixty_days_ago })).await;
        assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused:#}");
        assert!(refused["errors"][0]["message"].as_str().unwrap().contains("at most 31 days"), "{refused:#}");
    }
    // A malformed date-time names the formats it takes.
    for malformed in ["04.12.2026", "2026-12-04T10:15:00", "2026-02-30", "now"] {
        let query = "query($id: ID!, $from: DateTime) { product(id: $id) { priceTrend(from: $from) { prices } } }";
        let refused = app.gql(query, json!({ "id": kept_id, "from": malformed })).await;
        assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{malformed}: {refused:#}");
        let message = refused["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("a date (`2026-12-04`") && message.contains(malformed), "{message}");
        let inline = format!("{{ product(id: \"{kept_id}\") {{ priceTrend(from: \"{malformed}\") {{ prices }} }} }}");
        let refused = app.gql(&inline, json!({})).await;
        assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{malformed}: {refused:#}");
    }

    // A real query nested 50 levels deep (product → offers → product → …) is refused
    // before it runs; so is one just past the depth limit (GRAPHQL_MAX_DEPTH, 12).
    let nested = |levels: usize| {
        let mut selection = String::from("id");
        for level in 0..levels {
            selection =
                if level % 2 == 0 { format!("offers {{ {selection} }}") } else { format!("product {{ {selection} }}") };
        }
        format!("{{ product(id: \"{kept_id}\") {{ {selection} }} }}")
    };
    for (levels, refusal) in [(50, "52 levels deep"), (14, "16 levels deep")] {
        let response = app.gql(&nested(levels), json!({})).await;
        assert!(response["data"].is_null(), "{response:#}");
        let message = response["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(refusal), "{levels} levels: {response:#}");
        assert_eq!(error_code(&response).as_deref(), Some("DEPTH_LIMIT_EXCEEDED"), "{response:#}");
    }
    app.gql_ok(&nested(9), json!({})).await;

    assert_eq!(products().await, products_before);
    assert_eq!(jobs().await, jobs_before);
    let kept = app.gql_ok(&format!("{{ product(id: \"{kept_id}\") {{ name sku }} }}"), json!({})).await;
    assert_eq!(kept["product"], json!({ "name": "kept", "sku": "SKU-1" }));
    app.stop().await;
}

#[tokio::test]
async fn products_crud_with_stable_cursors_and_filters() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        config.jobs.job_workers = 0;
    })
    .await;
    let create = "mutation($input: CreateProductInput!) { createProduct(input: $input) {
        id sku name description attributes createdAt updatedAt registration { status lastError } offers { id } lowestPrice } }";
    let created = app
        .gql_ok(
            create,
            json!({ "input": { "name": "  Mesa  ", "description": "oak", "sku": "T-1", "attributes": { "legs": 4 } } }),
        )
        .await["createProduct"]
        .clone();
    assert_eq!(created["name"], "Mesa");
    assert_eq!(created["sku"], "T-1");
    assert_eq!(created["attributes"], json!({ "legs": 4 }));
    assert_eq!(created["registration"], json!({ "status": "PENDING", "lastError": null }));
    assert_eq!(created["offers"], json!([]));
    assert!(created["lowestPrice"].is_null());
    let id = created["id"].as_str().unwrap().to_string();
    // The registration job was queued with the product.
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM jobs WHERE kind = 'catalog.register'").await, 1);

    let updated = app
        .gql_ok(
            "mutation($id: ID!) { updateProduct(id: $id, input: { name: \"Mesa grande\", sku: null, attributes: null }) { name description sku attributes } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        updated["updateProduct"],
        json!({ "name": "Mesa grande", "description": "oak", "sku": null, "attributes": null })
    );

    for n in 0..4 {
        app.gql_ok(create, json!({ "input": { "name": format!("chair {n}"), "sku": format!("C-{n}") } })).await;
    }
    let page = "query($after: String) { products(first: 2, after: $after) { totalCount edges { cursor node { name } } pageInfo { hasNextPage endCursor } } }";
    let first = app.gql_ok(page, json!({ "after": null })).await;
    assert_eq!(first["products"]["totalCount"], 5);
    let names = |data: &Value| {
        data["products"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|edge| edge["node"]["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&first), ["Mesa grande", "chair 0"]);
    // Rows inserted after the cursor was handed out do not shift the next page.
    app.gql_ok(create, json!({ "input": { "name": "late chair" } })).await;
    let cursor = first["products"]["pageInfo"]["endCursor"].clone();
    let second = app.gql_ok(page, json!({ "after": cursor })).await;
    assert_eq!(names(&second), ["chair 1", "chair 2"]);
    let third = app.gql_ok(page, json!({ "after": second["products"]["pageInfo"]["endCursor"] })).await;
    assert_eq!(names(&third), ["chair 3", "late chair"]);
    assert_eq!(third["products"]["pageInfo"]["hasNextPage"], false);

    let filtered = app
        .gql_ok("{ bySearch: products(filter: { search: \"CHAIR\" }) { totalCount } bySku: products(filter: { sku: \"C-2\" }) { nodes { name } } none: products(filter: { search: \"100%\" }) { totalCount } }", json!({}))
        .await;
    assert_eq!(filtered["bySearch"]["totalCount"], 5);
    assert_eq!(filtered["bySku"]["nodes"], json!([{ "name": "chair 2" }]));
    assert_eq!(filtered["none"]["totalCount"], 0);

    let deleted = app.gql_ok("mutation($id: ID!) { deleteProduct(id: $id) }", json!({ "id": id })).await;
    assert_eq!(deleted["deleteProduct"], json!(id));
    // A lookup of a product that is gone answers null, without an error.
    let gone = app.gql(&format!("{{ product(id: \"{id}\") {{ id }} }}"), json!({})).await;
    assert!(gone.get("errors").is_none(), "{gone:#}");
    assert_eq!(gone["data"], json!({ "product": null }));
    app.stop().await;
}

#[tokio::test]
async fn vanished_offers_are_deleted_and_their_history_stays_with_the_product() {
    use emporium::catalog::{client::RemoteOffer, sync::apply};
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        config.jobs.job_workers = 0;
    })
    .await;
    let id = create_product(&app, "lamp").await;
    let product_id = row_of(&id);
    let offer = |source: &str, price: i64| RemoteOffer { source_id: source.into(), price, items_in_stock: 3 };
    let t0 = emporium::db::now_ms() - 10_000;

    assert_eq!(apply(&app.node.catalog, product_id, &[offer("x", 100), offer("y", 200)], t0).await.unwrap(), 2);
    // The same snapshot again, and an older one arriving late: nothing changes.
    assert_eq!(apply(&app.node.catalog, product_id, &[offer("x", 100), offer("y", 200)], t0 + 1).await.unwrap(), 0);
    assert_eq!(apply(&app.node.catalog, product_id, &[offer("x", 1)], t0 - 5).await.unwrap(), 0);
    // x gets cheaper, y vanishes, z appears.
    assert_eq!(apply(&app.node.catalog, product_id, &[offer("x", 90), offer("z", 300)], t0 + 1000).await.unwrap(), 3);
    assert_eq!(apply(&app.node.catalog, product_id, &[offer("x", 80), offer("z", 300)], t0 + 2000).await.unwrap(), 1);

    let data = app
        .gql_ok(
            "query($id: ID!) { product(id: $id) {
                offers { sourceId price }
                lowestPrice
                priceTrend { prices firstPrice lastPrice minPrice maxPrice changePercent }
                priceHistory { offerSourceId price }
            } }",
            json!({ "id": id }),
        )
        .await;
    let product = &data["product"];
    assert_eq!(product["offers"], json!([{ "sourceId": "x", "price": 80 }, { "sourceId": "z", "price": 300 }]));
    assert_eq!(product["lowestPrice"], 80);
    assert_eq!(
        product["priceTrend"],
        json!({ "prices": [100, 90, 80], "firstPrice": 100, "lastPrice": 80, "minPrice": 80, "maxPrice": 100, "changePercent": -20.0 })
    );
    // y is gone from the offers but its history (including its withdrawal) is kept.
    let history = product["priceHistory"].as_array().unwrap();
    assert!(history.contains(&json!({ "offerSourceId": "y", "price": 200 })));
    assert!(history.contains(&json!({ "offerSourceId": "y", "price": null })));
    assert_eq!(history.len(), 6);

    // Periods: before anything was recorded there is no data; a period starting after
    // the first change starts from the price in effect then.
    let at = |ms: i64| emporium::db::to_datetime(ms).to_rfc3339();
    let early = app
        .gql_ok(
            "query($id: ID!, $from: DateTime, $to: DateTime) { product(id: $id) { priceTrend(from: $from, to: $to) { prices changePercent } } }",
            json!({ "id": id, "from": at(t0 - 60_000), "to": at(t0 - 1) }),
        )
        .await;
    assert_eq!(early["product"]["priceTrend"], json!({ "prices": [], "changePercent": null }));
    let late = app
        .gql_ok(
            "query($id: ID!, $from: DateTime) { product(id: $id) { priceTrend(from: $from) { prices } offers { sourceId priceTrend(from: $from) { prices } priceHistory(from: $from) { price } } } }",
            json!({ "id": id, "from": at(t0 + 1500) }),
        )
        .await;
    assert_eq!(late["product"]["priceTrend"]["prices"], json!([90, 80]));
    assert_eq!(late["product"]["offers"][0]["priceTrend"]["prices"], json!([90, 80]));
    assert_eq!(late["product"]["offers"][0]["priceHistory"], json!([{ "price": 80 }]));
    assert_eq!(late["product"]["offers"][1]["priceTrend"]["prices"], json!([300]));

    // Deleting the product deletes its offers and history.
    app.gql_ok("mutation($id: ID!) { deleteProduct(id: $id) }", json!({ "id": id })).await;
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM offers").await, 0);
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM price_history").await, 0);
    app.stop().await;
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A product with the offer history given as (offer, price, moment) snapshots, oldest first.
async fn product_with_history(app: &TestApp, name: &str, snapshots: &[&[(&str, i64)]], at: &[i64]) -> String {
    use emporium::catalog::{client::RemoteOffer, sync::apply};
    let id = create_product(app, name).await;
    for (offers, at) in snapshots.iter().zip(at) {
        let offers: Vec<RemoteOffer> = offers
            .iter()
            .map(|(source, price)| RemoteOffer { source_id: (*source).into(), price: *price, items_in_stock: 1 })
            .collect();
        apply(&app.node.catalog, row_of(&id), &offers, *at).await.unwrap();
    }
    id
}

#[tokio::test]
async fn date_inputs_mean_the_start_of_the_day_in_utc_and_offsets_are_honoured() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        config.jobs.job_workers = 0;
    })
    .await;
    let now = emporium::db::now_ms();
    let id =
        product_with_history(&app, "clock", &[&[("a", 100)], &[("a", 80)]], &[now - 40 * DAY_MS, now - 2 * DAY_MS])
            .await;
    let query = "query($id: ID!, $from: DateTime, $to: DateTime) { product(id: $id) {
        priceTrend(from: $from, to: $to) { points { at price } } offers { priceTrend(from: $from) { points { at } } } } }";
    let day = emporium::db::to_datetime(now - 10 * DAY_MS).date_naive();
    let by_date = app.gql_ok(query, json!({ "id": id, "from": day.to_string() })).await;
    let points = &by_date["product"]["priceTrend"]["points"];
    let start = format!("{day}T00:00:00+00:00");
    assert_eq!(points, &json!([{ "at": start, "price": 100 }, { "at": points[1]["at"], "price": 80 }]));
    assert_eq!(by_date["product"]["offers"][0]["priceTrend"]["points"][0]["at"], start.as_str());
    // `to` as a date: the start of that day; with an offset: the same instant in UTC.
    let to_day = emporium::db::to_datetime(now - 5 * DAY_MS).date_naive();
    let until = app.gql_ok(query, json!({ "id": id, "from": day.to_string(), "to": to_day.to_string() })).await;
    assert_eq!(until["product"]["priceTrend"]["points"], json!([{ "at": start, "price": 100 }]));
    let instant = emporium::db::to_datetime(now - 3 * DAY_MS);
    let with_offset = instant.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap()).to_rfc3339();
    assert!(with_offset.ends_with("+02:00"));
    let offset = app.gql_ok(query, json!({ "id": id, "from": with_offset })).await;
    assert_eq!(offset["product"]["priceTrend"]["points"][0], json!({ "at": instant.to_rfc3339(), "price": 100 }));
    // The scalar's description says so.
    let described = app.gql_ok("{ __type(name: \"DateTime\") { description } }", json!({})).await;
    assert!(described["__type"]["description"].as_str().unwrap().contains("or a date (`2026-12-04`)"));
    app.stop().await;
}

#[tokio::test]
async fn the_lowest_price_of_the_last_30_days_comes_with_every_reduction() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        config.jobs.job_workers = 0;
    })
    .await;
    let now = emporium::db::now_ms();
    // 100 from 40 days ago, 80 from 20 days ago, 90 now: no reduction (80 was lower).
    let rise = product_with_history(
        &app,
        "rise",
        &[&[("r", 100)], &[("r", 80)], &[("r", 90)]],
        &[now - 40 * DAY_MS, now - 20 * DAY_MS, now],
    )
    .await;
    // 100 from 80 days ago, 90 since yesterday: a reduction from 100. Another offer, 130
    // then 120 for the last 50 days: its own window reaches back 80 days, to 130.
    let cut = product_with_history(
        &app,
        "cut",
        &[&[("c", 100), ("d", 130)], &[("c", 100), ("d", 120)], &[("c", 90), ("d", 120)]],
        &[now - 80 * DAY_MS, now - 50 * DAY_MS, now - DAY_MS],
    )
    .await;
    // One price only, and no history at all: nothing to compare.
    let fresh = product_with_history(&app, "fresh", &[&[("f", 70)]], &[now - 2 * DAY_MS]).await;
    let bare = create_product(&app, "bare").await;

    let listed = app
        .gql_ok(
            "{ products(first: 10) { nodes { id lowestPrice lowestPriceLast30Days priceReduced
                offers { id sourceId price lowestPriceLast30Days } } } }",
            json!({}),
        )
        .await;
    let nodes = listed["products"]["nodes"].as_array().unwrap();
    let node = |id: &str| nodes.iter().find(|node| node["id"] == id).unwrap().clone();
    let figures = |node: &Value| {
        (node["lowestPrice"].clone(), node["lowestPriceLast30Days"].clone(), node["priceReduced"].clone())
    };
    let offer_figures = |node: &Value| {
        node["offers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|offer| (offer["sourceId"].as_str().unwrap().to_string(), offer["lowestPriceLast30Days"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(figures(&node(&rise)), (json!(90), json!(80), json!(false)));
    assert_eq!(offer_figures(&node(&rise)), [("r".to_string(), json!(80))]);
    assert_eq!(figures(&node(&cut)), (json!(90), json!(100), json!(true)));
    assert_eq!(offer_figures(&node(&cut)), [("c".to_string(), json!(100)), ("d".to_string(), json!(130))]);
    assert_eq!(figures(&node(&fresh)), (json!(70), Value::Null, json!(false)));
    assert_eq!(offer_figures(&node(&fresh)), [("f".to_string(), Value::Null)]);
    assert_eq!(figures(&node(&bare)), (Value::Null, Value::Null, json!(false)));

    // The same through single lookups (no page to batch with).
    let alone = app
        .gql_ok(
            "query($id: ID!, $offer: ID!) { product(id: $id) { lowestPriceLast30Days priceReduced }
                offer(id: $offer) { price lowestPriceLast30Days } }",
            json!({ "id": cut, "offer": node(&cut)["offers"][0]["id"] }),
        )
        .await;
    assert_eq!(
        alone,
        json!({ "product": { "lowestPriceLast30Days": 100, "priceReduced": true },
                "offer": { "price": 90, "lowestPriceLast30Days": 100 } })
    );
    app.stop().await;
}

/// Products registered with offers; returns their ids.
async fn registered_products(app: &TestApp, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(create_product(app, &format!("product {n}")).await);
    }
    for id in &ids {
        registered_with_offers(app, id).await;
    }
    ids
}

/// Every product's stored offers equal the simulator's.
async fn assert_caught_up(env: &TestEnv, app: &TestApp, ids: &[String]) {
    for id in ids {
        assert_eq!(stored_offers(app, id).await, sim_offers(env, app, id).await, "offers of product {id}");
    }
    assert_no_duplicates(app).await;
}

async fn offers_health(app: &TestApp) -> Value {
    let health = health(app).await;
    assert_eq!(health["checks"]["database"]["status"], "up", "the node stays up: {health:#}");
    health["checks"]["offers_service"].clone()
}

async fn wait_offers_health(app: &TestApp, status: &str) -> Value {
    eventually(WAIT, &format!("offers service {status} in /health"), || async {
        let check = offers_health(app).await;
        (check["status"] == status).then_some(check)
    })
    .await
}

async fn wait_last_error(app: &TestApp, id: &str, needle: &str) -> Value {
    eventually(WAIT, &format!("registration.lastError mentioning `{needle}`"), || async {
        let product = product(app, id).await;
        let error = product["registration"]["lastError"].as_str().unwrap_or_default().to_string();
        error.contains(needle).then_some(product)
    })
    .await
}

#[tokio::test]
async fn offers_service_down_at_start_delays_registration_then_catches_up() {
    let env = TestEnv::new().await;
    env.sim.set_offers_fault(sim::OffersFault::Down);
    let app = spawn(&env).await;
    let ids = vec![create_product(&app, "a").await, create_product(&app, "b").await];
    let pending = wait_last_error(&app, &ids[0], "unavailable").await;
    assert_eq!(pending["registration"]["status"], "PENDING");
    let check = wait_offers_health(&app, "degraded").await;
    assert_eq!(check["token_present"], false);
    assert!(check["last_error"].as_str().unwrap().contains("503"), "{check:#}");

    env.sim.set_offers_fault(sim::OffersFault::Ok);
    for id in &ids {
        let product = registered_with_offers(&app, id).await;
        assert!(product["registration"]["lastError"].is_null());
    }
    env.sim.tick_offers();
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.synced, report.failed), (2, 0));
    assert_caught_up(&env, &app, &ids).await;
    let check = wait_offers_health(&app, "up").await;
    assert_eq!(check["token_present"], true);
    app.stop().await;
}

#[tokio::test]
async fn offers_service_down_mid_sync_then_back_on_the_same_port() {
    let mut env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        config.catalog.offers_sync_concurrency = 1;
        config.catalog.offers_timeout = Duration::from_secs(2);
    })
    .await;
    let ids = registered_products(&app, 6).await;
    env.sim.tick_offers();
    env.sim.set_offers_fault(sim::OffersFault::Slow(Duration::from_millis(300)));

    let syncing = tokio::spawn({
        let state = app.node.catalog.clone();
        async move { sync_offers(&state).await }
    });
    let calls_before = env.sim.stats().offers_calls;
    eventually(WAIT, "the sync halfway", || async { (env.sim.stats().offers_calls >= calls_before + 2).then_some(()) })
        .await;
    // The service goes away mid-sync: connections are refused from now on.
    let placeholder = sim::Simulator::start(([127, 0, 0, 1], 0).into(), sim::SimConfig::default()).await.unwrap();
    let running = std::mem::replace(&mut env.sim, placeholder);
    let (addr, simulator) = (running.addr(), running.simulator());
    running.shutdown().await;
    let report = syncing.await.unwrap().unwrap();
    assert!(report.synced >= 1 && report.failed >= 1, "{report:?}");
    assert_eq!(report.synced + report.failed + report.skipped, 6, "{report:?}");
    wait_offers_health(&app, "degraded").await;
    let failed =
        scalar(&app.state.db, "SELECT COUNT(*) FROM products WHERE registration_error LIKE 'offer sync failed%'").await;
    assert_eq!(failed as u64, report.failed);

    // Back on the same port with its state: the next sync catches up.
    simulator.set_offers_fault(sim::OffersFault::Ok);
    let back = simulator.serve_at(addr).await.unwrap();
    std::mem::replace(&mut env.sim, back).shutdown().await;
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.synced, report.failed, report.aborted), (6, 0, false), "{report:?}");
    assert_caught_up(&env, &app, &ids).await;
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM products WHERE registration_error IS NOT NULL").await, 0);
    wait_offers_health(&app, "up").await;
    app.stop().await;
}

const STORED_TOKEN: &str = "SELECT value FROM settings WHERE key = 'offers.access_token'";

#[tokio::test]
async fn rejected_token_keeps_the_node_up_without_hammering_and_recovers() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        config.catalog.offers_unauthorized_probe = Duration::from_secs(1);
    })
    .await;
    let ids = registered_products(&app, 1).await;
    let token = text(&app.state.db, STORED_TOKEN).await;

    // The service rejects everything, `/auth` too: re-authenticating fails, the token stays.
    env.sim.set_offers_fault(sim::OffersFault::Unauthorized);
    let mut ids = ids;
    for name in ["x", "y", "z"] {
        ids.push(create_product(&app, name).await);
    }
    let before = env.sim.stats();
    for id in &ids[1..] {
        let product = wait_last_error(&app, id, "access token").await;
        assert_eq!(product["registration"]["status"], "PENDING");
    }
    let check = wait_offers_health(&app, "degraded").await;
    assert_eq!(check["state"], "unauthorized", "{check:#}");
    // Three jobs retrying every 0.1–1 s for 3 s would call about 18 times; the probe
    // gate lets one call (and at most one `/auth`) through per second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env.sim.stats();
    let registers = after.register_calls - before.register_calls;
    assert!(registers <= 8, "{registers} register calls while the token was rejected");
    let auths = after.auth_calls - before.auth_calls;
    assert!((1..=5).contains(&auths), "{auths} auth calls while the token was rejected");
    let offers_before = env.sim.stats().offers_calls;
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert!(report.aborted, "{report:?}");
    assert!(env.sim.stats().offers_calls - offers_before <= 1, "the sync probes once, then stops");
    assert_eq!(text(&app.state.db, STORED_TOKEN).await, token, "no new token was obtained: the old one stays");

    // `/auth` works but every token is rejected, the new ones too: a new token at most
    // once per probe interval, and still one call per interval.
    env.sim.set_offers_fault(sim::OffersFault::RejectTokens);
    let before = env.sim.stats();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env.sim.stats();
    let registers = after.register_calls - before.register_calls;
    assert!(registers <= 10, "{registers} register calls while every token was rejected");
    let auths = after.auth_calls - before.auth_calls;
    assert!((1..=4).contains(&auths), "{auths} new tokens in 3 s with a 1 s probe interval");
    assert_ne!(text(&app.state.db, STORED_TOKEN).await, token, "the rejected token was replaced");
    assert_eq!(offers_health(&app).await["state"], "unauthorized");

    // Accepted again: everything resumes by itself with the token stored last; the
    // product registered under the first token is registered again.
    env.sim.set_offers_fault(sim::OffersFault::Ok);
    for id in &ids[1..] {
        registered_with_offers(&app, id).await;
    }
    let auths = env.sim.stats().auth_calls;
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.synced, report.reregistered, report.failed), (3, 1, 0), "{report:?}");
    registered_with_offers(&app, &ids[0]).await;
    env.sim.tick_offers();
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.synced, report.failed, report.aborted), (4, 0, false), "{report:?}");
    assert_caught_up(&env, &app, &ids).await;
    wait_offers_health(&app, "up").await;
    assert_eq!(env.sim.stats().auth_calls, auths, "an accepted token is never replaced");
    app.stop().await;
}

#[tokio::test]
async fn a_forgotten_token_is_replaced_once_for_three_nodes_and_the_catalog_recovers() {
    let env = TestEnv::new().await;
    let nodes = [spawn(&env).await, spawn(&env).await, spawn(&env).await];
    let mut ids = Vec::new();
    for node in &nodes {
        ids.extend(registered_products(node, 1).await);
    }
    assert_eq!(env.sim.stats().auth_calls, 1);
    let token = text(&nodes[0].state.db, STORED_TOKEN).await;

    // The service restarts and forgets our token. Slow answers keep the three nodes'
    // first calls (all with the old token) in flight together.
    env.sim.forget_tokens();
    env.sim.set_offers_fault(sim::OffersFault::Slow(Duration::from_millis(200)));
    let forgotten_at = std::time::Instant::now();
    let (reports, created) = tokio::join!(
        futures::future::join_all(nodes.iter().map(|node| sync_offers(&node.node.catalog))),
        futures::future::join_all(nodes.iter().map(|node| create_product(node, "after the restart"))),
    );
    // The first sync after the restart already succeeds on every node: the products the
    // service forgot are queued for registration again.
    for report in reports {
        let report = report.unwrap();
        assert_eq!((report.failed, report.aborted), (0, false), "{report:?}");
    }
    ids.extend(created);
    for id in &ids {
        registered_with_offers(&nodes[0], id).await;
    }
    env.sim.set_offers_fault(sim::OffersFault::Ok);
    env.sim.tick_offers();
    let report = sync_offers(&nodes[1].node.catalog).await.unwrap();
    assert_eq!((report.synced, report.failed, report.aborted), (6, 0, false), "{report:?}");
    assert_caught_up(&env, &nodes[0], &ids).await;
    let recovered = forgotten_at.elapsed();
    assert!(recovered < Duration::from_secs(60), "recovered in {recovered:?}: more than one sync period (1 min)");

    assert_eq!(env.sim.stats().auth_calls, 2, "one new token for the three nodes");
    let db = &nodes[0].state.db;
    assert_ne!(text(db, STORED_TOKEN).await, token);
    assert_eq!(scalar(db, "SELECT COUNT(*) FROM settings WHERE key = 'offers.auth_claim'").await, 0);
    for node in &nodes {
        wait_offers_health(node, "up").await;
    }
    let metrics = nodes[0].http.get(nodes[0].url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("emporium_offers_reauth_total{outcome=\"replaced\"}"), "{metrics}");
    for node in nodes {
        node.stop().await;
    }
}

/// Runs `emporium offers reauth` against the environment's database; returns its output.
async fn offers_reauth(env: &TestEnv, with_offers_url: bool) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_emporium"));
    command.args(["offers", "reauth"]).env_clear().envs(env.env_vars());
    if !with_offers_url {
        command.env_remove("OFFERS_URL");
    }
    let output = command.output().await.expect("run emporium offers reauth");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test]
async fn offers_reauth_command_replaces_the_token_for_every_node() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await;
    registered_products(&app, 1).await;
    let token = text(&app.state.db, STORED_TOKEN).await;

    // With OFFERS_URL the command requests the new token itself; the node, whose old
    // token the service forgot, picks it up without a request of its own.
    env.sim.forget_tokens();
    let said = offers_reauth(&env, true).await;
    assert!(said.contains("replaced the offers access token"), "{said}");
    assert_eq!(env.sim.stats().auth_calls, 2);
    let replaced = text(&app.state.db, STORED_TOKEN).await;
    assert_ne!(replaced, token);
    let id = create_product(&app, "after the command").await;
    registered_with_offers(&app, &id).await;
    assert_eq!(env.sim.stats().auth_calls, 2);

    // Without it the command drops the token, and the next node that needs one requests it.
    let said = offers_reauth(&env, false).await;
    assert!(said.contains("dropped the offers access token"), "{said}");
    assert_eq!(scalar(&app.state.db, "SELECT COUNT(*) FROM settings WHERE key = 'offers.access_token'").await, 0);
    env.sim.forget_tokens();
    let id = create_product(&app, "after the drop").await;
    registered_with_offers(&app, &id).await;
    assert_eq!(env.sim.stats().auth_calls, 3);
    let stored = text(&app.state.db, STORED_TOKEN).await;
    assert!(stored != token && stored != replaced);
    app.stop().await;
}

#[tokio::test]
async fn slow_offers_service_times_out_then_catches_up() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await; // OFFERS_TIMEOUT 500ms
    let ids = registered_products(&app, 2).await;
    env.sim.set_offers_fault(sim::OffersFault::Slow(Duration::from_secs(2)));
    let late = create_product(&app, "late").await;
    wait_last_error(&app, &late, "timed out").await;
    env.sim.tick_offers();
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!(report.failed, 2, "{report:?}");
    wait_offers_health(&app, "degraded").await;
    // The API keeps answering meanwhile.
    app.gql_ok("{ products { totalCount } }", json!({})).await;

    env.sim.set_offers_fault(sim::OffersFault::Ok);
    registered_with_offers(&app, &late).await;
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.synced, report.failed), (3, 0), "{report:?}");
    let mut all = ids;
    all.push(late);
    assert_caught_up(&env, &app, &all).await;
    wait_offers_health(&app, "up").await;
    app.stop().await;
}

#[tokio::test]
async fn malformed_answers_are_failures_and_forgotten_products_are_registered_again() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await;
    let ids = registered_products(&app, 2).await;
    let before: Vec<_> = futures::future::join_all(ids.iter().map(|id| stored_offers(&app, id))).await;
    env.sim.set_offers_fault(sim::OffersFault::Malformed);
    env.sim.tick_offers();
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.synced, report.failed), (0, 2), "{report:?}");
    assert!(report.last_error.as_deref().unwrap_or_default().contains("malformed"), "{report:?}");
    let check = wait_offers_health(&app, "degraded").await;
    assert!(check["last_error"].as_str().unwrap_or_default().contains("malformed"), "{check:#}");
    // Nothing half-applied: the stored offers are the last good ones.
    let during: Vec<_> = futures::future::join_all(ids.iter().map(|id| stored_offers(&app, id))).await;
    assert_eq!(before, during);

    // Registered during the fault: the 2xx counts as registered though the service did
    // not keep it; its first offers fetch fails.
    let forgotten = create_product(&app, "forgotten").await;
    eventually(WAIT, "registered despite the garbled answer", || async {
        (product(&app, &forgotten).await["registration"]["status"] == "REGISTERED").then_some(())
    })
    .await;

    env.sim.set_offers_fault(sim::OffersFault::Ok);
    // The service answers 404 for the forgotten product: registration is queued again.
    let report = sync_offers(&app.node.catalog).await.unwrap();
    assert_eq!((report.synced, report.reregistered, report.failed), (2, 1, 0), "{report:?}");
    registered_with_offers(&app, &forgotten).await;
    let mut all = ids;
    all.push(forgotten);
    assert_caught_up(&env, &app, &all).await;
    wait_offers_health(&app, "up").await;
    app.stop().await;
}

/// Runs `query` on a schema whose database connection counts every statement it
/// executes (sea-orm's metric hook on a real connection); returns the count.
async fn statements_for(app: &TestApp, query: &str) -> (usize, async_graphql::Response) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let executed = Arc::new(AtomicUsize::new(0));
    let mut db = emporium::db::connect(&app.node.config.database).await.unwrap();
    let counter = executed.clone();
    db.set_metric_callback(move |info| {
        if std::env::var("SHOW_SQL").is_ok() {
            eprintln!("SQL: {}", info.statement.sql.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut node = app.node.clone();
    node.shared.db = db;
    node.shared.node_id = "counting".into();
    let offers_url = node.catalog.offers.base_url().to_string();
    node.catalog = Arc::new(
        emporium::catalog::Catalog::new(&node.shared, node.config.catalog.clone(), &offers_url, true).unwrap(),
    );
    node.records = emporium::records::Records::new(&node.shared);
    let schema = emporium::graphql::build(Some(node), emporium::graphql::Transport::Http);
    let response = schema.execute(query).await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    (executed.load(Ordering::SeqCst), response)
}

#[tokio::test]
async fn listing_products_with_offers_costs_a_constant_number_of_statements() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await;
    let batch: Vec<ProductUpsert> = (0..50).map(|n| item(&format!("sku-{n}"), &format!("product {n}"), None)).collect();
    let txn = app.state.db.begin().await.unwrap();
    upsert_by_sku(&app.node.catalog, &txn, &batch).await.unwrap();
    txn.commit().await.unwrap();
    eventually(Duration::from_secs(60), "50 products with offers", || async {
        let with_offers = scalar(&app.state.db, "SELECT COUNT(DISTINCT product_id) FROM offers").await;
        (with_offers == 50).then_some(())
    })
    .await;
    env.sim.tick_offers();
    sync_offers(&app.node.catalog).await.unwrap();

    let query = |first: usize| {
        format!(
            "{{ products(first: {first}) {{ nodes {{ name lowestPrice lowestPriceLast30Days priceReduced
                offers {{ price itemsInStock product {{ sku }} priceTrend {{ changePercent }} lowestPriceLast30Days }}
                priceTrend {{ prices changePercent }} }} }} }}"
        )
    };
    let (for_50, response) = statements_for(&app, &query(50)).await;
    let data = response.data.into_json().unwrap();
    let nodes = data["products"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 50);
    assert!(nodes.iter().all(|node| !node["offers"].as_array().unwrap().is_empty() && node["lowestPrice"].is_i64()));
    let (for_5, _) = statements_for(&app, &query(5)).await;
    // The page, the offers, the price history (two) and the history behind the 30-day
    // lowest prices (two: the prices are recent); an offer's product is the one it was
    // reached through.
    assert_eq!(for_50, for_5, "statements grow with the page size");
    assert_eq!(for_50, 6, "{for_50} statements for one page");
    // The benchmark's query: the page and the offers.
    let (plain, response) =
        statements_for(&app, "{ products(first: 50) { nodes { name offers { price itemsInStock } } } }").await;
    assert_eq!(response.data.into_json().unwrap()["products"]["nodes"].as_array().unwrap().len(), 50);
    assert_eq!(plain, 2);
    app.stop().await;
}

#[tokio::test]
async fn nodes_starting_together_request_one_token() {
    let env = TestEnv::new().await;
    // Slow answers widen the window in which both nodes want a token.
    env.sim.set_offers_fault(sim::OffersFault::Slow(Duration::from_millis(300)));
    // (Built one after the other: SQLite migrations do not take a cluster-wide lock.)
    let (a, b) = (spawn(&env).await, spawn(&env).await);
    let created = futures::future::join_all((0..6).map(|n| {
        let app = if n % 2 == 0 { &a } else { &b };
        async move { create_product(app, &format!("p{n}")).await }
    }))
    .await;
    for id in &created {
        registered_with_offers(&a, id).await;
    }
    assert_eq!(env.sim.stats().auth_calls, 1);
    assert_eq!(scalar(&a.state.db, "SELECT COUNT(*) FROM settings WHERE key = 'offers.access_token'").await, 1);
    assert_eq!(scalar(&a.state.db, "SELECT COUNT(*) FROM settings WHERE key = 'offers.auth_claim'").await, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn registration_survives_a_killed_node() {
    let env = TestEnv::new().await;
    env.sim.set_offers_fault(sim::OffersFault::Down);
    let quiet = [("OFFERS_SYNC_CRON", "0 0 0 1 1 *"), ("OFFERS_TIMEOUT", "500ms")];
    let node = crate::support::NodeProcess::spawn(&env, &quiet).await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(node.url("/graphql"))
        .json(&json!({ "query": "mutation { createProduct(input: { name: \"durable\" }) { id } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["data"]["createProduct"]["id"].as_str().unwrap().to_string();
    let db = env.db().await;
    eventually(WAIT, "a failed registration attempt", || async {
        let attempts = scalar(&db, "SELECT COUNT(*) FROM jobs WHERE attempts >= 1 AND kind = 'catalog.register'").await;
        (attempts >= 1).then_some(())
    })
    .await;
    node.kill().await;

    env.sim.set_offers_fault(sim::OffersFault::Ok);
    let app = spawn(&env).await;
    let product = registered_with_offers(&app, &id).await;
    assert!(product["registration"]["lastError"].is_null());
    assert_eq!(env.sim.stats().registered_products, 1);
    app.stop().await;
}

#[tokio::test]
async fn sync_runs_on_one_node_at_a_time_and_never_overlaps_itself() {
    let env = TestEnv::new().await;
    let every_second = |config: &mut Config| {
        config.catalog.offers_sync_cron = "* * * * * *".into();
        config.catalog.offers_sync_concurrency = 1;
        config.catalog.offers_timeout = Duration::from_secs(2);
    };
    let a = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        every_second(config);
    })
    .await;
    registered_products(&a, 3).await;
    // Each run now takes about 3 × 0.6 s: longer than its one-second period.
    env.sim.set_offers_fault(sim::OffersFault::Slow(Duration::from_millis(600)));
    let slow_since = emporium::db::now_ms() + 1000;
    let b = TestApp::spawn_with(&env, |config| {
        quiet_sync(config);
        every_second(config);
    })
    .await;
    let runs = eventually(Duration::from_secs(40), "four slow sync runs", || async {
        let runs = emporium::jobs::periodic::recent_runs(&a.state.db, "catalog.offers_sync", 100).await.unwrap();
        let slow = runs.iter().filter(|run| run.started_at > slow_since && run.finished_at.is_some()).count();
        (slow >= 4).then_some(runs)
    })
    .await;
    let mut runs = runs;
    runs.sort_by_key(|run| run.started_at);
    for pair in runs.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        let earlier_end = earlier.finished_at.unwrap_or(i64::MAX);
        assert!(later.started_at >= earlier_end, "runs overlap: {earlier:?} and {later:?}");
    }
    let slow: Vec<_> = runs.iter().filter(|run| run.started_at > slow_since && run.finished_at.is_some()).collect();
    assert!(slow.iter().all(|run| run.finished_at.unwrap() - run.started_at >= 1500), "{slow:#?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn offer_price_changes_reach_subscribers_on_any_node() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    let env = TestEnv::new().await;
    let syncing = spawn(&env).await;
    // With Redis the subscriber sits on another node; embedded, events stay in-process.
    let other = if env.redis_url.is_some() { Some(spawn(&env).await) } else { None };
    let listening = other.as_ref().unwrap_or(&syncing);
    let id = create_product(&syncing, "watched").await;
    let unrelated = create_product(&syncing, "unrelated").await;
    registered_with_offers(&syncing, &id).await;
    registered_with_offers(&syncing, &unrelated).await;

    let mut request = format!("ws://{}/graphql/ws", listening.addr).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(Message::Text(json!({ "type": "connection_init" }).to_string().into())).await.unwrap();
    let ack = socket.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
    let subscription = "subscription($id: ID!) { offerPriceChanged(productId: $id) {
        productId offerId offerSourceId previousPrice price at } }";
    socket
        .send(Message::Text(
            json!({ "id": "1", "type": "subscribe", "payload": { "query": subscription, "variables": { "id": id } } })
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    // Give the subscription a moment to be registered before changes happen.
    tokio::time::sleep(Duration::from_millis(300)).await;

    env.sim.tick_offers();
    let report = sync_offers(&syncing.node.catalog).await.unwrap();
    assert!(report.price_changes >= 2, "{report:?}");
    let expected: Vec<(String, Option<i64>)> =
        stored_offers(&syncing, &id).await.into_iter().map(|(source, price, _)| (source, Some(price))).collect();

    // Every change that arrives is about the watched product and matches what is stored.
    let mut received = 0;
    let mut wait = WAIT;
    while let Ok(Some(message)) = tokio::time::timeout(wait, socket.next()).await {
        let message: Value = serde_json::from_str(message.unwrap().to_text().unwrap()).unwrap();
        assert_eq!(message["type"], "next", "{message:#}");
        let change = &message["payload"]["data"]["offerPriceChanged"];
        assert_eq!(change["productId"], json!(id), "only the watched product: {change:#}");
        assert_ne!(change["previousPrice"], change["price"]);
        let source = change["offerSourceId"].as_str().unwrap();
        let current = expected.iter().find(|(known, _)| known == source).and_then(|(_, price)| *price);
        assert_eq!(change["price"].as_i64(), current, "{change:#} vs {expected:?}");
        received += 1;
        wait = Duration::from_millis(500);
    }
    assert!(received >= 1);
    socket.close(None).await.ok();
    syncing.stop().await;
    if let Some(other) = other {
        other.stop().await;
    }
}
