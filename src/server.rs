//! The HTTP/1.1 server under the routers: accepting connections within a budget that
//! stays below the process's file-descriptor limit, the timeouts that free a connection
//! from a client that stops talking or stops reading, and a graceful stop.
//!
//! Hand-written over hyper rather than `axum::serve`, which has no connection limit, no
//! header or write timeout, and no hook for per-connection state (see
//! `docs/architecture.md`).
//!
//! - **Connections.** At most `max_connections` are served normally. Beyond that a small
//!   overflow is still accepted and answered at once — `GET /health` as usual, anything
//!   else 503 with `Connection: close` — so probes keep working while the node is full;
//!   beyond the overflow a connection is closed as soon as it is accepted.
//! - **Header timeout.** A connection must deliver a complete request head within
//!   `header_timeout` of when the server starts waiting for it: that bounds slow header
//!   senders and idle kept-alive connections alike (hyper starts the timer whenever it
//!   waits for a request head).
//! - **Write timeout.** A write that makes no progress for `write_timeout` fails the
//!   connection, so a client that stops reading frees its slot (and whatever the
//!   connection holds, like a feed client slot).
//! - **Per-connection state.** Every request carries the [`ConnectionScope`] of its
//!   connection; what a route keeps there lives until the connection closes.
//! - **A prelude.** A [`Prelude`] (the feed's fast path) may answer a connection's first
//!   requests on the socket, within the same budget and timeouts, and hands the connection
//!   to hyper with what it read of the first request it does not answer ([`Replay`]).

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderValue, Method, header},
    response::IntoResponse as _,
};
use bytes::Bytes;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

use crate::error::AppError;

/// File descriptors kept for everything but client connections: the database pool, Redis,
/// spool files, object writes, outbound HTTP, the embedded simulator.
const FD_RESERVE: u64 = 256;
/// Connections accepted beyond the limit to answer probes and a clear 503.
const OVERFLOW_CONNECTIONS: usize = 64;
/// How long an overflow connection may take to send its request head: short, so silent
/// connections do not keep probes out of the overflow for long.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest request head (and read buffer): hyper's default (~400 KB) would let a few
/// thousand connections hold a gigabyte of half-sent headers.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Connections the kernel queues for us to accept: tokio's default (128) overflows under
/// a burst of a few hundred connects, which then wait seconds for SYN retries.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog that absorbs bursts of connects.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
}

/// Raises this process's soft file-descriptor limit to its hard limit and returns the
/// connection budget: `requested`, or less when the limit leaves less room.
pub fn connection_budget(requested: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let Some(descriptors) = limit.current else { return requested.max(1) };
    // Under a small limit keep half for the rest of the process.
    let room = if descriptors > 2 * FD_RESERVE { descriptors - FD_RESERVE } else { descriptors / 2 };
    let room = usize::try_from(room).unwrap_or(usize::MAX).saturating_sub(OVERFLOW_CONNECTIONS).max(1);
    if requested > room {
        tracing::warn!(
            requested,
            allowed = room,
            file_descriptors = descriptors,
            "MAX_CONNECTIONS lowered to stay below the file-descriptor limit"
        );
    }
    requested.min(room).max(1)
}

/// What a connection keeps for as long as it is open, shared by its requests.
#[derive(Clone, Default)]
pub struct ConnectionScope {
    held: Arc<Mutex<HashMap<&'static str, OwnedSemaphorePermit>>>,
}

impl ConnectionScope {
    /// Whether this connection holds the slot named `key`, taking one from `acquire` the
    /// first time. The slot is released when the connection closes.
    pub fn hold_once(&self, key: &'static str, acquire: impl FnOnce() -> Option<OwnedSemaphorePermit>) -> bool {
        let Ok(mut held) = self.held.lock() else { return false };
        if held.contains_key(key) {
            return true;
        }
        match acquire() {
            Some(permit) => {
                held.insert(key, permit);
                true
            }
            None => false,
        }
    }
}

/// A client connection as the server hands it on: writes fail after `write_timeout`
/// without progress.
pub type ClientStream = WriteDeadline<TcpStream>;

/// Answers a connection's first requests before hyper sees the connection. Returns the
/// stream with what was read of the first request it does not answer, or `None` when the
/// connection is finished. It must bound the wait for each request head by
/// `header_timeout`, as hyper does, and stop between requests once `stopping` is cancelled.
pub trait Prelude: Send + Sync + 'static {
    fn serve(
        &self,
        stream: ClientStream,
        scope: ConnectionScope,
        header_timeout: Duration,
        stopping: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Option<Replay<ClientStream>>> + Send>>;
}

/// What a node serves on a listener: its router, and optionally a [`Prelude`].
#[derive(Clone)]
pub struct Site {
    pub router: Router,
    pub prelude: Option<Arc<dyn Prelude>>,
}

impl From<Router> for Site {
    fn from(router: Router) -> Self {
        Self { router, prelude: None }
    }
}

/// Serves `site` on `listener` until `shutdown` resolves; then stops accepting and lets
/// open connections finish their requests. After `grace` minus a second, `deadline` is
/// cancelled (long requests that watch it, like uploads, answer 503 and end); a second
/// later the server returns regardless (an open websocket would wait forever).
pub async fn serve(
    listener: TcpListener,
    site: Site,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    deadline: CancellationToken,
) {
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or the like: back off instead of spinning.
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let connection = serve_connection(stream, site.clone(), limits, stopping.clone());
            connections.spawn(async move {
                connection.await;
                drop(slot);
            });
        } else if let Ok(slot) = overflow.clone().try_acquire_owned() {
            metrics::counter!("emporium_http_connections_refused_total", "how" => "503").increment(1);
            let router = site.router.clone();
            connections.spawn(async move {
                serve_overflow(stream, router, limits).await;
                drop(slot);
            });
        } else {
            metrics::counter!("emporium_http_connections_refused_total", "how" => "closed").increment(1);
            drop(stream);
        }
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    let last_second = Duration::from_secs(1).min(grace);
    if tokio::time::timeout(grace - last_second, connections.wait()).await.is_err() {
        deadline.cancel();
        if tokio::time::timeout(last_second, connections.wait()).await.is_err() {
            tracing::warn!("connections still open after the grace period; leaving them");
        }
    }
}

fn connection_builder(header_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(MAX_HEAD_BYTES);
    builder
}

async fn serve_connection(stream: TcpStream, site: Site, limits: ServerLimits, stopping: CancellationToken) {
    let scope = ConnectionScope::default();
    let stream = WriteDeadline::new(stream, limits.write_timeout);
    let stream = match &site.prelude {
        Some(prelude) => match prelude.serve(stream, scope.clone(), limits.header_timeout, stopping.clone()).await {
            Some(rest) => rest,
            None => return,
        },
        None => Replay::new(Bytes::new(), stream),
    };
    let router = site.router;
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(scope.clone());
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let io = TokioIo::new(stream);
    let connection = connection_builder(limits.header_timeout).serve_connection(io, service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping.cancelled() => {
            // Finish the request in progress, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(error = %error, "connection ended with an error");
    }
}

/// A connection beyond the limit: one request, answered at once, then closed.
async fn serve_overflow(stream: TcpStream, router: Router, limits: ServerLimits) {
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        async move {
            let mut response = if request.method() == Method::GET && request.uri().path() == "/health" {
                router.oneshot(request.map(axum::body::Body::new)).await.unwrap_or_else(|never| match never {})
            } else {
                AppError::unavailable("this node is at its connection limit; retry shortly", Some(1)).into_response()
            };
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
    let mut builder = connection_builder(OVERFLOW_HEADER_TIMEOUT.min(limits.header_timeout));
    builder.keep_alive(false);
    if let Err(error) = builder.serve_connection(io, service).await {
        tracing::debug!(error = %error, "overflow connection ended with an error");
    }
}

/// A stream whose first bytes come from a buffer: what a [`Prelude`] read of a request it
/// hands over.
pub struct Replay<S> {
    read: Bytes,
    stream: S,
}

impl<S> Replay<S> {
    pub fn new(read: Bytes, stream: S) -> Self {
        Self { read, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A stream whose writes fail once they have made no progress for `timeout`.
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write could not proceed; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout, stalled: None }
    }

    /// Passes `poll` through, arming the deadline while it is pending.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("emporium_http_write_timeouts_total").increment(1);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_holds_a_named_slot_once_and_frees_it_when_closed() {
        let slots = Arc::new(Semaphore::new(1));
        let first = ConnectionScope::default();
        assert!(first.hold_once("feed", || slots.clone().try_acquire_owned().ok()));
        // Its later requests keep the slot it has; another connection finds none.
        assert!(first.hold_once("feed", || None));
        let second = ConnectionScope::default();
        assert!(!second.hold_once("feed", || slots.clone().try_acquire_owned().ok()));
        drop(first);
        assert!(second.hold_once("feed", || slots.clone().try_acquire_owned().ok()));
    }

    #[test]
    fn the_budget_stays_below_the_descriptor_limit() {
        let budget = connection_budget(usize::MAX);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(limit) = limit {
            assert!((budget as u64) < limit, "{budget} connections with {limit} descriptors");
        }
        assert_eq!(connection_budget(10), 10);
    }

    #[tokio::test]
    async fn a_replayed_stream_reads_the_buffer_first_then_the_stream() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut replay = Replay::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_timeout() {
        use tokio::io::AsyncWriteExt as _;
        // A pipe nobody reads: the writes fill it, then stall.
        let (client, _server) = tokio::io::duplex(1024);
        let mut stream = WriteDeadline::new(client, Duration::from_millis(50));
        let chunk = vec![0u8; 4096];
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Err(error) = stream.write_all(&chunk).await {
                    return error;
                }
            }
        })
        .await
        .expect("the stalled write fails well within the test's bound");
        assert_eq!(outcome.kind(), io::ErrorKind::TimedOut);
    }
}
