//! GraphQL over HTTP as clients meet it: media types and statuses, batching, the cost in
//! `extensions.cost`, errors without line-0 locations, `operationName` on GET,
//! introspection on and off, and the WebSocket's origin check. (Apollo, urql, graphql-ws
//! and the graphql-http audit run as real clients in `clients/`.)

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::support::{TestApp, TestEnv, error_code};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

async fn post(app: &TestApp, accept: Option<&str>, body: &Value) -> (StatusCode, String, Value) {
    let mut request = app.http.post(app.url("/graphql")).json(body);
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let response = request.send().await.expect("a response");
    let status = response.status();
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap_or_default().to_string();
    (status, content_type, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn media_types_decide_the_status_of_refused_requests() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let broken = json!({ "query": "{ jobCounts { queued " });

    // The legacy convention: 200 with `data: null`.
    let (status, content_type, body) = post(&app, Some("application/json"), &broken).await;
    assert_eq!((status, content_type.starts_with("application/json")), (StatusCode::OK, true));
    assert_eq!(error_code(&body).as_deref(), Some("GRAPHQL_PARSE_FAILED"));
    assert!(body.as_object().is_some_and(|body| body.contains_key("data")), "{body:#}");

    // The GraphQL-over-HTTP media type: 400, and no `data` at all.
    let (status, content_type, body) = post(&app, Some(GRAPHQL_RESPONSE), &broken).await;
    assert_eq!((status, content_type.starts_with(GRAPHQL_RESPONSE)), (StatusCode::BAD_REQUEST, true));
    assert!(body.get("data").is_none(), "{body:#}");
    let (status, _, body) = post(&app, Some(GRAPHQL_RESPONSE), &json!({ "query": "{ noSuchField }" })).await;
    assert_eq!((status, error_code(&body).as_deref()), (StatusCode::BAD_REQUEST, Some("GRAPHQL_VALIDATION_FAILED")));

    // A field error is not a refusal: 200 in both.
    let (status, _, body) =
        post(&app, Some(GRAPHQL_RESPONSE), &json!({ "query": "{ job(id: \"999\") { id } }" })).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");

    // Nothing acceptable: 406, still in the GraphQL shape.
    let (status, _, body) = post(&app, Some("text/html"), &json!({ "query": "{ __typename }" })).await;
    assert_eq!((status, error_code(&body).as_deref()), (StatusCode::NOT_ACCEPTABLE, Some("NOT_ACCEPTABLE")));
    app.stop().await;
}

#[tokio::test]
async fn batches_are_answered_in_order_and_capped() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let batch = json!([
        { "query": "query A { jobCounts { queued } }" },
        { "query": "{ __typename }" },
        { "query": "{ nope" },
    ]);
    let (status, _, body) = post(&app, None, &batch).await;
    assert_eq!(status, StatusCode::OK);
    let answers = body.as_array().expect("an array");
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["data"]["jobCounts"]["queued"], 0);
    assert_eq!(answers[1]["data"]["__typename"], "Query");
    assert_eq!(error_code(&answers[2]).as_deref(), Some("GRAPHQL_PARSE_FAILED"));

    // 1,000 operations in one request: refused as a whole, nothing run.
    let flood: Vec<Value> = (0..1000).map(|_| json!({ "query": "{ jobCounts { queued } }" })).collect();
    let (status, _, body) = post(&app, None, &Value::Array(flood)).await;
    assert_eq!((status, error_code(&body).as_deref()), (StatusCode::BAD_REQUEST, Some("BATCH_LIMIT_EXCEEDED")));
    assert!(body["errors"][0]["message"].as_str().unwrap_or_default().contains("GRAPHQL_MAX_BATCH"));
    let (status, _, _) = post(&app, None, &json!([])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.gql_ok("{ __typename }", json!({})).await;
    app.stop().await;
}

#[tokio::test]
async fn every_answer_reports_its_cost() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let body = app.gql("{ products(first: 10) { nodes { id name } } }", json!({})).await;
    let cost = &body["extensions"]["cost"];
    // products + 10 × (nodes + 10 × (id + name))... each field 1, lists times their page.
    assert_eq!(cost["maximumAvailable"], 20_000, "{body:#}");
    let requested = cost["requestedQueryCost"].as_u64().expect("a number");
    assert!(requested > 10 && requested < 20_000, "{body:#}");
    // Without `first`, a paged field costs the default page (20): dearer than 10.
    let default_page = app.gql("{ products { nodes { id name } } }", json!({})).await;
    assert!(default_page["extensions"]["cost"]["requestedQueryCost"].as_u64() > Some(requested));
    // Too dear: refused, naming the limit.
    let dear =
        app.gql("{ customers(first: 100) { nodes { purchases(first: 100) { nodes { id } } } } }", json!({})).await;
    assert_eq!(error_code(&dear).as_deref(), Some("COMPLEXITY_LIMIT_EXCEEDED"), "{dear:#}");
    app.stop().await;
}

#[tokio::test]
async fn errors_point_at_no_line_zero_and_get_takes_the_operation_name() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.api_tokens = vec!["s3cret".into()]).await;
    let body = app.gql("mutation { retryJob(id: \"1\") { id } }", json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("UNAUTHENTICATED"));
    assert!(body["errors"][0].get("locations").is_none(), "{body:#}");

    let document = "query A { __typename } query B { jobCounts { queued } }";
    let url = reqwest::Url::parse_with_params(&app.url("/graphql"), [("query", document), ("operationName", "B")])
        .expect("a URL");
    let body: Value = app.http.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["data"]["jobCounts"]["queued"], 0, "{body:#}");
    app.stop().await;
}

#[tokio::test]
async fn introspection_and_graphiql_can_be_turned_off() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let page = app.http.get(app.url("/graphql")).header(header::ACCEPT, "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/graphiql/"));
    // The roots have the names clients and tools expect.
    let roots = app
        .gql_ok("{ __schema { queryType { name } mutationType { name } subscriptionType { name } } }", json!({}))
        .await;
    assert_eq!(
        roots["__schema"],
        json!({ "queryType": { "name": "Query" }, "mutationType": { "name": "Mutation" }, "subscriptionType": { "name": "Subscription" } })
    );
    app.stop().await;

    let app = TestApp::spawn_with(&env, |config| config.graphql.graphql_introspection = false).await;
    let body = app.gql("{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("INTROSPECTION_DISABLED"), "{body:#}");
    let body = app.gql("{ __type(name: \"Query\") { name } }", json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("INTROSPECTION_DISABLED"), "{body:#}");
    app.gql_ok("{ __typename }", json!({})).await;
    let page = app.http.get(app.url("/graphql")).header(header::ACCEPT, "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    app.gql_ok("{ jobCounts { queued } }", json!({})).await;
    app.stop().await;
}

#[tokio::test]
async fn websockets_from_other_origins_are_refused_when_origins_are_configured() {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest as _};

    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| config.cors_origins = vec!["https://shop.example".into()]).await;
    let connect = |origin: Option<&'static str>| {
        let mut request = app.url("/graphql/ws").replacen("http", "ws", 1).into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
        if let Some(origin) = origin {
            request.headers_mut().insert("Origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    assert!(connect(Some("https://shop.example")).await.is_ok());
    // Non-browser clients send no Origin.
    assert!(connect(None).await.is_ok());
    match connect(Some("https://evil.example")).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), StatusCode::FORBIDDEN),
        other => panic!("expected a 403, got {other:?}"),
    }

    // Apollo's headers pass the CORS preflight.
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "apollographql-client-name,apollo-require-preflight,content-type")
        .send()
        .await
        .unwrap();
    let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    assert!(allowed.contains("apollographql-client-name") && allowed.contains("apollo-require-preflight"));
    app.stop().await;
}

#[tokio::test]
async fn open_websockets_are_pinged() {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    let env = TestEnv::new().await;
    let app = TestApp::spawn_with(&env, |config| {
        config.graphql.graphql_ws_keepalive = std::time::Duration::from_secs(1);
    })
    .await;
    let mut request = app.url("/graphql/ws").replacen("http", "ws", 1).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    // Silent client: the server pings within its keep-alive period (plus a margin).
    let ping = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Ping(_))) => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await;
    assert_eq!(ping, Ok(true), "a ping within 5 s");
    app.stop().await;
}

/// One rule for every lookup of one entity by id: the field is nullable, an unknown id
/// answers null without an error, a malformed id is BAD_USER_INPUT.
#[tokio::test]
async fn every_lookup_by_id_answers_null_for_an_unknown_id() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    // Every root field that takes exactly one `id` argument: the lookups.
    let schema = app
        .gql_ok(
            "{ __schema { queryType { fields { name args { name type { kind ofType { name } } } type { kind name } } } } }",
            json!({}),
        )
        .await;
    // (name, the type it answers)
    let mut lookups = Vec::new();
    for field in schema["__schema"]["queryType"]["fields"].as_array().unwrap() {
        let args = field["args"].as_array().unwrap();
        if args.len() == 1 && args[0]["name"] == "id" && args[0]["type"]["ofType"]["name"] == "ID" {
            let name = field["name"].as_str().unwrap().to_string();
            // Nullable: the type itself, not NON_NULL around it. `node` answers the interface.
            let kind = if name == "node" { "INTERFACE" } else { "OBJECT" };
            assert_eq!(field["type"]["kind"], kind, "`{name}` must be nullable: {field}");
            lookups.push((name, field["type"]["name"].as_str().unwrap().to_string()));
        }
    }
    lookups.sort();
    let names: Vec<&str> = lookups.iter().map(|(name, _)| name.as_str()).collect();
    let expected = ["customer", "intakeMessage", "job", "node", "offer", "product", "purchase", "record", "upload"];
    assert_eq!(names, expected, "the lookups by id");
    for (name, type_name) in &lookups {
        // A well-formed id of the type asked for (any node type for `node`) that names nothing.
        let of_type = if type_name == "Node" { "Product" } else { type_name.as_str() };
        let nothing = emporium::global_id::encode(of_type, 987_654_321).0;
        let unknown = app.gql(&format!("{{ {name}(id: \"{nothing}\") {{ __typename }} }}"), json!({})).await;
        assert!(unknown.get("errors").is_none(), "{name}: {unknown:#}");
        assert_eq!(unknown["data"], json!({ name.as_str(): null }), "{name}: {unknown:#}");
        // Row numbers (the ids before global ids) are malformed too.
        for malformed in ["abc", "0", "-5", "99999999999999999999999", "987654321"] {
            let body = app.gql(&format!("{{ {name}(id: \"{malformed}\") {{ __typename }} }}"), json!({})).await;
            assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"), "{name}({malformed}): {body:#}");
        }
    }
    app.stop().await;
}
