//! The gateway's memory: each source's last good snapshot and state, and the union that is
//! served, pre-serialized.

use std::{
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{FeedConfig, STALE_AFTER_PERIODS};
use crate::db::now_ms;

/// One configured partner feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub period: Duration,
}

/// Why a poll did not give a new snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollFailure {
    /// Milliseconds since the epoch.
    pub at: i64,
    /// Short machine-readable cause (`status`, `timeout`, `too_large`, ...), also the metric label.
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// No poll has answered yet (the node just started).
    Pending,
    /// The last poll succeeded.
    Ok,
    /// The last poll failed; the last good snapshot (if any) is still served.
    Failing,
    /// No success for `STALE_AFTER_PERIODS` periods; the last good snapshot is still served.
    Stale,
}

impl SourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ok => "ok",
            Self::Failing => "failing",
            Self::Stale => "stale",
        }
    }
}

/// A source's state as reported by GraphQL and `/health`.
#[derive(Debug, Clone)]
pub struct SourceView {
    pub url: String,
    pub period: Duration,
    pub status: SourceStatus,
    /// Distinct items in the last good snapshot.
    pub item_count: usize,
    pub last_success_at: Option<i64>,
    /// Time since the last success; `None` before the first one.
    pub staleness: Option<Duration>,
    /// The most recent failure, kept after the source recovers (see `status`).
    pub last_error: Option<PollFailure>,
    pub consecutive_failures: u32,
    /// Items dropped from the last answer that was a JSON array (not strings of `FEED_ITEM_BYTES`).
    pub items_dropped: usize,
}

/// What `GET /v1/feed` sends: built once per change, shared by every request.
#[derive(Debug)]
pub struct Served {
    /// The JSON array, ready to write.
    pub body: Bytes,
    /// A strong validator of `body` (quoted, as sent in the `ETag` header).
    pub etag: HeaderValue,
    /// The same items, for GraphQL.
    pub items: Arc<[String]>,
    /// The fast path's response heads for this body, built on its first request there.
    pub(super) wire_heads: OnceLock<super::wire::Heads>,
}

impl Served {
    pub fn etag_str(&self) -> &str {
        self.etag.to_str().unwrap_or_default()
    }

    fn build(items: Vec<String>) -> Self {
        // Serializing strings cannot fail; escaping is serde_json's (the same as the sources').
        let body = serde_json::to_vec(&items).unwrap_or_else(|_| b"[]".to_vec());
        let hash = blake3::hash(&body).to_hex();
        let etag =
            HeaderValue::from_str(&format!("\"{}\"", &hash[..32])).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
        Self { body: Bytes::from(body), etag, items: items.into(), wire_heads: OnceLock::new() }
    }
}

#[derive(Debug, Default)]
struct SourceState {
    /// Sorted and distinct.
    items: Arc<[String]>,
    last_success_at: Option<i64>,
    last_error: Option<PollFailure>,
    consecutive_failures: u32,
    items_dropped: usize,
}

/// Cheap clone handle to this node's gateway state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    sources: Vec<Source>,
    /// A std mutex: held only for short, non-async updates, by pollers, never by requests.
    states: Mutex<Vec<SourceState>>,
    /// Requests read this without any lock.
    served: ArcSwap<Served>,
    clients: Arc<Semaphore>,
    max_clients: usize,
    config: FeedConfig,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("sources", &self.inner.sources).finish_non_exhaustive()
    }
}

impl Gateway {
    /// An empty gateway for `sources` (`(url, period)` as parsed from `FEED_SOURCES`).
    pub fn new(sources: &[(String, Duration)], config: &FeedConfig) -> Self {
        let sources: Vec<Source> =
            sources.iter().map(|(url, period)| Source { url: url.clone(), period: *period }).collect();
        let states = sources.iter().map(|_| SourceState::default()).collect();
        let max_clients = config.feed_max_clients.max(1);
        Self {
            inner: Arc::new(Inner {
                sources,
                states: Mutex::new(states),
                served: ArcSwap::from_pointee(Served::build(Vec::new())),
                clients: Arc::new(Semaphore::new(max_clients)),
                max_clients,
                config: config.clone(),
            }),
        }
    }

    pub fn sources_config(&self) -> &[Source] {
        &self.inner.sources
    }

    pub fn config(&self) -> &FeedConfig {
        &self.inner.config
    }

    /// The current response, body and validator together (never one without the other).
    pub fn served(&self) -> Arc<Served> {
        self.inner.served.load_full()
    }

    /// A client slot, or `None` when `FEED_MAX_CLIENTS` clients hold one already.
    pub fn try_client_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.clients.clone().try_acquire_owned().ok()
    }

    pub fn max_clients(&self) -> usize {
        self.inner.max_clients
    }

    pub fn clients_in_flight(&self) -> usize {
        self.inner.max_clients.saturating_sub(self.inner.clients.available_permits())
    }

    /// A good snapshot of source `index`. Rebuilds the served union only when the source's
    /// content changed. CPU work on big feeds: call from a blocking thread.
    pub fn record_success(&self, index: usize, mut items: Vec<String>) {
        items.sort_unstable();
        items.dedup();
        let now = now_ms();
        let mut states = self.lock();
        let Some(state) = states.get_mut(index) else { return };
        state.last_success_at = Some(now);
        state.consecutive_failures = 0;
        if *state.items == *items {
            return;
        }
        state.items = items.into();
        // Rebuilt under the lock, so two pollers finishing together cannot swap in an
        // older union after a newer one.
        let served = Served::build(union(states.iter().map(|state| &*state.items)));
        metrics::gauge!("emporium_feed_items").set(served.items.len() as f64);
        self.inner.served.store(Arc::new(served));
    }

    /// Items of source `index`'s latest array answer that were dropped.
    pub fn record_dropped(&self, index: usize, dropped: usize) {
        if let Some(state) = self.lock().get_mut(index) {
            state.items_dropped = dropped;
        }
    }

    /// A failed poll of source `index`: the snapshot stays as it is.
    pub fn record_failure(&self, index: usize, failure: PollFailure) {
        let mut states = self.lock();
        if let Some(state) = states.get_mut(index) {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            state.last_error = Some(failure);
        }
    }

    /// Every source's state, in configuration order.
    pub fn sources(&self) -> Vec<SourceView> {
        let now = now_ms();
        let states = self.lock();
        self.inner
            .sources
            .iter()
            .zip(states.iter())
            .map(|(source, state)| {
                let staleness = state.last_success_at.map(|at| Duration::from_millis((now - at).max(0) as u64));
                let stale_after = source.period * STALE_AFTER_PERIODS;
                let status = match staleness {
                    Some(age) if age > stale_after => SourceStatus::Stale,
                    _ if state.consecutive_failures > 0 => SourceStatus::Failing,
                    Some(_) => SourceStatus::Ok,
                    None => SourceStatus::Pending,
                };
                SourceView {
                    url: source.url.clone(),
                    period: source.period,
                    status,
                    item_count: state.items.len(),
                    last_success_at: state.last_success_at,
                    staleness,
                    last_error: state.last_error.clone(),
                    consecutive_failures: state.consecutive_failures,
                    items_dropped: state.items_dropped,
                }
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SourceState>> {
        // A panic while holding the lock cannot leave the states half-written in a way
        // that matters (each field is replaced whole): keep serving.
        self.inner.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sorted, distinct union of sorted, distinct lists.
fn union<'a>(lists: impl Iterator<Item = &'a [String]>) -> Vec<String> {
    let mut all: Vec<&String> = lists.flatten().collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(sources: usize) -> Gateway {
        let sources: Vec<(String, Duration)> =
            (0..sources).map(|n| (format!("http://feed/{n}"), Duration::from_secs(15))).collect();
        let config = FeedConfig {
            feed_max_clients: 2,
            feed_max_body_bytes: 1024,
            feed_timeout: Duration::from_secs(1),
            feed_fast_path: true,
            feed_item_bytes: 8,
        };
        Gateway::new(&sources, &config)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn union_is_sorted_distinct_and_serialized_once() {
        let gateway = gateway(2);
        assert_eq!(&*gateway.served().body, b"[]");
        gateway.record_success(0, strings(&["bbbbbbbb", "aaaaaaaa", "bbbbbbbb"]));
        gateway.record_success(1, strings(&["cccccccc", "aaaaaaaa"]));
        let served = gateway.served();
        assert_eq!(&*served.body, br#"["aaaaaaaa","bbbbbbbb","cccccccc"]"#);
        assert_eq!(&*served.items, strings(&["aaaaaaaa", "bbbbbbbb", "cccccccc"]));
        assert_eq!(gateway.sources()[0].item_count, 2);
    }

    #[test]
    fn an_unchanged_snapshot_keeps_the_same_response() {
        let gateway = gateway(1);
        gateway.record_success(0, strings(&["aaaaaaaa"]));
        let before = gateway.served();
        gateway.record_success(0, strings(&["aaaaaaaa"]));
        assert!(Arc::ptr_eq(&before, &gateway.served()), "no rebuild without a change");
        gateway.record_success(0, strings(&["zzzzzzzz"]));
        let after = gateway.served();
        assert_ne!(before.etag, after.etag);
        assert_eq!(&*after.body, br#"["zzzzzzzz"]"#);
    }

    #[test]
    fn a_failure_keeps_the_snapshot_and_is_reported() {
        let gateway = gateway(1);
        assert_eq!(gateway.sources()[0].status, SourceStatus::Pending);
        gateway.record_success(0, strings(&["aaaaaaaa"]));
        assert_eq!(gateway.sources()[0].status, SourceStatus::Ok);
        let failure = PollFailure { at: now_ms(), reason: "status", message: "HTTP 500".into() };
        gateway.record_failure(0, failure.clone());
        let view = &gateway.sources()[0];
        assert_eq!(view.status, SourceStatus::Failing);
        assert_eq!(view.last_error.as_ref(), Some(&failure));
        assert_eq!(view.item_count, 1);
        assert_eq!(&*gateway.served().body, br#"["aaaaaaaa"]"#);
        gateway.record_success(0, strings(&["aaaaaaaa"]));
        assert_eq!(gateway.sources()[0].status, SourceStatus::Ok);
        assert_eq!(gateway.sources()[0].last_error.as_ref(), Some(&failure), "kept for operators");
    }

    #[test]
    fn client_slots_are_bounded_and_freed_on_drop() {
        let gateway = gateway(1);
        let first = gateway.try_client_slot().expect("slot 1");
        let _second = gateway.try_client_slot().expect("slot 2");
        assert!(gateway.try_client_slot().is_none());
        assert_eq!(gateway.clients_in_flight(), 2);
        drop(first);
        assert!(gateway.try_client_slot().is_some());
    }
}
