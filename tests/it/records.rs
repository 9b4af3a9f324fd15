//! The record store through GraphQL: customers, records, purchases with the
//! oversell-proof stock rule, cancellation, filters, and the error codes of bad input.
//! The concurrency tests send real concurrent HTTP requests to one node.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::{TestApp, TestEnv, error_code};

const CUSTOMER_FIELDS: &str = "id name email active createdAt deactivatedAt";
const RECORD_FIELDS: &str = "id title artist genre releaseYear price stock inStock";
const PURCHASE_FIELDS: &str =
    "id quantity unitPrice total effective status createdAt cancelledAt customer { id } record { id stock }";

async fn create_customer(app: &TestApp, name: &str, email: &str) -> Value {
    let query =
        format!("mutation($input: CreateCustomerInput!) {{ createCustomer(input: $input) {{ {CUSTOMER_FIELDS} }} }}");
    app.gql(&query, json!({ "input": { "name": name, "email": email } })).await
}

async fn customer_id(app: &TestApp, name: &str, email: &str) -> String {
    let response = create_customer(app, name, email).await;
    response["data"]["createCustomer"]["id"].as_str().unwrap_or_else(|| panic!("customer created: {response:#}")).into()
}

async fn create_record(app: &TestApp, input: Value) -> Value {
    let query = format!("mutation($input: CreateRecordInput!) {{ createRecord(input: $input) {{ {RECORD_FIELDS} }} }}");
    app.gql(&query, json!({ "input": input })).await
}

fn record_input(title: &str, artist: &str, genre: &str, year: i64, price: i64, stock: i64) -> Value {
    json!({ "title": title, "artist": artist, "genre": genre, "releaseYear": year, "price": price, "stock": stock })
}

async fn record_id(app: &TestApp, price: i64, stock: i64) -> String {
    let response = create_record(app, record_input("Kind of Blue", "Miles Davis", "Jazz", 1959, price, stock)).await;
    response["data"]["createRecord"]["id"].as_str().unwrap_or_else(|| panic!("record created: {response:#}")).into()
}

async fn purchase(app: &TestApp, customer: &str, record: &str, quantity: i64) -> Value {
    let query =
        format!("mutation($input: CreatePurchaseInput!) {{ createPurchase(input: $input) {{ {PURCHASE_FIELDS} }} }}");
    app.gql(&query, json!({ "input": { "customerId": customer, "recordId": record, "quantity": quantity } })).await
}

async fn cancel(app: &TestApp, id: &str) -> Value {
    let query = format!("mutation($id: ID!) {{ cancelPurchase(id: $id) {{ {PURCHASE_FIELDS} }} }}");
    app.gql(&query, json!({ "id": id })).await
}

async fn restock(app: &TestApp, record: &str, quantity: i64) -> Value {
    app.gql(
        "mutation($id: ID!, $quantity: Int!) { restockRecord(id: $id, quantity: $quantity) { stock } }",
        json!({ "id": record, "quantity": quantity }),
    )
    .await
}

async fn stock(app: &TestApp, record: &str) -> i64 {
    let data = app.gql_ok("query($id: ID!) { record(id: $id) { stock } }", json!({ "id": record })).await;
    data["record"]["stock"].as_i64().expect("stock")
}

/// `totalCount` and ids of purchases matching `filter`.
async fn purchases(app: &TestApp, filter: Value) -> (i64, Vec<String>) {
    let data = app
        .gql_ok(
            "query($filter: PurchaseFilter) { purchases(first: 100, filter: $filter) { totalCount nodes { id } } }",
            json!({ "filter": filter }),
        )
        .await;
    let ids = data["purchases"]["nodes"].as_array().expect("nodes").iter().map(|n| n["id"].as_str().unwrap().into());
    (data["purchases"]["totalCount"].as_i64().expect("totalCount"), ids.collect())
}

/// A well-formed id of a `type_name` that names nothing (no such row).
fn id_of_nothing(type_name: &str, row: i64) -> String {
    emporium::global_id::encode(type_name, row).0
}

fn ids(nodes: &Value) -> Vec<String> {
    nodes.as_array().expect("nodes").iter().map(|node| node["id"].as_str().expect("id").to_string()).collect()
}

#[tokio::test]
async fn customers_have_unique_emails_and_deactivate_once() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;

    let ana = create_customer(&app, "  Ana Souza ", " Ana@Example.com").await;
    let ana = &ana["data"]["createCustomer"];
    assert_eq!(ana["name"], "Ana Souza");
    assert_eq!(ana["email"], "Ana@Example.com");
    assert_eq!(ana["active"], true);
    assert!(ana["deactivatedAt"].is_null());
    let ana_id = ana["id"].as_str().unwrap().to_string();

    // The same address in another case is taken; malformed addresses and names are refused.
    assert_eq!(error_code(&create_customer(&app, "Other", "ANA@example.COM").await).as_deref(), Some("CONFLICT"));
    for bad in ["ana", "ana@", "@example.com", "ana @example.com", "ana@example", ""] {
        let response = create_customer(&app, "Bad", bad).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{bad}: {response:#}");
    }
    assert_eq!(error_code(&create_customer(&app, "   ", "blank@example.com").await).as_deref(), Some("BAD_USER_INPUT"));

    let bruno = customer_id(&app, "Bruno Lima", "bruno@example.com").await;
    let update =
        "mutation($id: ID!, $input: UpdateCustomerInput!) { updateCustomer(id: $id, input: $input) { name email } }";
    let updated = app.gql_ok(update, json!({ "id": bruno, "input": { "name": "Bruno L." } })).await;
    assert_eq!(updated["updateCustomer"], json!({ "name": "Bruno L.", "email": "bruno@example.com" }));
    let taken = app.gql(update, json!({ "id": bruno, "input": { "email": "ANA@EXAMPLE.COM" } })).await;
    assert_eq!(error_code(&taken).as_deref(), Some("CONFLICT"));
    let unknown = app.gql(update, json!({ "id": id_of_nothing("Customer", 999_999), "input": { "name": "X" } })).await;
    assert_eq!(error_code(&unknown).as_deref(), Some("NOT_FOUND"));

    let deactivate = "mutation($id: ID!) { deactivateCustomer(id: $id) { id active deactivatedAt } }";
    let first = app.gql_ok(deactivate, json!({ "id": ana_id })).await;
    assert_eq!(first["deactivateCustomer"]["active"], false);
    assert!(first["deactivateCustomer"]["deactivatedAt"].is_string());
    assert_eq!(error_code(&app.gql(deactivate, json!({ "id": ana_id })).await).as_deref(), Some("CONFLICT"));
    assert_eq!(
        error_code(&app.gql(deactivate, json!({ "id": id_of_nothing("Customer", 424_242) })).await).as_deref(),
        Some("NOT_FOUND")
    );
    assert_eq!(error_code(&app.gql(deactivate, json!({ "id": "abc" })).await).as_deref(), Some("BAD_USER_INPUT"));
    // Deactivated customers keep their address.
    assert_eq!(error_code(&create_customer(&app, "Ana 2", "ana@example.com").await).as_deref(), Some("CONFLICT"));

    let list = "query($filter: CustomerFilter) { customers(filter: $filter) { totalCount nodes { id } } }";
    let active = app.gql_ok(list, json!({ "filter": { "active": true } })).await;
    assert_eq!(ids(&active["customers"]["nodes"]), vec![bruno.clone()]);
    let inactive = app.gql_ok(list, json!({ "filter": { "active": false } })).await;
    assert_eq!(ids(&inactive["customers"]["nodes"]), vec![ana_id.clone()]);
    let by_name = app.gql_ok(list, json!({ "filter": { "search": "SOUZA" } })).await;
    assert_eq!(ids(&by_name["customers"]["nodes"]), vec![ana_id.clone()]);
    let by_email = app.gql_ok(list, json!({ "filter": { "search": "bruno@" } })).await;
    assert_eq!(by_email["customers"]["totalCount"], 1);
    let wildcard = app.gql_ok(list, json!({ "filter": { "search": "%" } })).await;
    assert_eq!(wildcard["customers"]["totalCount"], 0, "`%` is matched literally");

    let one = app.gql_ok("query($id: ID!) { customer(id: $id) { email active } }", json!({ "id": ana_id })).await;
    assert_eq!(one["customer"], json!({ "email": "Ana@Example.com", "active": false }));
    let none =
        app.gql_ok(&format!("{{ customer(id: \"{}\") {{ id }} }}", id_of_nothing("Customer", 31_337)), json!({})).await;
    assert!(none["customer"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn records_validate_and_filter() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let catalog = [
        ("Kind of Blue", "Miles Davis", "Jazz", 1959, 2999, 3),
        ("Bitches Brew", "Miles Davis", "jazz", 1970, 3499, 0),
        ("Abbey Road", "The Beatles", "Rock", 1969, 2599, 5),
        ("Construção", "Chico Buarque", "MPB", 1971, 1999, 1),
    ];
    let mut ids_by_title = std::collections::HashMap::new();
    for (title, artist, genre, year, price, stock) in catalog {
        let response = create_record(&app, record_input(title, artist, genre, year, price, stock)).await;
        let record = &response["data"]["createRecord"];
        assert_eq!(record["stock"], stock, "{response:#}");
        assert_eq!(record["inStock"], stock > 0);
        ids_by_title.insert(title, record["id"].as_str().unwrap().to_string());
    }

    for (input, what) in [
        (record_input("X", "Y", "Z", 0, 100, 1), "year 0"),
        (record_input("X", "Y", "Z", 3000, 100, 1), "year 3000"),
        (record_input("X", "Y", "Z", 1990, -1, 1), "negative price"),
        (record_input("X", "Y", "Z", 1990, 100, -1), "negative stock"),
        (record_input(" ", "Y", "Z", 1990, 100, 1), "blank title"),
    ] {
        let response = create_record(&app, input).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{what}: {response:#}");
    }

    let list = "query($filter: RecordFilter) { records(filter: $filter) { totalCount nodes { id title } } }";
    let titles = |data: &Value| -> Vec<String> {
        data["records"]["nodes"].as_array().unwrap().iter().map(|n| n["title"].as_str().unwrap().to_string()).collect()
    };
    let cases = [
        (json!({ "artist": "miles" }), vec!["Kind of Blue", "Bitches Brew"]),
        (json!({ "artist": "BEATLES" }), vec!["Abbey Road"]),
        (json!({ "title": "road" }), vec!["Abbey Road"]),
        (json!({ "title": "CONSTRUÇÃO" }), vec!["Construção"]),
        (json!({ "genre": "JAZZ" }), vec!["Kind of Blue", "Bitches Brew"]),
        (json!({ "genre": "jaz" }), vec![]),
        (json!({ "releaseYear": 1969 }), vec!["Abbey Road"]),
        (json!({ "inStock": false }), vec!["Bitches Brew"]),
        (json!({ "inStock": true, "artist": "davis" }), vec!["Kind of Blue"]),
        (json!({ "genre": "jazz", "releaseYear": 1970 }), vec!["Bitches Brew"]),
    ];
    for (filter, expected) in cases {
        let data = app.gql_ok(list, json!({ "filter": filter })).await;
        assert_eq!(titles(&data), expected, "filter {filter}");
        assert_eq!(data["records"]["totalCount"], expected.len(), "filter {filter}");
    }
    for year in [0, 3000] {
        let response = app.gql(list, json!({ "filter": { "releaseYear": year } })).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "year {year}");
    }

    // Pages follow the id order and the cursor.
    let page =
        app.gql_ok("{ records(first: 2) { nodes { title } pageInfo { hasNextPage endCursor } } }", json!({})).await;
    assert_eq!(page["records"]["pageInfo"]["hasNextPage"], true);
    let after = page["records"]["pageInfo"]["endCursor"].clone();
    let rest = app
        .gql_ok(
            "query($after: String) { records(first: 10, after: $after) { nodes { title } } }",
            json!({ "after": after }),
        )
        .await;
    assert_eq!(titles(&rest), vec!["Abbey Road", "Construção"]);

    let abbey = ids_by_title["Abbey Road"].clone();
    let update = "mutation($id: ID!, $input: UpdateRecordInput!) { updateRecord(id: $id, input: $input) { title genre price stock releaseYear } }";
    let updated = app.gql_ok(update, json!({ "id": abbey, "input": { "genre": "Pop Rock", "price": 2799 } })).await;
    assert_eq!(
        updated["updateRecord"],
        json!({ "title": "Abbey Road", "genre": "Pop Rock", "price": 2799, "stock": 5, "releaseYear": 1969 })
    );
    let bad = app.gql(update, json!({ "id": abbey, "input": { "releaseYear": 3000 } })).await;
    assert_eq!(error_code(&bad).as_deref(), Some("BAD_USER_INPUT"));
    let bad = app.gql(update, json!({ "id": abbey, "input": { "price": -5 } })).await;
    assert_eq!(error_code(&bad).as_deref(), Some("BAD_USER_INPUT"));
    let missing = app.gql(update, json!({ "id": id_of_nothing("Record", 987_654), "input": { "price": 5 } })).await;
    assert_eq!(error_code(&missing).as_deref(), Some("NOT_FOUND"));
    let data = app.gql_ok(list, json!({ "filter": { "genre": "pop rock" } })).await;
    assert_eq!(titles(&data), vec!["Abbey Road"]);

    assert_eq!(restock(&app, &abbey, 4).await["data"]["restockRecord"]["stock"], 9);
    for quantity in [0, -2] {
        assert_eq!(error_code(&restock(&app, &abbey, quantity).await).as_deref(), Some("BAD_USER_INPUT"));
    }
    assert_eq!(error_code(&restock(&app, &abbey, i64::from(i32::MAX)).await).as_deref(), Some("BAD_USER_INPUT"));
    assert_eq!(error_code(&restock(&app, &id_of_nothing("Record", 555_555), 1).await).as_deref(), Some("NOT_FOUND"));
    assert_eq!(stock(&app, &abbey).await, 9);
    app.stop().await;
}

#[tokio::test]
async fn purchases_take_stock_or_are_stored_out_of_stock() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let customer = customer_id(&app, "Carla", "carla@example.com").await;
    let record = record_id(&app, 2500, 3).await;

    let bought = purchase(&app, &customer, &record, 2).await;
    let bought = &bought["data"]["createPurchase"];
    assert_eq!(bought["status"], "EFFECTIVE");
    assert_eq!(bought["effective"], true);
    assert_eq!(bought["unitPrice"], 2500);
    assert_eq!(bought["total"], 5000);
    assert_eq!(bought["customer"]["id"], customer.as_str());
    assert_eq!(bought["record"]["stock"], 1);
    assert!(bought["cancelledAt"].is_null());

    // Not enough stock: stored anyway, stock untouched.
    let short = purchase(&app, &customer, &record, 2).await;
    let short = &short["data"]["createPurchase"];
    assert_eq!(short["status"], "OUT_OF_STOCK");
    assert_eq!(short["effective"], false);
    assert_eq!(short["total"], 5000);
    assert_eq!(stock(&app, &record).await, 1);

    // The unit price is the one at purchase time.
    let reprice = "mutation($id: ID!) { updateRecord(id: $id, input: { price: 3000 }) { price } }";
    app.gql_ok(reprice, json!({ "id": record })).await;
    let last = purchase(&app, &customer, &record, 1).await;
    assert_eq!(last["data"]["createPurchase"]["unitPrice"], 3000);
    assert_eq!(last["data"]["createPurchase"]["status"], "EFFECTIVE");
    let first_again =
        app.gql_ok("query($id: ID!) { purchase(id: $id) { unitPrice } }", json!({ "id": bought["id"] })).await;
    assert_eq!(first_again["purchase"]["unitPrice"], 2500);
    assert_eq!(stock(&app, &record).await, 0);

    let nested = app
        .gql_ok(
            "query($id: ID!) { customer(id: $id) { purchases(first: 2) { totalCount nodes { status } pageInfo { hasNextPage } } } }",
            json!({ "id": customer }),
        )
        .await;
    let nested = &nested["customer"]["purchases"];
    assert_eq!(nested["totalCount"], 3);
    assert_eq!(nested["nodes"], json!([{ "status": "EFFECTIVE" }, { "status": "OUT_OF_STOCK" }]));
    assert_eq!(nested["pageInfo"]["hasNextPage"], true);
    app.stop().await;
}

#[tokio::test]
async fn bad_purchases_are_refused_with_codes_and_store_nothing() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let customer = customer_id(&app, "Dora", "dora@example.com").await;
    let gone = customer_id(&app, "Gone", "gone@example.com").await;
    app.gql_ok("mutation($id: ID!) { deactivateCustomer(id: $id) { active } }", json!({ "id": gone })).await;
    let record = record_id(&app, 1000, 10).await;
    let pricey = record_id(&app, 2_000_000_000, 10).await;

    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({ "customerId": id_of_nothing("Customer", 999_999), "recordId": record, "quantity": 1 }),
            "NOT_FOUND",
            "unknown customer",
        ),
        (json!({ "customerId": gone, "recordId": record, "quantity": 1 }), "CONFLICT", "inactive customer"),
        (
            json!({ "customerId": customer, "recordId": id_of_nothing("Record", 999_999), "quantity": 1 }),
            "NOT_FOUND",
            "unknown record",
        ),
        (json!({ "customerId": customer, "recordId": record, "quantity": 0 }), "BAD_USER_INPUT", "quantity 0"),
        (json!({ "customerId": customer, "recordId": record, "quantity": -1 }), "BAD_USER_INPUT", "negative quantity"),
        (
            json!({ "customerId": customer, "recordId": record, "quantity": 2_147_483_648_i64 }),
            "BAD_USER_INPUT",
            "2^31",
        ),
        (json!({ "customerId": customer, "recordId": record, "quantity": 1e20 }), "BAD_USER_INPUT", "huge quantity"),
        (json!({ "customerId": "x1", "recordId": record, "quantity": 1 }), "BAD_USER_INPUT", "malformed customer id"),
        (json!({ "customerId": customer, "recordId": "-4", "quantity": 1 }), "BAD_USER_INPUT", "malformed record id"),
        (json!({ "customerId": customer, "recordId": pricey, "quantity": 2 }), "BAD_USER_INPUT", "total above Int"),
    ];
    let mutation = "mutation($input: CreatePurchaseInput!) { createPurchase(input: $input) { id } }";
    for (input, code, what) in cases {
        let response = app.gql(mutation, json!({ "input": input })).await;
        assert_eq!(error_code(&response).as_deref(), Some(code), "{what}: {response:#}");
        assert!(response["errors"][0]["message"].is_string(), "{what}");
    }
    // The same limit written as a literal in the query.
    let literal = format!(
        "mutation {{ createPurchase(input: {{ customerId: \"{customer}\", recordId: \"{record}\", quantity: 2147483648 }}) {{ id }} }}"
    );
    let response = app.gql(&literal, json!({})).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response:#}");

    assert_eq!(purchases(&app, json!({})).await.0, 0, "nothing was stored");
    assert_eq!(stock(&app, &record).await, 10);
    assert_eq!(stock(&app, &pricey).await, 10, "a refused purchase gives its units back");
    app.stop().await;
}

#[tokio::test]
async fn cancellation_returns_units_exactly_once() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let customer = customer_id(&app, "Eva", "eva@example.com").await;
    let record = record_id(&app, 1500, 5).await;

    let bought = purchase(&app, &customer, &record, 3).await;
    let bought_id = bought["data"]["createPurchase"]["id"].as_str().unwrap().to_string();
    assert_eq!(stock(&app, &record).await, 2);
    let short = purchase(&app, &customer, &record, 3).await;
    let short_id = short["data"]["createPurchase"]["id"].as_str().unwrap().to_string();

    let cancelled = cancel(&app, &bought_id).await;
    let cancelled = &cancelled["data"]["cancelPurchase"];
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["effective"], false);
    assert!(cancelled["cancelledAt"].is_string());
    assert_eq!(cancelled["record"]["stock"], 5);

    assert_eq!(error_code(&cancel(&app, &bought_id).await).as_deref(), Some("CONFLICT"), "cancel twice");
    assert_eq!(error_code(&cancel(&app, &short_id).await).as_deref(), Some("CONFLICT"), "cancel out-of-stock");
    assert_eq!(error_code(&cancel(&app, &id_of_nothing("Purchase", 777_777)).await).as_deref(), Some("NOT_FOUND"));
    assert_eq!(error_code(&cancel(&app, "seven").await).as_deref(), Some("BAD_USER_INPUT"));
    assert_eq!(stock(&app, &record).await, 5);

    // Racing cancellations of one purchase: one wins, the units come back once.
    let again = purchase(&app, &customer, &record, 4).await;
    let again_id = again["data"]["createPurchase"]["id"].as_str().unwrap().to_string();
    assert_eq!(stock(&app, &record).await, 1);
    let results = join_all((0..20).map(|_| cancel(&app, &again_id))).await;
    let won = results.iter().filter(|r| r["data"]["cancelPurchase"]["status"] == "CANCELLED").count();
    let conflicts = results.iter().filter(|r| error_code(r).as_deref() == Some("CONFLICT")).count();
    assert_eq!((won, conflicts), (1, 19), "{results:#?}");
    assert_eq!(stock(&app, &record).await, 5);

    let (count, _) = purchases(&app, json!({ "status": "CANCELLED" })).await;
    assert_eq!(count, 2);
    let (count, listed) = purchases(&app, json!({ "status": "OUT_OF_STOCK", "customerId": customer })).await;
    assert_eq!((count, listed), (1, vec![short_id]));
    app.stop().await;
}

#[tokio::test]
async fn purchase_periods_are_half_open_in_utc() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let customer = customer_id(&app, "Fábio", "fabio@example.com").await;
    let other = customer_id(&app, "Gil", "gil@example.com").await;
    let record = record_id(&app, 100, 100).await;
    let second_record = record_id(&app, 100, 100).await;

    let mut made = Vec::new();
    for (who, what) in [(&customer, &record), (&other, &record), (&customer, &second_record)] {
        let response = purchase(&app, who, what, 1).await;
        let created = &response["data"]["createPurchase"];
        let at: DateTime<Utc> = created["createdAt"].as_str().unwrap().parse().unwrap();
        made.push((created["id"].as_str().unwrap().to_string(), at));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let (p1, t1) = made[0].clone();
    let (p2, t2) = made[1].clone();
    let (p3, t3) = made[2].clone();
    assert!(t1 < t2 && t2 < t3);
    let at = |t: DateTime<Utc>| t.to_rfc3339();

    assert_eq!(purchases(&app, json!({ "from": at(t2) })).await.1, vec![p2.clone(), p3.clone()], "from is inclusive");
    assert_eq!(purchases(&app, json!({ "to": at(t2) })).await.1, vec![p1.clone()], "to is exclusive");
    assert_eq!(purchases(&app, json!({ "from": at(t1), "to": at(t3) })).await.1, vec![p1.clone(), p2.clone()]);
    assert_eq!(purchases(&app, json!({ "from": at(t2), "to": at(t2) })).await.0, 0, "an empty period");
    // Half a millisecond after a purchase no longer includes it.
    let later = t2 + chrono::Duration::microseconds(500);
    assert_eq!(purchases(&app, json!({ "from": later.to_rfc3339() })).await.1, vec![p3.clone()]);
    // The same instant written with another offset.
    let offset = t2.with_timezone(&chrono::FixedOffset::east_opt(3 * 3600).unwrap()).to_rfc3339();
    assert!(offset.ends_with("+03:00"));
    assert_eq!(purchases(&app, json!({ "from": offset })).await.1, vec![p2.clone(), p3.clone()]);

    // Combined with customer and record.
    assert_eq!(purchases(&app, json!({ "customerId": customer, "from": at(t2) })).await.1, vec![p3.clone()]);
    assert_eq!(purchases(&app, json!({ "recordId": record })).await.1, vec![p1.clone(), p2.clone()]);

    let inverted = app
        .gql(
            "query($filter: PurchaseFilter) { purchases(filter: $filter) { totalCount } }",
            json!({ "filter": { "from": at(t3), "to": at(t1) } }),
        )
        .await;
    assert_eq!(error_code(&inverted).as_deref(), Some("BAD_USER_INPUT"), "{inverted:#}");
    let malformed = app
        .gql(
            "query($filter: PurchaseFilter) { purchases(filter: $filter) { totalCount } }",
            json!({ "filter": { "from": "yesterday" } }),
        )
        .await;
    assert_eq!(error_code(&malformed).as_deref(), Some("BAD_USER_INPUT"), "{malformed:#}");
    // Dates: the start of the day, in UTC.
    let day = t1.date_naive();
    let next_day = t3.date_naive().succ_opt().unwrap().to_string();
    assert_eq!(purchases(&app, json!({ "from": day.to_string(), "to": next_day })).await.0, 3);
    assert_eq!(purchases(&app, json!({ "to": day.to_string() })).await.0, 0, "before that day's start");
    let bad_id = app.gql("{ purchases(filter: { customerId: \"abc\" }) { totalCount } }", json!({})).await;
    assert_eq!(error_code(&bad_id).as_deref(), Some("BAD_USER_INPUT"));

    // Lists resolve their customers and records in batches; the answers are right.
    let listed = app.gql_ok("{ purchases { nodes { id customer { email } record { id } } } }", json!({})).await;
    let emails: Vec<&str> = listed["purchases"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["customer"]["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, vec!["fabio@example.com", "gil@example.com", "fabio@example.com"]);
    let customers =
        app.gql_ok("{ customers { nodes { email purchases { totalCount nodes { id } } } } }", json!({})).await;
    assert_eq!(
        customers["customers"]["nodes"],
        json!([
            { "email": "fabio@example.com", "purchases": { "totalCount": 2, "nodes": [{ "id": p1 }, { "id": p3 }] } },
            { "email": "gil@example.com", "purchases": { "totalCount": 1, "nodes": [{ "id": p2 }] } },
        ])
    );
    app.stop().await;
}

/// Polls the record's stock until `stop`, recording the lowest value seen.
fn watch_stock(app: &TestApp, record: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let http = app.http.clone();
    let url = app.url("/graphql");
    let record = record.to_string();
    tokio::spawn(async move {
        let lowest = AtomicI64::new(i64::MAX);
        while !stop.load(Ordering::Relaxed) {
            let body =
                json!({ "query": "query($id: ID!) { record(id: $id) { stock } }", "variables": { "id": record } });
            if let Ok(response) = http.post(&url).json(&body).send().await
                && let Ok(value) = response.json::<Value>().await
                && let Some(stock) = value["data"]["record"]["stock"].as_i64()
            {
                lowest.fetch_min(stock, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lowest.load(Ordering::Relaxed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_never_oversell() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let customer = customer_id(&app, "Hana", "hana@example.com").await;
    let record = record_id(&app, 1999, 50).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_stock(&app, &record, stop.clone());

    let requests = (0..200).map(|_| {
        let (http, url) = (app.http.clone(), app.url("/graphql"));
        let body = json!({
            "query": "mutation($input: CreatePurchaseInput!) { createPurchase(input: $input) { status } }",
            "variables": { "input": { "customerId": customer, "recordId": record, "quantity": 1 } },
        });
        tokio::spawn(async move { http.post(url).json(&body).send().await?.json::<Value>().await })
    });
    let responses: Vec<Value> = join_all(requests).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let lowest = watcher.await.unwrap();

    let status_count =
        |status: &str| responses.iter().filter(|r| r["data"]["createPurchase"]["status"] == status).count();
    let errors: Vec<&Value> = responses.iter().filter(|r| r.get("errors").is_some()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(status_count("EFFECTIVE"), 50);
    assert_eq!(status_count("OUT_OF_STOCK"), 150);
    assert_eq!(stock(&app, &record).await, 0);
    assert!(lowest >= 0, "stock was seen at {lowest}");
    // What is stored agrees with what the clients were told.
    assert_eq!(purchases(&app, json!({ "status": "EFFECTIVE" })).await.0, 50);
    assert_eq!(purchases(&app, json!({ "status": "OUT_OF_STOCK" })).await.0, 150);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_cancellations_and_restocks_add_up() {
    let env = TestEnv::new().await;
    let app = Arc::new(TestApp::spawn(&env).await);
    let customer = customer_id(&app, "Iara", "iara@example.com").await;
    const INITIAL: i64 = 50;
    let record = record_id(&app, 1000, INITIAL).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_stock(&app, &record, stop.clone());

    // 200 buyers; every third that gets its units cancels at once, twice in parallel
    // (only one of the two may succeed); 25 restocks of 2 units run alongside.
    let buyers = (0..200).map(|i| {
        let (app, customer, record) = (app.clone(), customer.clone(), record.clone());
        tokio::spawn(async move {
            let response = purchase(&app, &customer, &record, 1).await;
            let bought = &response["data"]["createPurchase"];
            assert!(bought["status"].is_string(), "{response:#}");
            let effective = bought["status"] == "EFFECTIVE";
            let mut cancelled = 0;
            if effective && i % 3 == 0 {
                let id = bought["id"].as_str().unwrap().to_string();
                let (a, b) = tokio::join!(cancel(&app, &id), cancel(&app, &id));
                for result in [a, b] {
                    match error_code(&result).as_deref() {
                        None => cancelled += 1,
                        Some("CONFLICT") => {}
                        other => panic!("unexpected cancel outcome {other:?}: {result:#}"),
                    }
                }
                assert_eq!(cancelled, 1, "exactly one of two racing cancellations wins");
            }
            (effective, cancelled)
        })
    });
    let restocks = (0..25).map(|i| {
        let (app, record) = (app.clone(), record.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 4)).await;
            let response = restock(&app, &record, 2).await;
            assert!(response.get("errors").is_none(), "{response:#}");
            2
        })
    });
    let (bought, restocked) = tokio::join!(join_all(buyers), join_all(restocks));
    stop.store(true, Ordering::Relaxed);
    let lowest = watcher.await.unwrap();

    let outcomes: Vec<(bool, i64)> = bought.into_iter().map(|r| r.unwrap()).collect();
    let effective = outcomes.iter().filter(|(effective, _)| *effective).count() as i64;
    let cancelled: i64 = outcomes.iter().map(|(_, cancelled)| cancelled).sum();
    let restocked: i64 = restocked.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(restocked, 50);
    assert!(effective >= INITIAL, "at least the initial stock sold ({effective})");
    assert!(effective <= INITIAL + restocked + cancelled, "never more than was ever on hand");
    assert!(cancelled > 0);

    let final_stock = stock(&app, &record).await;
    assert_eq!(final_stock, INITIAL + restocked - effective + cancelled);
    assert!(lowest >= 0, "stock was seen at {lowest}");
    // Stored statuses agree with the clients' view.
    assert_eq!(purchases(&app, json!({ "status": "CANCELLED" })).await.0, cancelled);
    assert_eq!(purchases(&app, json!({ "status": "EFFECTIVE" })).await.0, effective - cancelled);
    assert_eq!(purchases(&app, json!({ "status": "OUT_OF_STOCK" })).await.0, 200 - effective);
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("the app is still shared"),
    }
}
