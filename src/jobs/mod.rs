//! The durable job queue: one table, used by every domain for work that must survive a
//! crash (offer registration, upload ingestion, intake).
//!
//! Guarantees: at-least-once delivery; retries with exponential backoff and jitter up to
//! `max_attempts`, after which the job stays `failed` with its last error; a lease
//! (`locked_until`, extended by a heartbeat while the handler runs) so a job held by a
//! dead node is claimed again by another; jobs sharing an `ordering_key` run one at a
//! time in id order (FIFO groups). Claims use `FOR UPDATE SKIP LOCKED` on Postgres;
//! SQLite serializes writers, which gives the same exclusivity. Kinds share a node's
//! workers fairly: a free worker goes to the due kind with the fewest jobs running there,
//! so a backlog of one kind delays another by at most one running job per worker.
//!
//! Handlers must be idempotent: a job whose node died mid-run runs again.

pub mod entity;
pub mod graphql;
pub mod periodic;
mod worker;

use entity::job::{self, Column};

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rand::Rng as _;
use sea_orm::{
    ColumnTrait as _, Condition, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait as _,
    FromQueryResult as _, QueryFilter as _, QuerySelect as _, Value,
    sea_query::{Asterisk, Expr, Func, Query},
};
use serde::Serialize;
use tokio::sync::Notify;

pub use worker::{JobContext, JobError, JobRegistry, Workers};

use crate::{
    db::{duration_ms, execute, now_ms, stmt},
    settings::parse_duration,
};

/// The job queue's section of the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsConfig {
    /// Durable jobs run concurrently on this node (0 = this node runs no jobs).
    #[arg(long, env = "JOB_WORKERS", default_value_t = 4)]
    pub job_workers: usize,
    /// How long a claimed job stays ours without a heartbeat before another node may take it.
    #[arg(long, env = "JOB_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub job_lease: Duration,
    /// How often an idle node looks for due jobs.
    #[arg(long, env = "JOB_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub job_poll_interval: Duration,
    /// Attempts before a job is marked failed for good.
    #[arg(long, env = "JOB_MAX_ATTEMPTS", default_value_t = 10)]
    pub job_max_attempts: i32,
    /// First retry delay; doubles each attempt (with jitter) up to JOB_BACKOFF_MAX.
    #[arg(long, env = "JOB_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub job_backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "JOB_BACKOFF_MAX", default_value = "10m", value_parser = parse_duration)]
    pub job_backoff_max: Duration,
    /// Finished jobs are deleted after this long.
    #[arg(long, env = "JOB_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub job_retention: Duration,
    /// Lease of a running periodic job: a node that dies mid-run blocks the job at most this long.
    #[arg(long, env = "PERIODIC_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub periodic_lease: Duration,
    /// When finished jobs are purged (six-field cron, seconds first).
    #[arg(long, env = "JOBS_PURGE_CRON", default_value = "0 17 * * * *")]
    pub jobs_purge_cron: String,
    /// On shutdown, how long running jobs may finish before they are released to other nodes.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

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
pub type JobRecord = job::Model;

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

    /// The database the queue lives in.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
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
            let mut insert = Query::insert();
            insert.into_table(job::Entity).columns([
                Column::Kind,
                Column::Payload,
                Column::Status,
                Column::OrderingKey,
                Column::Attempts,
                Column::MaxAttempts,
                Column::RunAt,
                Column::CreatedAt,
                Column::UpdatedAt,
            ]);
            for job in chunk {
                insert
                    .values([
                        job.kind.into(),
                        job.payload.to_string().into(),
                        QUEUED.into(),
                        job.ordering_key.clone().into(),
                        0i32.into(),
                        job.max_attempts.unwrap_or(self.config.job_max_attempts).into(),
                        now.into(),
                        now.into(),
                        now.into(),
                    ])
                    .map_err(|error| sea_orm::DbErr::Custom(error.to_string()))?;
            }
            insert.returning(Query::returning().column(Column::Id));
            for row in conn.query_all(&insert).await? {
                ids.push(row.try_get::<i64>("", "id")?);
            }
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
        let now = now_ms();
        let finished = job::Entity::update_many()
            .col_expr(Column::Status, Expr::value(SUCCEEDED))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Status.eq(QUEUED))
            .filter(Column::Attempts.eq(0))
            .filter(Column::Id.is_in(ids.iter().copied()))
            .exec(conn)
            .await?;
        Ok(finished.rows_affected)
    }

    pub async fn get(&self, id: i64) -> Result<Option<JobRecord>, sea_orm::DbErr> {
        job::Entity::find_by_id(id).one(&self.db).await
    }

    /// Jobs by id, in no particular order; unknown ids are absent.
    pub async fn by_ids(&self, ids: &[i64]) -> Result<Vec<JobRecord>, sea_orm::DbErr> {
        job::Entity::find().filter(Column::Id.is_in(ids.iter().copied())).all(&self.db).await
    }

    /// Job counts by status (for metrics and health).
    pub async fn counts(&self) -> Result<BTreeMap<String, i64>, sea_orm::DbErr> {
        let rows = job::Entity::find()
            .select_only()
            .column(Column::Status)
            .expr(Func::count(Expr::col(Asterisk)))
            .group_by(Column::Status)
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await?;
        let mut counts: BTreeMap<String, i64> =
            [QUEUED, RUNNING, SUCCEEDED, FAILED].into_iter().map(|s| (s.to_string(), 0)).collect();
        counts.extend(rows);
        Ok(counts)
    }

    /// Waiting jobs of one kind and the age of the oldest, in milliseconds.
    pub async fn backlog(&self, kind: &str) -> Result<(i64, Option<i64>), sea_orm::DbErr> {
        let row = job::Entity::find()
            .select_only()
            .expr(Func::count(Expr::col(Asterisk)))
            .expr(Func::min(Expr::col(Column::CreatedAt)))
            .filter(Column::Kind.eq(kind))
            .filter(Column::Status.is_in([QUEUED, RUNNING]))
            .into_tuple::<(i64, Option<i64>)>()
            .one(&self.db)
            .await?;
        Ok(row.map_or((0, None), |(n, oldest)| (n, oldest.map(|oldest| now_ms() - oldest))))
    }

    /// Claims up to `limit` due jobs for `node`, sharing them fairly among `kinds`, each
    /// given with the number of its jobs this node runs now.
    ///
    /// Fair share: slot by slot, a free worker goes to the kind with the fewest jobs
    /// running here (counting those picked in this claim), ties to the older job. So a
    /// backlog of one kind cannot hold back another: the other kind's next job takes the
    /// first worker that frees, and with K kinds due each gets at least ⌊W/K⌋ of the
    /// node's W workers while older jobs of a kind alone still use every worker.
    async fn claim(
        &self,
        node: &str,
        kinds: &[(&'static str, usize)],
        limit: usize,
    ) -> Result<Vec<JobRecord>, sea_orm::DbErr> {
        if kinds.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut values: Vec<Value> = vec![
            node.into(),
            (now + duration_ms(self.config.job_lease)).into(),
            now.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ];
        let lock = if self.db.get_database_backend() == DbBackend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        // A job is due when queued and its time has come, or when its holder's lease ran
        // out (the holder died) and it has attempts left. A job in a FIFO group waits
        // until every older job of its group has finished (succeeded or failed); that test
        // is one probe of the partial index `jobs_unfinished_by_group`, whose conditions it
        // must keep implying (the same status list; the key equality implies NOT NULL).
        // Each kind's branch takes its own oldest `limit` due jobs (and locks them on
        // Postgres); the outer query ranks them by turn = jobs of the kind running here +
        // rank within the kind, which is the slot-by-slot fair share above.
        let branches: Vec<String> = kinds
            .iter()
            .map(|(kind, running)| {
                values.push((*kind).into());
                let kind = values.len();
                values.push(i64::try_from(*running).unwrap_or(i64::MAX).into());
                let running = values.len();
                format!(
                    "SELECT id, kind, CAST(${running} AS BIGINT) AS running FROM (
                        SELECT j.id, j.kind FROM jobs j
                        WHERE ((j.status = '{QUEUED}' AND j.run_at <= $3)
                               OR (j.status = '{RUNNING}' AND j.locked_until < $3 AND j.attempts < j.max_attempts))
                          AND j.kind = ${kind}
                          AND (j.ordering_key IS NULL OR NOT EXISTS (
                                SELECT 1 FROM jobs p
                                WHERE p.ordering_key = j.ordering_key AND p.id < j.id
                                  AND p.status IN ('{QUEUED}', '{RUNNING}')))
                        ORDER BY j.id
                        LIMIT $4
                        {lock}
                    ) due_{kind}"
                )
            })
            .collect();
        // Raw SQL: the claim needs `FOR UPDATE SKIP LOCKED` (Postgres) in a CTE feeding an
        // `UPDATE … RETURNING`, the FIFO test shaped for the partial index, and a window
        // over per-kind limited branches (one statement, so it is atomic on both backends).
        let sql = format!(
            "WITH due AS (
                {}
            ),
            picked AS (
                SELECT id FROM (
                    SELECT id, running + ROW_NUMBER() OVER (PARTITION BY kind ORDER BY id) AS turn FROM due
                ) ranked
                ORDER BY turn, id
                LIMIT $4
            )
            UPDATE jobs SET status = '{RUNNING}', attempts = attempts + 1, locked_by = $1, locked_until = $2, updated_at = $3
            WHERE id IN (SELECT id FROM picked)
            RETURNING *",
            branches.join("\n                UNION ALL\n                ")
        );
        let mut jobs = JobRecord::find_by_statement(stmt(&self.db, &sql, values)).all(&self.db).await?;
        jobs.sort_by_key(|job| job.id);
        Ok(jobs)
    }

    /// Jobs whose holder died on their last attempt can never be claimed again: mark
    /// them failed so they are visible instead of stuck.
    async fn fail_abandoned(&self) -> Result<u64, sea_orm::DbErr> {
        let now = now_ms();
        // Raw SQL: appends to `last_error` in place (string concatenation in the update).
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
        let touched = job::Entity::update_many()
            .col_expr(Column::LockedUntil, Expr::value(now + duration_ms(self.config.job_lease)))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(held_by(id, node))
            .exec(&self.db)
            .await?;
        Ok(touched.rows_affected == 1)
    }

    async fn succeed(&self, id: i64, node: &str) -> Result<bool, sea_orm::DbErr> {
        let now = now_ms();
        let touched = job::Entity::update_many()
            .col_expr(Column::Status, Expr::value(SUCCEEDED))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .col_expr(Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
            .filter(held_by(id, node))
            .exec(&self.db)
            .await?;
        Ok(touched.rows_affected == 1)
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
        let touched = job::Entity::update_many()
            .col_expr(Column::Status, Expr::value(status))
            .col_expr(Column::RunAt, Expr::value(run_at))
            .col_expr(Column::FinishedAt, Expr::value(finished_at))
            .col_expr(Column::LastError, Expr::value(truncate(error, 4000)))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .col_expr(Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
            .filter(held_by(job.id, node))
            .exec(&self.db)
            .await?;
        Ok(touched.rows_affected == 1)
    }

    /// Hands jobs this node still holds back to the queue without counting the attempt
    /// (graceful shutdown).
    async fn release_held(&self, node: &str) -> Result<u64, sea_orm::DbErr> {
        let now = now_ms();
        // Raw SQL: gives back the attempt with a CASE on the stored count.
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
        let purged = job::Entity::delete_many()
            .filter(Column::Status.is_in([SUCCEEDED, FAILED]))
            .filter(Column::FinishedAt.lt(cutoff))
            .exec(&self.db)
            .await?;
        Ok(purged.rows_affected)
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

/// The job `id`, while `node` holds it running.
fn held_by(id: i64, node: &str) -> Condition {
    Condition::all().add(Column::Id.eq(id)).add(Column::LockedBy.eq(node)).add(Column::Status.eq(RUNNING))
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}
