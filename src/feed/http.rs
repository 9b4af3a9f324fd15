//! `GET /v1/feed`: the served union from memory, bounded by `FEED_MAX_CLIENTS`.
//!
//! A client is a connection: the first feed request on a connection takes one of the
//! `FEED_MAX_CLIENTS` slots and the connection keeps it until it closes (the server's
//! idle and write timeouts close connections that stop talking or stop reading). Beyond
//! the limit, the feed answers 503 with `Retry-After`.
//!
//! The hot path does no JSON work and clones nothing but reference counts: a request slot
//! (a semaphore permit), the current response (an arc-swap load), a conditional check,
//! and pre-counted metric handles.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Gateway, gateway::Served};
use crate::{error::AppError, server::ConnectionScope};

/// Bodies are handed to the connection in pieces this big, so a client that reads slowly
/// keeps its slot until the last piece has been taken (a 1,000-item feed is one piece).
const CHUNK: usize = 64 * 1024;

/// The feed route: the gateway, and the node's request slots (`MAX_INFLIGHT_REQUESTS`),
/// taken here rather than by the load-shedding middleware, which would cost this route a
/// tenth of its speed.
#[derive(Clone)]
pub struct FeedRoute {
    gateway: Gateway,
    inflight: Arc<Semaphore>,
}

pub const PATH: &str = "/v1/feed";

/// The key under which a connection holds its feed client slot.
const CLIENT_SLOT: &str = "feed-client";

impl FeedRoute {
    pub fn new(gateway: Gateway, inflight: Arc<Semaphore>) -> Self {
        Self { gateway, inflight }
    }

    /// The router for this route: a request clones two `Arc`s, not the whole `AppState`.
    pub fn routes<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new().route(PATH, get(serve_feed)).with_state(self)
    }

    /// Takes a request slot, and a client slot for the connection unless it holds one
    /// already (kept until the connection closes), and loads what to send.
    pub(super) fn admit(&self, connection: Option<&ConnectionScope>, if_none_match: Option<&[u8]>) -> Admission {
        let Ok(request_slot) = self.inflight.clone().try_acquire_owned() else {
            return Admission::Shed;
        };
        // Without a connection scope (never through the server) the slot lasts the request.
        let client_slot = match connection {
            Some(connection) => match connection.hold_once(CLIENT_SLOT, || self.gateway.try_client_slot()) {
                true => None,
                false => return Admission::Rejected,
            },
            None => match self.gateway.try_client_slot() {
                Some(slot) => Some(slot),
                None => return Admission::Rejected,
            },
        };
        let served = self.gateway.served();
        let modified = !if_none_match.is_some_and(|tags| etag_matches(tags, served.etag.as_bytes()));
        Admission::Serve { served, modified, slots: Slots { request: request_slot, client: client_slot } }
    }

    fn respond(&self, head: bool, connection: Option<&ConnectionScope>, headers: &HeaderMap) -> Response {
        let if_none_match = headers.get(header::IF_NONE_MATCH).map(HeaderValue::as_bytes);
        let (served, modified, slots) = match self.admit(connection, if_none_match) {
            Admission::Serve { served, modified, slots } => (served, modified, slots),
            Admission::Shed => return crate::guard::shed(),
            Admission::Rejected => {
                RequestCounters::get().count(head, Outcome::Rejected);
                metrics::counter!("emporium_feed_clients_rejected_total").increment(1);
                let message = format!(
                    "the feed serves at most {} connected clients at once (FEED_MAX_CLIENTS); retry shortly",
                    self.gateway.max_clients()
                );
                return AppError::unavailable(message, Some(1)).into_response();
            }
        };
        Self::count(head, modified);
        let (status, body) = if modified {
            (StatusCode::OK, Body::new(FeedBody { rest: served.body.clone(), slots: Some(slots) }))
        } else {
            (StatusCode::NOT_MODIFIED, Body::empty())
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(header::ETAG, served.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
        response
    }

    /// Counts a request answered with the feed (a 200, or a 304 unless `modified`).
    pub(super) fn count(head: bool, modified: bool) {
        RequestCounters::get().count(head, if modified { Outcome::Ok } else { Outcome::NotModified });
    }
}

/// What a feed response holds until its body has been handed to the connection.
pub(super) struct Slots {
    #[allow(dead_code)] // held for its drop
    request: OwnedSemaphorePermit,
    #[allow(dead_code)] // held for its drop
    client: Option<OwnedSemaphorePermit>,
}

/// The feed's `content-type`.
pub(super) const CONTENT_TYPE: &str = "application/json";
/// Caches may keep the feed but must ask again (a 304 is cheap): it changes any time.
pub(super) const CACHE_CONTROL: &str = "no-cache";

/// Whether a feed request may be served now.
pub(super) enum Admission {
    /// Serve `served` (a 304 unless `modified`), holding `slots` until the body is handed
    /// to the connection.
    Serve { served: Arc<Served>, modified: bool, slots: Slots },
    /// The node is at `MAX_INFLIGHT_REQUESTS`.
    Shed,
    /// The feed is at `FEED_MAX_CLIENTS`.
    Rejected,
}

async fn serve_feed(State(route): State<FeedRoute>, request: Request) -> Response {
    let connection = request.extensions().get::<ConnectionScope>();
    route.respond(request.method() == Method::HEAD, connection, request.headers())
}

/// `If-None-Match` matches: `*`, or one of the listed tags equal to ours (weak comparison,
/// as RFC 9110 asks for this header).
fn etag_matches(if_none_match: &[u8], ours: &[u8]) -> bool {
    let Ok(tags) = std::str::from_utf8(if_none_match) else { return false };
    tags.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == ours)
}

/// The response body: the shared bytes, in pieces, holding the request slot (and a
/// request-scoped client slot) until the last piece is taken (or the connection is dropped).
struct FeedBody {
    rest: Bytes,
    slots: Option<Slots>,
}

impl http_body::Body for FeedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            this.slots = None;
            return Poll::Ready(None);
        }
        let piece = if this.rest.len() <= CHUNK { std::mem::take(&mut this.rest) } else { this.rest.split_to(CHUNK) };
        if this.rest.is_empty() {
            this.slots = None;
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Ok = 0,
    NotModified = 1,
    Rejected = 2,
}

/// `emporium_http_requests_total` for this route, with handles registered once: the
/// generic request middleware (which builds labels per request) is not on this route.
struct RequestCounters {
    /// `[GET, HEAD][Outcome]`.
    by_method: [[metrics::Counter; 3]; 2],
}

impl RequestCounters {
    fn get() -> &'static Self {
        static COUNTERS: OnceLock<RequestCounters> = OnceLock::new();
        COUNTERS.get_or_init(|| {
            let make = |method: &'static str| {
                ["200", "304", "503"].map(|status| {
                    metrics::counter!("emporium_http_requests_total", "route" => "/v1/feed", "method" => method, "status" => status)
                })
            };
            Self { by_method: [make("GET"), make("HEAD")] }
        })
    }

    fn count(&self, head: bool, outcome: Outcome) {
        self.by_method[usize::from(head)][outcome as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let matches = |value: &'static str| etag_matches(value.as_bytes(), b"\"abc\"");
        assert!(matches("\"abc\""));
        assert!(matches("\"x\", W/\"abc\""));
        assert!(matches("*"));
        assert!(!matches("\"abd\""));
        assert!(!matches("abc"));
    }

    #[test]
    fn a_big_body_is_handed_over_in_pieces_and_frees_its_slots_at_the_end() {
        use http_body::Body as _;
        let semaphore = Arc::new(Semaphore::new(2));
        let permit = || semaphore.clone().try_acquire_owned().expect("a free permit");
        let slots = Some(Slots { request: permit(), client: Some(permit()) });
        let mut body = FeedBody { rest: Bytes::from(vec![b'x'; CHUNK * 2 + 1]), slots };
        assert_eq!(body.size_hint().exact(), Some((CHUNK * 2 + 1) as u64));
        let mut context = Context::from_waker(futures::task::noop_waker_ref());
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut context) {
            sizes.push(frame.into_data().map(|data| data.len()).unwrap_or(0));
            let held = semaphore.available_permits() == 0;
            assert_eq!(held, !body.is_end_stream(), "the slots are held exactly while bytes remain");
        }
        assert_eq!(sizes, vec![CHUNK, CHUNK, 1]);
        assert_eq!(semaphore.available_permits(), 2);
    }
}
