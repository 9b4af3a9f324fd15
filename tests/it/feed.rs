//! The feed gateway against the simulator's feeds with short periods: polling on each
//! source's own period, deduplicated union, last good snapshot kept through every kind of
//! bad upstream answer, ETag/304, the client limit and the node-wide load shedding.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    time::Duration,
};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sim::FeedFault;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use crate::support::{TestApp, TestEnv, eventually, free_port};

/// A simulator whose feeds change only when the test says so.
async fn env(feeds: usize) -> TestEnv {
    TestEnv::with_sim(sim::SimConfig {
        offers_tick: Duration::from_secs(3600),
        feed_periods: vec![Duration::ZERO; feeds],
        feed_items: 20,
        seed: Some(4),
    })
    .await
}

/// A node polling the simulator's feeds with the given periods (seconds), plus `extra` sources.
async fn app(
    env: &TestEnv,
    periods: &[u64],
    extra: &[String],
    adjust: impl FnOnce(&mut emporium::config::Config),
) -> TestApp {
    let mut sources: Vec<String> =
        env.sim.feed_urls().iter().zip(periods).map(|((url, _), period)| format!("{url}@{period}s")).collect();
    sources.extend(extra.iter().cloned());
    TestApp::spawn_with(env, move |config| {
        config.upstreams.feed_sources = sources;
        adjust(config);
    })
    .await
}

/// A node polling one simulator feed every second, once it serves `content`.
async fn serving(content: &[String]) -> (TestEnv, TestApp) {
    let env = env(1).await;
    env.sim.set_feed_items(0, content.to_vec());
    let app = app(&env, &[1], &[], |_| {}).await;
    eventually(Duration::from_secs(5), "the feed", || feed_is(&app, content)).await;
    (env, app)
}

/// Items of the partners' shape: 8 bytes, `prefix` then zero-padded numbers.
fn items(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let digits = 8 - prefix.len();
    range.map(|n| format!("{prefix}{n:0digits$}")).collect()
}

fn sorted_union(lists: &[&[String]]) -> Vec<String> {
    lists.iter().flat_map(|list| list.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect()
}

async fn get_feed(app: &TestApp) -> (StatusCode, Option<String>, Vec<String>) {
    let response = app.http.get(app.url("/v1/feed")).send().await.expect("feed request");
    let status = response.status();
    let etag = response.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = if status == StatusCode::OK { response.json().await.expect("feed is a JSON array") } else { Vec::new() };
    (status, etag, body)
}

async fn feed_is(app: &TestApp, expected: &[String]) -> Option<()> {
    let (status, _, body) = get_feed(app).await;
    (status == StatusCode::OK && body == expected).then_some(())
}

async fn health_feeds(app: &TestApp) -> Value {
    let body: Value = app.http.get(app.url("/health")).send().await.expect("health").json().await.expect("json");
    body["checks"]["feeds"].clone()
}

const SOURCES_QUERY: &str = "{ feed feedSources { url period status lastSuccessAt lastError lastErrorAt consecutiveFailures itemCount itemsDropped stalenessSeconds } }";

/// The value of `emporium_feed_items_dropped_total` for `source` and `reason` (0 if absent).
async fn dropped_metric(app: &TestApp, source: &str, reason: &str) -> u64 {
    let text = app.http.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let labels = format!("emporium_feed_items_dropped_total{{source=\"{source}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&labels))
        .map_or(0, |value| value.trim().parse().expect("a counter value"))
}

#[tokio::test]
async fn the_feed_is_the_sorted_deduplicated_union_and_a_dead_source_shows_its_error() {
    let env = env(3).await;
    let a = items("a", 0..30);
    let b = [items("a", 20..40), items("b", 0..10)].concat(); // 10 items shared with `a`
    let c = [items("b", 5..10), items("c", 0..3), items("c", 0..3)].concat(); // shared with `b`, and repeated
    env.sim.set_feed_items(0, a.clone());
    env.sim.set_feed_items(1, b.clone());
    env.sim.set_feed_items(2, c.clone());
    let dead = format!("http://127.0.0.1:{}/feed@1s", free_port());
    let app = app(&env, &[1, 1, 1], std::slice::from_ref(&dead), |_| {}).await;

    let expected = sorted_union(&[&a, &b, &c]);
    assert_eq!(expected.len(), 40 + 10 + 3);
    eventually(Duration::from_secs(10), "the union of the three feeds", || feed_is(&app, &expected)).await;

    let response = app.http.get(app.url("/v1/feed")).send().await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let raw = response.bytes().await.unwrap();
    assert_eq!(raw, serde_json::to_vec(&expected).unwrap(), "compact JSON, the sources' own structure");

    let data = app.gql_ok(SOURCES_QUERY, json!({})).await;
    assert_eq!(data["feed"], json!(expected), "GraphQL shows the same list");
    let sources = data["feedSources"].as_array().unwrap();
    assert_eq!(sources.len(), 4);
    for (source, count) in sources.iter().zip([30, 30, 8]) {
        assert_eq!(source["status"], "OK", "{source:#}");
        assert_eq!(source["itemCount"], count, "{source:#}");
        assert_eq!(source["period"], 1.0);
        assert!(source["lastSuccessAt"].is_string());
        assert!(source["lastError"].is_null());
    }
    let dead_source = &sources[3];
    assert_eq!(dead_source["url"], dead.trim_end_matches("@1s"));
    assert_eq!(dead_source["status"], "FAILING");
    assert!(dead_source["lastSuccessAt"].is_null());
    assert!(dead_source["lastError"].as_str().unwrap().contains("request failed"), "{dead_source:#}");

    let health = health_feeds(&app).await;
    assert_eq!(health["status"], "degraded", "a dead source degrades the check: {health:#}");
    assert_eq!(health["item_count"], expected.len());
    assert_eq!(health["sources"][0]["status"], "ok");
    assert!(health["sources"][0]["last_success_at"].is_string());
    assert!(health["sources"][0]["staleness_seconds"].is_number());
    assert_eq!(health["sources"][3]["status"], "failing");
    assert_eq!(health["sources"][3]["last_error"]["reason"], "request");
    assert!(health["sources"][3]["staleness_seconds"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn each_source_is_polled_on_its_own_period_and_changes_show_within_it() {
    let env = env(3).await;
    for n in 0..3 {
        env.sim.set_feed_items(n, items(&format!("{n}"), 0..5));
    }
    let periods = [1, 2, 4];
    let app = app(&env, &periods, &[], |_| {}).await;
    let initial = sorted_union(&[&items("0", 0..5), &items("1", 0..5), &items("2", 0..5)]);
    // Polled at once on start, whatever the period.
    eventually(Duration::from_secs(3), "the first polls", || feed_is(&app, &initial)).await;

    let mut current: Vec<Vec<String>> = (0..3).map(|n| items(&format!("{n}"), 0..5)).collect();
    for (n, period) in periods.iter().enumerate() {
        current[n] = items(&format!("{n}x"), 0..7);
        env.sim.set_feed_items(n, current[n].clone());
        let expected = sorted_union(&[&current[0], &current[1], &current[2]]);
        // One period, plus slack for a loaded machine.
        let within = Duration::from_secs(*period) + Duration::from_secs(2);
        eventually(within, &format!("feed {n} change within its {period}s period"), || feed_is(&app, &expected)).await;
    }

    let requests = env.sim.stats().feed_requests;
    assert!(requests[0] > requests[2], "the 1 s source is polled more often than the 4 s one: {requests:?}");
    app.stop().await;
}

#[tokio::test]
async fn bad_upstream_data_never_replaces_the_last_good_snapshot_nor_stops_the_poller() {
    let env = env(1).await;
    let good = items("g", 0..10);
    env.sim.set_feed_items(0, good.clone());
    // A 64 KiB limit: the 100 MB body is cut off after its first chunks, well within the
    // 1 s poll time limit even on a loaded machine (the default 16 MiB is exercised by the
    // big feed of the client-limit test).
    let node = app(&env, &[1], &[], |config| config.feed.feed_max_body_bytes = 64 * 1024).await;
    let app = &node;
    eventually(Duration::from_secs(5), "the good snapshot", || feed_is(app, &good)).await;
    let (_, good_etag, _) = get_feed(app).await;

    let faults = [
        (FeedFault::Object, "wrong_shape"),
        (FeedFault::Numbers, "no_valid_items"),
        (FeedFault::Huge(100 * 1024 * 1024), "too_large"),
        (FeedFault::InvalidUtf8, "invalid_utf8"),
        (FeedFault::Error500, "status"),
        (FeedFault::Hang, "timeout"),
    ];
    let mut last_error_at = Value::Null;
    for (fault, reason) in faults {
        env.sim.set_feed_fault(0, fault);
        let source = eventually(Duration::from_secs(10), &format!("{fault:?} reported as {reason}"), || {
            let previous = last_error_at.clone();
            async move {
                let source = health_feeds(app).await["sources"][0].clone();
                let error = &source["last_error"];
                (error["reason"] == reason && error["at"] != previous).then_some(source)
            }
        })
        .await;
        // Failing, or already stale when failures outlast three 1 s periods on a slow machine.
        assert!(["failing", "stale"].contains(&source["status"].as_str().unwrap_or_default()), "{fault:?}: {source:#}");
        assert_eq!(source["item_count"], good.len(), "{fault:?}: the snapshot is kept");
        let (status, etag, body) = get_feed(app).await;
        assert_eq!((status, &etag, &body), (StatusCode::OK, &good_etag, &good), "{fault:?} changed the feed");
        let data = app.gql_ok(SOURCES_QUERY, json!({})).await;
        let status = data["feedSources"][0]["status"].as_str().unwrap_or_default().to_string();
        assert!(status == "FAILING" || status == "STALE", "{fault:?}: {status}");
        assert!(data["feedSources"][0]["lastError"].is_string());
        assert_eq!(data["feed"], json!(good));
        last_error_at = source["last_error"]["at"].clone();

        env.sim.set_feed_fault(0, FeedFault::Ok);
        eventually(Duration::from_secs(10), &format!("recovery after {fault:?}"), || async {
            (health_feeds(app).await["sources"][0]["status"] == "ok").then_some(())
        })
        .await;
    }

    // The poller is alive and still takes good data.
    let fresh = items("f", 0..3);
    env.sim.set_feed_items(0, fresh.clone());
    eventually(Duration::from_secs(5), "new data after all the faults", || feed_is(app, &fresh)).await;
    node.stop().await;
}

#[tokio::test]
async fn items_that_are_not_8_byte_strings_are_dropped_counted_and_shown() {
    let env = env(1).await;
    let good = items("k", 0..5);
    // Too long, too short, 8 characters of 16 bytes, and 4 characters of 8 bytes (good).
    let bad = ["abcdefghi", "abcdefg", "éééééééé", ""].map(String::from);
    env.sim.set_feed_items(0, [good.clone(), bad.to_vec(), vec!["éééé".into()]].concat());
    let node = app(&env, &[1], &[], |_| {}).await;
    let app = &node;
    let url = env.sim.feed_urls()[0].0.clone();
    let expected = sorted_union(&[&good, &["éééé".to_string()]]);
    eventually(Duration::from_secs(5), "the good items only", || feed_is(app, &expected)).await;

    let data = app.gql_ok(SOURCES_QUERY, json!({})).await;
    assert_eq!(data["feed"], json!(expected), "GraphQL serves the same items");
    let source = &data["feedSources"][0];
    assert_eq!(
        (&source["status"], &source["itemCount"], &source["itemsDropped"]),
        (&json!("OK"), &json!(6), &json!(4))
    );
    assert_eq!(health_feeds(app).await["sources"][0]["items_dropped"], 4);
    // Counted at every poll (just after the snapshot is handed over: wait for it).
    let counted = eventually(Duration::from_secs(5), "the drops counted", || async {
        Some(dropped_metric(app, &url, "wrong_length").await).filter(|counted| *counted > 0)
    })
    .await;
    assert_eq!(counted % 4, 0, "4 per poll: {counted}");
    assert_eq!(dropped_metric(app, &url, "not_string").await, 0);

    // Numbers, null, true, an object and an array among the items: dropped too.
    env.sim.set_feed_fault(0, FeedFault::NonStrings);
    eventually(Duration::from_secs(5), "non-strings dropped", || async {
        let data = app.gql_ok(SOURCES_QUERY, json!({})).await;
        (data["feedSources"][0]["itemsDropped"] == 9).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the non-strings counted", || async {
        (dropped_metric(app, &url, "not_string").await >= 5).then_some(())
    })
    .await;
    let (status, _, body) = get_feed(app).await;
    assert_eq!((status, body), (StatusCode::OK, expected.clone()), "the good items are still served");

    // A later clean answer: nothing dropped.
    env.sim.set_feed_fault(0, FeedFault::Ok);
    env.sim.set_feed_items(0, good.clone());
    eventually(Duration::from_secs(5), "the clean answer", || feed_is(app, &good)).await;
    let data = app.gql_ok(SOURCES_QUERY, json!({})).await;
    assert_eq!(data["feedSources"][0]["itemsDropped"], 0);

    // Nothing but bad items: a failed poll; the last good snapshot stays.
    env.sim.set_feed_items(0, bad.to_vec());
    let source = eventually(Duration::from_secs(5), "an answer with no valid item", || async {
        let source = health_feeds(app).await["sources"][0].clone();
        (source["last_error"]["reason"] == "no_valid_items").then_some(source)
    })
    .await;
    assert_eq!(source["items_dropped"], 4, "{source:#}");
    assert_eq!(get_feed(app).await.2, good, "the last good snapshot is kept");
    node.stop().await;
}

#[tokio::test]
async fn feed_item_bytes_0_serves_any_string() {
    let env = env(1).await;
    let content = ["a", "abcdefghi", "éééééééé"].map(String::from).to_vec();
    env.sim.set_feed_items(0, content.clone());
    let node = app(&env, &[1], &[], |config| config.feed.feed_item_bytes = 0).await;
    let expected = sorted_union(&[&content]);
    eventually(Duration::from_secs(5), "every string", || feed_is(&node, &expected)).await;
    assert_eq!(node.gql_ok(SOURCES_QUERY, json!({})).await["feedSources"][0]["itemsDropped"], 0);
    node.stop().await;
}

#[tokio::test]
async fn etag_and_if_none_match_give_304_until_the_feed_changes() {
    let first = items("e", 0..4);
    let (env, app) = serving(&first).await;

    let (_, etag, _) = get_feed(&app).await;
    let etag = etag.expect("an ETag");
    let response = app.http.get(app.url("/v1/feed")).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()[header::ETAG], etag.as_str());
    assert!(response.bytes().await.unwrap().is_empty());
    let other = app.http.get(app.url("/v1/feed")).header(header::IF_NONE_MATCH, "\"other\"").send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    let second = items("e", 0..5);
    env.sim.set_feed_items(0, second.clone());
    eventually(Duration::from_secs(5), "a new version", || feed_is(&app, &second)).await;
    let response = app.http.get(app.url("/v1/feed")).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the old ETag no longer matches");
    assert_ne!(response.headers()[header::ETAG], etag.as_str());
    app.stop().await;
}

#[tokio::test]
async fn the_feed_answers_get_and_head_and_leaves_other_methods_to_the_router() {
    let content = items("h", 0..3);
    let (_env, app) = serving(&content).await;

    let (_, etag, _) = get_feed(&app).await;
    let head = app.http.head(app.url("/v1/feed?any=query")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers().get(header::ETAG).and_then(|tag| tag.to_str().ok()), etag.as_deref());
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
    let post = app.http.post(app.url("/v1/feed")).body("[]").send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    let elsewhere = app.http.get(app.url("/v1/feed/")).send().await.unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

/// The responses read from one connection, one per method sent (a `HEAD` answer has no
/// body): status, headers (names lowercased) and body.
fn split_responses(mut input: &[u8], methods: &[&str]) -> Vec<(u16, HashMap<String, String>, Vec<u8>)> {
    let mut responses = Vec::new();
    for method in methods {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(input).expect("a well-formed response") {
            httparse::Status::Complete(head) => head,
            httparse::Status::Partial => panic!("a response is cut off: {:?}", String::from_utf8_lossy(input)),
        };
        let fields: HashMap<String, String> = response
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let length: usize = fields.get("content-length").map_or(0, |value| value.parse().expect("a length"));
        let body_length = if *method == "HEAD" { 0 } else { length };
        let code = response.code.expect("a status");
        responses.push((code, fields, input[head..head + body_length].to_vec()));
        input = &input[head + body_length..];
    }
    assert!(input.is_empty(), "nothing after the last response: {:?}", String::from_utf8_lossy(input));
    responses
}

#[tokio::test]
async fn one_connection_mixes_pipelined_feed_requests_with_other_routes_in_order() {
    use tokio::io::AsyncReadExt as _;
    let content = items("p", 0..5);
    let (_env, app) = serving(&content).await;
    let (_, etag, _) = get_feed(&app).await;
    let etag = etag.expect("an ETag");
    let expected = serde_json::to_vec(&content).unwrap();

    // Feed requests first (the fast path answers them on the socket), then another route
    // (the connection goes to the general server with what was already read), then the
    // feed again there, and a last request asking to close.
    let requests = [
        ("GET", "/v1/feed", String::new()),
        ("HEAD", "/v1/feed", String::new()),
        ("GET", "/v1/feed", format!("If-None-Match: {etag}\r\n")),
        ("GET", "/health", String::new()),
        ("GET", "/v1/feed", String::new()),
        ("GET", "/v1/feed", "Connection: close\r\n".to_string()),
    ];
    let pipelined: String = requests
        .iter()
        .map(|(method, path, extra)| format!("{method} {path} HTTP/1.1\r\nHost: emporium\r\n{extra}\r\n"))
        .collect();
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(pipelined.as_bytes()).await.expect("send");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server closes after `Connection: close`")
        .expect("read");

    let methods: Vec<&str> = requests.iter().map(|(method, _, _)| *method).collect();
    let responses = split_responses(&received, &methods);
    let statuses: Vec<u16> = responses.iter().map(|(status, _, _)| *status).collect();
    assert_eq!(statuses, [200, 200, 304, 200, 200, 200]);
    for (index, (status, fields, body)) in responses.iter().enumerate() {
        if index == 3 {
            assert!(String::from_utf8_lossy(body).contains("\"checks\""), "the health report");
            continue;
        }
        assert_eq!(fields.get("etag"), Some(&etag), "response {index}");
        assert_eq!(fields.get("content-type").map(String::as_str), Some("application/json"));
        assert_eq!(fields.get("cache-control").map(String::as_str), Some("no-cache"));
        assert!(fields.contains_key("date"), "response {index} has a date");
        match (index, status) {
            (1, _) => assert_eq!(fields.get("content-length"), Some(&expected.len().to_string()), "HEAD"),
            (_, 200) => assert_eq!(body, &expected, "response {index}"),
            _ => assert!(body.is_empty()),
        }
    }
    app.stop().await;
}

/// Sends `requests` on one new connection (the last one asks to close) and reads until the
/// server closes it; `date` lines become `date: -` (they differ by the second written).
async fn exchange(addr: SocketAddr, requests: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(requests.as_bytes()).await.expect("send");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server closes after `Connection: close`")
        .expect("read");
    let text = String::from_utf8(received).expect("UTF-8 answers");
    text.split("\r\n")
        .map(|line| if line.to_ascii_lowercase().starts_with("date: ") { "date: -" } else { line })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test]
async fn the_fast_path_and_the_router_send_the_same_bytes() {
    let env = env(1).await;
    let content = items("p", 0..50);
    env.sim.set_feed_items(0, content.clone());
    let fast = app(&env, &[1], &[], |_| {}).await;
    let routed = app(&env, &[1], &[], |config| config.feed.feed_fast_path = false).await;
    for node in [&fast, &routed] {
        eventually(Duration::from_secs(5), "the feed", || feed_is(node, &content)).await;
    }
    let (_, etag, _) = get_feed(&fast).await;
    let etag = etag.expect("an ETag");
    let request = |method: &str, target: &str, extra: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: emporium\r\n{extra}\r\n")
    };
    let close = "Connection: close\r\n";
    let cases = [
        request("GET", "/v1/feed", close),
        request("HEAD", "/v1/feed", close),
        request("GET", "/v1/feed", &format!("If-None-Match: {etag}\r\n{close}")),
        request("HEAD", "/v1/feed", &format!("If-None-Match: W/{etag}, \"other\"\r\n{close}")),
        request("GET", "/v1/feed", &format!("If-None-Match: \"other\"\r\n{close}")),
        request("GET", "/v1/feed", &format!("If-None-Match: *\r\n{close}")),
        request("GET", "/v1/feed?since=1", "Content-Length: 0\r\nConnection: keep-alive, close\r\n"),
        // Kept alive and pipelined: the fast path answers each in turn.
        [
            request("GET", "/v1/feed", ""),
            request("HEAD", "/v1/feed", "Connection: keep-alive\r\n"),
            request("GET", "/v1/feed", &format!("If-None-Match: {etag}\r\n")),
            request("GET", "/v1/feed", close),
        ]
        .concat(),
    ];
    for (index, requests) in cases.iter().enumerate() {
        let from_fast = exchange(fast.addr, requests).await;
        let from_router = exchange(routed.addr, requests).await;
        assert!(from_fast.starts_with("HTTP/1.1 "), "case {index}: {from_fast}");
        assert_eq!(from_fast, from_router, "case {index}: the fast path's bytes, then the router's, for\n{requests}");
    }
    fast.stop().await;
    routed.stop().await;
}

#[tokio::test]
async fn concurrent_readers_always_get_a_body_with_its_own_etag() {
    let first = items("v", 0..100);
    let (env, app) = serving(&first).await;

    let writer = {
        let sim = env.sim.simulator();
        tokio::spawn(async move {
            for version in 1..=4 {
                sim.set_feed_items(0, items(&format!("v{version}"), 0..100 + version));
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let client = app.http.clone();
            let url = app.url("/v1/feed");
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..60 {
                    let response = client.get(&url).send().await.expect("request");
                    assert_eq!(response.status(), StatusCode::OK);
                    let etag = response.headers()[header::ETAG].to_str().unwrap().to_string();
                    let body = response.bytes().await.expect("body");
                    serde_json::from_slice::<Vec<String>>(&body).expect("every body is a whole JSON array");
                    seen.push((etag, body));
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                seen
            })
        })
        .collect();
    let mut versions: HashMap<String, bytes::Bytes> = HashMap::new();
    for reader in readers {
        for (etag, body) in reader.await.expect("reader") {
            let known = versions.entry(etag.clone()).or_insert_with(|| body.clone());
            assert_eq!(*known, body, "ETag {etag} came with two different bodies");
        }
    }
    writer.await.unwrap();
    assert!(versions.len() >= 2, "the feed changed while being read ({} versions seen)", versions.len());
    app.stop().await;
}

/// A client that sends its request and then reads nothing, with a tiny receive window: the
/// server cannot hand it a big body, so the request stays in flight.
async fn slow_consumer(addr: SocketAddr, request: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send request");
    stream
}

const BIG: usize = 800_000;

#[tokio::test]
async fn the_fifth_concurrent_client_gets_503_and_slots_free_when_clients_finish() {
    let env = env(1).await;
    // A body of 8.8 MB: well beyond what loopback socket buffers (about 3 MB with a small
    // receive window) and the server's write buffer (400 KB) take from a client that does
    // not read, so such a client keeps its request in flight.
    let big = items("s", 0..BIG);
    env.sim.set_feed_items(0, big);
    let app = app(&env, &[3600], &[], |config| config.feed.feed_max_clients = 4).await;
    eventually(Duration::from_secs(30), "the big feed", || async {
        (health_feeds(&app).await["item_count"] == BIG).then_some(())
    })
    .await;

    let request = "GET /v1/feed HTTP/1.1\r\nHost: emporium\r\n\r\n";
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(slow_consumer(app.addr, request).await);
    }
    eventually(Duration::from_secs(10), "four clients in flight", || async {
        (health_feeds(&app).await["clients_in_flight"] == 4).then_some(())
    })
    .await;

    let response = app.http.get(app.url("/v1/feed")).send().await.expect("an answer, not a hang");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UPSTREAM_UNAVAILABLE");
    // Other routes are not affected by the feed's limit.
    assert_eq!(app.gql_ok("{ feedSources { itemCount } }", json!({})).await["feedSources"][0]["itemCount"], BIG);

    // One slow client leaves: its slot is free for the next request at once.
    drop(slow.pop());
    let (status, _, body) = eventually(Duration::from_secs(10), "a freed slot", || async {
        let answer = get_feed(&app).await;
        (answer.0 == StatusCode::OK).then_some(answer)
    })
    .await;
    assert_eq!((status, body.len()), (StatusCode::OK, BIG));
    drop(slow);
    // A client is a connection: the test's own kept-alive connection keeps its place.
    eventually(Duration::from_secs(10), "every slow client's slot free", || async {
        (health_feeds(&app).await["clients_in_flight"] == 1).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn max_inflight_requests_sheds_every_route_but_health() {
    let env = env(1).await;
    let content = items("m", 0..3);
    env.sim.set_feed_items(0, content.clone());
    let app = app(&env, &[1], &[], |config| config.http.max_inflight_requests = 2).await;
    eventually(Duration::from_secs(5), "the feed", || feed_is(&app, &content)).await;

    // Two GraphQL requests whose bodies never finish arriving hold both node-wide slots.
    let hold =
        "POST /graphql HTTP/1.1\r\nHost: emporium\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
    let holders = vec![slow_consumer(app.addr, hold).await, slow_consumer(app.addr, hold).await];
    eventually(Duration::from_secs(10), "the node at its request limit", || async {
        let response = app.http.get(app.url("/v1/feed")).send().await.ok()?;
        (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    for path in ["/v1/feed", "/graphql?query=%7Bfeed%7D", "/metrics"] {
        let response = app.http.get(app.url(path)).send().await.expect("an answer, not a hang");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1", "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UPSTREAM_UNAVAILABLE", "{path}");
    }
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "/health is never shed");

    drop(holders);
    eventually(Duration::from_secs(10), "slots back after the holders leave", || feed_is(&app, &content)).await;
    app.stop().await;
}
