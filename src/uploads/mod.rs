//! Bulk product uploads: `POST /v1/products` takes a JSON array of products of
//! any size (bytes to gigabytes) and refuses, with 403, a body whose exact bytes were
//! accepted less than `DEDUP_WINDOW` ago, whichever node of a cluster receives it.
//!
//! The path of a body:
//! 0. [`backlog`]: past the backlog's bounds (uploads not ingested yet, cluster-wide),
//!    503 with `Retry-After` before the body is read;
//! 1. [`receive`]: one streaming pass hashes it (BLAKE3), validates it ([`scan`], an
//!    incremental JSON state machine: 400 with the position of the first error) and
//!    spools it to object storage, never holding it whole; a body up to
//!    `UPLOAD_INLINE_MAX_BYTES` is held instead, to be kept in the database;
//! 2. [`window`]: its digest is claimed in the dedup window (Redis in a cluster, in
//!    process otherwise); a duplicate gets 403 with `Retry-After`;
//! 3. [`commit`]: the upload row (with a small body) and its ingestion job commit
//!    together, in one transaction with the other uploads accepted at that moment, then
//!    the window opens and the client gets `200 {"upload_id", "status": "queued"}`;
//! 4. [`ingest`]: the durable job reads the body back and upserts the products through
//!    the catalog in batches, resumable after a crash; small uploads are ingested many at
//!    once ([`ingest_group`]). Progress is visible over REST, GraphQL and the
//!    `uploadProgress` subscription.

mod backlog;
mod commit;
pub mod entity;
mod graphql;
mod http;
mod ingest;
mod ingest_group;
mod items;
pub mod model;
mod receive;
pub mod scan;
pub mod window;

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use backlog::{Backlog, Bounds};
pub use graphql::{Upload, UploadQuery, UploadSubscription, uploads_by_row};
pub use http::routes;
pub use window::DedupWindow;

use crate::{
    catalog::Catalog,
    db::duration_ms,
    events::EventBus,
    health::{Check, Status},
    jobs::{JobQueue, JobRegistry, periodic::Periodic},
    settings::{InvalidSetting, parse_bytes, parse_duration},
    state::AppState,
    storage::ObjectStorage,
};

/// The durable job that ingests one accepted upload.
pub const INGEST_JOB: &str = "uploads.ingest";

/// Payload of [`INGEST_JOB`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestJob {
    pub upload_id: i64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UploadsConfig {
    /// Largest upload body (bytes; KiB, MiB, GiB suffixes allowed). Larger bodies get 413,
    /// at once when Content-Length says so, else as soon as the count passes it.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value = "8GiB", value_parser = parse_bytes)]
    pub max_upload_bytes: u64,
    /// How long the exact bytes of an accepted upload are refused (403) after acceptance.
    #[arg(long, env = "DEDUP_WINDOW", default_value = "600s", value_parser = parse_duration)]
    pub dedup_window: Duration,
    /// How long a body being accepted blocks identical ones before it is durably queued;
    /// a node that dies in that moment blocks the body at most this long.
    #[arg(long, env = "DEDUP_CLAIM_TTL", default_value = "30s", value_parser = parse_duration)]
    pub dedup_claim_ttl: Duration,
    /// An upload whose client sends nothing for this long is abandoned (400).
    #[arg(long, env = "UPLOAD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub upload_idle_timeout: Duration,
    /// Products upserted per ingestion transaction (1 to 4000).
    #[arg(long, env = "UPLOAD_BATCH_SIZE", default_value_t = 4000, value_parser = clap::value_parser!(u16).range(1..=4000))]
    pub upload_batch_size: u16,
    /// Bodies up to this size (bytes; KiB suffix allowed; at most 1 MiB) are kept in the
    /// database with their upload instead of a spool object, and concurrent ones share one
    /// commit (group commit): one sync for a batch of small uploads, not one each. 0: every
    /// body is spooled.
    #[arg(long, env = "UPLOAD_INLINE_MAX_BYTES", default_value = "64KiB", value_parser = parse_inline_max)]
    pub upload_inline_max_bytes: u64,
    /// Most small (inline) uploads ingested together, in one transaction whose product
    /// upserts are set-based statements over all of them (1 to 1000).
    #[arg(long, env = "UPLOAD_INGEST_GROUP", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub upload_ingest_group: u16,
    /// Most uploads accepted and not yet ingested (queued or ingesting), cluster-wide;
    /// beyond, `POST /v1/products` answers 503 + `Retry-After` and stores nothing. 0:
    /// unbounded. 10,000 is about 10 s of ingesting small bodies in groups on a 2-core
    /// node (800–1,300/s measured, bench/small-uploads.sh): a backlog that deep means
    /// ingestion is not keeping up, and far more than any test or the 1 GiB bench keeps
    /// waiting. A soft bound: nodes decide on
    /// figures up to 500 ms old, so a few uploads at once may pass it.
    #[arg(long, env = "UPLOAD_BACKLOG_MAX_UPLOADS", default_value_t = 10_000)]
    pub upload_backlog_max_uploads: u64,
    /// Most body bytes of uploads accepted and not yet ingested, cluster-wide (bytes;
    /// KiB, MiB, GiB suffixes allowed); beyond, 503 as above. 0: unbounded. These bytes
    /// sit in the spool (disk or S3): 10 GiB holds one largest body (`MAX_UPLOAD_BYTES`,
    /// 8 GiB) and then some, so the 1 GiB bench never reaches it; an empty backlog takes
    /// any body, so no body is refused for ever.
    #[arg(long, env = "UPLOAD_BACKLOG_MAX_BYTES", default_value = "10GiB", value_parser = parse_bytes)]
    pub upload_backlog_max_bytes: u64,
}

/// `UPLOAD_INLINE_MAX_BYTES`: a size of at most 1 MiB, so a batch of bodies committed or
/// ingested together stays a few megabytes.
fn parse_inline_max(value: &str) -> Result<u64, InvalidSetting> {
    let bytes = parse_bytes(value)?;
    if bytes > 1024 * 1024 {
        return Err(InvalidSetting::new(format!(
            "`{value}` is more than the 1 MiB a body kept in the database may have"
        )));
    }
    Ok(bytes)
}

/// The uploads' handle: what they use of the shared infrastructure, their settings, the
/// dedup window, and the catalog that ingestion files products into.
#[derive(Clone)]
pub struct Uploads {
    pub db: DatabaseConnection,
    pub objects: ObjectStorage,
    pub jobs: JobQueue,
    pub events: EventBus,
    pub dedup: DedupWindow,
    /// Commits accepted uploads in batches (group commit).
    pub committer: commit::Committer,
    /// The cluster's backlog as this node last read it (backpressure, `/health`, `/metrics`).
    pub backlog: Backlog,
    pub config: Arc<UploadsConfig>,
    pub catalog: Arc<Catalog>,
    /// `PAGE_MAX`.
    pub page_max: usize,
    /// See [`AppState::requests_deadline`].
    pub requests_deadline: CancellationToken,
}

impl Uploads {
    pub fn new(shared: &AppState, config: UploadsConfig, catalog: Arc<Catalog>) -> Self {
        let dedup = dedup_window(shared, &config);
        Self {
            db: shared.db.clone(),
            objects: shared.objects.clone(),
            jobs: shared.jobs.clone(),
            events: shared.events.clone(),
            committer: commit::Committer::start(shared.durable_db.clone(), shared.jobs.clone(), dedup.clone()),
            dedup,
            backlog: Backlog::new(Bounds {
                max_uploads: config.upload_backlog_max_uploads,
                max_bytes: config.upload_backlog_max_bytes,
            }),
            config: Arc::new(config),
            catalog,
            page_max: shared.page_max,
            requests_deadline: shared.requests_deadline.clone(),
        }
    }
}

/// The dedup window for this node: in Redis when configured, else in process.
fn dedup_window(shared: &AppState, uploads: &UploadsConfig) -> DedupWindow {
    match &shared.redis {
        Some(manager) => {
            DedupWindow::redis(manager.clone(), &shared.redis_prefix, uploads.dedup_window, uploads.dedup_claim_ttl)
        }
        None => {
            if shared.db.get_database_backend() == sea_orm::DbBackend::Postgres {
                tracing::warn!(
                    "REDIS_URL is unset: the upload dedup window is kept per node; nodes sharing this database \
                     will not see each other's uploads within the window"
                );
            }
            DedupWindow::local(uploads.dedup_window, uploads.dedup_claim_ttl)
        }
    }
}

pub fn register_jobs(uploads: &Uploads, registry: &mut JobRegistry) {
    let uploads = uploads.clone();
    registry.register(INGEST_JOB, move |ctx, job| ingest::run(uploads.clone(), ctx, job));
}

/// Every minute: uploads whose ingestion job is gone or failed for good are marked
/// failed. Every hour: spools no upload needs any more (left by a crash) are deleted.
pub fn periodic(uploads: &Uploads) -> Vec<Periodic> {
    let (reconciled, swept) = (uploads.clone(), uploads.clone());
    vec![
        Periodic::new("uploads.reconcile", "30 * * * * *", move || {
            let uploads = reconciled.clone();
            async move { fail_orphans(&uploads).await }
        }),
        Periodic::new("uploads.sweep_spools", "0 17 * * * *", move || {
            let uploads = swept.clone();
            async move { sweep_spools(&uploads).await }
        }),
    ]
}

async fn fail_orphans(state: &Uploads) -> anyhow::Result<()> {
    for upload in model::fail_orphans(&state.db, 60_000).await.map_err(into_anyhow)? {
        tracing::warn!(upload_id = upload.id, error = ?upload.error, "upload failed: its ingestion job is gone");
        publish_progress(state, &upload).await;
    }
    Ok(())
}

/// Deletes spools older than an hour that no unfinished or failed upload refers to.
async fn sweep_spools(state: &Uploads) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use object_store::ObjectStoreExt as _;
    let cutoff = chrono::Utc::now() - chrono::Duration::hours(1);
    let prefix = object_store::path::Path::from(receive::SPOOL_PREFIX);
    let mut listing = state.objects.store().list(Some(&prefix));
    let mut deleted = 0u64;
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if meta.last_modified > cutoff {
            continue;
        }
        let in_use = model::spool_in_use(&state.db, meta.location.as_ref()).await.map_err(into_anyhow)?;
        if !in_use {
            state.objects.store().delete(&meta.location).await?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted orphaned upload spools");
    }
    Ok(())
}

fn into_anyhow(error: crate::error::AppError) -> anyhow::Error {
    match error {
        crate::error::AppError::Internal(error) => error,
        other => anyhow::anyhow!("{}: {}", other.code(), other.message()),
    }
}

/// The event topic of one upload's progress.
pub fn progress_topic(id: i64) -> String {
    format!("upload:{id}")
}

async fn publish_progress(state: &Uploads, upload: &model::UploadRecord) {
    state.events.publish(&progress_topic(upload.id), upload).await;
}

/// `/health`: where the dedup window lives, the ingestion jobs waiting, and the backlog
/// against its bounds: `degraded` (never down) above 80% of either bound, or when the
/// oldest job has waited an hour.
pub async fn health(state: &Uploads) -> Check {
    let mut detail = json!({
        "dedup_window": state.dedup.mode(),
        "dedup_window_seconds": state.dedup.window().as_secs_f64(),
    });
    let (jobs, figures) = tokio::join!(state.jobs.backlog(INGEST_JOB), state.backlog.figures(&state.db));
    let mut degraded = false;
    match jobs {
        Ok((waiting, oldest_ms)) => {
            detail["ingestion_backlog"] = json!(waiting);
            detail["oldest_waiting_ms"] = json!(oldest_ms);
            // An hour-old backlog means ingestion is not keeping up (or no node runs jobs).
            degraded |= oldest_ms.is_some_and(|age| age > duration_ms(Duration::from_secs(3600)));
        }
        Err(error) => {
            detail["error"] = json!(error.to_string());
            degraded = true;
        }
    }
    match figures {
        Ok(figures) => {
            detail["backlog"] = state.backlog.detail(&figures);
            if state.backlog.near_full(&figures) {
                detail["backlog"]["note"] = json!("above 80% of a bound: new uploads will soon get 503");
                degraded = true;
            }
        }
        Err(error) => {
            detail["backlog"] = json!({ "error": error.message() });
            degraded = true;
        }
    }
    Check::new(if degraded { Status::Degraded } else { Status::Up }, false, detail)
}

/// Refreshes the backlog gauges for a scrape (from the cached read when it is fresh).
pub async fn refresh_metrics(state: &Uploads) {
    if let Err(error) = state.backlog.figures(&state.db).await {
        tracing::debug!(error = %error.message(), "reading the upload backlog for /metrics failed");
    }
}
