//! One node's wiring, above the domains: the settings, the shared infrastructure and
//! every domain's handle, as the HTTP and GraphQL assembly use them; and the health
//! report that joins every check.

use std::{collections::BTreeMap, sync::Arc};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{
    catalog::Catalog,
    config::Config,
    feed,
    health::{self, Check, Status},
    intake::Intake,
    records::Records,
    state::AppState,
    uploads::Uploads,
};

#[derive(Clone)]
pub struct Node {
    pub config: Arc<Config>,
    pub shared: AppState,
    pub catalog: Arc<Catalog>,
    pub records: Records,
    pub uploads: Uploads,
    pub intake: Intake,
    pub feed: feed::Gateway,
    /// The feeds are the bundled simulator's (shown in `/health`).
    pub simulated_feeds: bool,
}

impl Node {
    /// The node's status (200, or 503 when a critical dependency is down) and the report.
    pub async fn health(&self) -> (StatusCode, Value) {
        let shared = &self.shared;
        // Each check has its own deadline, so one dependency that hangs (a database whose
        // pool waits for connections that never come) neither delays the report nor hides
        // the others' state. Past it, a critical infrastructure check is down; a domain's
        // check is degraded (its own dependencies are judged by the checks above).
        let within = self.config.http.health_check_timeout;
        let redis_critical = shared.redis.is_some();
        let (database, redis, objects, jobs, offers, intake, uploads) = tokio::join!(
            health::bounded(within, Status::Down, true, health::database(&shared.db)),
            health::bounded(within, Status::Down, redis_critical, health::redis(shared.redis.as_ref())),
            health::bounded(within, Status::Down, true, health::object_store(&shared.objects, &shared.node_id)),
            health::bounded(within, Status::Down, false, health::jobs(&shared.jobs)),
            health::bounded(within, Status::Degraded, false, crate::catalog::health(&self.catalog)),
            health::bounded(within, Status::Degraded, false, crate::intake::health(&self.intake)),
            health::bounded(within, Status::Degraded, false, crate::uploads::health(&self.uploads)),
        );
        let feeds = feed::health(&self.feed, self.simulated_feeds);
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
            "node": &*shared.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "mode": if shared.redis.is_some() { "cluster" } else { "embedded" },
            "checks": checks,
        });
        (code, body)
    }
}
