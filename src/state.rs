//! What every handler, resolver and job shares.

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, events::EventBus, jobs::JobQueue, storage::ObjectStorage};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    /// Present in a cluster (`REDIS_URL`); `None` in embedded mode.
    pub redis: Option<redis::aio::ConnectionManager>,
    pub events: EventBus,
    pub objects: ObjectStorage,
    /// Where accepted upload bodies are remembered for `DEDUP_WINDOW` (Redis or in process).
    pub dedup: crate::uploads::DedupWindow,
    pub jobs: JobQueue,
    pub node_id: Arc<str>,
    pub upstreams: Arc<Upstreams>,
    /// This node's feed gateway: polled snapshots and the served union (in memory, per node).
    pub feed: crate::feed::Gateway,
    /// The catalog's offers service client and GraphQL batch loaders (per node).
    pub catalog: Arc<crate::catalog::Catalog>,
    /// Cancelled when a stopping node's grace period is about to end: long requests (an
    /// upload still arriving) answer 503 with `Retry-After` while they still can.
    pub requests_deadline: CancellationToken,
}

/// Where the third-party services are, after the embedded simulator (if any) started.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub offers_url: String,
    /// `(url, period)` per partner feed.
    pub feed_sources: Vec<(String, std::time::Duration)>,
    /// True when these point at the in-process simulator.
    pub simulated: bool,
}
