//! Global object identification: every entity has an opaque global id, `node(id:)` and
//! `nodes(ids:)` refetch any of them, and typed arguments refuse other types' ids.

use std::time::Duration;

use emporium::global_id;
use serde_json::{Value, json};

use crate::support::{TestApp, TestEnv, error_code, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// One object of every type that implements `Node`: (`__typename`, id).
async fn one_of_each(app: &TestApp) -> Vec<(&'static str, String)> {
    let product = app
        .gql_ok(
            "mutation { createProduct(input: { name: \"Sekačka\", description: \"d\" }) { id registration { id } } }",
            json!({}),
        )
        .await;
    let product_id = product["createProduct"]["id"].as_str().expect("product id").to_string();
    let registration_id = product["createProduct"]["registration"]["id"].as_str().expect("registration id").to_string();
    let offer_id = eventually(WAIT, "the product's offers", || async {
        let data =
            app.gql_ok("query($id: ID!) { product(id: $id) { offers { id } } }", json!({ "id": product_id })).await;
        data["product"]["offers"][0]["id"].as_str().map(str::to_string)
    })
    .await;

    let customer = app
        .gql_ok("mutation { createCustomer(input: { name: \"Ada\", email: \"ada@example.com\" }) { id } }", json!({}))
        .await["createCustomer"]["id"]
        .as_str()
        .expect("customer id")
        .to_string();
    let record = app
        .gql_ok(
            "mutation { createRecord(input: { title: \"Kind of Blue\", artist: \"Miles Davis\", genre: \"jazz\", \
             releaseYear: 1959, price: 1999, stock: 5 }) { id } }",
            json!({}),
        )
        .await["createRecord"]["id"]
        .as_str()
        .expect("record id")
        .to_string();
    let purchase = app
        .gql_ok(
            "mutation($c: ID!, $r: ID!) { createPurchase(input: { customerId: $c, recordId: $r, quantity: 1 }) { id } }",
            json!({ "c": customer, "r": record }),
        )
        .await["createPurchase"]["id"]
        .as_str()
        .expect("purchase id")
        .to_string();

    let accepted: Value = app
        .http
        .post(app.url("/v1/products"))
        .body(r#"[{"id":"node-1","name":"Node test"}]"#)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("upload json");
    let upload = accepted["node_id"].as_str().expect("the upload's node_id").to_string();

    let intake = app
        .gql_ok(
            "mutation { submitIntake(messages: [{ title: \"Dune\", author: \"Frank Herbert\", year: \"1965\", \
             genre: \"scifi\" }]) { id jobId } }",
            json!({}),
        )
        .await;
    let message = intake["submitIntake"][0]["id"].as_str().expect("message id").to_string();
    let job = intake["submitIntake"][0]["jobId"].as_str().expect("job id").to_string();
    let notice = eventually(WAIT, "the message's notice", || async {
        let data = app.gql_ok("{ intakeNotices(first: 1) { nodes { id } } }", json!({})).await;
        data["intakeNotices"]["nodes"][0]["id"].as_str().map(str::to_string)
    })
    .await;

    vec![
        ("Product", product_id),
        ("ProductRegistration", registration_id),
        ("Offer", offer_id),
        ("Customer", customer),
        ("Record", record),
        ("Purchase", purchase),
        ("Upload", upload),
        ("IntakeMessage", message),
        ("IntakeNotice", notice),
        ("Job", job),
    ]
}

#[tokio::test]
async fn every_entity_is_a_node_that_node_and_nodes_refetch() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let objects = one_of_each(&app).await;

    let mut ids = Vec::new();
    for (type_name, id) in &objects {
        assert!(id.parse::<i64>().is_err(), "{type_name} ids are opaque, not row numbers: {id}");
        let data = app.gql_ok("query($id: ID!) { node(id: $id) { __typename id } }", json!({ "id": id })).await;
        assert_eq!(data["node"], json!({ "__typename": type_name, "id": id }), "{type_name}");
        ids.push(id.clone());
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "one id per object, across types: {ids:?}");

    // `nodes` answers in the order asked, with null for an id of nothing, and repeats.
    let missing = global_id::encode("Product", 987_654_321).0;
    let mut asked: Vec<String> = ids.iter().rev().cloned().collect();
    asked.push(missing.clone());
    asked.push(ids[0].clone());
    let data = app.gql_ok("query($ids: [ID!]!) { nodes(ids: $ids) { __typename id } }", json!({ "ids": asked })).await;
    let answered: Vec<Value> = data["nodes"].as_array().expect("a list").clone();
    assert_eq!(answered.len(), asked.len());
    for (id, node) in asked.iter().zip(&answered) {
        if *id == missing {
            assert!(node.is_null(), "{node}");
        } else {
            assert_eq!(node["id"], json!(id));
        }
    }

    // A node of nothing is null, without an error.
    let data = app.gql_ok("query($id: ID!) { node(id: $id) { id } }", json!({ "id": missing })).await;
    assert!(data["node"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn typed_arguments_refuse_other_types_ids_and_old_numeric_ids() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let customer = app
        .gql_ok("mutation { createCustomer(input: { name: \"Bo\", email: \"bo@example.com\" }) { id } }", json!({}))
        .await["createCustomer"]["id"]
        .as_str()
        .expect("customer id")
        .to_string();

    // A customer's id where a record's is expected: refused, naming both types.
    let response = app.gql("query($id: ID!) { record(id: $id) { id } }", json!({ "id": customer })).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
    let message = response["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Customer") && message.contains("Record"), "{message}");

    let mutation =
        "mutation($c: ID!, $r: ID!) { createPurchase(input: { customerId: $c, recordId: $r, quantity: 1 }) { id } }";
    let response = app.gql(mutation, json!({ "c": customer, "r": customer })).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");

    let response = app
        .gql("query($id: ID!) { purchases(filter: { recordId: $id }) { totalCount } }", json!({ "id": customer }))
        .await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");

    // Ids from before global ids (row numbers), and garbage, are malformed everywhere.
    for malformed in ["1", "42", "abc", "", "UHJvZHVjdDow"] {
        for query in ["query($id: ID!) { customer(id: $id) { id } }", "query($id: ID!) { node(id: $id) { id } }"] {
            let response = app.gql(query, json!({ "id": malformed })).await;
            assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{malformed}: {response}");
        }
    }
    // A well-formed id of a type that has no ids.
    let response = app
        .gql("query($id: ID!) { node(id: $id) { id } }", json!({ "id": global_id::encode("PriceTrend", 1).0 }))
        .await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");

    // `nodes` is bounded like a page.
    let too_many: Vec<String> = (1..=101).map(|row| global_id::encode("Customer", row).0).collect();
    let response = app.gql("query($ids: [ID!]!) { nodes(ids: $ids) { id } }", json!({ "ids": too_many })).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
    app.stop().await;
}

#[tokio::test]
async fn the_rest_upload_answer_carries_the_graphql_id() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let accepted: Value = app
        .http
        .post(app.url("/v1/products"))
        .body(r#"[{"id":"rest-1","name":"REST"}]"#)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let rest_id = accepted["upload_id"].as_str().expect("upload_id");
    let node_id = accepted["node_id"].as_str().expect("node_id");

    let view: Value = app
        .http
        .get(app.url(&format!("/v1/uploads/{rest_id}")))
        .send()
        .await
        .expect("get upload")
        .json()
        .await
        .expect("json");
    assert_eq!((view["id"].as_str(), view["node_id"].as_str()), (Some(rest_id), Some(node_id)));

    let data = app.gql_ok("query($id: ID!) { upload(id: $id) { id digest } }", json!({ "id": node_id })).await;
    assert_eq!(data["upload"]["id"], json!(node_id));
    assert_eq!(data["upload"]["digest"], accepted["digest"]);
    app.stop().await;
}
