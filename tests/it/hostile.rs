//! Hostile input from an anonymous client against a node process: oversized bodies,
//! GraphQL documents built to expand, connection floods, slow clients, a feed hogged by
//! clients that do not read, and the operations surface. Each case asserts the answer
//! (status, `extensions.code`) and that the node stays responsive while under attack
//! (`/health` on a fresh connection answers within 1 s) and bounded (peak RSS under
//! 256 MiB). Every network wait is under a timeout; each case runs in at most ~20 s.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{SinkExt as _, Stream, StreamExt as _, stream};
use reqwest::header::{ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Semaphore,
};

use crate::support::{NodeProcess, TestEnv, assert_responsive, eventually, free_port, health_answer, raise_fd_limit};

const PEAK_RSS_LIMIT: u64 = 256 * 1024 * 1024;
const SMALL_BODY: usize = 64 * 1024;
const MIB: usize = 1024 * 1024;

// ---- helpers ------------------------------------------------------------------------

/// Asserts that the node's peak resident memory (VmHWM) stayed under 256 MiB.
fn assert_memory_bounded(node: &NodeProcess, after: &str) {
    let (rss, peak) = node.memory();
    assert!(
        peak < PEAK_RSS_LIMIT,
        "after {after}: peak RSS {} MiB (now {} MiB), the bound is {} MiB",
        peak >> 20,
        rss >> 20,
        PEAK_RSS_LIMIT >> 20
    );
}

/// Runs `attack` on the runtime's workers and probes `/health` on a fresh connection
/// every 200 ms while it runs (at least once), then once after it. Panics if the attack
/// outlasts `limit`; an attack's own panic is propagated.
async fn under_attack<T: Send + 'static>(
    node: &NodeProcess,
    limit: Duration,
    attack: impl Future<Output = T> + Send + 'static,
) -> T {
    let started = Instant::now();
    let mut task = tokio::spawn(attack);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut probes = 0;
    loop {
        assert_responsive(node).await;
        probes += 1;
        if task.is_finished() {
            break;
        }
        assert!(started.elapsed() < limit, "the attack still runs after {limit:?} ({probes} health probes answered)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
        Err(_) => panic!("a finished attack did not join"),
    };
    assert_responsive(node).await;
    outcome
}

/// A client whose every request gives up after 20 s.
fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("http client")
}

/// How many sockets an attack may open: `wanted`, or less when this process's
/// file-descriptor limit (raised to its hard limit first) is low. Two such attacks may
/// run at once (`--test-threads=2`), hence the half.
fn attack_size(wanted: usize) -> usize {
    let limit = usize::try_from(raise_fd_limit()).unwrap_or(usize::MAX);
    wanted.min(limit.saturating_sub(256) / 2)
}

/// A GraphQL answer: status, body size, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    size: usize,
    body: Value,
}

impl Answer {
    fn codes(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|error| error["extensions"]["code"].as_str().unwrap_or("<none>").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Refused before execution with `code`: 200 or 400 (by `Accept`), a small body,
    /// no data, at most 21 errors.
    fn assert_refused(&self, code: &str, what: &str) {
        let codes = self.codes();
        assert!(codes.iter().any(|found| found == code), "{what}: expected {code}, got {codes:?} ({})", self.preview());
        assert!(matches!(self.status, 200 | 400), "{what}: status {}", self.status);
        assert!(self.size < SMALL_BODY, "{what}: a {} byte answer", self.size);
        assert!(self.body["data"].is_null(), "{what}: refused before execution, yet data: {}", self.preview());
        assert!(codes.len() <= 21, "{what}: {} errors", codes.len());
    }

    fn preview(&self) -> String {
        let text = self.body.to_string();
        text.chars().take(600).collect()
    }
}

async fn post_graphql(http: &reqwest::Client, node: SocketAddr, query: &str, accept: Option<&str>) -> Answer {
    let mut request = http
        .post(format!("http://{node}/graphql"))
        .header(CONTENT_TYPE, "application/json")
        .body(json!({ "query": query }).to_string());
    if let Some(accept) = accept {
        request = request.header(ACCEPT, accept);
    }
    let response = request.send().await.expect("POST /graphql answered");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("the whole answer");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        panic!("status {status}: not JSON ({error}): {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]))
    });
    Answer { status, size: bytes.len(), body }
}

/// `query{...F0}` and `levels` fragments each spreading the next one twice, the last
/// one selecting `__typename`: 2^levels fields once expanded.
fn fan_out(levels: usize) -> String {
    let mut text = String::from("query{...F0}");
    for i in 0..levels {
        text.push_str(&format!(" fragment F{i} on Query{{...F{n} ...F{n}}}", n = i + 1));
    }
    text.push_str(&format!(" fragment F{levels} on Query{{__typename}}"));
    text
}

/// The same fan-out under one root field: `{ intakeCounts { ...F0 } }`, fragments on
/// `IntakeCounts`, the last one selecting `queued`.
fn nested_fan_out(levels: usize) -> String {
    let mut text = String::from("query{intakeCounts{...F0}}");
    for i in 0..levels {
        text.push_str(&format!(" fragment F{i} on IntakeCounts{{...F{n} ...F{n}}}", n = i + 1));
    }
    text.push_str(&format!(" fragment F{levels} on IntakeCounts{{queued}}"));
    text
}

/// `{ <0>selection <1>selection … }` with `count` numbered copies of `selection` (`{}` is
/// replaced by the number).
fn repeated(count: usize, selection: &str) -> String {
    let mut text = String::with_capacity(count * (selection.len() + 6) + 4);
    text.push('{');
    for i in 0..count {
        text.push(' ');
        text.push_str(&selection.replace("{}", &i.to_string()));
    }
    text.push_str(" }");
    text
}

/// An HTTP/1.1 response read from a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(field, _)| field.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection").is_some_and(|value| value.to_ascii_lowercase().contains("close"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "status {}: not JSON ({error}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }
}

async fn read_more(reader: &mut (impl AsyncRead + Unpin), buffer: &mut Vec<u8>) -> io::Result<()> {
    buffer.reserve(64 * 1024);
    match reader.read_buf(buffer).await? {
        0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed mid-response")),
        _ => Ok(()),
    }
}

/// Reads one response (`Content-Length`, chunked, or up to EOF); `buffer` keeps what came
/// after it. `Ok(None)`: the connection closed before a response began.
async fn read_response(reader: &mut (impl AsyncRead + Unpin), buffer: &mut Vec<u8>) -> io::Result<Option<RawResponse>> {
    let (status, headers, head_length) = loop {
        if !buffer.is_empty() {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut slots);
            match response.parse(buffer) {
                Ok(httparse::Status::Complete(length)) => {
                    let headers = response
                        .headers
                        .iter()
                        .map(|header| (header.name.to_string(), String::from_utf8_lossy(header.value).into_owned()))
                        .collect::<Vec<_>>();
                    break (response.code.unwrap_or_default(), headers, length);
                }
                Ok(httparse::Status::Partial) => {}
                Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
            }
        }
        buffer.reserve(64 * 1024);
        if reader.read_buf(buffer).await? == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed mid-head"))
            };
        }
    };
    buffer.drain(..head_length);
    let mut response = RawResponse { status, headers, body: Vec::new() };
    let chunked = response.header("transfer-encoding").is_some_and(|value| value.contains("chunked"));
    let length = response.header("content-length").and_then(|value| value.trim().parse::<usize>().ok());
    if matches!(status, 100..=199 | 204 | 304) {
        return Ok(Some(response));
    }
    if chunked {
        loop {
            let line_end = loop {
                if let Some(at) = buffer.windows(2).position(|pair| pair == b"\r\n") {
                    break at;
                }
                read_more(reader, buffer).await?;
            };
            let line = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("chunk size `{line}`")))?;
            buffer.drain(..line_end + 2);
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let at = loop {
                        if let Some(at) = buffer.windows(2).position(|pair| pair == b"\r\n") {
                            break at;
                        }
                        read_more(reader, buffer).await?;
                    };
                    buffer.drain(..at + 2);
                    if at == 0 {
                        return Ok(Some(response));
                    }
                }
            }
            while buffer.len() < size + 2 {
                read_more(reader, buffer).await?;
            }
            response.body.extend_from_slice(&buffer[..size]);
            buffer.drain(..size + 2);
        }
    }
    match length {
        Some(length) => {
            while buffer.len() < length {
                read_more(reader, buffer).await?;
            }
            response.body = buffer.drain(..length).collect();
        }
        None => {
            while reader.read_buf(buffer).await? > 0 {}
            response.body = std::mem::take(buffer);
        }
    }
    Ok(Some(response))
}

/// A request with `Connection: close`.
fn get_request(path: &str, extra_headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: emporium\r\n{extra_headers}Connection: close\r\n\r\n")
}

/// Sends `request` on a fresh connection and reads the answer, all within `limit`.
async fn send_raw(addr: SocketAddr, request: &[u8], limit: Duration) -> io::Result<RawResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut buffer = Vec::new();
        read_response(&mut stream, &mut buffer)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed without an answer"))
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

/// What a streaming upload saw.
struct Exchange {
    response: Option<RawResponse>,
    /// Body bytes handed to the socket before the answer came.
    sent: u64,
    elapsed: Duration,
}

/// Sends `head`, then `body` (framed as chunks when `chunked`), reading at the same time;
/// stops sending as soon as a whole response has arrived. Panics after `limit`.
async fn stream_request(
    addr: SocketAddr,
    head: String,
    body: impl Stream<Item = Bytes> + Send + Unpin,
    chunked: bool,
    limit: Duration,
) -> Exchange {
    let started = Instant::now();
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let sent = AtomicU64::new(0);
    let write = async {
        let mut body = body;
        writer.write_all(head.as_bytes()).await?;
        while let Some(chunk) = body.next().await {
            if chunked {
                writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            }
            writer.write_all(&chunk).await?;
            if chunked {
                writer.write_all(b"\r\n").await?;
            }
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        io::Result::Ok(())
    };
    let mut buffer = Vec::new();
    let read = read_response(&mut reader, &mut buffer);
    tokio::pin!(write, read);
    let mut write_ended = false;
    let outcome = tokio::time::timeout(limit, async {
        loop {
            tokio::select! {
                response = &mut read => break response,
                // A write error (the server closed its side) ends the sending, not the reading.
                _ = &mut write, if !write_ended => write_ended = true,
            }
        }
    })
    .await;
    let sent = sent.load(Ordering::Relaxed);
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => panic!("reading the answer failed after {sent} body bytes: {error}"),
        Err(_) => panic!("no answer within {limit:?} ({sent} body bytes sent)"),
    };
    Exchange { response, sent, elapsed: started.elapsed() }
}

/// `size` bytes of a GraphQL POST body: `{"query":"{ __typename }` padded with spaces,
/// in 64 KiB chunks.
fn padded_query_body(size: usize) -> impl Stream<Item = Bytes> + Send + Unpin {
    let prefix = Bytes::from_static(br#"{"query":"{ __typename }"#);
    let suffix = Bytes::from_static(br#""}"#);
    let spaces = Bytes::from(vec![b' '; 64 * 1024]);
    let mut padding = size - prefix.len() - suffix.len();
    let mut chunks = vec![prefix];
    while padding > 0 {
        let take = padding.min(spaces.len());
        chunks.push(spaces.slice(..take));
        padding -= take;
    }
    chunks.push(suffix);
    stream::iter(chunks)
}

/// Whether the server closes `stream` (a read sees EOF or an error) within `limit`;
/// whatever it sends first is ignored.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut scratch = vec![0u8; 16 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The kernel's count of connections dropped because a listen queue was full (all
/// sockets of this network namespace): a diagnostic for connection floods.
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Connection `index` of a flood paced at 50 connections every 50 ms: faster, the node's
/// listen queue (128) overflows and the kernel retries the handshake seconds later, which
/// would measure the kernel rather than the server.
async fn paced_connect(addr: SocketAddr, index: usize) -> Option<TcpStream> {
    tokio::time::sleep(Duration::from_millis(50) * u32::try_from(index / 50).unwrap_or(u32::MAX)).await;
    tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await.ok()?.ok()
}

fn assert_graphql_error(response: &RawResponse, code: &str, what: &str) {
    let body = response.json();
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("{what}: no `errors` in {body}"));
    assert!(!errors.is_empty(), "{what}: empty `errors`");
    assert!(errors[0]["message"].is_string(), "{what}: {body}");
    assert_eq!(errors[0]["extensions"]["code"], code, "{what}: {body}");
}

// ---- GraphQL documents built to expand ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_fan_out_is_refused_before_it_is_expanded() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let addr = node.addr;
    let answers = under_attack(&node, Duration::from_secs(20), async move {
        let http = http();
        let mut requests = Vec::new();
        for levels in [24, 28, 40] {
            // The fan-out at the top level (its fields are root fields too), and under one
            // root field (only the field count is beyond its limit).
            for nested in [false, false, true, true] {
                let http = http.clone();
                requests.push(tokio::spawn(async move {
                    let query = if nested { nested_fan_out(levels) } else { fan_out(levels) };
                    (levels, nested, post_graphql(&http, addr, &query, None).await)
                }));
            }
        }
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.expect("request task"));
        }
        answers
    })
    .await;
    assert_eq!(answers.len(), 12);
    for (levels, nested, answer) in &answers {
        if *nested {
            answer.assert_refused("FIELD_LIMIT_EXCEEDED", &format!("{levels} levels of fan-out under intakeCounts"));
        } else {
            // 2^levels fields, every one of them a root field: either limit may be named.
            let what = format!("{levels} levels of fan-out on Query");
            let code = if answer.codes().iter().any(|code| code == "ROOT_FIELD_LIMIT_EXCEEDED") {
                "ROOT_FIELD_LIMIT_EXCEEDED"
            } else {
                "FIELD_LIMIT_EXCEEDED"
            };
            answer.assert_refused(code, &what);
        }
    }
    assert_memory_bounded(&node, "the fragment fan-out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_floods_are_refused_by_the_alias_limit() {
    let env = TestEnv::new().await;
    // Fields and root fields are checked before aliases: raised here so that the alias
    // limit is the one these documents meet (with the defaults they are refused as
    // FIELD_LIMIT_EXCEEDED first).
    let raised = [("GRAPHQL_MAX_FIELDS", "1000000"), ("GRAPHQL_MAX_ROOT_FIELDS", "1000000")];
    let node = NodeProcess::spawn(&env, &raised).await;
    let addr = node.addr;
    let typename = repeated(25_000, "a{}:__typename");
    let counts = repeated(5_000, "c{}:intakeCounts{queued}");
    let answers = under_attack(&node, Duration::from_secs(20), async move {
        let http = http();
        let mut requests = Vec::new();
        for (what, query) in [("25,000 __typename aliases", typename), ("5,000 intakeCounts aliases", counts)] {
            for _ in 0..2 {
                let (http, query) = (http.clone(), query.clone());
                requests.push(tokio::spawn(async move { (what, post_graphql(&http, addr, &query, None).await) }));
            }
        }
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.expect("request task"));
        }
        answers
    })
    .await;
    for (what, answer) in &answers {
        answer.assert_refused("ALIAS_LIMIT_EXCEEDED", what);
    }
    assert_memory_bounded(&node, "the alias floods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_queries_within_the_limits_leave_plain_queries_answering() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let addr = node.addr;
    // 20 root fields (the limit), 20 aliases, 80 fields: allowed.
    let heavy = repeated(20, "c{}: intakeCounts { queued stored failed }");
    let (plain, plain_took, heavy_answers) = under_attack(&node, Duration::from_secs(20), async move {
        let http = http();
        let heavy: Vec<_> = (0..8)
            .map(|_| {
                let (http, heavy) = (http.clone(), heavy.clone());
                tokio::spawn(async move { post_graphql(&http, addr, &heavy, None).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let plain = post_graphql(&http, addr, "{ __typename }", None).await;
        let took = started.elapsed();
        let mut answers = Vec::new();
        for request in heavy {
            answers.push(request.await.expect("request task"));
        }
        (plain, took, answers)
    })
    .await;
    assert!(plain_took < Duration::from_secs(10), "`{{ __typename }}` took {plain_took:?}");
    let answered =
        plain.body["data"]["__typename"] == "Query" || plain.codes().iter().any(|c| c == "UPSTREAM_UNAVAILABLE");
    assert!(answered, "`{{ __typename }}`: {}", plain.preview());
    for answer in &heavy_answers {
        let codes = answer.codes();
        let ok = answer.body["data"]["c19"]["queued"].is_number()
            || (!codes.is_empty() && codes.iter().all(|code| code == "UPSTREAM_UNAVAILABLE"));
        assert!(ok, "20 counting root fields are within the limits: status {}, {}", answer.status, answer.preview());
    }
    assert_memory_bounded(&node, "the counting queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directive_flood_gets_a_small_refusal() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let addr = node.addr;
    let query = format!("{{ __typename{} }}", " @include(if: true)".repeat(50_000));
    assert!(query.len() > 900_000 && query.len() + 20 < MIB, "about 1 MB, under the body limit: {}", query.len());
    let answers = under_attack(&node, Duration::from_secs(20), async move {
        let http = http();
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let (http, query) = (http.clone(), query.clone());
                tokio::spawn(async move { post_graphql(&http, addr, &query, None).await })
            })
            .collect();
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.expect("request task"));
        }
        answers
    })
    .await;
    for answer in &answers {
        answer.assert_refused("DIRECTIVE_LIMIT_EXCEEDED", "50,000 @include directives");
        assert_eq!(answer.codes().len(), 1, "one refusal, not one error per directive: {}", answer.preview());
    }
    assert_memory_bounded(&node, "the directive flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_limit_refuses_with_its_own_code() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let client = http();

    // 15 levels through introspection (`ofType` does not count, `fields`/`type` do).
    let depth = format!("{{ __schema {{ types {{ {} name {} }} }} }}", "fields { type { ".repeat(6), "} } ".repeat(6));
    let cases = [
        ("depth", depth, "DEPTH_LIMIT_EXCEEDED"),
        ("fields", format!("{{ intakeCounts {{ {} }} }}", "queued ".repeat(2001)), "FIELD_LIMIT_EXCEEDED"),
        ("aliases", format!("{{ intakeCounts {} }}", repeated(101, "a{}: queued")), "ALIAS_LIMIT_EXCEEDED"),
        ("root fields", repeated(21, "r{}: intakeCounts { queued }"), "ROOT_FIELD_LIMIT_EXCEEDED"),
        (
            "directives",
            format!("{{ intakeCounts {{ queued{} }} }}", " @include(if: true)".repeat(51)),
            "DIRECTIVE_LIMIT_EXCEEDED",
        ),
        (
            "complexity",
            "{ customers(first: 100) { nodes { purchases(first: 100) { nodes { id quantity status createdAt } } } } }"
                .to_string(),
            "COMPLEXITY_LIMIT_EXCEEDED",
        ),
        (
            "fragment cycle",
            "query { ...A } fragment A on Query { ...B } fragment B on Query { intakeCounts { queued } ...A }".into(),
            "GRAPHQL_VALIDATION_FAILED",
        ),
    ];
    let (addr, attacker) = (node.addr, client.clone());
    let answers = under_attack(&node, Duration::from_secs(20), async move {
        let mut answers = Vec::new();
        for (what, query, code) in cases {
            for accept in [None, Some("application/json"), Some("application/graphql-response+json")] {
                answers.push((what, code, accept, post_graphql(&attacker, addr, &query, accept).await));
            }
        }
        answers
    })
    .await;
    for (what, code, accept, answer) in &answers {
        answer.assert_refused(code, &format!("{what} (Accept: {accept:?})"));
    }

    // At the limits (20 root fields, 100 aliases, 100 fields): served.
    let mut selections: Vec<String> = (0..19).map(|i| format!("r{i}: __typename")).collect();
    selections.push(format!("counts: intakeCounts {}", repeated(80, "a{}: queued")));
    let at_limits = format!("{{ {} }}", selections.join(" "));
    let answer = post_graphql(&client, node.addr, &at_limits, None).await;
    assert_eq!(answer.status, 200, "{}", answer.preview());
    assert!(answer.body["data"]["counts"]["a79"].is_number(), "within every limit: {}", answer.preview());
    assert_memory_bounded(&node, "the limit checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_are_capped() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let addr = node.addr;
    // 99 aliased unknown fields under one root field: within every limit, 99 validation errors.
    let query = format!("{{ intakeCounts {} }}", repeated(99, "u{}: noSuchField{}"));
    let answers = under_attack(&node, Duration::from_secs(20), async move {
        let http = http();
        let mut answers = Vec::new();
        for accept in [None, Some("application/graphql-response+json")] {
            answers.push(post_graphql(&http, addr, &query, accept).await);
        }
        answers
    })
    .await;
    for answer in &answers {
        let codes = answer.codes();
        assert!(matches!(answer.status, 200 | 400), "status {}", answer.status);
        assert!(answer.size < SMALL_BODY, "a {} byte answer", answer.size);
        assert_eq!(codes.len(), 21, "20 errors and the cap's own: {codes:?}");
        assert_eq!(codes.last().map(String::as_str), Some("TOO_MANY_ERRORS"), "{codes:?}");
        assert!(codes[..20].iter().all(|code| code != "TOO_MANY_ERRORS" && code != "<none>"), "{codes:?}");
    }
    assert_memory_bounded(&node, "99 validation errors");
}

// ---- bodies beyond GRAPHQL_MAX_BODY_BYTES -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_with_content_length_gets_413_at_once() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let addr = node.addr;
    let size = 100 * MIB;
    let exchange = under_attack(&node, Duration::from_secs(20), async move {
        let head = format!(
            "POST /graphql HTTP/1.1\r\nHost: emporium\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        stream_request(addr, head, padded_query_body(size), false, Duration::from_secs(15)).await
    })
    .await;
    let response = exchange.response.expect("an answer before the connection closed");
    assert_eq!(response.status, 413, "{:?}", String::from_utf8_lossy(&response.body));
    assert_graphql_error(&response, "PAYLOAD_TOO_LARGE", "100 MB body");
    assert!(
        (exchange.sent as usize) < size,
        "answered only after the whole body ({} bytes sent in {:?})",
        exchange.sent,
        exchange.elapsed
    );
    assert_memory_bounded(&node, "a 100 MB body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chunked_gigabyte_gets_413_after_the_limit() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let addr = node.addr;
    // 1 GiB in 64 KiB chunks, one every 5 ms (about 13 MB/s): 80 s to send it all.
    let exchange = under_attack(&node, Duration::from_secs(20), async move {
        let head = "POST /graphql HTTP/1.1\r\nHost: emporium\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n"
            .to_string();
        let body = padded_query_body(1024 * MIB).then(|chunk| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            chunk
        });
        stream_request(addr, head, Box::pin(body), true, Duration::from_secs(20)).await
    })
    .await;
    let response = exchange.response.expect("an answer before the connection closed");
    assert_eq!(response.status, 413, "{:?}", String::from_utf8_lossy(&response.body));
    assert_graphql_error(&response, "PAYLOAD_TOO_LARGE", "chunked gigabyte");
    assert!(
        exchange.sent < 64 * MIB as u64,
        "the answer came after {} MiB (in {:?}); the limit is 1 MiB",
        exchange.sent >> 20,
        exchange.elapsed
    );
    assert_memory_bounded(&node, "a chunked gigabyte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_queries_and_post_bodies_beyond_the_limit_get_413() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[("GRAPHQL_MAX_BODY_BYTES", "16384")]).await;
    let http = http();
    // `+` is a space in a query string: the raw and the decoded lengths are the same.
    let padded = |length: usize| format!("%7B__typename%7D{}", "+".repeat(length));

    let within = http.get(node.url(&format!("/graphql?query={}", padded(8_000)))).send().await.expect("GET");
    assert_eq!(within.status(), 200);
    let body: Value = within.json().await.expect("json");
    assert_eq!(body["data"]["__typename"], "Query", "{body}");

    let beyond = http.get(node.url(&format!("/graphql?query={}", padded(20_000)))).send().await.expect("GET");
    let status = beyond.status().as_u16();
    let text = beyond.text().await.expect("body");
    assert!(status == 413 || status == 414, "GET beyond the limit: {status} {text:.300}");
    if status == 413 {
        let body: Value = serde_json::from_str(&text).expect("a JSON body");
        assert_eq!(body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE", "{body}");
    }

    let query = format!("{{ __typename }}{}", " ".repeat(20_000));
    let beyond = http.post(node.url("/graphql")).json(&json!({ "query": query })).send().await.expect("POST");
    assert_eq!(beyond.status(), 413);
    let body: Value = beyond.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE", "{body}");
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    assert_responsive(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_beyond_the_limit_closes_the_socket() {
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let mut request = node.url("/graphql/ws").replacen("http", "ws", 1).into_client_request().expect("request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    async fn next_message<S>(socket: &mut S) -> Option<Result<Message, String>>
    where
        S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("a frame in time");
            match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(Ok(message)),
                Some(Err(error)) => return Some(Err(error.to_string())),
                None => return None,
            }
        }
    }

    socket.send(Message::Text(json!({ "type": "connection_init" }).to_string().into())).await.expect("init");
    let ack = next_message(&mut socket).await;
    assert!(matches!(&ack, Some(Ok(Message::Text(text))) if text.contains("connection_ack")), "{ack:?}");
    let small = json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ __typename }" } });
    socket.send(Message::Text(small.to_string().into())).await.expect("small subscribe");
    let answer = next_message(&mut socket).await;
    assert!(matches!(&answer, Some(Ok(Message::Text(text))) if text.contains("\"Query\"")), "{answer:?}");

    // 2 MiB: a valid operation padded with spaces, which a node without the limit runs.
    let query = format!("{{ __typename }}{}", " ".repeat(2 * MIB));
    let big = json!({ "id": "2", "type": "subscribe", "payload": { "query": query } });
    let sent = tokio::time::timeout(Duration::from_secs(5), socket.send(Message::Text(big.to_string().into()))).await;
    assert!(sent.is_ok(), "sending 2 MiB did not finish");
    let mut closed = false;
    for _ in 0..4 {
        match next_message(&mut socket).await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                closed = true;
                break;
            }
            Some(Ok(Message::Text(text))) => {
                assert!(!text.contains("\"next\""), "the oversized operation ran: {:.300}", text.as_str());
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(closed, "the socket stays open after a 2 MiB message");
    assert_responsive(&node).await;
    assert_memory_bounded(&node, "a 2 MiB WebSocket message");
}

// ---- connections ---------------------------------------------------------------------

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const CLOSE_MARGIN: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let count = attack_size(2_000);
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[("HTTP_HEADER_TIMEOUT", "2s")]).await;
    let addr = node.addr;
    let overflows_before = listen_overflows();
    let (kept_alive, outcomes) = under_attack(&node, Duration::from_secs(20), async move {
        // One kept-alive connection that goes idle after a request.
        let kept_alive = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: emporium\r\n\r\n").await.expect("send");
            let mut buffer = Vec::new();
            let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream, &mut buffer))
                .await
                .expect("an answer in time")
                .expect("read")
                .expect("an answer");
            assert!(!response.closes(), "kept alive");
            let idle = Instant::now();
            closed_within(&mut stream, HEADER_TIMEOUT + CLOSE_MARGIN).await.then(|| idle.elapsed())
        });
        let idle: Vec<_> = (0..count)
            .map(|index| {
                tokio::spawn(async move {
                    let mut stream = paced_connect(addr, index).await?;
                    let connected = Instant::now();
                    Some(closed_within(&mut stream, HEADER_TIMEOUT + CLOSE_MARGIN).await.then(|| connected.elapsed()))
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in idle {
            outcomes.push(task.await.expect("connection task"));
        }
        (kept_alive.await.expect("kept-alive task"), outcomes)
    })
    .await;
    let connected: Vec<_> = outcomes.iter().flatten().collect();
    let open = connected.iter().filter(|closed| closed.is_none()).count();
    assert!(connected.len() >= count / 2, "only {} of {count} connections were accepted", connected.len());
    assert_eq!(
        open,
        0,
        "{open} of {} idle connections still open after {:?} (listen queue overflows meanwhile, \
         machine-wide: {})",
        connected.len(),
        HEADER_TIMEOUT + CLOSE_MARGIN,
        listen_overflows() - overflows_before
    );
    let slowest = connected.iter().flat_map(|closed| **closed).max().unwrap_or_default();
    eprintln!("{} idle connections closed, the last after {slowest:?}", connected.len());
    assert!(kept_alive.is_some(), "an idle kept-alive connection stays open after {:?}", HEADER_TIMEOUT + CLOSE_MARGIN);
    assert_memory_bounded(&node, "2,000 idle connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_sent_a_byte_a_second_are_cut_off() {
    let count = attack_size(200);
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[("HTTP_HEADER_TIMEOUT", "2s")]).await;
    let addr = node.addr;
    let head = b"GET /health HTTP/1.1\r\nHost: emporium\r\nUser-Agent: one-byte-a-second\r\n\r\n";
    let outcomes = under_attack(&node, Duration::from_secs(15), async move {
        let tasks: Vec<_> = (0..count)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream =
                        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await.ok()?.ok()?;
                    let started = Instant::now();
                    // At most 8 bytes in 8 s: far from a whole head.
                    for byte in head.iter().take(8) {
                        if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                            return Some(Some(started.elapsed()));
                        }
                        if closed_within(&mut stream, Duration::from_secs(1)).await {
                            return Some(Some(started.elapsed()));
                        }
                    }
                    Some(None)
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("slow client task"));
        }
        outcomes
    })
    .await;
    let connected: Vec<_> = outcomes.iter().flatten().collect();
    assert!(connected.len() >= count / 2, "only {} of {count} connections were accepted", connected.len());
    let open = connected.iter().filter(|closed| closed.is_none()).count();
    assert_eq!(open, 0, "{open} of {} byte-a-second connections were not cut off within 8 s", connected.len());
    assert_memory_bounded(&node, "byte-a-second request heads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_health_still_answers() {
    const OPENING: u8 = 0;
    const HOLDING: u8 = 1;
    const PHASES: [&str; 2] = ["opening", "holding"];
    let count = attack_size(2_000);
    let env = TestEnv::new().await;
    let mut node = NodeProcess::spawn_with_nofile(&env, &[("HTTP_HEADER_TIMEOUT", "5s")], 512).await;
    let addr = node.addr;
    let phase = Arc::new(AtomicU8::new(OPENING));
    let mut attack = tokio::spawn({
        let phase = phase.clone();
        async move {
            let connects = Arc::new(Semaphore::new(250));
            let opening = Instant::now() + Duration::from_secs(4);
            let tasks: Vec<_> = (0..count)
                .map(|_| {
                    let connects = connects.clone();
                    tokio::spawn(async move {
                        let _permit = connects.acquire_owned().await.expect("semaphore");
                        let left = opening.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
                        tokio::time::timeout(left, TcpStream::connect(addr)).await.ok()?.ok()
                    })
                })
                .collect();
            let mut held = Vec::new();
            for task in tasks {
                held.extend(task.await.expect("connect task"));
            }
            phase.store(HOLDING, Ordering::SeqCst);
            // Beyond the limit, any other route is 503 with `Connection: close` (or the
            // connection is closed at once, or it is served when there is room after all).
            let request = get_request("/graphql?query=%7B__typename%7D", "");
            let overflow = send_raw(addr, request.as_bytes(), Duration::from_secs(2)).await.ok();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let opened = held.len();
            drop(held);
            (opened, overflow)
        }
    });
    // Health probes on fresh connections while the connections are opened and held.
    let started = Instant::now();
    let mut probes = Vec::new();
    while !attack.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(20), "the flood still runs after 20 s");
        let during = PHASES[usize::from(phase.load(Ordering::SeqCst))];
        let at = started.elapsed();
        probes.push((during, at, health_answer(addr, Duration::from_secs(1)).await));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (opened, overflow) = match tokio::time::timeout(Duration::from_secs(1), &mut attack).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
        Err(_) => panic!("a finished attack did not join"),
    };
    eprintln!("{opened} of {count} connections opened against a node limited to 512 descriptors");
    // While the connections are held, every probe is answered. While they are still
    // pouring in, the overflow may be full: a probe may then be closed at once (each retry
    // too), but never left waiting (half a second without any reaction).
    let missed: Vec<_> = probes.iter().filter(|(_, _, answer)| answer.is_err()).collect();
    if !missed.is_empty() {
        eprintln!("health probes without an answer within 1 s: {missed:#?}");
    }
    let held_missed = missed.iter().filter(|(during, _, _)| *during == PHASES[usize::from(HOLDING)]).count();
    let hung = missed
        .iter()
        .filter(|(_, _, answer)| answer.as_ref().is_err_and(|miss| miss.longest_wait >= Duration::from_millis(500)))
        .count();
    assert_eq!(held_missed, 0, "{held_missed} probes unanswered while the connections were held: {missed:#?}");
    assert_eq!(hung, 0, "{hung} probes left waiting (neither answered nor refused): {missed:#?}");
    assert!(probes.iter().any(|(during, _, _)| *during == PHASES[usize::from(HOLDING)]), "no probe while held");
    if let Some(response) = overflow.filter(|response| response.status == 503) {
        assert!(response.closes(), "a 503 beyond the limit closes: {:?}", response.headers);
        assert!(response.json()["error"]["code"].is_string(), "a JSON error body");
    }
    let http = http();
    let data = eventually(Duration::from_secs(10), "a GraphQL query after the flood", || async {
        let answer = http.post(node.url("/graphql")).json(&json!({ "query": "{ __typename }" })).send().await.ok()?;
        let body: Value = answer.json().await.ok()?;
        (body["data"]["__typename"] == "Query").then_some(body)
    })
    .await;
    assert_eq!(data["data"]["__typename"], "Query");
    assert!(node.is_running(), "the node survived the flood");
    assert_memory_bounded(&node, "a connection flood beyond MAX_CONNECTIONS");
}

// ---- the feed: clients that hold their place --------------------------------------

/// What one keep-alive feed client saw.
#[derive(Debug, Default)]
struct FeedTally {
    ok: usize,
    unavailable: usize,
    /// 503s without `Retry-After` or without a JSON error body.
    bad_unavailable: Vec<String>,
    other: Vec<u16>,
    failures: usize,
}

/// Requests the feed over one kept-alive connection (reconnecting when the server closes
/// it) until `until`, a request every 100 ms.
async fn feed_client(addr: SocketAddr, until: Instant) -> FeedTally {
    let mut tally = FeedTally::default();
    let mut connection: Option<(TcpStream, Vec<u8>)> = None;
    while Instant::now() < until {
        if connection.is_none() {
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => connection = Some((stream, Vec::new())),
                _ => {
                    tally.failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some((stream, buffer)) = connection.as_mut() else { continue };
        let exchange = async {
            stream.write_all(b"GET /v1/feed HTTP/1.1\r\nHost: emporium\r\n\r\n").await?;
            read_response(stream, buffer).await
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Ok(Some(response))) => {
                match response.status {
                    200 => tally.ok += 1,
                    503 => {
                        tally.unavailable += 1;
                        let json_error = serde_json::from_slice::<Value>(&response.body)
                            .is_ok_and(|body| body["error"]["code"].is_string());
                        if response.header("retry-after").is_none() || !json_error {
                            tally.bad_unavailable.push(format!("{:?}", response.headers));
                        }
                    }
                    other => tally.other.push(other),
                }
                if response.closes() {
                    connection = None;
                }
            }
            _ => {
                tally.failures += 1;
                connection = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_places_are_held_by_connections() {
    let clients = attack_size(200);
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[("FEED_MAX_CLIENTS", "2")]).await;
    let addr = node.addr;
    eventually(Duration::from_secs(10), "the feed", || async {
        let response = send_raw(addr, get_request("/v1/feed", "").as_bytes(), Duration::from_secs(2)).await.ok()?;
        (response.status == 200 && response.body.len() > 2).then_some(())
    })
    .await;
    let tallies = under_attack(&node, Duration::from_secs(15), async move {
        let until = Instant::now() + Duration::from_secs(2);
        let tasks: Vec<_> = (0..clients).map(|_| tokio::spawn(feed_client(addr, until))).collect();
        let mut tallies = Vec::new();
        for task in tasks {
            tallies.push(task.await.expect("feed client"));
        }
        tallies
    })
    .await;
    let ok: usize = tallies.iter().map(|tally| tally.ok).sum();
    let unavailable: usize = tallies.iter().map(|tally| tally.unavailable).sum();
    let served_clients = tallies.iter().filter(|tally| tally.ok > 0).count();
    let bad: Vec<_> = tallies.iter().flat_map(|tally| tally.bad_unavailable.iter()).collect();
    let other: Vec<_> = tallies.iter().flat_map(|tally| tally.other.iter()).collect();
    eprintln!("{ok} × 200 to {served_clients} clients, {unavailable} × 503");
    assert!(ok > 0, "no client got the feed");
    assert!(unavailable > 0, "200 clients and 2 places, yet no 503");
    assert!(bad.is_empty(), "503s without Retry-After or a JSON error: {:?}", &bad[..bad.len().min(3)]);
    assert!(other.is_empty(), "other statuses: {other:?}");
    // The places stay with the connections that hold them: a handful of clients at most
    // ever got the feed (a limit on requests would serve nearly every client).
    assert!(
        served_clients <= 4,
        "{served_clients} of {clients} clients got the feed; 2 places are held by connections"
    );
    assert_memory_bounded(&node, "200 feed clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_clients_that_never_read_are_dropped_after_the_write_timeout() {
    const ITEMS: usize = 800_000;
    let count = attack_size(100);
    // One feed of 800,000 eight-character items: 8.8 MB of JSON, far more than the socket
    // buffers of a client that does not read take.
    let env = TestEnv::with_sim(sim::SimConfig {
        offers_tick: Duration::from_secs(3600),
        feed_periods: vec![Duration::from_secs(3600)],
        feed_items: ITEMS,
        seed: Some(7),
    })
    .await;
    // The admin token only lets the test read how many feed places are held.
    let settings = [("FEED_MAX_CLIENTS", "100"), ("HTTP_WRITE_TIMEOUT", "2s"), ("ADMIN_TOKEN", "t0k3n")];
    let node = NodeProcess::spawn(&env, &settings).await;
    let addr = node.addr;
    let full = eventually(Duration::from_secs(30), "the big feed", || async {
        let response = send_raw(addr, get_request("/v1/feed", "").as_bytes(), Duration::from_secs(10)).await.ok()?;
        (response.status == 200 && response.body.len() >= 8_000_000).then_some(response.body.len())
    })
    .await;

    let request = b"GET /v1/feed HTTP/1.1\r\nHost: emporium\r\n\r\n";
    let mut slow = Vec::new();
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("a small receive buffer");
        let mut stream = tokio::time::timeout(Duration::from_secs(3), socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.write_all(request).await.expect("send");
        slow.push(stream);
    }
    let stalled = Instant::now();
    // The attack works: before the write timeout, every place is held (probing the feed
    // earlier would race the slow clients for the last place) and a fresh client gets 503.
    let health = get_request("/health", "Authorization: Bearer t0k3n\r\n");
    eventually(Duration::from_millis(1500), "every feed place held by a client that does not read", || async {
        let response = send_raw(addr, health.as_bytes(), Duration::from_secs(1)).await.ok()?;
        (response.json()["checks"]["feeds"]["clients_in_flight"] == count).then_some(())
    })
    .await;
    let held = send_raw(addr, get_request("/v1/feed", "").as_bytes(), Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(held.status, 503, "{count} clients that do not read hold every place");

    let served = eventually(Duration::from_secs(12), "a feed place freed by the write timeout", || async {
        assert_responsive(&node).await;
        let response = send_raw(addr, get_request("/v1/feed", "").as_bytes(), Duration::from_secs(10)).await.ok()?;
        (response.status == 200).then_some(response)
    })
    .await;
    eprintln!("the feed was served again {:?} after the slow clients stalled", stalled.elapsed());
    assert_eq!(served.body.len(), full, "the whole feed");
    assert_eq!(served.body.first(), Some(&b'['));
    assert_eq!(served.body.last(), Some(&b']'));
    drop(slow);
    assert_responsive(&node).await;
    assert_memory_bounded(&node, "100 feed clients that never read");
}

// ---- the operations surface ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_moves_metrics_and_health_details_off_the_public_port() {
    let env = TestEnv::new().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let node = NodeProcess::spawn(&env, &[("ADMIN_LISTEN", admin.to_string().as_str())]).await;
    let http = http();

    let metrics = http.get(node.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(metrics.status(), 404);
    let body: Value = metrics.json().await.expect("a JSON 404");
    assert!(body["error"]["code"].is_string(), "{body}");
    let health = http.get(node.url("/health")).send().await.expect("GET /health");
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.expect("json");
    assert!(body["status"].is_string(), "{body}");
    assert!(body.get("checks").is_none(), "no details on the public port: {body}");

    let health: Value =
        http.get(format!("http://{admin}/health")).send().await.expect("admin /health").json().await.expect("json");
    assert!(health["checks"]["database"]["status"].is_string(), "{health}");
    let metrics = http.get(format!("http://{admin}/metrics")).send().await.expect("admin /metrics");
    assert_eq!(metrics.status(), 200);
    let content_type = metrics.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = metrics.text().await.expect("text");
    assert!(text.contains("# TYPE emporium_"), "Prometheus text: {text:.500}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_metrics_and_health_details() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[("ADMIN_TOKEN", "t0k3n"), ("API_TOKENS", "s3cret")]).await;
    let http = http();

    let refused = http.get(node.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("a JSON 401");
    assert!(body["error"]["code"].is_string(), "{body}");
    let metrics = http.get(node.url("/metrics")).header(AUTHORIZATION, "Bearer t0k3n").send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.expect("text").contains("# TYPE emporium_"));

    let anonymous: Value = http.get(node.url("/health")).send().await.expect("health").json().await.expect("json");
    assert!(anonymous["status"].is_string(), "{anonymous}");
    assert!(anonymous.get("checks").is_none(), "no details without the token: {anonymous}");
    let detailed: Value = http
        .get(node.url("/health"))
        .header(AUTHORIZATION, "Bearer t0k3n")
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert!(detailed["checks"]["database"]["status"].is_string(), "{detailed}");

    // Writes stay behind API_TOKENS.
    let write = http
        .post(node.url("/v1/intake"))
        .json(&json!({ "id": 1, "title": "t", "genre": "scifi" }))
        .send()
        .await
        .expect("POST /v1/intake");
    assert_eq!(write.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_unknown_paths_get_json_errors() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let http = http();

    let intake = http.get(node.url("/v1/intake")).send().await.expect("GET /v1/intake");
    assert_eq!(intake.status(), 405);
    let allow = intake.headers().get(ALLOW).and_then(|value| value.to_str().ok()).unwrap_or_default().to_string();
    assert!(allow.contains("POST"), "Allow: {allow:?}");
    let body: Value = intake.json().await.expect("a JSON 405");
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED", "{body}");

    let graphql = http.delete(node.url("/graphql")).send().await.expect("DELETE /graphql");
    assert_eq!(graphql.status(), 405);
    assert!(graphql.headers().get(ALLOW).is_some(), "{:?}", graphql.headers());

    let unknown = http.get(node.url("/no/such/path")).send().await.expect("GET unknown");
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("a JSON 404");
    assert_eq!(body["error"]["code"], "NOT_FOUND", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_graphql_requests_get_graphql_shaped_errors() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[]).await;
    let http = http();
    let cases = [
        ("application/json", "{bad json"),
        ("application/json", r#"{"query": 1}"#),
        ("application/json", "{}"),
        ("text/plain", "{ __typename }"),
    ];
    for (content_type, body) in cases {
        let response = http
            .post(node.url("/graphql"))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("POST /graphql");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let what = format!("{content_type} {body:?}");
        assert!((400..500).contains(&status), "{what}: status {status}: {text}");
        assert!(!text.contains("InvalidRequest(") && !text.contains("Error("), "{what}: debug text in {text}");
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert!(json["errors"][0]["message"].is_string(), "{what}: {json}");
        assert_eq!(json["errors"][0]["extensions"]["code"], "BAD_REQUEST", "{what}: {json}");
    }
}

// ---- shutdown ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_progress_at_shutdown_gets_503() {
    let env = TestEnv::new().await;
    let node = NodeProcess::spawn(&env, &[("SHUTDOWN_GRACE", "2s")]).await;
    let addr = node.addr;
    // `[`, then a product every 200 ms (12 s at most).
    let body = stream::iter(0..60).then(|i| async move {
        if i == 0 {
            return Bytes::from_static(b"[");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let comma = if i > 1 { "," } else { "" };
        Bytes::from(format!(r#"{comma}{{"id":"slow-{i}","name":"product {i}","price":{i}}}"#))
    });
    let head = "POST /v1/products HTTP/1.1\r\nHost: emporium\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n"
        .to_string();
    let signal = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        node.send_sigterm();
        Instant::now()
    };
    let (exchange, signalled) =
        tokio::join!(stream_request(addr, head, Box::pin(body), true, Duration::from_secs(15)), signal);
    let response = exchange.response.expect("an answer before the connection closed");
    assert_eq!(response.status, 503, "{:?}", String::from_utf8_lossy(&response.body));
    assert!(response.header("retry-after").is_some(), "{:?}", response.headers);
    eprintln!("503 {:?} after SIGTERM", signalled.elapsed());
    let exit = node.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.is_some(), "the node exits after its grace period");
}
