//! The feed's fast path: a connection's requests are answered straight from the socket
//! while they are plain `GET`/`HEAD /v1/feed`, with the served snapshot's prebuilt head and
//! shared body in one `writev`. The first request of any other kind (another route, a body,
//! an upgrade, HTTP/1.0, anything unusual or malformed, or a feed request that must be
//! refused) hands the connection, with the bytes already read, to hyper, which serves it
//! and the rest of the connection.
//!
//! Why: the feed is the one route that must keep up with a static-file server, and per
//! request hyper's parsing into a `Request`, the router, header maps and response encoding
//! cost a fifth to a third of the node's CPU for it (`docs/architecture.md`). An answer
//! here is byte for byte the router's but for the `date` line (a test compares them):
//! status, `content-type`, `etag`, `cache-control`, `content-length`, `date`, with the
//! same request and client slots and the same metrics. `FEED_FAST_PATH=false` turns it off.
//!
//! The server's protections hold here too: the connection budget (it runs inside a
//! connection's slot), the header timeout (each wait for a request head), the write
//! timeout (the stream's own), and the graceful stop (between requests).

use std::{
    cell::RefCell,
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    gateway::Served,
    http::{Admission, CACHE_CONTROL, CONTENT_TYPE, FeedRoute, PATH},
};
use crate::server::{ClientStream, ConnectionScope, Prelude, Replay};

/// Read size; also the most a request head may take here (a longer one goes to hyper,
/// which has its own limit and answer).
const HEAD_LIMIT: usize = 8 * 1024;
/// Headers looked at in one request; more goes to hyper.
const MAX_HEADERS: usize = 32;

/// The fast path, as the server's [`Prelude`].
pub struct FastPath {
    route: FeedRoute,
}

impl FastPath {
    pub fn new(route: FeedRoute) -> Self {
        Self { route }
    }
}

impl Prelude for FastPath {
    fn serve(
        &self,
        stream: ClientStream,
        scope: ConnectionScope,
        header_timeout: Duration,
        stopping: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Option<Replay<ClientStream>>> + Send>> {
        let route = self.route.clone();
        Box::pin(async move { serve_leading_requests(&route, stream, &scope, header_timeout, &stopping).await })
    }
}

/// Serves the connection's leading feed requests. Returns `None` when the connection is
/// finished (closed by the peer, `Connection: close`, an I/O error, a request head not
/// complete within `header_timeout`, or the server stopping between requests), or the
/// stream, with what was read of the first request it did not answer, for hyper.
async fn serve_leading_requests<S>(
    route: &FeedRoute,
    mut stream: S,
    scope: &ConnectionScope,
    header_timeout: Duration,
    stopping: &CancellationToken,
) -> Option<Replay<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(HEAD_LIMIT);
    let mut head = Vec::with_capacity(256);
    // One wait for the whole connection, not one per read.
    let mut stopped = std::pin::pin!(stopping.cancelled());
    // As hyper's: the timer starts when the server starts waiting for a request head.
    let mut head_deadline = Instant::now() + header_timeout;
    loop {
        // Answer every complete feed request already read (clients may pipeline).
        while !input.is_empty() {
            let request = match parse(&input) {
                Parsed::Partial if input.len() < HEAD_LIMIT => break,
                Parsed::Partial | Parsed::Other => return Some(Replay::new(input.freeze(), stream)),
                Parsed::Feed(request) => request,
            };
            let Admission::Serve { served, modified, slots } =
                route.admit(Some(scope), request.if_none_match.as_deref())
            else {
                // Refusals (503) are rare: the router's path words and counts them.
                return Some(Replay::new(input.freeze(), stream));
            };
            input.advance(request.len);
            FeedRoute::count(request.head_only, modified);
            let heads = served.wire_heads.get_or_init(|| Heads::new(&served));
            head.clear();
            head.extend_from_slice(match (modified, request.head_only) {
                (true, _) => &heads.ok,
                (false, false) => &heads.not_modified,
                (false, true) => &heads.not_modified_to_head,
            });
            if request.close {
                head.extend_from_slice(b"connection: close\r\n"); // as hyper says it
            }
            push_date(&mut head);
            head.extend_from_slice(b"\r\n");
            let body: &[u8] = if modified && !request.head_only { &served.body } else { &[] };
            let written = write_all(&mut stream, &head, body).await;
            drop(slots);
            if written.is_err() || request.close {
                let _ = stream.shutdown().await;
                return None;
            }
            head_deadline = Instant::now() + header_timeout;
        }
        if stopping.is_cancelled() {
            return None;
        }
        input.reserve(HEAD_LIMIT);
        let read = tokio::select! {
            biased;
            read = stream.read_buf(&mut input) => read,
            // Between requests, a stopping server closes the connection (as hyper's
            // graceful shutdown does); a request being read is finished first.
            () = &mut stopped, if input.is_empty() => return None,
            () = tokio::time::sleep_until(head_deadline) => return None,
        };
        match read {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A snapshot's response heads up to the `date` line, in the order hyper writes the
/// router's answer.
#[derive(Debug)]
pub struct Heads {
    ok: Vec<u8>,
    not_modified: Vec<u8>,
    /// hyper adds `content-length: 0` to a 304 answering `HEAD` (the empty body's size).
    not_modified_to_head: Vec<u8>,
}

impl Heads {
    fn new(served: &Served) -> Self {
        let fields = format!(
            "content-type: {CONTENT_TYPE}\r\netag: {}\r\ncache-control: {CACHE_CONTROL}\r\n",
            served.etag_str()
        );
        Self {
            ok: format!("HTTP/1.1 200 OK\r\n{fields}content-length: {}\r\n", served.body.len()).into_bytes(),
            not_modified: format!("HTTP/1.1 304 Not Modified\r\n{fields}").into_bytes(),
            not_modified_to_head: format!("HTTP/1.1 304 Not Modified\r\n{fields}content-length: 0\r\n").into_bytes(),
        }
    }
}

/// A plain feed request, as far as the fast path needs it.
struct FeedRequest {
    /// Bytes of the request (it has no body).
    len: usize,
    head_only: bool,
    close: bool,
    if_none_match: Option<Vec<u8>>,
}

enum Parsed {
    Feed(FeedRequest),
    Partial,
    /// Anything the fast path does not answer itself.
    Other,
}

fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let head_only = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parsed::Other,
    };
    let path = request.path.unwrap_or_default();
    if request.version != Some(1) || path.split('?').next() != Some(PATH) {
        return Parsed::Other;
    }
    let mut close = false;
    let mut if_none_match = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("if-none-match") {
            if if_none_match.is_some() {
                return Parsed::Other; // a list split over lines: hyper's header map joins it
            }
            if_none_match = Some(header.value.to_vec());
        } else if name.eq_ignore_ascii_case("connection") {
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Other; // upgrade, or hop-by-hop headers named
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if header.value.trim_ascii() != b"0" {
                return Parsed::Other;
            }
        } else if ["transfer-encoding", "upgrade", "expect"].iter().any(|other| name.eq_ignore_ascii_case(other)) {
            return Parsed::Other;
        }
    }
    Parsed::Feed(FeedRequest { len, head_only, close, if_none_match })
}

/// Appends the `date` header line (`date: <IMF-fixdate>\r\n`), formatted once per second
/// per thread as hyper does.
fn push_date(head: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    CACHED.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(text.as_bytes());
        head.extend_from_slice(b"\r\n");
    });
}

/// Writes `head` then `body`, in one system call when the socket takes it all.
async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, mut head: &[u8], mut body: &[u8]) -> io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let written = stream.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = written.min(head.len());
        head = &head[from_head..];
        body = &body[written - from_head..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _, duplex},
        sync::Semaphore,
    };

    use super::*;
    use crate::feed::{FeedConfig, Gateway};

    fn route() -> FeedRoute {
        let config = FeedConfig {
            feed_max_clients: 1,
            feed_max_body_bytes: 1024,
            feed_timeout: Duration::from_secs(1),
            feed_fast_path: true,
            feed_item_bytes: 8,
        };
        let gateway = Gateway::new(&[("http://feed/0".to_string(), Duration::from_secs(15))], &config);
        gateway.record_success(0, vec!["aaaaaaaa".to_string()]);
        FeedRoute::new(gateway, Arc::new(Semaphore::new(8)))
    }

    /// What the server sends before `serve_leading_requests` returns, and what it returns.
    async fn run(route: &FeedRoute, sent: &'static [u8], timeout: Duration) -> (String, Option<Bytes>) {
        let (mut client, server) = duplex(64 * 1024);
        client.write_all(sent).await.expect("send");
        let scope = ConnectionScope::default();
        let handed = serve_leading_requests(route, server, &scope, timeout, &CancellationToken::new()).await;
        let rest = handed.map(|mut replay| {
            // What was read of the first request not answered here.
            let mut buffer = vec![0; sent.len()];
            let read = futures::FutureExt::now_or_never(replay.read(&mut buffer));
            Bytes::copy_from_slice(&buffer[..read.and_then(Result::ok).unwrap_or(0)])
        });
        let mut received = vec![0; 64 * 1024];
        let read = futures::FutureExt::now_or_never(client.read(&mut received)).and_then(Result::ok).unwrap_or(0);
        (String::from_utf8_lossy(&received[..read]).into_owned(), rest)
    }

    #[tokio::test]
    async fn feed_requests_are_answered_here_and_the_first_other_request_is_handed_on() {
        let (sent, rest) =
            run(&route(), b"GET /v1/feed HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n", Duration::from_secs(5)).await;
        assert!(sent.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: \""), "{sent}");
        assert!(sent.ends_with("\r\n\r\n[\"aaaaaaaa\"]"), "{sent}");
        assert_eq!(rest.as_deref(), Some(&b"GET /health HTTP/1.1\r\n\r\n"[..]));
    }

    #[tokio::test]
    async fn a_request_head_not_complete_within_the_header_timeout_closes_the_connection() {
        let (sent, rest) = run(&route(), b"GET /v1/feed HTTP/1.1\r\nHost: x", Duration::from_millis(100)).await;
        assert_eq!((sent.as_str(), rest), ("", None));
        // An idle kept-alive connection too, after an answer.
        let (sent, rest) = run(&route(), b"HEAD /v1/feed HTTP/1.1\r\n\r\n", Duration::from_millis(100)).await;
        assert!(sent.starts_with("HTTP/1.1 200 OK\r\n"), "{sent}");
        assert_eq!(rest, None);
    }

    fn feed(input: &str) -> FeedRequest {
        match parse(input.as_bytes()) {
            Parsed::Feed(request) => request,
            Parsed::Partial => panic!("partial: {input:?}"),
            Parsed::Other => panic!("not a plain feed request: {input:?}"),
        }
    }

    fn is_other(input: &str) -> bool {
        matches!(parse(input.as_bytes()), Parsed::Other)
    }

    #[test]
    fn plain_feed_requests_are_answered_here() {
        let request = feed("GET /v1/feed HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
        assert_eq!(request.len, "GET /v1/feed HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert!(!request.head_only && !request.close && request.if_none_match.is_none());
        let request = feed("HEAD /v1/feed?x=1 HTTP/1.1\r\nConnection: close\r\nIf-None-Match: \"a\"\r\n\r\n");
        assert!(request.head_only && request.close);
        assert_eq!(request.if_none_match.as_deref(), Some(&b"\"a\""[..]));
        assert!(!feed("GET /v1/feed HTTP/1.1\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(matches!(parse(b"GET /v1/feed HTTP/1.1\r\nHost"), Parsed::Partial));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        assert!(is_other("GET /health HTTP/1.1\r\n\r\n"));
        assert!(is_other("GET /v1/feeds HTTP/1.1\r\n\r\n"));
        assert!(is_other("POST /v1/feed HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"));
        assert!(is_other("GET /v1/feed HTTP/1.0\r\n\r\n"));
        assert!(is_other("GET /v1/feed HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(is_other("GET /v1/feed HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"));
        assert!(is_other("GET /v1/feed HTTP/1.1\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n"));
        assert!(is_other("GET http://x/v1/feed HTTP/1.1\r\n\r\n"));
        assert!(is_other("GET /v1/feed HTTP/1.1\r\nBad Header\r\n\r\n"));
    }
}
