//! Operator-facing fields of the foundation: durable jobs and their outcome.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::{pagination::parse_id, state};
use crate::{
    db::{execute, now_ms, to_datetime},
    error::{AppError, AppResult},
    jobs::{self, JobRecord},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// A unit of durable background work (offer registration, upload ingestion, intake).
#[derive(Debug, Clone, SimpleObject)]
pub struct Job {
    pub id: ID,
    pub kind: String,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// When the job is (or was) due to run next.
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<JobRecord> for Job {
    fn from(job: JobRecord) -> Self {
        let status = match job.status.as_str() {
            jobs::RUNNING => JobStatus::Running,
            jobs::SUCCEEDED => JobStatus::Succeeded,
            jobs::FAILED => JobStatus::Failed,
            _ => JobStatus::Queued,
        };
        Self {
            id: ID(job.id.to_string()),
            kind: job.kind,
            status,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            last_error: job.last_error,
            run_at: to_datetime(job.run_at),
            created_at: to_datetime(job.created_at),
            finished_at: job.finished_at.map(to_datetime),
        }
    }
}

/// How many jobs are in each state, cluster-wide.
#[derive(Debug, Clone, SimpleObject)]
pub struct JobCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
}

#[derive(Default)]
pub struct SystemQuery;

#[Object]
impl SystemQuery {
    /// A durable job by id.
    async fn job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Job>> {
        let id = parse_id(&id, "job")?;
        Ok(state(ctx).jobs.get(id).await.map_err(AppError::from)?.map(Job::from))
    }

    /// Jobs by state across the cluster.
    async fn job_counts(&self, ctx: &Context<'_>) -> async_graphql::Result<JobCounts> {
        let counts = state(ctx).jobs.counts().await.map_err(AppError::from)?;
        let get = |status: &str| counts.get(status).copied().unwrap_or(0);
        Ok(JobCounts {
            queued: get(jobs::QUEUED),
            running: get(jobs::RUNNING),
            succeeded: get(jobs::SUCCEEDED),
            failed: get(jobs::FAILED),
        })
    }
}

#[derive(Default)]
pub struct SystemMutation;

#[Object]
impl SystemMutation {
    /// Puts a failed job back in the queue with a fresh set of attempts.
    async fn retry_job(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Job> {
        Ok(retry_job(ctx, parse_id(&id, "job")?).await?)
    }
}

async fn retry_job(ctx: &Context<'_>, id: i64) -> AppResult<Job> {
    let state = state(ctx);
    let now = now_ms();
    let retried = execute(
        &state.db,
        &format!(
            "UPDATE jobs SET status = '{}', attempts = 0, run_at = $1, updated_at = $1, finished_at = NULL
                 WHERE id = $2 AND status = '{}'",
            jobs::QUEUED,
            jobs::FAILED
        ),
        [now.into(), id.into()],
    )
    .await?;
    let job = state.jobs.get(id).await?.ok_or_else(|| AppError::not_found(format!("no job {id}")))?;
    if retried == 0 {
        return Err(AppError::conflict(format!("job {id} is {}, only failed jobs can be retried", job.status)));
    }
    Ok(job.into())
}
