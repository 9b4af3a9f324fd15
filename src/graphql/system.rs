//! Operator-facing fields of the foundation: durable jobs and their outcome.

use async_graphql::{Context, ID, Object, SimpleObject};
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, sea_query::Expr};

use super::state;
use crate::{
    db::now_ms,
    error::{AppError, AppResult},
    global_id,
    jobs::{self, entity::job, graphql::Job},
};

/// How many jobs are in each state, cluster-wide.
#[derive(Debug, Clone, SimpleObject)]
pub struct JobCounts {
    /// Jobs waiting to run (new or retrying).
    pub queued: i64,
    /// Jobs a node is running now.
    pub running: i64,
    /// Jobs done.
    pub succeeded: i64,
    /// Jobs given up (see `retryJob`).
    pub failed: i64,
}

#[derive(Default)]
pub struct SystemQuery;

#[Object]
impl SystemQuery {
    /// A durable job by id; null when there is none (a malformed id is BAD_USER_INPUT).
    async fn job(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The job's id (e.g. `IntakeMessage.jobId`).")] id: ID,
    ) -> async_graphql::Result<Option<Job>> {
        let id = global_id::parse::<Job>(&id)?;
        Ok(state(ctx).shared.jobs.get(id).await.map_err(AppError::from)?.map(Job::from))
    }

    /// Jobs by state across the cluster.
    async fn job_counts(&self, ctx: &Context<'_>) -> async_graphql::Result<JobCounts> {
        let counts = state(ctx).shared.jobs.counts().await.map_err(AppError::from)?;
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
    /// Puts a failed job back in the queue with a fresh set of attempts. An unknown id is
    /// NOT_FOUND; a job that is not `FAILED` is CONFLICT.
    async fn retry_job(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The failed job to run again.")] id: ID,
    ) -> async_graphql::Result<Job> {
        Ok(retry_job(ctx, global_id::parse::<Job>(&id)?).await?)
    }
}

async fn retry_job(ctx: &Context<'_>, id: i64) -> AppResult<Job> {
    let state = state(ctx);
    let now = now_ms();
    let retried = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(jobs::QUEUED))
        .col_expr(job::Column::Attempts, Expr::value(0i32))
        .col_expr(job::Column::RunAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .col_expr(job::Column::FinishedAt, Expr::value(Option::<i64>::None))
        .filter(job::Column::Id.eq(id))
        .filter(job::Column::Status.eq(jobs::FAILED))
        .exec(&state.shared.db)
        .await?
        .rows_affected;
    let job = state.shared.jobs.get(id).await?.ok_or_else(|| AppError::not_found(format!("no job {id}")))?;
    if retried == 0 {
        return Err(AppError::conflict(format!("job {id} is {}, only failed jobs can be retried", job.status)));
    }
    Ok(job.into())
}
