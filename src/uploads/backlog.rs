//! Backpressure: accepted uploads that are not ingested yet (status `queued` or
//! `ingesting`) are bounded by `UPLOAD_BACKLOG_MAX_UPLOADS` and
//! `UPLOAD_BACKLOG_MAX_BYTES`; beyond either, `POST /v1/products` answers 503 with
//! `Retry-After` before reading the body, so a refused request stores nothing and opens
//! no dedup window.
//!
//! The figures are the cluster's, read from the database (every node shares it), and
//! cached per node for [`REFRESH`]: a flood of requests costs one aggregate per period
//! per node, not one per request. The bound is therefore soft: nodes (and requests
//! racing on one node) decide on figures up to a period old, so a few uploads past the
//! bound can be accepted at once. A node adds what it accepts itself to its cached
//! figures, so it never overshoots on its own sequential traffic.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, FromQueryResult};
use serde_json::{Value, json};

use super::model::{INGESTING, QUEUED};
use crate::{
    db::{now_ms, stmt},
    error::{AppError, AppResult},
};

/// How long a read of the backlog serves this node's decisions, `/health` and `/metrics`.
pub const REFRESH: Duration = Duration::from_millis(500);
/// What a refusal's `Retry-After` says: a few refresh periods, time for ingestion to
/// take some of the backlog.
const RETRY_AFTER_SECONDS: u64 = 5;
/// `/health` reports the uploads `degraded` above this share of either bound.
const DEGRADED_ABOVE: f64 = 0.8;

/// The backlog as last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromQueryResult)]
pub struct Figures {
    /// Uploads accepted and not finished.
    pub uploads: i64,
    /// Their body bytes.
    pub bytes: i64,
    /// When the oldest of them was accepted (ms since the epoch).
    pub oldest: Option<i64>,
}

impl Figures {
    /// Age of the oldest waiting upload in seconds (0 when none waits).
    pub fn oldest_seconds(&self) -> f64 {
        self.oldest.map_or(0.0, |oldest| (now_ms() - oldest).max(0) as f64 / 1000.0)
    }
}

/// The bounds (0: unbounded).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_uploads: u64,
    pub max_bytes: u64,
}

/// This node's cached view of the cluster's backlog.
#[derive(Clone)]
pub struct Backlog {
    bounds: Bounds,
    cached: Arc<Mutex<Option<(Instant, Figures)>>>,
    /// When the last read failed: the requests that waited for it fail at once rather
    /// than each trying in turn (a database that is down would make the n-th wait n
    /// acquire timeouts).
    failed_at: Arc<Mutex<Option<Instant>>>,
    /// One read at a time: requests arriving while it runs wait for its answer.
    reading: Arc<tokio::sync::Mutex<()>>,
}

impl Backlog {
    pub fn new(bounds: Bounds) -> Self {
        Self { bounds, cached: Arc::default(), failed_at: Arc::default(), reading: Arc::default() }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn fresh(&self) -> Option<Figures> {
        let cached = self.cached.lock().ok()?;
        cached.filter(|(read_at, _)| read_at.elapsed() < REFRESH).map(|(_, figures)| figures)
    }

    /// The figures, at most [`REFRESH`] old; read from the database when older.
    pub async fn figures(&self, db: &impl ConnectionTrait) -> AppResult<Figures> {
        if let Some(figures) = self.fresh() {
            return Ok(figures);
        }
        let asked_at = Instant::now();
        let _reading = self.reading.lock().await;
        if let Some(figures) = self.fresh() {
            return Ok(figures);
        }
        let failed_at = self.failed_at.lock().ok().and_then(|failed_at| *failed_at);
        if failed_at.is_some_and(|failed_at| failed_at >= asked_at) {
            return Err(AppError::unavailable(
                "the upload backlog could not be read just now (the database failed to answer); retry shortly",
                Some(1),
            ));
        }
        let figures = match read(db).await {
            Ok(figures) => figures,
            Err(error) => {
                if let Ok(mut failed_at) = self.failed_at.lock() {
                    *failed_at = Some(Instant::now());
                }
                return Err(error);
            }
        };
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), figures));
        }
        publish(&figures);
        Ok(figures)
    }

    /// Refuses a new upload (503 + `Retry-After`) when the backlog is at either bound, or
    /// when `more` bytes (the body's declared length, once known its real one) would take
    /// a non-empty backlog past the byte bound (an empty backlog takes any body, so a body
    /// larger than the bound is not refused forever). No read when both bounds are off.
    pub async fn admit(&self, db: &impl ConnectionTrait, more: Option<u64>) -> AppResult<()> {
        let Bounds { max_uploads, max_bytes } = self.bounds;
        if max_uploads == 0 && max_bytes == 0 {
            return Ok(());
        }
        let figures = self.figures(db).await?;
        let decided = self.decide(&figures, more);
        if decided.is_err() {
            metrics::counter!("emporium_upload_backlog_refused_total").increment(1);
        }
        decided
    }

    /// [`Backlog::admit`]'s decision on given figures.
    fn decide(&self, figures: &Figures, more: Option<u64>) -> AppResult<()> {
        let Bounds { max_uploads, max_bytes } = self.bounds;
        let (uploads, bytes) = (as_u64(figures.uploads), as_u64(figures.bytes));
        let full_count = max_uploads > 0 && uploads >= max_uploads;
        let full_bytes = max_bytes > 0
            && (bytes >= max_bytes || (uploads > 0 && bytes.saturating_add(more.unwrap_or(0)) > max_bytes));
        if !(full_count || full_bytes) {
            return Ok(());
        }
        let which = if full_count {
            format!("{uploads} uploads wait, UPLOAD_BACKLOG_MAX_UPLOADS is {max_uploads}")
        } else {
            format!(
                "{bytes} bytes wait{}, UPLOAD_BACKLOG_MAX_BYTES is {max_bytes}",
                more.map(|more| format!(" and this body has {more}")).unwrap_or_default()
            )
        };
        Err(AppError::unavailable(
            format!(
                "the upload backlog is full ({which}): uploads already accepted are still being ingested; \
                 nothing of this request was stored, send it again after {RETRY_AFTER_SECONDS} s"
            ),
            Some(RETRY_AFTER_SECONDS),
        ))
    }

    /// Counts an upload this node just accepted in its cached figures, so that its next
    /// decisions include it before the next read.
    pub fn note_accepted(&self, bytes: u64, accepted_at: i64) {
        if let Ok(mut cached) = self.cached.lock()
            && let Some((_, figures)) = cached.as_mut()
        {
            figures.uploads += 1;
            figures.bytes = figures.bytes.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
            figures.oldest = Some(figures.oldest.map_or(accepted_at, |oldest| oldest.min(accepted_at)));
            publish(figures);
        }
    }

    /// Whether the backlog is above [`DEGRADED_ABOVE`] of either bound.
    pub fn near_full(&self, figures: &Figures) -> bool {
        let above = |value: i64, bound: u64| bound > 0 && as_u64(value) as f64 > DEGRADED_ABOVE * bound as f64;
        above(figures.uploads, self.bounds.max_uploads) || above(figures.bytes, self.bounds.max_bytes)
    }

    /// `/health`'s figures.
    pub fn detail(&self, figures: &Figures) -> Value {
        json!({
            "uploads": figures.uploads,
            "bytes": figures.bytes,
            "oldest_waiting_seconds": figures.oldest_seconds(),
            "max_uploads": self.bounds.max_uploads,
            "max_bytes": self.bounds.max_bytes,
        })
    }
}

/// The gauges show the figures this node decides on.
fn publish(figures: &Figures) {
    metrics::gauge!("emporium_upload_backlog_uploads").set(figures.uploads as f64);
    metrics::gauge!("emporium_upload_backlog_bytes").set(figures.bytes as f64);
    metrics::gauge!("emporium_upload_backlog_oldest_seconds").set(figures.oldest_seconds());
}

fn as_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// One aggregate over the unfinished uploads.
async fn read(db: &impl ConnectionTrait) -> AppResult<Figures> {
    // Raw SQL: the status list must be written as in the partial index
    // `uploads_backlog` (migration 000011), as literals, for SQLite's planner to use it;
    // the index covers the three aggregates. The casts keep Postgres' SUM a BIGINT.
    let sql = format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS uploads, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS bytes,
                MIN(created_at) AS oldest
         FROM uploads WHERE status IN ('{QUEUED}', '{INGESTING}')"
    );
    let figures = Figures::find_by_statement(stmt(db, &sql, [])).one(db).await?;
    Ok(figures.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(max_uploads: u64, max_bytes: u64) -> Backlog {
        Backlog::new(Bounds { max_uploads, max_bytes })
    }

    #[test]
    fn near_full_is_above_eighty_percent_of_either_bound() {
        let figures = |uploads, bytes| Figures { uploads, bytes, oldest: None };
        let b = backlog(10, 1000);
        assert!(!b.near_full(&figures(8, 800)));
        assert!(b.near_full(&figures(9, 0)));
        assert!(b.near_full(&figures(0, 801)));
        assert!(!backlog(0, 0).near_full(&figures(1_000_000, 1 << 40)), "0 is unbounded");
    }

    #[test]
    fn refuses_at_either_bound_and_an_empty_backlog_takes_any_body() {
        let figures = |uploads, bytes| Figures { uploads, bytes, oldest: None };
        let message = |result: AppResult<()>| match result {
            Err(AppError::Unavailable { message, retry_after: Some(_) }) => message,
            other => panic!("expected a 503 with Retry-After, got {other:?}"),
        };
        let b = backlog(3, 1000);
        assert!(b.decide(&figures(2, 0), None).is_ok());
        assert!(message(b.decide(&figures(3, 0), None)).contains("UPLOAD_BACKLOG_MAX_UPLOADS is 3"));
        assert!(message(b.decide(&figures(1, 1000), None)).contains("UPLOAD_BACKLOG_MAX_BYTES is 1000"));
        assert!(b.decide(&figures(1, 600), Some(400)).is_ok(), "up to the bound fits");
        assert!(message(b.decide(&figures(1, 600), Some(401))).contains("this body has 401"));
        assert!(b.decide(&figures(0, 0), Some(5000)).is_ok(), "an empty backlog takes a body beyond the bound");
        let unbounded = backlog(0, 0);
        assert!(unbounded.decide(&figures(1 << 40, 1 << 50), Some(1 << 40)).is_ok());
        let count_only = backlog(3, 0);
        assert!(count_only.decide(&figures(2, 1 << 50), Some(1 << 40)).is_ok());
    }
}
