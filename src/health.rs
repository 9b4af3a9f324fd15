//! What `GET /health` is made of: a [`Check`] per dependency or domain, and the checks
//! of the shared infrastructure (database, Redis, object storage, job queue). The report
//! that joins every check is assembled above the domains (`http::health`).

use std::{
    future::Future,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Value, json};

use crate::{jobs::JobQueue, storage::ObjectStorage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    /// Working, but not as it should (an upstream failing, a stale feed).
    Degraded,
    Down,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub status: Status,
    /// A down critical dependency makes the whole node unhealthy (503).
    pub critical: bool,
    #[serde(flatten)]
    pub detail: Value,
}

impl Check {
    pub fn new(status: Status, critical: bool, detail: Value) -> Self {
        Self { status, critical, detail }
    }
}

/// `check`, or a check with `status` (and `critical`) when it has no answer within `within`.
pub async fn bounded(within: Duration, status: Status, critical: bool, check: impl Future<Output = Check>) -> Check {
    match tokio::time::timeout(within, check).await {
        Ok(check) => check,
        Err(_) => Check::new(status, critical, json!({ "error": format!("no answer within {within:?}") })),
    }
}

pub async fn database(db: &sea_orm::DatabaseConnection) -> Check {
    let started = Instant::now();
    let backend = format!("{:?}", db.get_database_backend()).to_lowercase();
    match db.ping().await {
        Ok(_) => {
            Check::new(Status::Up, true, json!({ "backend": backend, "latency_ms": started.elapsed().as_millis() }))
        }
        Err(error) => Check::new(Status::Down, true, json!({ "backend": backend, "error": error.to_string() })),
    }
}

pub async fn redis(redis: Option<&redis::aio::ConnectionManager>) -> Check {
    let Some(manager) = redis else {
        return Check::new(Status::Up, false, json!({ "mode": "in-process (no REDIS_URL)" }));
    };
    let started = Instant::now();
    let mut manager = manager.clone();
    match redis::cmd("PING").query_async::<String>(&mut manager).await {
        Ok(_) => Check::new(Status::Up, true, json!({ "latency_ms": started.elapsed().as_millis() })),
        Err(error) => Check::new(Status::Down, true, json!({ "error": error.to_string() })),
    }
}

/// Writes, reads and deletes a probe object named after `node`.
pub async fn object_store(objects: &ObjectStorage, node: &str) -> Check {
    let started = Instant::now();
    let location = objects.location().to_string();
    match objects.check(node).await {
        Ok(()) => {
            Check::new(Status::Up, true, json!({ "location": location, "latency_ms": started.elapsed().as_millis() }))
        }
        Err(error) => Check::new(Status::Down, true, json!({ "location": location, "error": format!("{error:#}") })),
    }
}

pub async fn jobs(jobs: &JobQueue) -> Check {
    match jobs.counts().await {
        Ok(counts) => Check::new(Status::Up, false, json!({ "counts": counts })),
        Err(error) => Check::new(Status::Down, false, json!({ "error": error.to_string() })),
    }
}
