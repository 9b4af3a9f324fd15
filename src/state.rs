//! The shared infrastructure every domain is built from: one handle per part, cheap to
//! clone. Domains keep their own state (settings, clients, caches) in their own handle
//! and take from here only the parts they use.

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{events::EventBus, jobs::JobQueue, storage::ObjectStorage};

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    /// For writes whose answer promises durability (`db::connect_durable`).
    pub durable_db: DatabaseConnection,
    /// Present in a cluster (`REDIS_URL`); `None` in embedded mode.
    pub redis: Option<redis::aio::ConnectionManager>,
    /// Prefix of every Redis key and channel (`REDIS_PREFIX`).
    pub redis_prefix: Arc<str>,
    pub events: EventBus,
    pub objects: ObjectStorage,
    pub jobs: JobQueue,
    pub node_id: Arc<str>,
    /// Largest page of any list (`PAGE_MAX`).
    pub page_max: usize,
    /// Cancelled when a stopping node's grace period is about to end: long requests (an
    /// upload still arriving) answer 503 with `Retry-After` while they still can.
    pub requests_deadline: CancellationToken,
}
