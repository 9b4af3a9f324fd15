//! Processing: the durable job that writes a batch of one genre's messages to its bucket
//! and records their notices (the output queue), and the sweep that dead-letters messages
//! whose job was lost.

use std::collections::{HashMap, HashSet};

use futures::StreamExt as _;
use object_store::path::{Path, PathPart};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait as _, DbBackend, DerivePartialModel, EntityTrait as _, FromQueryResult, JoinType,
    QueryFilter as _, QueryOrder as _, QuerySelect as _, TransactionTrait as _,
    sea_query::{Expr, ExprTrait as _, Query},
};
use serde::{Deserialize, Serialize};

use super::{
    Intake,
    entity::{
        intake_message::{self, Column},
        intake_notice::{self, Column as NoticeColumn},
    },
    model::{IntakeStatus, NOTICES_TOPIC, NoticesStored},
};
use crate::{
    db::{now_ms, stmt},
    jobs::entity::job,
    jobs::{JobContext, JobError},
};

/// The job kind that writes one batch.
pub const STORE_KIND: &str = "intake.store";

/// The payload of a store job. Its messages are the rows pointing at the job's id, so the
/// payload stays small whatever the batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreBatch {
    /// The normalized genre (also the job's FIFO group).
    pub genre: String,
}

#[derive(Debug, DerivePartialModel)]
#[sea_orm(entity = "intake_message::Entity")]
struct Pending {
    id: i64,
    job_id: i64,
    object_name: String,
    body: String,
}

/// Writes the job's messages that are still queued, in id order per object name, then
/// marks them stored and records their notices in one transaction, and wakes the
/// subscribers.
///
/// Idempotent: after a crash the job runs again, rewrites the same content to the same
/// keys (an object write replaces the object atomically) and only the messages still
/// `queued` change state, so each message is stored and gets its notice once.
pub async fn store_batch(state: Intake, ctx: JobContext, batch: StoreBatch) -> Result<(), JobError> {
    let mut pending = intake_message::Entity::find()
        .filter(Column::JobId.eq(ctx.id))
        .filter(Column::Status.eq(IntakeStatus::Queued.as_str()))
        .order_by_asc(Column::Id)
        .into_partial_model::<Pending>()
        .all(&state.db)
        .await?;

    // Unknown genre: a dead letter, not a job failure; retrying cannot invent a bucket.
    let Some(bucket) = state.config.bucket_for(&batch.genre).map(str::to_string) else {
        let failed = fail_queued(&state, ctx.id, &format!("no bucket for genre {}", batch.genre)).await?;
        metrics::counter!("emporium_intake_failed_total", "reason" => "no_bucket").increment(failed);
        return Ok(());
    };
    pending.extend(queued_behind(&state, &ctx, &batch.genre).await?);
    if pending.is_empty() {
        return Ok(());
    }
    let mut jobs_behind: Vec<i64> = pending.iter().map(|message| message.job_id).filter(|&job| job != ctx.id).collect();
    jobs_behind.dedup();

    if ctx.attempt > 1 {
        clear_interrupted_writes(&state, &bucket, &pending).await;
    }
    let concurrency = state.config.intake_write_concurrency as usize;
    let (written, error) = write_in_order(&state, &bucket, pending, concurrency).await;
    let up_to = mark_stored(&state, &bucket, &written).await?;
    if let Some(up_to) = up_to {
        state.events.publish(NOTICES_TOPIC, &NoticesStored { up_to }).await;
    }
    finish_drained(&state, jobs_behind).await?;

    match error {
        None => Ok(()),
        Some(error) if ctx.attempt >= ctx.max_attempts => {
            let reason = format!("storage error after {} attempts: {error:#}", ctx.attempt);
            let failed = fail_queued(&state, ctx.id, &reason).await?;
            metrics::counter!("emporium_intake_failed_total", "reason" => "storage").increment(failed);
            Err(JobError::Permanent(reason))
        }
        Some(error) => Err(JobError::Retry(error.context(format!("writing to bucket {bucket}")))),
    }
}

/// Most messages a job takes from the jobs queued behind it in its group.
const TAKEN_FROM_BEHIND: u64 = 2_000;

/// The queued messages of the jobs waiting behind this one in its genre's FIFO group, in
/// their order (job, then message), up to [`TAKEN_FROM_BEHIND`]. None of those jobs can run
/// while this one holds the group, so writing their messages now keeps the genre's order and
/// drains a backlog in large batches; when their turn comes they find fewer (or no)
/// messages still queued. Each message still belongs to its own job: only that job fails
/// it, and only with its own attempts.
async fn queued_behind(state: &Intake, ctx: &JobContext, genre: &str) -> Result<Vec<Pending>, sea_orm::DbErr> {
    let of_job = intake_message::Entity::belongs_to(job::Entity).from(Column::JobId).to(job::Column::Id).into();
    intake_message::Entity::find()
        .join(JoinType::InnerJoin, of_job)
        .filter(job::Column::OrderingKey.eq(ordering_key(genre)))
        .filter(job::Column::Id.gt(ctx.id))
        .filter(job::Column::Status.eq(crate::jobs::QUEUED))
        .filter(Column::Status.eq(IntakeStatus::Queued.as_str()))
        .order_by_asc(job::Column::Id)
        .order_by_asc(Column::Id)
        .limit(TAKEN_FROM_BEHIND)
        .into_partial_model::<Pending>()
        .all(&state.db)
        .await
}

/// Of the jobs behind this one whose messages it took, those with none left queued have
/// nothing to do: finish them now rather than let each be claimed, find nothing and finish.
/// (No message joins a job after its submission, and none of them can start while this job
/// holds the group.)
async fn finish_drained(state: &Intake, jobs: Vec<i64>) -> Result<(), sea_orm::DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    let unfinished: HashSet<i64> = intake_message::Entity::find()
        .select_only()
        .column(Column::JobId)
        .distinct()
        .filter(Column::Status.eq(IntakeStatus::Queued.as_str()))
        .filter(Column::JobId.is_in(jobs.iter().copied()))
        .into_tuple::<i64>()
        .all(&state.db)
        .await?
        .into_iter()
        .collect();
    let drained: Vec<i64> = jobs.into_iter().filter(|job| !unfinished.contains(job)).collect();
    state.jobs.finish_unstarted(&state.db, &drained).await?;
    Ok(())
}

/// The FIFO group of a genre's store jobs.
pub fn ordering_key(genre: &str) -> String {
    format!("intake:{genre}")
}

/// Where a message's object lives: `<bucket>/<object name>` under the store's root. Both
/// parts are taken as they are (the name is already encoded and contains no `/`).
pub fn object_path(bucket: &str, object_name: &str) -> anyhow::Result<Path> {
    Ok(Path::from_iter([PathPart::parse(bucket)?, PathPart::parse(object_name)?]))
}

/// Messages sharing an object name are written one after another in id order, so the
/// later submission wins; different names are written concurrently. A failed write stops
/// its name's sequence (a later message must not land before an earlier one), and the
/// others go on. Returns the ids written and the first error.
async fn write_in_order(
    state: &Intake,
    bucket: &str,
    pending: Vec<Pending>,
    concurrency: usize,
) -> (Vec<i64>, Option<anyhow::Error>) {
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut sequences: Vec<Vec<Pending>> = Vec::new();
    for message in pending {
        match position.get(&message.object_name) {
            Some(&at) => sequences[at].push(message),
            None => {
                position.insert(message.object_name.clone(), sequences.len());
                sequences.push(vec![message]);
            }
        }
    }
    let results: Vec<(Vec<i64>, Option<anyhow::Error>)> = futures::stream::iter(sequences)
        .map(|sequence| {
            let objects = &state.objects;
            async move {
                let mut written = Vec::with_capacity(sequence.len());
                for message in sequence {
                    let put = match object_path(bucket, &message.object_name) {
                        Ok(path) => objects.put(&path, message.body.into()).await,
                        Err(error) => Err(error),
                    };
                    match put {
                        Ok(_) => written.push(message.id),
                        Err(error) => return (written, Some(error)),
                    }
                }
                (written, None)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut written = Vec::new();
    let mut first_error = None;
    for (ids, error) in results {
        written.extend(ids);
        if first_error.is_none() {
            first_error = error;
        }
    }
    written.sort_unstable();
    (written, first_error)
}

/// Any number; store transactions on Postgres take it (transaction-scoped) before they
/// insert notices (see [`mark_stored`]).
pub const NOTICE_ORDER_LOCK_KEY: i64 = 0x696e_7461_6b65_5f6e; // "intake_n"

/// Notices per insert statement (7 values each), well inside both backends' parameter limits.
const NOTICES_PER_INSERT: usize = 500;

/// `queued` → `stored` for the written messages, and one notice for each message this
/// transaction moved, in one transaction: a stored message always has its notice, and a
/// rerun (which finds the message stored already) never writes a second one; the unique
/// key on the message would refuse it anyway. Returns the highest notice sequence, if any.
///
/// **Commit order is sequence order.** A reader of the queue asks for `sequence > cursor`,
/// so a notice must never become visible after one with a higher sequence: on Postgres a
/// `BIGSERIAL` value is taken at insert and seen at commit, and two writers could commit
/// out of order, letting a reader pass over the lower one for good. So the notices are
/// the transaction's last statement, after `pg_advisory_xact_lock` on one key: writers
/// take sequence numbers and commit one after another, and the lock is released only once
/// the commit is visible. It is held for one insert and the commit, not for the object
/// writes or the update. SQLite has one writer at a time, which gives the same order.
async fn mark_stored(state: &Intake, bucket: &str, ids: &[i64]) -> Result<Option<i64>, sea_orm::DbErr> {
    if ids.is_empty() {
        return Ok(None);
    }
    // Writes first: on SQLite this takes the write lock at once (see db.rs).
    let txn = state.db.begin().await?;
    let mut update = Query::update();
    update
        .table(intake_message::Entity)
        .values([
            (Column::Status, IntakeStatus::Stored.as_str().into()),
            (Column::Bucket, bucket.into()),
            (Column::ProcessedAt, now_ms().into()),
        ])
        .and_where(Expr::col(Column::Status).eq(IntakeStatus::Queued.as_str()))
        .and_where(Expr::col(Column::Id).is_in(ids.iter().copied()))
        // Only the notice's columns come back (not the bodies).
        .returning(Query::returning().columns([
            Column::Id,
            Column::MessageId,
            Column::Title,
            Column::Genre,
            Column::Bucket,
            Column::ObjectName,
            Column::ProcessedAt,
        ]));
    let mut moved = txn
        .query_all(&update)
        .await?
        .iter()
        .map(|row| Moved::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>()?;
    if moved.is_empty() {
        txn.commit().await?;
        return Ok(None);
    }
    // Notices in message order, so one batch's sequence follows its messages.
    moved.sort_by_key(|message| message.id);

    if txn.get_database_backend() == DbBackend::Postgres {
        // Raw SQL: a one-line function call; held until this transaction ends (see above).
        txn.execute_raw(stmt(&txn, "SELECT pg_advisory_xact_lock($1)", [NOTICE_ORDER_LOCK_KEY.into()])).await?;
    }
    let mut up_to = 0;
    for chunk in moved.chunks(NOTICES_PER_INSERT) {
        let mut insert = Query::insert();
        insert.into_table(intake_notice::Entity).columns([
            NoticeColumn::IntakeMessageId,
            NoticeColumn::MessageId,
            NoticeColumn::Title,
            NoticeColumn::Genre,
            NoticeColumn::Bucket,
            NoticeColumn::ObjectName,
            NoticeColumn::StoredAt,
        ]);
        for message in chunk {
            insert
                .values([
                    message.id.into(),
                    message.message_id.clone().into(),
                    message.title.clone().into(),
                    message.genre.clone().into(),
                    message.bucket.clone().into(),
                    message.object_name.clone().into(),
                    message.processed_at.into(),
                ])
                .map_err(|error| sea_orm::DbErr::Custom(error.to_string()))?;
        }
        insert.returning(Query::returning().column(NoticeColumn::Sequence));
        for row in txn.query_all(&insert).await? {
            let sequence = row.try_get::<i64>("", "sequence")?;
            up_to = Ord::max(up_to, sequence);
        }
    }
    txn.commit().await?;
    metrics::counter!("emporium_intake_stored_total").increment(moved.len() as u64);
    Ok(Some(up_to))
}

/// A message this transaction moved to `stored`: what its notice says.
#[derive(Debug, FromQueryResult)]
struct Moved {
    id: i64,
    message_id: Option<String>,
    title: String,
    genre: String,
    bucket: String,
    object_name: String,
    processed_at: i64,
}

/// Dead-letters the job's messages that are still queued, with `reason`.
async fn fail_queued(state: &Intake, job_id: i64, reason: &str) -> Result<u64, sea_orm::DbErr> {
    let result = intake_message::Entity::update_many()
        .col_expr(Column::Status, Expr::value(IntakeStatus::Failed.as_str()))
        .col_expr(Column::Reason, Expr::value(reason))
        .col_expr(Column::ProcessedAt, Expr::value(now_ms()))
        .filter(Column::JobId.eq(job_id))
        .filter(Column::Status.eq(IntakeStatus::Queued.as_str()))
        .exec(&state.db)
        .await?;
    Ok(result.rows_affected)
}

/// A node killed in the middle of a write to a local folder leaves object_store's staging
/// file (`<name>#1`, `#2`, … beside the object), which no listing shows and nothing
/// reuses. A rerun removes those of its own messages, so the bucket holds only objects.
/// Our names never contain `#` (it is encoded), so nothing else can match.
async fn clear_interrupted_writes(state: &Intake, bucket: &str, pending: &[Pending]) {
    let Some(root) = state.objects.local_root() else { return };
    let folder = root.join(bucket);
    for message in pending {
        for attempt in 1.. {
            let staging = folder.join(format!("{}#{attempt}", message.object_name));
            if tokio::fs::remove_file(&staging).await.is_err() {
                break;
            }
            tracing::info!(path = %staging.display(), "removed the staging file of an interrupted write");
        }
    }
}

/// Dead-letters queued messages whose job can no longer write them: it failed (for
/// example its node died on the last attempt) or was purged. Runs periodically.
pub async fn reconcile(state: &Intake) -> anyhow::Result<()> {
    // Raw SQL: one conditional update with correlated subqueries on `jobs` (the job's last
    // error, and whether it is still alive); `$N` placeholders serve both backends.
    let result = state
        .db
        .execute_raw(stmt(
            &state.db,
            "UPDATE intake_messages SET status = $1, processed_at = $2,
                reason = COALESCE(
                    (SELECT 'processing failed: ' || j.last_error FROM jobs j
                     WHERE j.id = intake_messages.job_id AND j.last_error IS NOT NULL),
                    'processing stopped before this message was written')
             WHERE status = $3 AND NOT EXISTS (
                SELECT 1 FROM jobs j WHERE j.id = intake_messages.job_id AND j.status IN ($4, $5))",
            [
                IntakeStatus::Failed.as_str().into(),
                now_ms().into(),
                IntakeStatus::Queued.as_str().into(),
                crate::jobs::QUEUED.into(),
                crate::jobs::RUNNING.into(),
            ],
        ))
        .await?;
    if result.rows_affected() > 0 {
        tracing::warn!(messages = result.rows_affected(), "intake messages whose job was lost are now failed");
        metrics::counter!("emporium_intake_failed_total", "reason" => "job_lost").increment(result.rows_affected());
    }
    Ok(())
}
