//! The feed gateway: a quasi-cache in front of N partner feeds.
//!
//! **Client side.** Every source in `FEED_SOURCES` (`URL@PERIOD`) is polled with GET on
//! its own period by a tokio interval task of this node, starting at once so the feed is
//! populated on startup. A good answer is a JSON array; anything else (an error status,
//! a timeout, malformed JSON, another shape, invalid UTF-8, a body larger than
//! `FEED_MAX_BODY_BYTES`, cut off while streaming) is logged with the source and the
//! reason, counted in `emporium_feed_polls_total`, and the source keeps its last good
//! snapshot. Items are checked one by one: those that are not strings of exactly
//! `FEED_ITEM_BYTES` UTF-8 bytes (8, the partners' format; 0: any string) are dropped, not
//! served, with one warning per poll (with a sample), counted per source in
//! `emporium_feed_items_dropped_total` and shown as `itemsDropped` in `feedSources`. A bad
//! item costs only itself; an answer whose every item is dropped is a failed poll
//! (`no_valid_items`), so a partner's broken release does not empty its part of the feed.
//!
//! **Server side.** `GET /v1/feed` answers with the union of every source's last good
//! snapshot, without duplicates, sorted by byte order (stable: the same data gives the
//! same bytes and the same `ETag` on every node). The body is serialized once per change
//! and swapped atomically with its `ETag`, so a request does no JSON work; a matching
//! `If-None-Match` gets 304. At most `FEED_MAX_CLIENTS` clients (connections) use the
//! feed at once: a connection keeps its slot until it closes, and the server's write
//! timeout drops a client that stops reading; the next ones get 503 with `Retry-After`.
//! Plain `GET`/`HEAD` requests are answered on the socket before hyper (`wire.rs`,
//! `FEED_FAST_PATH`), with the same bytes as the router's route (`http.rs`).
//!
//! **A cache, not shared state.** Snapshots live in this node's memory and every node
//! polls on its own: nothing to migrate, nothing shared in a cluster. Nodes may briefly
//! disagree (each polls on its own clock) and a restarted node starts empty until its first
//! polls answer — by design, the partners stay the source of truth.

mod gateway;
mod graphql;
mod http;
mod poller;
mod wire;

use std::time::Duration;

use serde_json::json;

pub use gateway::{Gateway, PollFailure, Source, SourceStatus, SourceView};
pub use graphql::FeedQuery;
pub use http::FeedRoute;
pub use poller::{Dropped, ParsedItems, PollError, Pollers, parse_items, spawn_pollers};
pub use wire::FastPath;

use crate::{
    db::to_datetime,
    health::{Check, Status},
    settings::{InvalidSetting, parse_duration},
};

/// A source with no successful poll for this many periods is stale.
pub const STALE_AFTER_PERIODS: u32 = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct FeedConfig {
    /// Clients (connections) using `GET /v1/feed` at once on this node; beyond that, 503 with Retry-After.
    #[arg(long, env = "FEED_MAX_CLIENTS", default_value_t = 1024, value_parser = parse_positive)]
    pub feed_max_clients: usize,
    /// Largest upstream feed body accepted, in bytes; a larger one is cut off while streaming.
    #[arg(long, env = "FEED_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = parse_positive)]
    pub feed_max_body_bytes: usize,
    /// Time limit of one upstream poll (connect, answer and body); never longer than the source's period.
    #[arg(long, env = "FEED_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub feed_timeout: Duration,
    /// Answer plain `GET`/`HEAD /v1/feed` requests on the socket, before hyper (`false`: through the router, as every other route); off when CORS is on.
    #[arg(long, env = "FEED_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub feed_fast_path: bool,
    /// Exact length of a feed item in UTF-8 bytes; other items (and non-strings) are dropped, not served. 0: any string.
    #[arg(long, env = "FEED_ITEM_BYTES", default_value_t = 8)]
    pub feed_item_bytes: usize,
}

fn parse_positive(text: &str) -> Result<usize, InvalidSetting> {
    match text.trim().parse::<usize>() {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(InvalidSetting::new(format!("`{text}` must be a whole number above 0"))),
    }
}

/// `/health`: every source with its last success, last error and staleness. Never critical:
/// a failing partner leaves the feed stale, it does not stop this node from serving.
/// `simulated`: the sources are the bundled simulator's.
pub fn health(gateway: &Gateway, simulated: bool) -> Check {
    let sources = gateway.sources();
    let all_ok = sources.iter().all(|source| source.status == SourceStatus::Ok);
    let detail: Vec<_> = sources
        .iter()
        .map(|source| {
            json!({
                "url": source.url,
                "period_seconds": source.period.as_secs_f64(),
                "status": source.status.as_str(),
                "item_count": source.item_count,
                "last_success_at": source.last_success_at.map(to_datetime),
                "staleness_seconds": source.staleness.map(|staleness| staleness.as_secs_f64()),
                "consecutive_failures": source.consecutive_failures,
                "items_dropped": source.items_dropped,
                "last_error": source.last_error.as_ref().map(|error| json!({
                    "at": to_datetime(error.at),
                    "reason": error.reason,
                    "message": error.message,
                })),
            })
        })
        .collect();
    let served = gateway.served();
    Check::new(
        if all_ok { Status::Up } else { Status::Degraded },
        false,
        json!({
            "simulated": simulated,
            "item_count": served.items.len(),
            "etag": served.etag_str(),
            "clients_in_flight": gateway.clients_in_flight(),
            "max_clients": gateway.max_clients(),
            "sources": detail,
        }),
    )
}

/// Parses one `URL@PERIOD` feed source (`http://a/data@15s`).
pub fn parse_feed_source(text: &str) -> Result<(String, Duration), InvalidSetting> {
    let (url, period) = text.trim().rsplit_once('@').ok_or_else(|| {
        InvalidSetting::new(format!("feed source `{text}` must be URL@PERIOD, for example http://host/data@15s"))
    })?;
    let parsed =
        url::Url::parse(url).map_err(|error| InvalidSetting::new(format!("feed source `{text}`: bad URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(InvalidSetting::new(format!("feed source `{text}`: only http and https are supported")));
    }
    let period = parse_duration(period)?;
    if period < Duration::from_secs(1) {
        return Err(InvalidSetting::new(format!("feed source `{text}`: the period must be at least 1s")));
    }
    Ok((url.to_string(), period))
}
