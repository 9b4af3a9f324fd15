//! The durable job queue: one table, used by every domain for work that must survive a
//! crash (offer registration, upload ingestion, intake).
//!
//! Guarantees: at-least-once delivery; retries with exponential backoff and jitter up to
//! `max_attempts`, after which the job stays `failed` with its last error; a lease
//! (`locked_until`, extended by a heartbeat while the handler runs) so a job held by a
//! dead node is claimed again by another; jobs sharing an `ordering_key` run one at a
//! time in id order (FIFO groups). Claims use `FOR UPDATE SKIP LOCKED` on Postgres;
//! SQLite serializes writers, which gives the same exclusivity.
//!
//! Handlers must be idempotent: a job whose node died mid-run runs again.

pub mod entity;
pub mod periodic;
mod worker;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rand::Rng as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, FromQueryResult, Value};
use serde::Serialize;
use tokio::sync::Notify;

pub use worker::{JobContext, JobError, JobRegistry, Workers};

use crate::{
    config::JobsConfig,
    db::{bind_row, duration_ms, execute, in_list, now_ms, stmt},
};

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub payload: serde_json::Value,
    /// Jobs with the same key run one at a time, oldest first.
    pub ordering_key: Option<String>,
    /// Overrides `JOB_MAX_ATTEMPTS`.
    pub max_attempts: Option<i32>,
}

impl NewJob {
    pub fn new(kind: &'static str, payload: &impl Serialize) -> Self {
        Self {
            kind,
            payload: serde_json::to_value(payload).unwrap_or(serde_json::Value::Null),
            ordering_key: None,
            max_attempts: None,
        }
    }

    pub fn ordered_by(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
}

/// A job as stored.
#[derive(Debug, Clone, FromQueryResult, Serialize)]
pub struct JobRecord {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub status: String,
    pub ordering_key: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: i64,
    pub locked_by: Option<String>,
    pub locked_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Clone)]
pub struct JobQueue {
    db: DatabaseConnection,
    config: Arc<JobsConfig>,
    /// Wakes this node's workers when a job is enqueued here, so local work starts at
    /// once instead of at the next poll.
    wake: Arc<Notify>,
}

impl JobQueue {
    pub fn new(db: DatabaseConnection, config: JobsConfig) -> Self {
        Self { db, config: Arc::new(config), wake: Arc::new(Notify::new()) }
    }

    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Enqueues on `conn`, which may be the caller's transaction: the job then exists
    /// exactly when the caller's write commits.
    pub async fn enqueue(&self, conn: &impl ConnectionTrait, job: NewJob) -> Result<i64, sea_orm::DbErr> {
        let ids = self.enqueue_many(conn, vec![job]).await?;
        ids.into_iter().next().ok_or_else(|| sea_orm::DbErr::Custom("insert returned no id".into()))
    }

    /// Enqueues many jobs in one statement per 500 (bulk intake and uploads).
    pub async fn enqueue_many(
        &self,
        conn: &impl ConnectionTrait,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<i64>, sea_orm::DbErr> {
        let now = now_ms();
        let mut ids = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO jobs (kind, payload, status, ordering_key, attempts, max_attempts, run_at, created_at, updated_at) VALUES ",
            );
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 5 + 1);
            values.push(now.into());
            for (i, job) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                let [kind, payload, ordering_key, max_attempts] = bind_row(
                    &mut values,
                    [
                        job.kind.into(),
                        job.payload.to_string().into(),
                        job.ordering_key.clone().into(),
                        job.max_attempts.unwrap_or(self.config.job_max_attempts).into(),
                    ],
                );
                sql.push_str(&format!(
                    "({kind}, {payload}, '{QUEUED}', {ordering_key}, 0, {max_attempts}, $1, $1, $1)"
                ));
            }
            sql.push_str(" RETURNING id");
            #[derive(FromQueryResult)]
            struct Id {
                id: i64,
            }
            let rows = Id::find_by_statement(stmt(conn, &sql, values)).all(conn).await?;
            ids.extend(rows.into_iter().map(|row| row.id));
        }
        self.wake.notify_waiters();
        Ok(ids)
    }

    /// Marks jobs that are queued and never started as succeeded: another job did their
    /// work (an intake job drains the messages of the jobs behind it in its group). Jobs
    /// that started meanwhile are left alone. Returns how many were finished.
    pub async fn finish_unstarted(&self, conn: &impl ConnectionTrait, ids: &[i64]) -> Result<u64, sea_orm::DbErr> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (ids, values) = in_list(vec![now_ms().into()], ids);
        let sql = format!(
            "UPDATE jobs SET status = '{SUCCEEDED}', finished_at = $1, updated_at = $1
             WHERE status = '{QUEUED}' AND attempts = 0 AND id IN ({ids})"
        );
        execute(conn, &sql, values).await
    }

    pub async fn get(&self, id: i64) -> Result<Option<JobRecord>, sea_orm::DbErr> {
        JobRecord::find_by_statement(stmt(&self.db, "SELECT * FROM jobs WHERE id = $1", [id.into()]))
            .one(&self.db)
            .await
    }

    /// Job counts by status (for metrics and health).
    pub async fn counts(&self) -> Result<BTreeMap<String, i64>, sea_orm::DbErr> {
        #[derive(FromQueryResult)]
        struct Row {
            status: String,
            n: i64,
        }
        let rows = Row::find_by_statement(stmt(&self.db, "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status", []))
            .all(&self.db)
            .await?;
        let mut counts: BTreeMap<String, i64> =
            [QUEUED, RUNNING, SUCCEEDED, FAILED].into_iter().map(|s| (s.to_string(), 0)).collect();
        counts.extend(rows.into_iter().map(|row| (row.status, row.n)));
        Ok(counts)
    }

    /// Waiting jobs of one kind and the age of the oldest, in milliseconds.
    pub async fn backlog(&self, kind: &str) -> Result<(i64, Option<i64>), sea_orm::DbErr> {
        #[derive(FromQueryResult)]
        struct Row {
            n: i64,
            oldest: Option<i64>,
        }
        let row = Row::find_by_statement(stmt(
            &self.db,
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs WHERE kind = $1 AND status IN ('queued', 'running')",
            [kind.into()],
        ))
        .one(&self.db)
        .await?;
        Ok(row.map_or((0, None), |row| (row.n, row.oldest.map(|oldest| now_ms() - oldest))))
    }

    /// Claims up to `limit` due jobs of the given kinds for `node`.
    async fn claim(&self, node: &str, kinds: &[&'static str], limit: usize) -> Result<Vec<JobRecord>, sea_orm::DbErr> {
        if kinds.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let bound: Vec<Value> = vec![
            node.into(),
            (now + duration_ms(self.config.job_lease)).into(),
            now.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ];
        let (kinds, values) = in_list(bound, kinds);
        let lock = if self.db.get_database_backend() == DbBackend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        // A job is due when queued and its time has come, or when its holder's lease ran
        // out (the holder died) and it has attempts left. A job in a FIFO group waits
        // until every older job of its group has finished (succeeded or failed); that test
        // is one probe of the partial index `jobs_unfinished_by_group`, whose conditions it
        // must keep implying (the same status list; the key equality implies NOT NULL).
        let sql = format!(
            "WITH picked AS (
                SELECT j.id FROM jobs j
                WHERE ((j.status = '{QUEUED}' AND j.run_at <= $3)
                       OR (j.status = '{RUNNING}' AND j.locked_until < $3 AND j.attempts < j.max_attempts))
                  AND j.kind IN ({kinds})
                  AND (j.ordering_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM jobs p
                        WHERE p.ordering_key = j.ordering_key AND p.id < j.id
                          AND p.status IN ('{QUEUED}', '{RUNNING}')))
                ORDER BY j.id
                LIMIT $4
                {lock}
            )
            UPDATE jobs SET status = '{RUNNING}', attempts = attempts + 1, locked_by = $1, locked_until = $2, updated_at = $3
            WHERE id IN (SELECT id FROM picked)
            RETURNING *"
        );
        let mut jobs = JobRecord::find_by_statement(stmt(&self.db, &sql, values)).all(&self.db).await?;
        jobs.sort_by_key(|job| job.id);
        Ok(jobs)
    }

    /// Jobs whose holder died on their last attempt can never be claimed again: mark
    /// them failed so they are visible instead of stuck.
    async fn fail_abandoned(&self) -> Result<u64, sea_orm::DbErr> {
        let now = now_ms();
        let touched = execute(&self.db, &format!(
                    "UPDATE jobs SET status = '{FAILED}', finished_at = $1, updated_at = $1, locked_by = NULL,
                        last_error = COALESCE(last_error || '; ', '') || 'worker lost (lease expired) on the last attempt'
                     WHERE status = '{RUNNING}' AND locked_until < $1 AND attempts >= max_attempts"
                ), [now.into()]).await?;
        Ok(touched)
    }

    /// Extends the lease of a job we still hold. False when it is no longer ours.
    async fn heartbeat(&self, id: i64, node: &str) -> Result<bool, sea_orm::DbErr> {
        let now = now_ms();
        let touched = execute(&self.db, &format!("UPDATE jobs SET locked_until = $1, updated_at = $2 WHERE id = $3 AND locked_by = $4 AND status = '{RUNNING}'"), [(now + duration_ms(self.config.job_lease)).into(), now.into(), id.into(), node.into()]).await?;
        Ok(touched == 1)
    }

    async fn succeed(&self, id: i64, node: &str) -> Result<bool, sea_orm::DbErr> {
        let now = now_ms();
        let touched = execute(&self.db, &format!(
                    "UPDATE jobs SET status = '{SUCCEEDED}', finished_at = $1, updated_at = $1, locked_by = NULL, locked_until = NULL
                     WHERE id = $2 AND locked_by = $3 AND status = '{RUNNING}'"
                ), [now.into(), id.into(), node.into()]).await?;
        Ok(touched == 1)
    }

    /// Records a failed attempt: retry later with backoff, or fail for good.
    async fn fail(&self, job: &JobRecord, node: &str, error: &str, permanent: bool) -> Result<bool, sea_orm::DbErr> {
        let now = now_ms();
        let final_attempt = permanent || job.attempts >= job.max_attempts;
        let (status, run_at, finished_at) = if final_attempt {
            (FAILED, job.run_at, Some(now))
        } else {
            (QUEUED, now + duration_ms(self.backoff(job.attempts)), None)
        };
        let touched = execute(
            &self.db,
            &format!(
                "UPDATE jobs SET status = $1, run_at = $2, finished_at = $3, last_error = $4, updated_at = $5,
                        locked_by = NULL, locked_until = NULL
                     WHERE id = $6 AND locked_by = $7 AND status = '{RUNNING}'"
            ),
            [
                status.into(),
                run_at.into(),
                finished_at.into(),
                truncate(error, 4000).into(),
                now.into(),
                job.id.into(),
                node.into(),
            ],
        )
        .await?;
        Ok(touched == 1)
    }

    /// Hands jobs this node still holds back to the queue without counting the attempt
    /// (graceful shutdown).
    async fn release_held(&self, node: &str) -> Result<u64, sea_orm::DbErr> {
        let now = now_ms();
        let touched = execute(&self.db, &format!(
                    "UPDATE jobs SET status = '{QUEUED}', run_at = $1, updated_at = $1, locked_by = NULL, locked_until = NULL,
                        attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END
                     WHERE locked_by = $2 AND status = '{RUNNING}'"
                ), [now.into(), node.into()]).await?;
        Ok(touched)
    }

    /// Deletes finished jobs older than the retention period.
    pub async fn purge_finished(&self) -> Result<u64, sea_orm::DbErr> {
        let cutoff = now_ms() - duration_ms(self.config.job_retention);
        let touched = execute(
            &self.db,
            &format!("DELETE FROM jobs WHERE status IN ('{SUCCEEDED}', '{FAILED}') AND finished_at < $1"),
            [cutoff.into()],
        )
        .await?;
        Ok(touched)
    }

    /// Exponential backoff with ±25% jitter, so retries of many jobs spread out.
    fn backoff(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(30);
        let base = self.config.job_backoff_base.saturating_mul(2u32.saturating_pow(exponent));
        let capped = base.min(self.config.job_backoff_max);
        capped.mul_f64(rand::rng().random_range(0.75..1.25))
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}
