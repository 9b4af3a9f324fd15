//! Automatic persisted queries, as Apollo clients send them: a request may carry
//! `extensions.persistedQuery = {version: 1, sha256Hash}` instead of (or besides) its
//! `query`. A hash we do not know gets `PERSISTED_QUERY_NOT_FOUND`; the client then sends
//! the query with its hash, which registers it; later hash-only requests (also as GET, so
//! a CDN can cache them) run the registered query.
//!
//! Queries are kept in a bounded in-process cache (least recently used out first, by
//! bytes), and in a cluster also in Redis for a day, so a hash registered through one node
//! is known to every node. Redis is a help, not a dependency: when it fails, a request
//! falls back to the local cache and the client, at worst, sends its query again.

use std::{sync::Mutex, time::Duration};

use async_graphql::{Request, ServerError, Value};
use lru::LruCache;
use sha2::{Digest as _, Sha256};

use super::coded_error;

/// How long Redis keeps a registered query.
const REDIS_TTL: Duration = Duration::from_secs(24 * 3600);

/// The codes clients look for.
pub const NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";
const NOT_SUPPORTED: &str = "PERSISTED_QUERY_NOT_SUPPORTED";

pub struct PersistedQueries {
    local: Mutex<Local>,
    max_bytes: usize,
    redis: Option<(redis::aio::ConnectionManager, String)>,
}

struct Local {
    queries: LruCache<String, String>,
    bytes: usize,
}

/// A query the caller sent with its hash, to remember once it has been admitted.
#[derive(Debug)]
pub struct Registration {
    hash: String,
}

impl PersistedQueries {
    /// A store of at most `max_bytes` of queries in this process, shared through Redis
    /// under `redis_prefix` when `redis` is given.
    pub fn new(max_bytes: usize, redis: Option<redis::aio::ConnectionManager>, redis_prefix: &str) -> Self {
        Self {
            local: Mutex::new(Local { queries: LruCache::unbounded(), bytes: 0 }),
            max_bytes,
            redis: redis.map(|manager| (manager, format!("{redis_prefix}:apq:"))),
        }
    }

    /// Fills in the query of a hash-only request, or checks the hash of one that sent
    /// both (which is then to be registered). Requests without `persistedQuery` pass.
    pub async fn resolve(&self, request: &mut Request) -> Result<Option<Registration>, ServerError> {
        let Some(persisted) = request.extensions.get("persistedQuery") else { return Ok(None) };
        let Value::Object(persisted) = persisted else {
            return Err(coded_error("`extensions.persistedQuery` must be an object", "BAD_REQUEST"));
        };
        if persisted.get("version") != Some(&Value::from(1)) {
            return Err(coded_error("only version 1 of persisted queries is supported", NOT_SUPPORTED));
        }
        let hash = match persisted.get("sha256Hash") {
            Some(Value::String(hash)) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                hash.to_ascii_lowercase()
            }
            _ => return Err(coded_error("`sha256Hash` must be 64 hexadecimal digits", "BAD_REQUEST")),
        };
        if !request.query.is_empty() {
            if format!("{:x}", Sha256::digest(request.query.as_bytes())) != hash {
                return Err(coded_error("provided sha does not match query", "BAD_REQUEST"));
            }
            return Ok(Some(Registration { hash }));
        }
        match self.lookup(&hash).await {
            Some(query) => {
                request.query = query;
                Ok(None)
            }
            None => Err(coded_error("PersistedQueryNotFound", NOT_FOUND)),
        }
    }

    /// Remembers an admitted query under its hash.
    pub async fn register(&self, registration: Registration, query: &str) {
        self.remember_locally(&registration.hash, query);
        if let Some((manager, prefix)) = &self.redis {
            let mut manager = manager.clone();
            let key = format!("{prefix}{}", registration.hash);
            let stored: redis::RedisResult<()> = redis::cmd("SET")
                .arg(&key)
                .arg(query)
                .arg("EX")
                .arg(REDIS_TTL.as_secs())
                .query_async(&mut manager)
                .await;
            if let Err(error) = stored {
                tracing::warn!(error = %error, "persisted query not shared through Redis");
            }
        }
    }

    async fn lookup(&self, hash: &str) -> Option<String> {
        if let Ok(mut local) = self.local.lock()
            && let Some(query) = local.queries.get(hash)
        {
            return Some(query.clone());
        }
        let (manager, prefix) = self.redis.as_ref()?;
        let mut manager = manager.clone();
        let found: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(format!("{prefix}{hash}")).query_async(&mut manager).await;
        match found {
            Ok(Some(query)) => {
                self.remember_locally(hash, &query);
                Some(query)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(error = %error, "persisted query lookup in Redis failed");
                None
            }
        }
    }

    fn remember_locally(&self, hash: &str, query: &str) {
        let size = hash.len() + query.len();
        if size > self.max_bytes {
            return;
        }
        let Ok(mut local) = self.local.lock() else { return };
        if let Some(previous) = local.queries.put(hash.to_owned(), query.to_owned()) {
            local.bytes -= hash.len() + previous.len();
        }
        local.bytes += size;
        while local.bytes > self.max_bytes {
            match local.queries.pop_lru() {
                Some((hash, query)) => local.bytes -= hash.len() + query.len(),
                None => break,
            }
        }
        metrics::gauge!("emporium_graphql_persisted_queries").set(local.queries.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(query: &str) -> String {
        format!("{:x}", Sha256::digest(query.as_bytes()))
    }

    fn request(query: &str, hash: &str) -> Request {
        let mut request = Request::new(query);
        let persisted = serde_json::json!({ "version": 1, "sha256Hash": hash });
        request.extensions.insert("persistedQuery".into(), Value::from_json(persisted).expect("json"));
        request
    }

    fn code(error: &ServerError) -> Option<Value> {
        error.extensions.as_ref().and_then(|extensions| extensions.get("code")).cloned()
    }

    #[tokio::test]
    async fn a_miss_then_a_registration_then_a_hit() {
        let store = PersistedQueries::new(1 << 20, None, "t");
        let query = "{ __typename }";
        let error = store.resolve(&mut request("", &hash(query))).await.expect_err("unknown hash");
        assert_eq!(code(&error), Some(Value::from(NOT_FOUND)));

        let registration = store.resolve(&mut request(query, &hash(query))).await.expect("hash matches");
        store.register(registration.expect("to register"), query).await;

        let mut hit = request("", &hash(query));
        assert!(store.resolve(&mut hit).await.expect("known hash").is_none());
        assert_eq!(hit.query, query);
    }

    #[tokio::test]
    async fn a_wrong_hash_or_version_is_refused() {
        let store = PersistedQueries::new(1 << 20, None, "t");
        let error = store.resolve(&mut request("{ a }", &hash("{ b }"))).await.expect_err("mismatch");
        assert_eq!(code(&error), Some(Value::from("BAD_REQUEST")));
        let mut other_version = request("", &hash("{ a }"));
        other_version.extensions.insert(
            "persistedQuery".into(),
            Value::from_json(serde_json::json!({ "version": 2, "sha256Hash": hash("{ a }") })).expect("json"),
        );
        let error = store.resolve(&mut other_version).await.expect_err("version 2");
        assert_eq!(code(&error), Some(Value::from(NOT_SUPPORTED)));
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bytes() {
        let store = PersistedQueries::new(1000, None, "t");
        for i in 0..100 {
            let query = format!("{{ a{i}: __typename }}");
            store.register(Registration { hash: hash(&query) }, &query).await;
        }
        let local = store.local.lock().expect("lock");
        assert!(local.bytes <= 1000 && local.queries.len() < 100, "{} bytes", local.bytes);
        // The most recent stays.
        assert!(local.queries.contains(&hash("{ a99: __typename }")));
    }
}
