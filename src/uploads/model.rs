//! The `uploads` table: one row per accepted body and its ingestion progress.

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, FromQueryResult as _, QueryFilter as _, QuerySelect as _,
    Select,
    sea_query::{Asterisk, CaseStatement, Expr, ExprTrait as _, Func, Query},
};
use serde::{Deserialize, Serialize};

use super::entity::{
    upload::{self, Column},
    upload_body,
};
use crate::{
    db::{now_ms, stmt},
    error::AppResult,
    paging::{KeyKind, OrderDirection, Ordering, Page},
};

pub const QUEUED: &str = "queued";
pub const INGESTING: &str = "ingesting";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

/// An upload as stored (also the payload of progress events).
pub type UploadRecord = upload::Model;

impl UploadRecord {
    pub fn is_finished(&self) -> bool {
        self.status == SUCCEEDED || self.status == FAILED
    }
}

/// The columns of [`UploadRecord`], for the raw statement's `RETURNING`.
const COLUMNS: &str = "id, status, digest, bytes, items_total, items_done, items_rejected, rejections, \
                       products_created, products_updated, spool_key, job_id, error, created_at, updated_at, \
                       finished_at, error_policy";

/// Item errors kept per upload (`itemsFailed` counts every failed item).
pub const ITEM_ERRORS_KEPT: usize = 20;

/// What an upload does with items that have errors (Saleor's bulk mutations' policies).
/// Stored with the upload, so any node ingests it the same way.
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[graphql(name = "UploadErrorPolicy")]
pub enum ErrorPolicy {
    /// Nothing is ingested if any item has an error: `POST /v1/products` answers 400 at
    /// the first item with an error it finds while the body streams in.
    RejectEverything,
    /// Items with an error are skipped, the others ingested (the default).
    #[default]
    RejectFailedRows,
    /// What is valid of an item is kept: an invalid optional field (`description`, or
    /// another field than `id` and `name`) is dropped and the item ingested without it;
    /// an item whose `id` or `name` is invalid is still skipped.
    IgnoreFailed,
}

impl ErrorPolicy {
    pub const ALL: [ErrorPolicy; 3] = [Self::RejectEverything, Self::RejectFailedRows, Self::IgnoreFailed];

    /// The name clients use (`?errorPolicy=`, the `Emporium-Error-Policy` header, GraphQL).
    pub fn name(self) -> &'static str {
        match self {
            Self::RejectEverything => "REJECT_EVERYTHING",
            Self::RejectFailedRows => "REJECT_FAILED_ROWS",
            Self::IgnoreFailed => "IGNORE_FAILED",
        }
    }

    /// Parses a client's value (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|policy| policy.name().eq_ignore_ascii_case(value.trim()))
    }

    pub fn as_stored(self) -> &'static str {
        match self {
            Self::RejectEverything => "reject_everything",
            Self::RejectFailedRows => "reject_failed_rows",
            Self::IgnoreFailed => "ignore_failed",
        }
    }

    /// Unknown values (none are written) read as the default.
    pub fn from_stored(stored: &str) -> Self {
        Self::ALL.into_iter().find(|policy| policy.as_stored() == stored).unwrap_or_default()
    }
}

impl Serialize for ErrorPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One error of one item: which item, which of its fields, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemError {
    /// Position in the body's array, from 0.
    pub index: u64,
    /// The item's `id` as uploaded ("" when it has none).
    pub sku: String,
    /// The item's field as named in the body (`id`, `name`, `description`, another key);
    /// `attributes` for its other fields taken together. Errors stored before fields were
    /// recorded have "".
    #[serde(default)]
    pub field: String,
    pub reason: String,
    /// The item was ingested without this field (`IGNORE_FAILED`); false: it was skipped.
    #[serde(default)]
    pub kept: bool,
}

impl UploadRecord {
    pub fn item_errors(&self) -> Vec<ItemError> {
        self.rejections.as_deref().and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default()
    }

    pub fn error_policy(&self) -> ErrorPolicy {
        ErrorPolicy::from_stored(&self.error_policy)
    }
}

/// What one committed batch adds to an upload's progress.
#[derive(Debug, Default)]
pub struct BatchProgress {
    pub items: i64,
    /// Items of the batch with an error.
    pub failed: i64,
    pub created: u64,
    pub updated: u64,
    /// The kept item errors after this batch, when the batch added some.
    pub item_errors: Option<Vec<ItemError>>,
}

/// The spool key of an upload whose body is kept in the database (`upload_bodies`).
pub const INLINE: &str = "";

/// An upload to insert: a body received in full, spooled or kept inline.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub digest: String,
    pub bytes: u64,
    pub items: u64,
    pub policy: ErrorPolicy,
    pub body: StoredBody,
}

/// Where an accepted body lives until it is ingested.
#[derive(Debug, Clone)]
pub enum StoredBody {
    /// In `upload_bodies`, committed with the upload (up to `UPLOAD_INLINE_MAX_BYTES`).
    Inline(bytes::Bytes),
    /// In object storage under this key, written and synced before the upload commits.
    Spooled(String),
}

impl StoredBody {
    pub fn spool_key(&self) -> &str {
        match self {
            Self::Inline(_) => INLINE,
            Self::Spooled(key) => key,
        }
    }
}

/// Inserts queued uploads, all accepted at `accepted_at` (the dedup window's clock, from
/// which their windows run), in one statement; their ids in the order given.
pub async fn insert_many(conn: &impl ConnectionTrait, uploads: &[&NewUpload], accepted_at: i64) -> AppResult<Vec<i64>> {
    if uploads.is_empty() {
        return Ok(Vec::new());
    }
    let mut insert = Query::insert();
    insert.into_table(upload::Entity).columns([
        Column::ErrorPolicy,
        Column::Status,
        Column::Digest,
        Column::Bytes,
        Column::ItemsTotal,
        Column::ItemsDone,
        Column::SpoolKey,
        Column::CreatedAt,
        Column::UpdatedAt,
    ]);
    for new in uploads {
        insert
            .values([
                new.policy.as_stored().into(),
                QUEUED.into(),
                new.digest.clone().into(),
                i64::try_from(new.bytes).unwrap_or(i64::MAX).into(),
                i64::try_from(new.items).unwrap_or(i64::MAX).into(),
                0i64.into(),
                new.body.spool_key().into(),
                accepted_at.into(),
                accepted_at.into(),
            ])
            .map_err(|error| sea_orm::DbErr::Custom(error.to_string()))?;
    }
    insert.returning(Query::returning().column(Column::Id));
    let mut ids = Vec::with_capacity(uploads.len());
    for row in conn.query_all(&insert).await? {
        ids.push(row.try_get::<i64>("", "id")?);
    }
    Ok(ids)
}

/// The latest upload of each of `digests` accepted at or after `since` (ms), other than
/// `except`: the window's record in the database, `digest → (id, accepted_at)`. Probes
/// of `uploads_digest_created_at`.
pub async fn accepted_since(
    conn: &impl ConnectionTrait,
    digests: &[&str],
    since: i64,
    except: &[i64],
) -> AppResult<HashMap<String, (i64, i64)>> {
    let rows = upload::Entity::find()
        .select_only()
        .column(Column::Digest)
        .column(Column::Id)
        .column(Column::CreatedAt)
        .filter(Column::Digest.is_in(digests.iter().copied()))
        .filter(Column::CreatedAt.gte(since))
        .filter(Column::Id.is_not_in(except.iter().copied()))
        .into_tuple::<(String, i64, i64)>()
        .all(conn)
        .await?;
    let mut latest: HashMap<String, (i64, i64)> = HashMap::new();
    for (digest, id, at) in rows {
        let entry = latest.entry(digest).or_insert((id, at));
        if at > entry.1 {
            *entry = (id, at);
        }
    }
    Ok(latest)
}

/// On Postgres, serializes the acceptance of each of `digests` until the transaction
/// ends, so the check of [`accepted_since`] and the insert are atomic across nodes. The
/// locks are taken in one order (by key) so two batches never wait for each other in a
/// circle. SQLite needs none: its one writer already serializes transactions that write
/// first.
pub async fn lock_digests(conn: &impl ConnectionTrait, digests: &[&str]) -> AppResult<()> {
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres && !digests.is_empty() {
        // Raw SQL: advisory locks have no sea-query form. The first key namespaces the
        // lock ("up" for uploads) away from the migration lock.
        let sql = "SELECT pg_advisory_xact_lock(30064, key)
                   FROM (SELECT DISTINCT hashtext(digest) AS key FROM unnest($1::text[]) AS digest ORDER BY key) AS keys";
        let list: Vec<sea_orm::Value> = digests.iter().map(|digest| (*digest).into()).collect();
        let array = sea_orm::Value::Array(sea_orm::sea_query::ArrayType::String, Some(Box::new(list)));
        conn.execute_raw(stmt(conn, sql, [array])).await?;
    }
    Ok(())
}

/// Deletes uploads (refused in the transaction that inserted them).
pub async fn delete_many(conn: &impl ConnectionTrait, ids: &[i64]) -> AppResult<()> {
    if !ids.is_empty() {
        upload::Entity::delete_many().filter(Column::Id.is_in(ids.iter().copied())).exec(conn).await?;
    }
    Ok(())
}

/// Records each upload's ingestion job, `(upload, job)`, in one statement.
pub async fn set_jobs(conn: &impl ConnectionTrait, jobs: &[(i64, i64)]) -> AppResult<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut case = CaseStatement::new();
    for (upload_id, job_id) in jobs {
        case = case.case(Expr::col(Column::Id).eq(*upload_id), Expr::val(*job_id));
    }
    upload::Entity::update_many()
        .col_expr(Column::JobId, case.finally(Expr::col(Column::JobId)).into())
        .filter(Column::Id.is_in(jobs.iter().map(|(upload_id, _)| *upload_id)))
        .exec(conn)
        .await?;
    Ok(())
}

/// Stores the bodies kept inline, `(upload, body)`, in one statement.
pub async fn insert_bodies(conn: &impl ConnectionTrait, bodies: &[(i64, &[u8])]) -> AppResult<()> {
    if bodies.is_empty() {
        return Ok(());
    }
    let rows = bodies
        .iter()
        .map(|(upload_id, body)| upload_body::ActiveModel { upload_id: Set(*upload_id), body: Set(body.to_vec()) });
    upload_body::Entity::insert_many(rows).exec_without_returning(conn).await?;
    Ok(())
}

/// The inline bodies of `ids`; uploads without one (spooled, or already ingested) are absent.
pub async fn bodies(conn: &impl ConnectionTrait, ids: &[i64]) -> AppResult<HashMap<i64, Vec<u8>>> {
    let rows =
        upload_body::Entity::find().filter(upload_body::Column::UploadId.is_in(ids.iter().copied())).all(conn).await?;
    Ok(rows.into_iter().map(|row| (row.upload_id, row.body)).collect())
}

/// Deletes the inline bodies of ingested uploads.
pub async fn delete_bodies(conn: &impl ConnectionTrait, ids: &[i64]) -> AppResult<()> {
    if !ids.is_empty() {
        upload_body::Entity::delete_many()
            .filter(upload_body::Column::UploadId.is_in(ids.iter().copied()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// In the caller's transaction: marks upload `id` as being ingested if it is queued with
/// an inline body (the first of a group). On Postgres this waits while another group
/// holds it, and then finds it ingested.
pub async fn claim_inline(conn: &impl ConnectionTrait, id: i64) -> AppResult<Option<UploadRecord>> {
    let updated = upload::Entity::update_many()
        .col_expr(Column::Status, Expr::value(INGESTING))
        .col_expr(Column::UpdatedAt, Expr::value(now_ms()))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.eq(QUEUED))
        .filter(Column::SpoolKey.eq(INLINE))
        .exec_with_returning(conn)
        .await?;
    Ok(updated.into_iter().next())
}

/// In the caller's transaction: marks as being ingested the oldest queued uploads with an
/// inline body, other than `except`, whose ingestion job has not started, up to `limit`
/// of them and `budget` body bytes. Their job rows are held too, so no worker can start
/// one of them before the caller finishes it: an upload is ingested by its group or by its
/// own job, never both. On Postgres, uploads and jobs that another transaction holds are
/// skipped, not waited for (SQLite's one writer serializes the rest).
pub async fn claim_inline_group(
    conn: &impl ConnectionTrait,
    except: i64,
    limit: u64,
    budget: u64,
) -> AppResult<Vec<UploadRecord>> {
    let lock =
        if conn.get_database_backend() == sea_orm::DbBackend::Postgres { "FOR UPDATE OF u, j SKIP LOCKED" } else { "" };
    // Raw SQL: `FOR UPDATE SKIP LOCKED` under a running sum (the byte budget), feeding an
    // `UPDATE … RETURNING`, in one statement on both backends.
    let sql = format!(
        "UPDATE uploads SET status = '{INGESTING}', updated_at = $1
         WHERE id IN (
            SELECT id FROM (
                SELECT id, SUM(bytes) OVER (ORDER BY id) AS running FROM (
                    SELECT u.id, u.bytes FROM uploads u JOIN jobs j ON j.id = u.job_id
                    WHERE u.status = '{QUEUED}' AND u.spool_key = '{INLINE}' AND u.id <> $2
                      AND j.status = 'queued' AND j.attempts = 0
                    ORDER BY u.id LIMIT $3 {lock}
                ) AS candidates
            ) AS ranked
            WHERE running <= $4)
         RETURNING {COLUMNS}"
    );
    let values = [
        now_ms().into(),
        except.into(),
        i64::try_from(limit).unwrap_or(i64::MAX).into(),
        i64::try_from(budget).unwrap_or(i64::MAX).into(),
    ];
    let mut claimed = UploadRecord::find_by_statement(stmt(conn, &sql, values)).all(conn).await?;
    claimed.sort_by_key(|upload| upload.id);
    Ok(claimed)
}

/// Puts uploads a group claimed but left out back in the queue (their own jobs, or a
/// later group, ingest them).
pub async fn requeue(conn: &impl ConnectionTrait, ids: &[i64]) -> AppResult<()> {
    if !ids.is_empty() {
        upload::Entity::update_many()
            .col_expr(Column::Status, Expr::value(QUEUED))
            .filter(Column::Id.is_in(ids.iter().copied()))
            .filter(Column::Status.eq(INGESTING))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// Ends an upload ingested whole in one go (a member of a group): `succeeded`, every item
/// done, with what its items did.
pub async fn ingested(conn: &impl ConnectionTrait, id: i64, whole: &BatchProgress) -> AppResult<Option<UploadRecord>> {
    let now = now_ms();
    let mut update = upload::Entity::update_many()
        .col_expr(Column::Status, Expr::value(SUCCEEDED))
        .col_expr(Column::ItemsDone, Expr::value(whole.items))
        .col_expr(Column::ItemsRejected, Expr::value(whole.failed))
        .col_expr(Column::ProductsCreated, Expr::value(i64::try_from(whole.created).unwrap_or(i64::MAX)))
        .col_expr(Column::ProductsUpdated, Expr::value(i64::try_from(whole.updated).unwrap_or(i64::MAX)))
        .col_expr(Column::Error, Expr::value(Option::<String>::None))
        .col_expr(Column::FinishedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now));
    if let Some(item_errors) = &whole.item_errors {
        update =
            update.col_expr(Column::Rejections, Expr::value(serde_json::to_string(item_errors).unwrap_or_default()));
    }
    let updated =
        update.filter(Column::Id.eq(id)).filter(Column::Status.eq(INGESTING)).exec_with_returning(conn).await?;
    Ok(updated.into_iter().next())
}

pub async fn get(conn: &impl ConnectionTrait, id: i64) -> AppResult<Option<UploadRecord>> {
    Ok(upload::Entity::find_by_id(id).one(conn).await?)
}

/// Uploads by id, in no particular order; unknown ids are absent.
pub async fn by_ids(conn: &impl ConnectionTrait, ids: &[i64]) -> AppResult<Vec<UploadRecord>> {
    Ok(upload::Entity::find().filter(Column::Id.is_in(ids.iter().copied())).all(conn).await?)
}

fn of_status(status: Option<&str>) -> Select<upload::Entity> {
    match status {
        Some(status) => upload::Entity::find().filter(Column::Status.eq(status)),
        None => upload::Entity::find(),
    }
}

/// What uploads can be ordered by (`UploadOrder.field`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UploadOrderField {
    /// By creation, in the order the uploads were accepted (by id).
    #[default]
    CreatedAt,
}

impl UploadOrderField {
    pub fn ordering(self, direction: OrderDirection) -> Ordering {
        match self {
            Self::CreatedAt => Ordering::new("CREATED_AT", direction, KeyKind::Id),
        }
    }
}

/// One page in the page's ordering (every one is by id), optionally of one status.
pub async fn list(conn: &impl ConnectionTrait, page: &Page, status: Option<&str>) -> AppResult<Vec<UploadRecord>> {
    page.fetch(of_status(status), None, Column::Id, |select| select.all(conn)).await
}

pub async fn count(conn: &impl ConnectionTrait, status: Option<&str>) -> AppResult<i64> {
    let count = of_status(status).select_only().expr(Func::count(Expr::col(Asterisk))).into_tuple::<i64>();
    Ok(count.one(conn).await?.unwrap_or(0))
}

/// Marks the upload as being ingested (also after a failure, when its job is retried).
/// Returns the row, or `None` when it does not exist or already succeeded.
pub async fn start_ingesting(conn: &impl ConnectionTrait, id: i64) -> AppResult<Option<UploadRecord>> {
    let updated = upload::Entity::update_many()
        .col_expr(Column::Status, Expr::value(INGESTING))
        .col_expr(Column::Error, Expr::value(Option::<String>::None))
        .col_expr(Column::FinishedAt, Expr::value(Option::<i64>::None))
        .col_expr(Column::UpdatedAt, Expr::value(now_ms()))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.ne(SUCCEEDED))
        .exec_with_returning(conn)
        .await?;
    Ok(updated.into_iter().next())
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
    let item_errors = batch.item_errors.as_ref().map(|list| serde_json::to_string(list).unwrap_or_default());
    let counter = |column: Column, by: i64| Expr::col(column).add(by);
    let mut update = upload::Entity::update_many()
        .col_expr(Column::ItemsDone, counter(Column::ItemsDone, batch.items))
        .col_expr(Column::ItemsRejected, counter(Column::ItemsRejected, batch.failed))
        .col_expr(
            Column::ProductsCreated,
            counter(Column::ProductsCreated, i64::try_from(batch.created).unwrap_or(i64::MAX)),
        )
        .col_expr(
            Column::ProductsUpdated,
            counter(Column::ProductsUpdated, i64::try_from(batch.updated).unwrap_or(i64::MAX)),
        )
        .col_expr(Column::UpdatedAt, Expr::value(now_ms()));
    if let Some(item_errors) = item_errors {
        update = update.col_expr(Column::Rejections, Expr::value(item_errors));
    }
    let updated = update
        .filter(Column::Id.eq(id))
        .filter(Column::ItemsDone.eq(expected_done))
        .filter(Column::Status.eq(INGESTING))
        .exec_with_returning(conn)
        .await?;
    Ok(updated.into_iter().next())
}

/// Ends the upload: `succeeded`, or `failed` with its reason.
pub async fn finish(conn: &impl ConnectionTrait, id: i64, error: Option<&str>) -> AppResult<Option<UploadRecord>> {
    let status = if error.is_some() { FAILED } else { SUCCEEDED };
    let now = now_ms();
    let updated = upload::Entity::update_many()
        .col_expr(Column::Status, Expr::value(status))
        .col_expr(Column::Error, Expr::value(error.map(str::to_string)))
        .col_expr(Column::FinishedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.is_in([QUEUED, INGESTING]))
        .exec_with_returning(conn)
        .await?;
    Ok(updated.into_iter().next())
}

/// Ends an upload that `REJECT_EVERYTHING` refuses after its check found `failed` items
/// with errors (the first of them in `item_errors`): `failed`, nothing ingested, every
/// item examined.
pub async fn reject_everything(
    conn: &impl ConnectionTrait,
    id: i64,
    failed: i64,
    item_errors: &[ItemError],
    reason: &str,
) -> AppResult<Option<UploadRecord>> {
    let now = now_ms();
    let updated = upload::Entity::update_many()
        .col_expr(Column::Status, Expr::value(FAILED))
        .col_expr(Column::Error, Expr::value(reason))
        .col_expr(Column::ItemsDone, Expr::col(Column::ItemsTotal))
        .col_expr(Column::ItemsRejected, Expr::value(failed))
        .col_expr(Column::Rejections, Expr::value(serde_json::to_string(item_errors).unwrap_or_default()))
        .col_expr(Column::FinishedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::ItemsDone.eq(0))
        .filter(Column::Status.eq(INGESTING))
        .exec_with_returning(conn)
        .await?;
    Ok(updated.into_iter().next())
}

/// Uploads left unfinished although their ingestion job is gone or failed for good (a
/// node died on the job's last attempt, or a finished job was purged): marked failed
/// with the job's last error, so no upload stays "ingesting" forever. Returns them.
pub async fn fail_orphans(conn: &impl ConnectionTrait, older_than_ms: i64) -> AppResult<Vec<UploadRecord>> {
    let now = now_ms();
    // Raw SQL: one conditional update with correlated subqueries on `jobs` (the job's
    // error, and whether it is still alive); `$N` placeholders serve both backends.
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
    let in_use = upload::Entity::find()
        .select_only()
        .expr(Func::count(Expr::col(Asterisk)))
        .filter(Column::SpoolKey.eq(key))
        .filter(Column::Status.ne(SUCCEEDED))
        .into_tuple::<i64>()
        .one(conn)
        .await?;
    Ok(in_use.is_some_and(|n| n > 0))
}
