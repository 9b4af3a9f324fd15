//! Processing: the durable job that writes a batch of one genre's messages to its bucket,
//! records their notices, and the sweep that dead-letters messages whose job was lost.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::path::{Path, PathPart};
use sea_orm::{ConnectionTrait as _, FromQueryResult, Value};
use serde::{Deserialize, Serialize};

use super::model::{IntakeStatus, Notice, PROCESSED_TOPIC};
use crate::{
    db::{in_list, now_ms, stmt},
    jobs::{JobContext, JobError},
    state::AppState,
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

#[derive(Debug, FromQueryResult)]
struct Pending {
    id: i64,
    job_id: i64,
    object_name: String,
    body: String,
}

/// Writes the job's messages that are still queued, then those of the jobs queued behind
/// it in its genre, in rounds (see [`queued_behind`]), in id order per object name; each
/// round's messages are marked stored in one statement and their notices published.
///
/// Recording a round (the database's share) runs while the next round's files are written,
/// so the writes, which take most of a round, follow one another without a pause.
///
/// Idempotent: after a crash the job runs again, rewrites the same content to the same
/// keys (an object write replaces the object atomically) and only the messages still
/// `queued` change state, so each message is stored and announced once.
pub async fn store_batch(state: AppState, ctx: JobContext, batch: StoreBatch) -> Result<(), JobError> {
    let mut round = Pending::find_by_statement(stmt(
        &state.db,
        "SELECT id, job_id, object_name, body FROM intake_messages WHERE job_id = $1 AND status = $2 ORDER BY id",
        [ctx.id.into(), IntakeStatus::Queued.as_str().into()],
    ))
    .all(&state.db)
    .await?;

    // Unknown genre: a dead letter, not a job failure; retrying cannot invent a bucket.
    let Some(bucket) = state.config.intake.bucket_for(&batch.genre).map(str::to_string) else {
        let failed = fail_queued(&state, ctx.id, &format!("no bucket for genre {}", batch.genre)).await?;
        metrics::counter!("emporium_intake_failed_total", "reason" => "no_bucket").increment(failed);
        return Ok(());
    };
    let concurrency = state.config.intake.intake_write_concurrency as usize;
    // Behind the job's own messages: those of the jobs after it, from the first.
    let mut cursor = Cursor { job_id: ctx.id, id: i64::MAX };
    round.extend(queued_behind(&state, &batch.genre, cursor).await?);

    let mut taken = 0;
    let mut unrecorded: Option<Written> = None;
    let error = loop {
        if round.is_empty() {
            break None;
        }
        taken += round.len();
        if ctx.attempt > 1 {
            // An earlier attempt may have been cut off in any of its rounds.
            clear_interrupted_writes(&state, &bucket, &round).await;
        }
        if let Some(last) = round.last().filter(|last| last.job_id != ctx.id) {
            cursor = Cursor { job_id: last.job_id, id: last.id };
        }
        let mut jobs_behind: Vec<i64> =
            round.iter().map(|message| message.job_id).filter(|&job| job != ctx.id).collect();
        jobs_behind.dedup();
        let previous = unrecorded.take();
        let ((ids, error), recorded) =
            tokio::join!(write_in_order(&state, &bucket, round, concurrency), record(&state, &bucket, previous));
        recorded?;
        unrecorded = Some(Written { ids, jobs_behind });
        if error.is_some() || taken >= MOST_PER_RUN {
            break error;
        }
        round = queued_behind(&state, &batch.genre, cursor).await?;
    };
    record(&state, &bucket, unrecorded).await?;

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

/// Most messages a job takes from the jobs queued behind it in one round.
const ROUND: i64 = 2_000;
/// Most messages one run of a job writes: a genre that never stops receiving is still
/// handed from job to job (and node to node) now and then.
const MOST_PER_RUN: usize = 20_000;

/// Where the previous round stopped: the last message taken from behind.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    job_id: i64,
    id: i64,
}

/// What a round wrote, for [`record`].
struct Written {
    ids: Vec<i64>,
    /// The jobs behind whose messages the round took.
    jobs_behind: Vec<i64>,
}

/// Marks a round's written messages stored, finishes the jobs behind it has drained and
/// publishes the notices.
async fn record(state: &AppState, bucket: &str, written: Option<Written>) -> Result<(), sea_orm::DbErr> {
    let Some(Written { ids, jobs_behind }) = written else { return Ok(()) };
    let notices = mark_stored(state, bucket, &ids).await?;
    finish_drained(state, jobs_behind).await?;
    metrics::counter!("emporium_intake_stored_total").increment(notices.len() as u64);
    for notice in &notices {
        state.events.publish(PROCESSED_TOPIC, notice).await;
    }
    Ok(())
}

/// The next [`ROUND`] of queued messages of the jobs waiting behind this one in its genre's
/// FIFO group, in their order (job, then message), after `cursor`. None of those jobs can
/// run while this one holds the group, so writing their messages now keeps the genre's
/// order and drains a backlog in large batches; when their turn comes they find fewer (or
/// no) messages still queued. Each message still belongs to its own job: only that job
/// fails it, and only with its own attempts. (A job's messages commit with the job, so a
/// job seen here has all of its messages.)
async fn queued_behind(state: &AppState, genre: &str, cursor: Cursor) -> Result<Vec<Pending>, sea_orm::DbErr> {
    Pending::find_by_statement(stmt(
        &state.db,
        "SELECT m.id, m.job_id, m.object_name, m.body FROM intake_messages m JOIN jobs j ON j.id = m.job_id
         WHERE j.ordering_key = $1 AND (j.id > $2 OR (j.id = $2 AND m.id > $3)) AND j.status = $4 AND m.status = $5
         ORDER BY j.id, m.id
         LIMIT $6",
        [
            ordering_key(genre).into(),
            cursor.job_id.into(),
            cursor.id.into(),
            crate::jobs::QUEUED.into(),
            IntakeStatus::Queued.as_str().into(),
            ROUND.into(),
        ],
    ))
    .all(&state.db)
    .await
}

/// Of the jobs behind this one whose messages it took, those with none left queued have
/// nothing to do: finish them now rather than let each be claimed, find nothing and finish.
/// (No message joins a job after its submission, and none of them can start while this job
/// holds the group.)
async fn finish_drained(state: &AppState, jobs: Vec<i64>) -> Result<(), sea_orm::DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    #[derive(FromQueryResult)]
    struct JobId {
        job_id: i64,
    }
    let (list, values) = in_list(vec![IntakeStatus::Queued.as_str().into()], &jobs);
    let sql = format!("SELECT DISTINCT job_id FROM intake_messages WHERE status = $1 AND job_id IN ({list})");
    let unfinished: HashSet<i64> = JobId::find_by_statement(stmt(&state.db, &sql, values))
        .all(&state.db)
        .await?
        .into_iter()
        .map(|row| row.job_id)
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
/// later submission wins; different names are written concurrently, in up to `concurrency`
/// groups of whole name sequences, each group one [`ObjectStorage::put_in_order`]. A failed
/// write stops its group (a later message must not land before an earlier one; the rest
/// stay queued for the retry), and the other groups go on. Returns the ids written and the
/// first error.
///
/// [`ObjectStorage::put_in_order`]: crate::storage::ObjectStorage::put_in_order
async fn write_in_order(
    state: &AppState,
    bucket: &str,
    pending: Vec<Pending>,
    concurrency: usize,
) -> (Vec<i64>, Option<anyhow::Error>) {
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut sequences: Vec<Vec<Pending>> = Vec::new();
    let total = pending.len();
    for message in pending {
        match position.get(&message.object_name) {
            Some(&at) => sequences[at].push(message),
            None => {
                position.insert(message.object_name.clone(), sequences.len());
                sequences.push(vec![message]);
            }
        }
    }
    // Groups of at least MIN_GROUP messages: fewer writers contend for the folder's lock.
    let group_size = total.div_ceil(concurrency.max(1)).max(MIN_GROUP);
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for sequence in sequences {
        match groups.last_mut() {
            Some(group) if group.len() < group_size => group.extend(sequence),
            _ => groups.push(sequence),
        }
    }
    let results: Vec<(Vec<i64>, Option<anyhow::Error>)> = futures::stream::iter(groups)
        .map(|group| async move {
            let mut ids = Vec::with_capacity(group.len());
            let mut objects = Vec::with_capacity(group.len());
            for message in group {
                match object_path(bucket, &message.object_name) {
                    Ok(path) => {
                        ids.push(message.id);
                        objects.push((path, Bytes::from(message.body)));
                    }
                    Err(error) => return (Vec::new(), Some(error)),
                }
            }
            let (written, error) = state.objects.put_in_order(objects).await;
            ids.truncate(written);
            (ids, error)
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

/// Fewest messages in one group of writes (see [`write_in_order`]).
const MIN_GROUP: usize = 32;

/// `queued` → `stored` for the written messages. Only rows that were still queued change
/// (and come back as notices), so a rerun never announces a message twice.
async fn mark_stored(state: &AppState, bucket: &str, ids: &[i64]) -> Result<Vec<Notice>, sea_orm::DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let bound: Vec<Value> = vec![
        IntakeStatus::Stored.as_str().into(),
        bucket.into(),
        now_ms().into(),
        IntakeStatus::Queued.as_str().into(),
    ];
    let (ids, values) = in_list(bound, ids);
    let sql = format!(
        "UPDATE intake_messages SET status = $1, bucket = $2, processed_at = $3
         WHERE status = $4 AND id IN ({ids})
         RETURNING id, message_id, title, genre, bucket, object_name, processed_at"
    );
    let mut notices = Notice::find_by_statement(stmt(&state.db, &sql, values)).all(&state.db).await?;
    notices.sort_by_key(|notice| notice.id);
    Ok(notices)
}

/// Dead-letters the job's messages that are still queued, with `reason`.
async fn fail_queued(state: &AppState, job_id: i64, reason: &str) -> Result<u64, sea_orm::DbErr> {
    let result = state
        .db
        .execute_raw(stmt(
            &state.db,
            "UPDATE intake_messages SET status = $1, reason = $2, processed_at = $3 WHERE job_id = $4 AND status = $5",
            [
                IntakeStatus::Failed.as_str().into(),
                reason.into(),
                now_ms().into(),
                job_id.into(),
                IntakeStatus::Queued.as_str().into(),
            ],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// A node killed in the middle of a write to a local folder leaves object_store's staging
/// file (`<name>#1`, `#2`, … beside the object), which no listing shows and nothing
/// reuses. A rerun removes those of its own messages, so the bucket holds only objects.
/// Our names never contain `#` (it is encoded), so nothing else can match.
async fn clear_interrupted_writes(state: &AppState, bucket: &str, pending: &[Pending]) {
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
pub async fn reconcile(state: &AppState) -> anyhow::Result<()> {
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
