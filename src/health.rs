//! The health report behind `GET /health`: each dependency's state as JSON; 503 when a
//! dependency this node cannot serve without (database, Redis when configured, object
//! storage) is down.

use std::{collections::BTreeMap, time::Instant};

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::state::AppState;

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

/// The node's status (200, or 503 when a critical dependency is down) and the report.
pub async fn report(state: &AppState) -> (StatusCode, Value) {
    let (database, redis, objects, jobs, offers, feeds, intake, uploads) = tokio::join!(
        database(state),
        redis(state),
        object_store(state),
        jobs(state),
        crate::catalog::health(state),
        crate::feed::health(state),
        crate::intake::health(state),
        crate::uploads::health(state),
    );
    let checks: BTreeMap<&str, Check> = [
        ("database", database),
        ("redis", redis),
        ("object_store", objects),
        ("jobs", jobs),
        ("offers_service", offers),
        ("feeds", feeds),
        ("intake", intake),
        ("uploads", uploads),
    ]
    .into_iter()
    .collect();
    let unhealthy = checks.values().any(|check| check.critical && check.status == Status::Down);
    let degraded = checks.values().any(|check| check.status != Status::Up);
    let overall = if unhealthy {
        Status::Down
    } else if degraded {
        Status::Degraded
    } else {
        Status::Up
    };
    let code = if unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({
        "status": overall,
        "node": &*state.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "mode": if state.redis.is_some() { "cluster" } else { "embedded" },
        "checks": checks,
    });
    (code, body)
}

async fn database(state: &AppState) -> Check {
    let started = Instant::now();
    let backend = format!("{:?}", state.db.get_database_backend()).to_lowercase();
    match state.db.ping().await {
        Ok(_) => {
            Check::new(Status::Up, true, json!({ "backend": backend, "latency_ms": started.elapsed().as_millis() }))
        }
        Err(error) => Check::new(Status::Down, true, json!({ "backend": backend, "error": error.to_string() })),
    }
}

async fn redis(state: &AppState) -> Check {
    let Some(manager) = &state.redis else {
        return Check::new(Status::Up, false, json!({ "mode": "in-process (no REDIS_URL)" }));
    };
    let started = Instant::now();
    let mut manager = manager.clone();
    match redis::cmd("PING").query_async::<String>(&mut manager).await {
        Ok(_) => Check::new(Status::Up, true, json!({ "latency_ms": started.elapsed().as_millis() })),
        Err(error) => Check::new(Status::Down, true, json!({ "error": error.to_string() })),
    }
}

async fn object_store(state: &AppState) -> Check {
    let started = Instant::now();
    let location = state.objects.location().to_string();
    match state.objects.check(&state.node_id).await {
        Ok(()) => {
            Check::new(Status::Up, true, json!({ "location": location, "latency_ms": started.elapsed().as_millis() }))
        }
        Err(error) => Check::new(Status::Down, true, json!({ "location": location, "error": format!("{error:#}") })),
    }
}

async fn jobs(state: &AppState) -> Check {
    match state.jobs.counts().await {
        Ok(counts) => Check::new(Status::Up, false, json!({ "counts": counts })),
        Err(error) => Check::new(Status::Down, false, json!({ "error": error.to_string() })),
    }
}
