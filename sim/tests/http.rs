//! The simulator over real HTTP on 127.0.0.1:0. Timers are disabled (zero periods) unless a
//! test is about them, so every test is bounded and deterministic.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sim::{FeedFault, OffersFault, RunningSim, SimConfig, Simulator};

const LOCAL: &str = "127.0.0.1:0";

fn quiet_config() -> SimConfig {
    SimConfig { offers_tick: Duration::ZERO, feed_periods: vec![Duration::ZERO; 3], feed_items: 20, seed: Some(7) }
}

async fn start(config: SimConfig) -> RunningSim {
    Simulator::start(local(), config).await.expect("start sim")
}

fn local() -> SocketAddr {
    LOCAL.parse().expect("addr")
}

fn client() -> Client {
    // no_proxy: the sandbox may set HTTP(S)_PROXY, and we only talk to localhost.
    Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client")
}

async fn auth(c: &Client, sim: &RunningSim) -> String {
    let res = c.post(format!("{}/auth", sim.offers_url())).send().await.expect("auth");
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.expect("auth json");
    body["access_token"].as_str().expect("access_token string").to_owned()
}

async fn register(c: &Client, sim: &RunningSim, token: &str, body: Value) -> (StatusCode, Value) {
    let res = c
        .post(format!("{}/products/register", sim.offers_url()))
        .header("Bearer", token)
        .json(&body)
        .send()
        .await
        .expect("register");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn offers(c: &Client, sim: &RunningSim, token: Option<&str>, id: &str) -> (StatusCode, Value) {
    let mut req = c.get(format!("{}/products/{id}/offers", sim.offers_url()));
    if let Some(t) = token {
        req = req.header("Bearer", t);
    }
    let res = req.send().await.expect("offers");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn feed(c: &Client, sim: &RunningSim, n: usize) -> Vec<String> {
    let res = c.get(&sim.feed_urls()[n].0).send().await.expect("feed");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"].to_str().expect("ct"), "application/json");
    res.json().await.expect("feed json")
}

fn prices(v: &Value) -> Vec<(u64, u64)> {
    v.as_array()
        .expect("offers array")
        .iter()
        .map(|o| (o["id"].as_u64().expect("id"), o["price"].as_u64().expect("price")))
        .collect()
}

#[tokio::test]
async fn auth_issues_a_new_uuid_like_token_each_call() {
    let sim = start(quiet_config()).await;
    let c = client();
    let a = auth(&c, &sim).await;
    let b = auth(&c, &sim).await;
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    assert_eq!(a.matches('-').count(), 4);
    assert_eq!(sim.stats().auth_calls, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn register_contract() {
    let sim = start(quiet_config()).await;
    let c = client();
    let t = auth(&c, &sim).await;
    let url = format!("{}/products/register", sim.offers_url());

    let (s, body) = register(&c, &sim, &t, json!({"id": "p-1", "name": "A", "description": "d"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body, json!({"id": "p-1"}));

    let (s, body) = register(&c, &sim, &t, json!({"id": 5, "name": "B", "description": "d"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body, json!({"id": 5}));

    let (s, body) = register(&c, &sim, &t, json!({"id": "p-1", "name": "A", "description": "d"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["code"], "CONFLICT");
    assert!(body["msg"].is_string());

    for bad in [json!({"name": "x"}), json!({"id": "q"}), json!({"id": 1.5, "name": "x"}), json!([1])] {
        let (s, body) = register(&c, &sim, &t, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["code"], "BAD_REQUEST");
    }
    let res = c.post(&url).header("Bearer", &t).body("not json").send().await.expect("send");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    let res = c.post(&url).json(&json!({"id": "z", "name": "z"})).send().await.expect("send");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["code"], "UNAUTHORIZED");

    let (s, _) = register(&c, &sim, "no-such-token", json!({"id": "z", "name": "z"})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    assert_eq!(sim.registered_count(), 2);
    assert_eq!(sim.stats().register_calls, 10);
    sim.shutdown().await;
}

#[tokio::test]
async fn offers_contract_and_token_isolation() {
    let sim = start(quiet_config()).await;
    let c = client();
    let a = auth(&c, &sim).await;
    let b = auth(&c, &sim).await;
    register(&c, &sim, &a, json!({"id": 5, "name": "n", "description": "d"})).await;
    register(&c, &sim, &a, json!({"id": "x", "name": "n", "description": "d"})).await;

    let (s, body) = offers(&c, &sim, Some(&a), "5").await;
    assert_eq!(s, StatusCode::OK);
    let list = body.as_array().expect("array");
    assert!((1..=5).contains(&list.len()));
    for o in list {
        let keys: HashSet<&str> = o.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys, HashSet::from(["id", "price", "items_in_stock"]));
        assert!(o["id"].is_u64() && o["price"].as_u64().expect("price") >= 1);
        assert!(o["items_in_stock"].is_u64());
    }
    let (_, other) = offers(&c, &sim, Some(&a), "x").await;
    let ids: HashSet<u64> = prices(&body).iter().chain(prices(&other).iter()).map(|p| p.0).collect();
    assert_eq!(ids.len(), list.len() + other.as_array().expect("array").len(), "offer ids unique");

    let (s, body) = offers(&c, &sim, Some(&a), "nope").await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let (s, _) = offers(&c, &sim, Some(&b), "5").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "token B must not see token A's products");
    let (s, body) = offers(&c, &sim, None, "5").await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")));
    let (s, _) = offers(&c, &sim, Some("bogus"), "5").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    assert_eq!(sim.stats().offers_calls, 6);
    sim.shutdown().await;
}

#[tokio::test]
async fn price_ticks_move_prices_forced_and_timed() {
    let sim = start(quiet_config()).await;
    let c = client();
    let t = auth(&c, &sim).await;
    register(&c, &sim, &t, json!({"id": "p", "name": "n", "description": "d"})).await;
    let (_, before) = offers(&c, &sim, Some(&t), "p").await;
    sim.tick_offers();
    let (_, after) = offers(&c, &sim, Some(&t), "p").await;
    assert_ne!(prices(&before), prices(&after));
    // Same through the control route.
    let res = c.post(format!("{}/_control/offers/tick", sim.offers_url())).send().await.expect("tick");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (_, again) = offers(&c, &sim, Some(&t), "p").await;
    assert_ne!(prices(&after), prices(&again));
    assert_eq!(sim.stats().offers_ticks, 2);
    sim.shutdown().await;

    // The timer ticks on its own.
    let sim = start(SimConfig { offers_tick: Duration::from_millis(50), ..quiet_config() }).await;
    let t = auth(&c, &sim).await;
    register(&c, &sim, &t, json!({"id": "p", "name": "n"})).await;
    let (_, before) = offers(&c, &sim, Some(&t), "p").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (_, now) = offers(&c, &sim, Some(&t), "p").await;
        if prices(&now) != prices(&before) {
            break;
        }
        assert!(Instant::now() < deadline, "timer never ticked");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn feeds_shape_tick_pin_and_timer() {
    let sim = start(quiet_config()).await;
    let c = client();
    assert_eq!(sim.feed_urls().len(), 3);
    let mut union = HashSet::new();
    let mut total = 0;
    for n in 0..3 {
        let items = feed(&c, &sim, n).await;
        assert_eq!(items.len(), 20);
        assert_eq!(items.iter().collect::<HashSet<_>>().len(), 20, "unique within a feed");
        for i in &items {
            assert_eq!(i.len(), 8);
            assert!(i.chars().all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch)));
        }
        total += items.len();
        union.extend(items);
    }
    assert!(union.len() < total, "feeds should share items");

    let before = feed(&c, &sim, 1).await;
    sim.tick_feed(1);
    let after = feed(&c, &sim, 1).await;
    assert_ne!(before, after);
    let res = c.post(format!("{}/_control/feeds/1/tick", sim.offers_url())).send().await.expect("tick");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_ne!(feed(&c, &sim, 1).await, after);

    let pinned = vec!["aaaaaaaa".to_string(), "bbbbbbbb".to_string()];
    sim.set_feed_items(0, pinned.clone());
    assert_eq!(feed(&c, &sim, 0).await, pinned);
    let res = c
        .put(format!("{}/_control/feeds/2/items", sim.offers_url()))
        .json(&["cccccccc", "aaaaaaaa"])
        .send()
        .await
        .expect("pin");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(feed(&c, &sim, 2).await, vec!["cccccccc", "aaaaaaaa"]);

    let res = c.get(format!("{}/feeds/3", sim.offers_url())).send().await.expect("send");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = c.get(format!("{}/feeds/x", sim.offers_url())).send().await.expect("send");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.stats().feed_requests, vec![2, 4, 2]);
    sim.shutdown().await;

    // Timers regenerate unpinned feeds and leave pinned ones alone.
    let sim =
        start(SimConfig { feed_periods: vec![Duration::from_millis(40), Duration::from_millis(40)], ..quiet_config() })
            .await;
    sim.set_feed_items(1, pinned.clone());
    let before = feed(&c, &sim, 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while feed(&c, &sim, 0).await == before {
        assert!(Instant::now() < deadline, "feed timer never ticked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(feed(&c, &sim, 1).await, pinned);
    sim.shutdown().await;
}

#[tokio::test]
async fn offers_faults() {
    let sim = start(quiet_config()).await;
    let c = client();
    let t = auth(&c, &sim).await;
    register(&c, &sim, &t, json!({"id": "p", "name": "n"})).await;
    let base = sim.offers_url();

    sim.set_offers_fault(OffersFault::Down);
    assert_eq!(c.post(format!("{base}/auth")).send().await.expect("send").status(), 503);
    let (s, _) = register(&c, &sim, &t, json!({"id": "q", "name": "n"})).await;
    assert_eq!(s, 503);
    assert_eq!(offers(&c, &sim, Some(&t), "p").await.0, 503);

    sim.set_offers_fault(OffersFault::Unauthorized);
    assert_eq!(c.post(format!("{base}/auth")).send().await.expect("send").status(), 401);
    let (s, body) = offers(&c, &sim, Some(&t), "p").await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")));

    sim.set_offers_fault(OffersFault::Malformed);
    let res = c.get(format!("{base}/products/p/offers")).header("Bearer", &t).send().await.expect("send");
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("text");
    assert_eq!(text, r#"{"not": "what you expected""#);
    assert!(serde_json::from_str::<Value>(&text).is_err());

    sim.set_offers_fault(OffersFault::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    let (s, _) = offers(&c, &sim, Some(&t), "p").await;
    assert_eq!(s, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    sim.set_offers_fault(OffersFault::Ok);
    assert_eq!(offers(&c, &sim, Some(&t), "p").await.0, 200);

    // The same modes over the control route.
    let ctl = format!("{base}/_control/offers/fault");
    for (mode, want) in [
        (json!({"mode": "down"}), OffersFault::Down),
        (json!({"mode": "unauthorized"}), OffersFault::Unauthorized),
        (json!({"mode": "reject_tokens"}), OffersFault::RejectTokens),
        (json!({"mode": "slow", "ms": 5000}), OffersFault::Slow(Duration::from_secs(5))),
        (json!({"mode": "malformed"}), OffersFault::Malformed),
        (json!({"mode": "ok"}), OffersFault::Ok),
    ] {
        let res = c.post(&ctl).json(&mode).send().await.expect("ctl");
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{mode}");
        assert_eq!(sim.offers_fault(), want);
    }
    let res = c.post(&ctl).json(&json!({"mode": "weird"})).send().await.expect("ctl");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Requests are counted even when faulted.
    let stats = sim.stats();
    assert_eq!((stats.auth_calls, stats.register_calls, stats.offers_calls), (3, 2, 5));
    sim.shutdown().await;
}

#[tokio::test]
async fn forgotten_tokens_get_401_until_a_new_auth_and_reject_tokens_spares_auth() {
    let sim = start(quiet_config()).await;
    let c = client();
    let base = sim.offers_url();
    let old = auth(&c, &sim).await;
    assert_eq!(register(&c, &sim, &old, json!({"id": "p", "name": "n"})).await.0, StatusCode::CREATED);

    let res = c.post(format!("{base}/_control/offers/forget_tokens")).send().await.expect("ctl");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(offers(&c, &sim, Some(&old), "p").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(register(&c, &sim, &old, json!({"id": "q", "name": "n"})).await.0, StatusCode::UNAUTHORIZED);
    let new = auth(&c, &sim).await;
    // The product stayed with the forgotten token: the new one must register it again.
    assert_eq!(offers(&c, &sim, Some(&new), "p").await.0, StatusCode::NOT_FOUND);
    assert_eq!(register(&c, &sim, &new, json!({"id": "p", "name": "n"})).await.0, StatusCode::CREATED);
    assert_eq!(offers(&c, &sim, Some(&new), "p").await.0, StatusCode::OK);

    // RejectTokens: tokens are issued, and rejected like the old ones.
    sim.set_offers_fault(OffersFault::RejectTokens);
    let fresh = auth(&c, &sim).await;
    assert_eq!(offers(&c, &sim, Some(&fresh), "p").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(offers(&c, &sim, Some(&new), "p").await.0, StatusCode::UNAUTHORIZED);
    sim.set_offers_fault(OffersFault::Ok);
    assert_eq!(offers(&c, &sim, Some(&new), "p").await.0, StatusCode::OK);
    let stats = sim.stats();
    assert_eq!((stats.auth_calls, stats.tokens_forgotten), (3, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn feed_faults() {
    let sim = start(quiet_config()).await;
    let c = client();
    let url = sim.feed_urls()[0].0.clone();
    let get = |c: &Client| c.get(&url).send();

    sim.set_feed_fault(0, FeedFault::Error500);
    assert_eq!(get(&c).await.expect("send").status(), 500);

    sim.set_feed_fault(0, FeedFault::Object);
    let res = get(&c).await.expect("send");
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.expect("json"), json!({"a": 1}));

    sim.set_feed_fault(0, FeedFault::Numbers);
    assert_eq!(get(&c).await.expect("send").json::<Value>().await.expect("json"), json!([1, 2, 3]));

    sim.set_feed_fault(0, FeedFault::InvalidUtf8);
    let res = get(&c).await.expect("send");
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.expect("bytes").as_ref(), b"[\"\xff\xfe\"]");

    sim.set_feed_fault(0, FeedFault::Huge(5 * 1024 * 1024));
    let res = get(&c).await.expect("send");
    assert_eq!(res.status(), 200);
    assert!(res.content_length().is_none(), "streamed, chunked");
    let body = res.bytes().await.expect("bytes");
    assert!(body.len() <= 5 * 1024 * 1024 && body.len() > 5 * 1024 * 1024 - 11);
    let items: Vec<String> = serde_json::from_slice(&body).expect("valid JSON array");
    assert_eq!(items.iter().collect::<HashSet<_>>().len(), items.len());

    sim.set_feed_fault(0, FeedFault::Hang);
    let err = c.get(&url).timeout(Duration::from_millis(300)).send().await.expect_err("must hang");
    assert!(err.is_timeout(), "{err}");

    // Other feeds are unaffected.
    assert_eq!(feed(&c, &sim, 1).await.len(), 20);

    // The same over the control route.
    let ctl = format!("{}/_control/feeds/0/fault", sim.offers_url());
    for (mode, want) in [
        (json!({"mode": "error500"}), FeedFault::Error500),
        (json!({"mode": "object"}), FeedFault::Object),
        (json!({"mode": "numbers"}), FeedFault::Numbers),
        (json!({"mode": "huge", "bytes": 104857600}), FeedFault::Huge(104_857_600)),
        (json!({"mode": "invalid_utf8"}), FeedFault::InvalidUtf8),
        (json!({"mode": "hang"}), FeedFault::Hang),
        (json!({"mode": "ok"}), FeedFault::Ok),
    ] {
        let res = c.post(&ctl).json(&mode).send().await.expect("ctl");
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{mode}");
        assert_eq!(sim.feed_fault(0), want);
    }
    let res = c
        .post(format!("{}/_control/feeds/9/fault", sim.offers_url()))
        .json(&json!({"mode": "ok"}))
        .send()
        .await
        .expect("ctl");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(feed(&c, &sim, 0).await.len(), 20);

    // A shutdown is not held up by a hanging request.
    sim.set_feed_fault(0, FeedFault::Hang);
    let hanging = tokio::spawn(c.get(&url).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let _ = hanging.await;
}

#[tokio::test]
async fn huge_feed_of_100_mb_streams() {
    let sim = start(quiet_config()).await;
    sim.set_feed_fault(0, FeedFault::Huge(100 * 1024 * 1024));
    let mut res = client().get(&sim.feed_urls()[0].0).timeout(Duration::from_secs(60)).send().await.expect("send");
    let mut total = 0usize;
    let mut last = 0u8;
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        total += chunk.len();
        last = chunk.last().copied().unwrap_or(last);
    }
    assert!(total > 100 * 1024 * 1024 - 11 && total <= 100 * 1024 * 1024);
    assert_eq!(last, b']');
    sim.shutdown().await;
}

#[tokio::test]
async fn stats_over_http() {
    let sim = start(quiet_config()).await;
    let c = client();
    let t = auth(&c, &sim).await;
    register(&c, &sim, &t, json!({"id": 1, "name": "n"})).await;
    feed(&c, &sim, 2).await;
    let stats: Value =
        c.get(format!("{}/_control/stats", sim.offers_url())).send().await.expect("stats").json().await.expect("json");
    assert_eq!(stats["auth_calls"], 1);
    assert_eq!(stats["register_calls"], 1);
    assert_eq!(stats["offers_calls"], 0);
    assert_eq!(stats["feed_requests"], json!([0, 0, 1]));
    assert_eq!(stats["registered_products"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_refuses_connections_and_restart_keeps_registrations() {
    let sim = start(quiet_config()).await;
    let c = client();
    let addr = sim.addr();
    let t = auth(&c, &sim).await;
    register(&c, &sim, &t, json!({"id": "p", "name": "n"})).await;
    let (_, before) = offers(&c, &sim, Some(&t), "p").await;
    let state = sim.simulator();
    sim.shutdown().await;

    let err = c.post(format!("http://{addr}/auth")).send().await.expect_err("refused");
    assert!(err.is_connect(), "{err}");

    // Same state, same port: registrations and the token survive.
    let sim = state.serve_at(addr).await.expect("rebind same port");
    assert_eq!(sim.addr(), addr);
    let (s, after) = offers(&c, &sim, Some(&t), "p").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(before, after);
    sim.shutdown().await;

    // A fresh simulator on the same port knows nothing.
    let sim = Simulator::start(addr, quiet_config()).await.expect("fresh");
    assert_eq!(sim.registered_count(), 0);
    assert_eq!(offers(&c, &sim, Some(&t), "p").await.0, StatusCode::UNAUTHORIZED);
    let t2 = auth(&c, &sim).await;
    assert_eq!(offers(&c, &sim, Some(&t2), "p").await.0, StatusCode::NOT_FOUND);
    sim.shutdown().await;
}

#[tokio::test]
async fn embedded_router_serves_the_same_contract() {
    let state = Simulator::new(quiet_config());
    let listener = tokio::net::TcpListener::bind(LOCAL).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        axum::serve(listener, sim::router(state)).await.expect("serve");
    });
    let res = client().post(format!("http://{addr}/auth")).send().await.expect("auth");
    assert_eq!(res.status(), StatusCode::CREATED);
    server.abort();
}
