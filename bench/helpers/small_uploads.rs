//! Small-bodies upload benchmark helpers, driven by `bench/small-uploads.sh` (issue #23).
//!
//! - `small-uploads-refs LISTEN DIR`: the references, two axum handlers that make each
//!   ~1 KB body durable before they answer 200: at `/fsync`, each body to its own file
//!   in DIR/fsync/, fsynced (in tokio's blocking pool, as a plain handler would); at
//!   `/group`, group commit: one writer thread, fed by a channel, appends every body that
//!   is waiting to DIR/group.log with one write, fsyncs once for the batch, then answers
//!   each request of the batch. `GET /group/stats`: `{"batches", "bodies"}` so far.
//! - `small-uploads-load CONNECTIONS SECONDS TAG URLS METRICS DRAIN_SECONDS`: the load
//!   generator, the same for every side: CONNECTIONS keep-alive connections (connection
//!   i on URLS' i-th modulo their number: the comma-separated URLs get the connections
//!   round-robin), each POSTing distinct ~1 KB bodies (a one-product JSON array, the sku
//!   `TAG-<counter>`) one after the other for SECONDS. A 503 with `Retry-After` that says
//!   the upload backlog is full is the documented refusal: the connection waits as told
//!   (at most until the end), as a well-behaved client does. Latencies are those of the
//!   200s. With METRICS (comma-separated `/metrics` URLs, `-` for none) it also scrapes
//!   every node every 0.5 s: `emporium_uploads_ingested_total` (summed over the nodes)
//!   and the peak of `emporium_upload_backlog_uploads`; after the load, every 0.2 s until
//!   every accepted upload has left the backlog (at most DRAIN_SECONDS). Prints one JSON
//!   object; the first answer of each unexpected kind goes to stderr.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// Every body's size in bytes: a product with a long description, about a real feed's.
pub const BODY_BYTES: usize = 1024;

const FILLER: &str = "Solid pine side table with a natural oil finish and one drawer; ships flat-packed with \
tools and fittings. Dimensions 45 x 45 x 60 cm, weight 9 kg. ";

/// Body `n` of the set named `tag`: `[{"id": "TAG-n", "name", "description"}]` (`id` is
/// the upload format's sku), padded with the description to [`BODY_BYTES`].
pub fn body(tag: &str, n: u64) -> Vec<u8> {
    let head = format!("[{{\"id\":\"{tag}-{n:010}\",\"name\":\"Small product {n:010}\",\"description\":\"");
    let tail = "\"}]";
    let mut body = Vec::with_capacity(BODY_BYTES.max(head.len() + tail.len()));
    body.extend_from_slice(head.as_bytes());
    let room = BODY_BYTES.saturating_sub(head.len() + tail.len());
    body.extend(FILLER.bytes().cycle().take(room));
    body.extend_from_slice(tail.as_bytes());
    body
}

/// A body waiting for the group commit, and where to say it is durable.
type Pending = (Bytes, oneshot::Sender<Result<(), String>>);

struct References {
    dir: PathBuf,
    files: AtomicU64,
    group: mpsc::UnboundedSender<Pending>,
    batches: Arc<AtomicU64>,
    bodies: Arc<AtomicU64>,
}

pub async fn references(listen: SocketAddr, dir: &str) -> anyhow::Result<()> {
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(dir.join("fsync"))?;
    let log = OpenOptions::new().create(true).append(true).open(dir.join("group.log"))?;
    let (group, queue) = mpsc::unbounded_channel();
    let (batches, bodies) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (batches, bodies) = (batches.clone(), bodies.clone());
        std::thread::spawn(move || group_writer(log, queue, &batches, &bodies));
    }
    let state = Arc::new(References { dir: dir.join("fsync"), files: AtomicU64::new(0), group, batches, bodies });

    async fn per_body(State(refs): State<Arc<References>>, body: Bytes) -> Result<&'static str, (StatusCode, String)> {
        let path = refs.dir.join(format!("{}.json", refs.files.fetch_add(1, Ordering::Relaxed)));
        let written = tokio::task::spawn_blocking(move || {
            let mut file = File::create(&path)?;
            file.write_all(&body)?;
            file.sync_all()
        })
        .await;
        match written {
            Ok(Ok(())) => Ok("{\"status\":\"stored\"}"),
            Ok(Err(error)) => Err((StatusCode::INTERNAL_SERVER_ERROR, error.to_string())),
            Err(error) => Err((StatusCode::INTERNAL_SERVER_ERROR, error.to_string())),
        }
    }
    async fn group_commit(
        State(refs): State<Arc<References>>,
        body: Bytes,
    ) -> Result<&'static str, (StatusCode, String)> {
        let (done, synced) = oneshot::channel();
        let stopped = || (StatusCode::INTERNAL_SERVER_ERROR, "the writer stopped".to_string());
        refs.group.send((body, done)).map_err(|_| stopped())?;
        match synced.await {
            Ok(Ok(())) => Ok("{\"status\":\"stored\"}"),
            Ok(Err(error)) => Err((StatusCode::INTERNAL_SERVER_ERROR, error)),
            Err(_) => Err(stopped()),
        }
    }
    async fn group_stats(State(refs): State<Arc<References>>) -> Json<serde_json::Value> {
        Json(json!({
            "batches": refs.batches.load(Ordering::Relaxed),
            "bodies": refs.bodies.load(Ordering::Relaxed),
        }))
    }
    let app = Router::new()
        .route("/fsync", post(per_body))
        .route("/group", post(group_commit))
        .route("/group/stats", get(group_stats))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The group commit's writer: takes whatever waits, appends it with one write, one fsync
/// for all of it, then answers each body's request.
fn group_writer(mut log: File, mut queue: mpsc::UnboundedReceiver<Pending>, batches: &AtomicU64, bodies: &AtomicU64) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut bytes = Vec::new();
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        bytes.clear();
        for (body, _) in &batch {
            bytes.extend_from_slice(body);
            bytes.push(b'\n');
        }
        let written = log.write_all(&bytes).and_then(|()| log.sync_all()).map_err(|error| error.to_string());
        batches.fetch_add(1, Ordering::Relaxed);
        bodies.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (_, done) in batch.drain(..) {
            let _ = done.send(written.clone());
        }
    }
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    /// Of the 200s, in microseconds.
    latencies: Vec<u32>,
    ok: u64,
    /// 503 with `Retry-After`, the backlog's refusal.
    backlog_503: u64,
    /// Any other answer, by status.
    other: BTreeMap<u16, u64>,
    /// No answer at all (connection refused or reset, timeout).
    errors: u64,
}

/// A scrape of every node: ingested uploads (succeeded; all outcomes) summed, the
/// backlog gauge's largest.
#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    succeeded: f64,
    ingested: f64,
    backlog: f64,
}

/// The sum of the samples of metric `name` in Prometheus text, those with `label` only when given.
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => {
                    let (labels, value) = labelled.split_once('}')?;
                    if label.is_some_and(|label| !labels.contains(label)) {
                        return None;
                    }
                    value
                }
                None if rest.starts_with(' ') => rest,
                None => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

async fn scrape(http: &reqwest::Client, urls: &[String]) -> anyhow::Result<Scrape> {
    let mut scrape = Scrape::default();
    for url in urls {
        let text = http.get(url).send().await?.error_for_status()?.text().await?;
        scrape.succeeded += metric(&text, "emporium_uploads_ingested_total", Some("outcome=\"succeeded\""));
        scrape.ingested += metric(&text, "emporium_uploads_ingested_total", None);
        scrape.backlog = scrape.backlog.max(metric(&text, "emporium_upload_backlog_uploads", None));
    }
    Ok(scrape)
}

pub async fn load(
    connections: usize,
    seconds: f64,
    tag: &str,
    urls: &str,
    metrics_urls: &str,
    drain_seconds: f64,
) -> anyhow::Result<()> {
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let metrics_urls: Vec<String> =
        if metrics_urls == "-" { Vec::new() } else { metrics_urls.split(',').map(str::to_owned).collect() };
    let scraper = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    let before = if metrics_urls.is_empty() { Scrape::default() } else { scrape(&scraper, &metrics_urls).await? };

    // One client per connection: each keeps exactly one connection open.
    let clients = (0..connections)
        .map(|_| {
            reqwest::Client::builder()
                .no_proxy()
                .http1_only()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let counter = Arc::new(AtomicU64::new(0));
    // Unexpected answers already shown, by kind: each is shown once.
    let shown = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let tag: Arc<str> = tag.into();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let url = urls[i % urls.len()].clone();
        let (counter, shown, tag) = (counter.clone(), shown.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let show = |kind: String, detail: &str| {
                if shown.lock().unwrap().insert(kind.clone()) {
                    eprintln!("   first {kind} from {url}: {}", detail.chars().take(300).collect::<String>());
                }
            };
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body(&tag, n))
                    .send()
                    .await;
                let response = match answer {
                    Ok(response) => response,
                    Err(error) => {
                        tally.errors += 1;
                        show("transport error".into(), &format!("{error:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok());
                let text = response.text().await.unwrap_or_default();
                let took = sent.elapsed();
                match (status, retry_after) {
                    (200, _) => {
                        tally.ok += 1;
                        tally.latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    }
                    (503, Some(after)) if text.contains("backlog") => {
                        tally.backlog_503 += 1;
                        show("backlog 503".into(), &text);
                        let wake = (Instant::now() + Duration::from_secs(after)).min(end);
                        tokio::time::sleep_until(wake.into()).await;
                    }
                    (status, _) => {
                        *tally.other.entry(status).or_default() += 1;
                        show(format!("{status}"), &text);
                    }
                }
            }
            tally
        }));
    }

    // The scrapes while the load runs, every 0.5 s.
    let peak_backlog = Arc::new(Mutex::new(before.backlog));
    let poller = (!metrics_urls.is_empty()).then(|| {
        let (scraper, metrics_urls, peak_backlog) = (scraper.clone(), metrics_urls.clone(), peak_backlog.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(now) = scrape(&scraper, &metrics_urls).await {
                    let mut peak = peak_backlog.lock().unwrap();
                    *peak = peak.max(now.backlog);
                }
            }
        })
    });

    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await?;
        total.latencies.extend(tally.latencies);
        total.ok += tally.ok;
        total.backlog_503 += tally.backlog_503;
        total.errors += tally.errors;
        for (status, count) in tally.other {
            *total.other.entry(status).or_default() += count;
        }
    }
    let window = started.elapsed().as_secs_f64();
    let mut report = json!({
        "connections": connections,
        "window_seconds": window,
        "requests": counter.load(Ordering::Relaxed),
        "ok": total.ok,
        "accepted_per_second": total.ok as f64 / window,
        "backlog_503": total.backlog_503,
        "other": total.other.iter().map(|(status, count)| (status.to_string(), json!(count))).collect::<serde_json::Map<_, _>>(),
        "other_5xx": total.other.iter().filter(|(status, _)| **status >= 500).map(|(_, count)| count).sum::<u64>(),
        "transport_errors": total.errors,
    });
    total.latencies.sort_unstable();
    let quantile = |q: f64| {
        let rank = ((q * total.latencies.len() as f64).ceil() as usize).clamp(1, total.latencies.len().max(1));
        total.latencies.get(rank - 1).map(|micros| f64::from(*micros) / 1000.0)
    };
    report["p50_ms"] = json!(quantile(0.50));
    report["p99_ms"] = json!(quantile(0.99));
    report["max_ms"] = json!(total.latencies.last().map(|micros| f64::from(*micros) / 1000.0));

    if let Some(poller) = poller {
        let at_end = scrape(&scraper, &metrics_urls).await?;
        let succeeded = at_end.succeeded - before.succeeded;
        report["ingested_in_window"] = json!(succeeded);
        report["ingested_per_second"] = json!(succeeded / window);
        // The drain: until every accepted upload has left the backlog (ingested or refused).
        let drain_started = Instant::now();
        let mut last = at_end;
        let mut peak = peak_backlog.lock().unwrap().max(at_end.backlog);
        while last.ingested - before.ingested < total.ok as f64 {
            if drain_started.elapsed().as_secs_f64() > drain_seconds {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            last = scrape(&scraper, &metrics_urls).await?;
            peak = peak.max(last.backlog);
        }
        poller.abort();
        let drained = last.ingested - before.ingested >= total.ok as f64;
        report["drained"] = json!(drained);
        report["drain_seconds"] = json!(drain_started.elapsed().as_secs_f64());
        report["succeeded_total"] = json!(last.succeeded - before.succeeded);
        report["refused_total"] = json!((last.ingested - last.succeeded) - (before.ingested - before.succeeded));
        report["peak_backlog"] = json!(peak);
    }
    println!("{report}");
    Ok(())
}
