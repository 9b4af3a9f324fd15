//! The dedup window: a body's digest is refused for `DEDUP_WINDOW` after the body was
//! accepted. In a cluster it lives in Redis, so it holds whichever node a request
//! reaches; in embedded mode it is an in-process map.
//!
//! Protocol, once the digest of a valid, spooled body is known:
//! 1. **claim** — atomically, if the digest has no entry, store `pending:<token>` with a
//!    short expiry (`DEDUP_CLAIM_TTL`). Otherwise the body is a duplicate: of an accepted
//!    body (403 with the seconds left), or of an identical body being accepted right
//!    now by another request (also 403: exactly one of two racing bodies wins).
//! 2. the upload row and its ingestion job are committed — unless the database, the
//!    window's source of truth, holds an acceptance of the same digest within the
//!    window (the fast path lost it: Redis was flushed or failed over, or an embedded node
//!    restarted). That check runs after the insert, under a per-digest lock on Postgres,
//!    so nodes racing without a shared entry still commit once; the lost entry is then
//!    restored for the time left and the request refused (403);
//! 3. **accept** — if the entry is still our claim, replace it with `accepted:<upload id>`
//!    expiring after the full window (the window opens at acceptance).
//!
//! A node that dies between 1 and 3 leaves a claim that expires after the claim TTL, so
//! it locks the body out for seconds, not for the window. If the commit fails the claim
//! is **released** (deleted if still ours). Refusals never touch the entry, so 403s do
//! not extend the window; an entry expiring at exactly the window's end makes the same
//! body acceptable at that instant. When Redis cannot be reached the answer is 503,
//! never an unchecked acceptance.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use crate::{
    db::duration_ms,
    error::{AppError, AppResult},
};

/// Upper bound on in-process entries (live ones: bodies accepted within the window).
const LOCAL_MAX_ENTRIES: usize = 1_000_000;
/// Longest wait for Redis before answering 503.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// `Retry-After` when the dedup store is unavailable.
const UNAVAILABLE_RETRY_AFTER: u64 = 5;

/// The outcome of a claim.
#[derive(Debug)]
pub enum Verdict {
    /// This request may accept the body; it must then `accept` or `release` the claim.
    Claimed(Claim),
    /// The same bytes were accepted (or are being accepted) less than the window ago.
    Duplicate(Duplicate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Seconds until the body will be accepted again (rounded up, at least 1).
    pub retry_after: u64,
    /// The upload that holds the window; `None` while an identical body is still being
    /// accepted by another request.
    pub upload_id: Option<i64>,
}

/// A claim held by one request.
#[derive(Debug)]
pub struct Claim {
    digest: String,
    token: String,
}

/// A clock in milliseconds that tests can pin (only the in-process window uses it; the
/// Redis window relies on Redis expiry).
#[derive(Debug, Default)]
pub struct WindowClock {
    pinned: AtomicI64,
}

impl WindowClock {
    const UNPINNED: i64 = 0;

    pub fn now_ms(&self) -> i64 {
        match self.pinned.load(Ordering::SeqCst) {
            Self::UNPINNED => crate::db::now_ms(),
            pinned => pinned,
        }
    }

    /// Freezes time at `ms` (tests).
    pub fn pin(&self, ms: i64) {
        self.pinned.store(ms.max(1), Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct DedupWindow {
    backend: Arc<Backend>,
    window: Duration,
    claim_ttl: Duration,
}

enum Backend {
    Local { entries: Mutex<LocalEntries>, clock: WindowClock },
    Redis { manager: redis::aio::ConnectionManager, prefix: String },
}

#[derive(Default)]
struct LocalEntries {
    map: HashMap<String, LocalEntry>,
    /// Purge expired entries when the map reaches this size (amortised O(1) per insert).
    purge_at: usize,
}

struct LocalEntry {
    value: String,
    expires_at: i64,
}

/// Claim atomically; returns `{1}` when claimed, else `{0, pttl, current value}`.
const CLAIM_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, 0, ''}
end
return {0, redis.call('PTTL', KEYS[1]), current}
";

/// Turn our claim into an acceptance with the full window; also when the claim expired
/// and nobody else holds the key (the upload is committed: its window must open).
const ACCEPT_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn ceil_seconds(ms: i64) -> u64 {
    u64::try_from((ms.max(1) + 999) / 1000).unwrap_or(1).max(1)
}

/// Reads an entry's value: `pending:<token>` or `accepted:<upload id>`.
fn duplicate_of(value: &str, remaining_ms: i64, window: Duration) -> Duplicate {
    match value.strip_prefix("accepted:") {
        Some(id) => Duplicate { retry_after: ceil_seconds(remaining_ms), upload_id: id.parse().ok() },
        // The pending claim will almost surely be accepted (its body is already valid and
        // spooled), opening a full window from about now.
        None => Duplicate { retry_after: ceil_seconds(duration_ms(window)), upload_id: None },
    }
}

fn unavailable(error: impl std::fmt::Display) -> AppError {
    tracing::warn!(error = %error, "dedup store (Redis) unavailable");
    metrics::counter!("emporium_upload_dedup_unavailable_total").increment(1);
    AppError::unavailable(
        "the dedup store (Redis) is unavailable, so the upload cannot be checked for duplicates; retry shortly",
        Some(UNAVAILABLE_RETRY_AFTER),
    )
}

impl DedupWindow {
    /// The in-process window (embedded mode).
    pub fn local(window: Duration, claim_ttl: Duration) -> Self {
        let backend = Backend::Local { entries: Mutex::default(), clock: WindowClock::default() };
        Self { backend: Arc::new(backend), window, claim_ttl }
    }

    /// The cluster-wide window in Redis, under `<prefix>:upload:<digest>`.
    pub fn redis(manager: redis::aio::ConnectionManager, prefix: &str, window: Duration, claim_ttl: Duration) -> Self {
        let backend = Backend::Redis { manager, prefix: prefix.to_string() };
        Self { backend: Arc::new(backend), window, claim_ttl }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// `in-process` or `redis`.
    pub fn mode(&self) -> &'static str {
        match &*self.backend {
            Backend::Local { .. } => "in-process",
            Backend::Redis { .. } => "redis",
        }
    }

    /// The in-process window's clock; `None` for Redis.
    pub fn clock(&self) -> Option<&WindowClock> {
        match &*self.backend {
            Backend::Local { clock, .. } => Some(clock),
            Backend::Redis { .. } => None,
        }
    }

    /// Claims `digest` (lowercase hex) for one request, or says whose duplicate it is.
    pub async fn claim(&self, digest: &str) -> AppResult<Verdict> {
        let token = format!("pending:{}", uuid::Uuid::new_v4().simple());
        match &*self.backend {
            Backend::Local { entries, clock } => {
                let now = clock.now_ms();
                let mut entries =
                    entries.lock().map_err(|_| AppError::internal(anyhow::anyhow!("dedup window lock poisoned")))?;
                if let Some(entry) = entries.map.get(digest).filter(|entry| entry.expires_at > now) {
                    return Ok(Verdict::Duplicate(duplicate_of(&entry.value, entry.expires_at - now, self.window)));
                }
                if entries.map.len() >= entries.purge_at {
                    entries.map.retain(|_, entry| entry.expires_at > now);
                    entries.purge_at = (entries.map.len() * 2).max(1024);
                    if entries.map.len() >= LOCAL_MAX_ENTRIES {
                        return Err(AppError::unavailable(
                            "too many uploads within the dedup window on this node; retry later",
                            Some(UNAVAILABLE_RETRY_AFTER),
                        ));
                    }
                }
                let expires_at = now + duration_ms(self.claim_ttl);
                entries.map.insert(digest.to_string(), LocalEntry { value: token.clone(), expires_at });
                Ok(Verdict::Claimed(Claim { digest: digest.to_string(), token }))
            }
            Backend::Redis { manager, prefix } => {
                let key = format!("{prefix}:upload:{digest}");
                let mut manager = manager.clone();
                let script = redis::Script::new(CLAIM_SCRIPT);
                let mut invocation = script.key(&key);
                invocation.arg(&token).arg(duration_ms(self.claim_ttl));
                let reply: (i64, i64, String) =
                    tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut manager))
                        .await
                        .map_err(|_| unavailable("timed out"))?
                        .map_err(unavailable)?;
                match reply {
                    (1, _, _) => Ok(Verdict::Claimed(Claim { digest: digest.to_string(), token })),
                    (_, remaining_ms, value) => {
                        // -1 (no expiry) cannot happen with our writes; treat it as a full window.
                        let remaining = if remaining_ms < 0 { duration_ms(self.window) } else { remaining_ms };
                        Ok(Verdict::Duplicate(duplicate_of(&value, remaining, self.window)))
                    }
                }
            }
        }
    }

    /// Now on the window's clock (the pinned one in tests of the in-process window).
    pub fn now_ms(&self) -> i64 {
        match &*self.backend {
            Backend::Local { clock, .. } => clock.now_ms(),
            Backend::Redis { .. } => crate::db::now_ms(),
        }
    }

    /// Opens the window for `upload_id`, whose row and job are committed. Returns false
    /// when another request took the key after our claim expired (logged: the claim TTL
    /// was too short for this commit).
    pub async fn accept(&self, claim: &Claim, upload_id: i64) -> AppResult<bool> {
        self.open(claim, upload_id, self.window).await
    }

    /// Puts back, in place of our claim, the window of an upload the database knows but
    /// the fast path had lost (Redis lost its keys, or the node restarted): it holds for
    /// what is `left` of it, and later duplicates are refused without the database.
    pub async fn restore(&self, claim: &Claim, upload_id: i64, left: Duration) -> AppResult<bool> {
        self.open(claim, upload_id, left).await
    }

    /// The duplicate answer for a body the database says was accepted `left` ago.
    pub fn duplicate_for(&self, upload_id: i64, left: Duration) -> Duplicate {
        Duplicate { retry_after: ceil_seconds(duration_ms(left)), upload_id: Some(upload_id) }
    }

    async fn open(&self, claim: &Claim, upload_id: i64, ttl: Duration) -> AppResult<bool> {
        let accepted = format!("accepted:{upload_id}");
        let opened = match &*self.backend {
            Backend::Local { entries, clock } => {
                let now = clock.now_ms();
                let mut entries =
                    entries.lock().map_err(|_| AppError::internal(anyhow::anyhow!("dedup window lock poisoned")))?;
                let ours = match entries.map.get(&claim.digest) {
                    Some(entry) => entry.value == claim.token || entry.expires_at <= now,
                    None => true,
                };
                if ours {
                    let expires_at = now + duration_ms(ttl);
                    entries.map.insert(claim.digest.clone(), LocalEntry { value: accepted, expires_at });
                }
                ours
            }
            Backend::Redis { manager, prefix } => {
                let key = format!("{prefix}:upload:{}", claim.digest);
                let mut manager = manager.clone();
                let script = redis::Script::new(ACCEPT_SCRIPT);
                let mut invocation = script.key(&key);
                invocation.arg(&claim.token).arg(&accepted).arg(duration_ms(ttl).max(1));
                let reply: i64 = tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut manager))
                    .await
                    .map_err(|_| unavailable("timed out"))?
                    .map_err(unavailable)?;
                reply == 1
            }
        };
        if !opened {
            tracing::warn!(upload_id, "the dedup claim expired before acceptance and another request holds the body");
            metrics::counter!("emporium_upload_dedup_claim_lost_total").increment(1);
        }
        Ok(opened)
    }

    /// Gives up a claim (the upload could not be committed). Best effort: a claim that
    /// cannot be released expires after the claim TTL anyway.
    pub async fn release(&self, claim: &Claim) {
        match &*self.backend {
            Backend::Local { entries, .. } => {
                if let Ok(mut entries) = entries.lock()
                    && entries.map.get(&claim.digest).is_some_and(|entry| entry.value == claim.token)
                {
                    entries.map.remove(&claim.digest);
                }
            }
            Backend::Redis { manager, prefix } => {
                let key = format!("{prefix}:upload:{}", claim.digest);
                let mut manager = manager.clone();
                let script = redis::Script::new(RELEASE_SCRIPT);
                let mut invocation = script.key(&key);
                invocation.arg(&claim.token);
                let released = tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<i64>(&mut manager)).await;
                if !matches!(released, Ok(Ok(_))) {
                    tracing::warn!("releasing a dedup claim failed; it expires after DEDUP_CLAIM_TTL");
                }
            }
        }
    }

    /// Entries currently held in process (0 for Redis).
    pub fn local_entries(&self) -> usize {
        match &*self.backend {
            Backend::Local { entries, .. } => entries.lock().map(|entries| entries.map.len()).unwrap_or(0),
            Backend::Redis { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_519_909_200_000; // 2018-03-01T13:00:00Z

    async fn accept_at(window: &DedupWindow, digest: &str, upload_id: i64) {
        let Verdict::Claimed(claim) = window.claim(digest).await.expect("claim") else { panic!("expected a claim") };
        assert!(window.accept(&claim, upload_id).await.expect("accept"));
    }

    #[tokio::test]
    async fn the_documented_timeline_holds_to_the_millisecond() {
        let window = DedupWindow::local(Duration::from_secs(600), Duration::from_secs(30));
        let clock = window.clock().expect("local clock");
        clock.pin(T0);
        accept_at(&window, "abc", 1).await;

        // 13:09:59 → refused, one second left; a refusal does not extend the window.
        clock.pin(T0 + 599_000);
        let verdict = window.claim("abc").await.expect("claim");
        assert!(matches!(verdict, Verdict::Duplicate(Duplicate { retry_after: 1, upload_id: Some(1) })), "{verdict:?}");
        clock.pin(T0 + 599_999);
        assert!(matches!(window.claim("abc").await.expect("claim"), Verdict::Duplicate(d) if d.retry_after == 1));

        // 13:10:00 → accepted again, and a new window starts.
        clock.pin(T0 + 600_000);
        accept_at(&window, "abc", 2).await;
        clock.pin(T0 + 600_001);
        let verdict = window.claim("abc").await.expect("claim");
        assert!(
            matches!(verdict, Verdict::Duplicate(Duplicate { retry_after: 600, upload_id: Some(2) })),
            "{verdict:?}"
        );
    }

    #[tokio::test]
    async fn a_pending_claim_refuses_racers_and_expires_if_abandoned() {
        let window = DedupWindow::local(Duration::from_secs(600), Duration::from_secs(30));
        let clock = window.clock().expect("local clock");
        clock.pin(T0);
        let Verdict::Claimed(_abandoned) = window.claim("d").await.expect("claim") else { panic!() };
        let racer = window.claim("d").await.expect("claim");
        assert!(matches!(racer, Verdict::Duplicate(Duplicate { upload_id: None, retry_after: 600 })), "{racer:?}");
        // The claimant died: 30 s later the body is free again, not 10 minutes later.
        clock.pin(T0 + 30_000);
        assert!(matches!(window.claim("d").await.expect("claim"), Verdict::Claimed(_)));
    }

    #[tokio::test]
    async fn a_released_claim_frees_the_body_and_only_the_owner_releases() {
        let window = DedupWindow::local(Duration::from_secs(600), Duration::from_secs(30));
        let Verdict::Claimed(claim) = window.claim("e").await.expect("claim") else { panic!() };
        window.release(&claim).await;
        let Verdict::Claimed(second) = window.claim("e").await.expect("claim") else { panic!() };
        window.release(&claim).await; // stale: must not remove the second claim
        assert!(matches!(window.claim("e").await.expect("claim"), Verdict::Duplicate(_)));
        window.release(&second).await;
    }

    #[tokio::test]
    async fn expired_entries_are_purged() {
        let window = DedupWindow::local(Duration::from_secs(1), Duration::from_secs(1));
        let clock = window.clock().expect("local clock");
        clock.pin(T0);
        for i in 0..5000 {
            accept_at(&window, &format!("k{i}"), i).await;
        }
        assert_eq!(window.local_entries(), 5000);
        clock.pin(T0 + 1000);
        // Purges are amortised: they run when the map doubles (here at 8192 entries).
        for i in 0..3300 {
            accept_at(&window, &format!("n{i}"), i).await;
        }
        assert!(window.local_entries() < 5000, "expired entries were kept: {}", window.local_entries());
    }
}
