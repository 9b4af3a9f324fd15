//! The `uploads` table: one row per accepted body and its ingestion progress.

use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde::{Deserialize, Serialize};

use crate::{
    db::{now_ms, stmt},
    error::{AppError, AppResult},
    paging::Page,
};

pub const QUEUED: &str = "queued";
pub const INGESTING: &str = "ingesting";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

/// An upload as stored (also the payload of progress events).
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: i64,
    pub status: String,
    pub digest: String,
    pub bytes: i64,
    pub items_total: i64,
    pub items_done: i64,
    pub items_rejected: i64,
    /// JSON array of [`ItemRejection`] (the first few).
    pub rejections: Option<String>,
    pub products_created: i64,
    pub products_updated: i64,
    pub spool_key: String,
    pub job_id: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl UploadRecord {
    pub fn is_finished(&self) -> bool {
        self.status == SUCCEEDED || self.status == FAILED
    }
}

const COLUMNS: &str = "id, status, digest, bytes, items_total, items_done, items_rejected, rejections, \
                       products_created, products_updated, spool_key, job_id, error, created_at, updated_at, finished_at";

/// Rejected items kept per upload (the count covers all of them).
pub const REJECTIONS_KEPT: usize = 20;

/// An item the catalog refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRejection {
    /// Position in the body's array, from 0.
    pub index: u64,
    pub sku: String,
    pub reason: String,
}

impl UploadRecord {
    pub fn rejection_list(&self) -> Vec<ItemRejection> {
        self.rejections.as_deref().and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }
}

/// What one committed batch adds to an upload's progress.
#[derive(Debug, Default)]
pub struct BatchProgress {
    pub items: i64,
    pub rejected: i64,
    pub created: u64,
    pub updated: u64,
    /// The kept rejections after this batch, when the batch added some.
    pub rejections: Option<Vec<ItemRejection>>,
}

/// Inserts a queued upload and returns its id.
pub async fn insert(
    conn: &impl ConnectionTrait,
    digest: &str,
    bytes: u64,
    items_total: u64,
    spool_key: &str,
) -> AppResult<i64> {
    #[derive(FromQueryResult)]
    struct Id {
        id: i64,
    }
    let now = now_ms();
    let row = Id::find_by_statement(stmt(
        conn,
        "INSERT INTO uploads (status, digest, bytes, items_total, items_done, spool_key, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 0, $5, $6, $6) RETURNING id",
        [
            QUEUED.into(),
            digest.into(),
            i64::try_from(bytes).unwrap_or(i64::MAX).into(),
            i64::try_from(items_total).unwrap_or(i64::MAX).into(),
            spool_key.into(),
            now.into(),
        ],
    ))
    .one(conn)
    .await?;
    row.map(|row| row.id).ok_or_else(|| AppError::internal(anyhow::anyhow!("insert into uploads returned no id")))
}

pub async fn set_job(conn: &impl ConnectionTrait, id: i64, job_id: i64) -> AppResult<()> {
    conn.execute_raw(stmt(conn, "UPDATE uploads SET job_id = $1 WHERE id = $2", [job_id.into(), id.into()])).await?;
    Ok(())
}

pub async fn get(conn: &impl ConnectionTrait, id: i64) -> AppResult<Option<UploadRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM uploads WHERE id = $1");
    Ok(UploadRecord::find_by_statement(stmt(conn, &sql, [id.into()])).one(conn).await?)
}

/// One page by id, optionally of one status.
pub async fn list(conn: &impl ConnectionTrait, page: Page, status: Option<&str>) -> AppResult<Vec<UploadRecord>> {
    let mut values: Vec<Value> =
        vec![page.after.unwrap_or(0).into(), i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX).into()];
    let status_filter = match status {
        Some(status) => {
            values.push(status.into());
            "AND status = $3"
        }
        None => "",
    };
    let sql = format!("SELECT {COLUMNS} FROM uploads WHERE id > $1 {status_filter} ORDER BY id LIMIT $2");
    Ok(UploadRecord::find_by_statement(stmt(conn, &sql, values)).all(conn).await?)
}

pub async fn count(conn: &impl ConnectionTrait, status: Option<&str>) -> AppResult<i64> {
    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let statement = match status {
        Some(status) => stmt(conn, "SELECT COUNT(*) AS n FROM uploads WHERE status = $1", [status.into()]),
        None => stmt(conn, "SELECT COUNT(*) AS n FROM uploads", []),
    };
    Ok(Count::find_by_statement(statement).one(conn).await?.map_or(0, |row| row.n))
}

/// Marks the upload as being ingested (also after a failure, when its job is retried).
/// Returns the row, or `None` when it does not exist or already succeeded.
pub async fn start_ingesting(conn: &impl ConnectionTrait, id: i64) -> AppResult<Option<UploadRecord>> {
    let sql = format!(
        "UPDATE uploads SET status = '{INGESTING}', error = NULL, finished_at = NULL, updated_at = $1
         WHERE id = $2 AND status <> '{SUCCEEDED}' RETURNING {COLUMNS}"
    );
    Ok(UploadRecord::find_by_statement(stmt(conn, &sql, [now_ms().into(), id.into()])).one(conn).await?)
}

/// Advances the progress by one batch, if nobody else advanced it since `expected_done`
/// (a second runner of the same job stops here). The row after the update, or `None`
/// when the guard failed.
pub async fn advance(
    conn: &impl ConnectionTrait,
    id: i64,
    expected_done: i64,
    batch: &BatchProgress,
) -> AppResult<Option<UploadRecord>> {
    let rejections = batch.rejections.as_ref().map(|list| serde_json::to_string(list).unwrap_or_default());
    let sql = format!(
        "UPDATE uploads SET items_done = items_done + $1, items_rejected = items_rejected + $2,
            rejections = COALESCE($3, rejections), products_created = products_created + $4,
            products_updated = products_updated + $5, updated_at = $6
         WHERE id = $7 AND items_done = $8 AND status = '{INGESTING}' RETURNING {COLUMNS}"
    );
    let values: [Value; 8] = [
        batch.items.into(),
        batch.rejected.into(),
        rejections.into(),
        i64::try_from(batch.created).unwrap_or(i64::MAX).into(),
        i64::try_from(batch.updated).unwrap_or(i64::MAX).into(),
        now_ms().into(),
        id.into(),
        expected_done.into(),
    ];
    Ok(UploadRecord::find_by_statement(stmt(conn, &sql, values)).one(conn).await?)
}

/// Ends the upload: `succeeded`, or `failed` with its reason.
pub async fn finish(conn: &impl ConnectionTrait, id: i64, error: Option<&str>) -> AppResult<Option<UploadRecord>> {
    let status = if error.is_some() { FAILED } else { SUCCEEDED };
    let now = now_ms();
    let sql = format!(
        "UPDATE uploads SET status = $1, error = $2, finished_at = $3, updated_at = $3
         WHERE id = $4 AND status IN ('{QUEUED}', '{INGESTING}') RETURNING {COLUMNS}"
    );
    let values: [Value; 4] = [status.into(), error.map(str::to_string).into(), now.into(), id.into()];
    Ok(UploadRecord::find_by_statement(stmt(conn, &sql, values)).one(conn).await?)
}

/// Uploads left unfinished although their ingestion job is gone or failed for good (a
/// node died on the job's last attempt, or a finished job was purged): marked failed
/// with the job's last error, so no upload stays "ingesting" forever. Returns them.
pub async fn fail_orphans(conn: &impl ConnectionTrait, older_than_ms: i64) -> AppResult<Vec<UploadRecord>> {
    let now = now_ms();
    let sql = format!(
        "UPDATE uploads SET status = '{FAILED}', finished_at = $1, updated_at = $1,
            error = COALESCE((SELECT j.last_error FROM jobs j WHERE j.id = uploads.job_id), 'the ingestion job was lost')
         WHERE status IN ('{QUEUED}', '{INGESTING}') AND created_at < $2
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = uploads.job_id AND j.status IN ('queued', 'running'))
         RETURNING {COLUMNS}"
    );
    Ok(UploadRecord::find_by_statement(stmt(conn, &sql, [now.into(), (now - older_than_ms).into()])).all(conn).await?)
}

/// Whether an upload still needs the spool at `key` (used by the spool sweeper).
pub async fn spool_in_use(conn: &impl ConnectionTrait, key: &str) -> AppResult<bool> {
    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let row = Count::find_by_statement(stmt(
        conn,
        &format!("SELECT COUNT(*) AS n FROM uploads WHERE spool_key = $1 AND status <> '{SUCCEEDED}'"),
        [key.into()],
    ))
    .one(conn)
    .await?;
    Ok(row.is_some_and(|row| row.n > 0))
}
