//! Periodic jobs: tokio-cron-scheduler fires them on every node, and a lease row in the
//! database lets exactly one node run each period.
//!
//! A node may start a run when nobody holds the lease (or the holder's lease expired,
//! i.e. it died mid-run) and the last run started at least half a period ago. The
//! winner holds the lease while it runs, renewing it by heartbeat, so a run longer than
//! the period never overlaps itself; a dead holder blocks the job at most one lease.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::Utc;
use croner::{Cron, parser::CronParser};
use futures::{FutureExt as _, future::BoxFuture};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait as _, Condition, DerivePartialModel, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _,
    sea_query::{Expr, OnConflict},
};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::task::AbortOnDropHandle;

use sea_orm::DatabaseConnection;

use super::entity::{periodic_lease, periodic_run};
use crate::db::{duration_ms, now_ms};

use super::JobQueue;

type Task = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// A job that runs on a cron schedule (six fields, seconds first). Its task captures
/// what it needs (its domain's handle), so the runner knows nothing of the domains.
#[derive(Clone)]
pub struct Periodic {
    pub name: &'static str,
    pub cron: String,
    task: Task,
}

impl Periodic {
    pub fn new<F, Fut>(name: &'static str, cron: impl Into<String>, task: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self { name, cron: cron.into(), task: Arc::new(move || task().boxed()) }
    }
}

/// Parses a six-field cron expression the way the scheduler does and returns its period
/// (the gap between its next two firings).
pub fn cron_period(expression: &str) -> anyhow::Result<Duration> {
    let cron: Cron = CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
        .with_context(|| format!("`{expression}` is not a cron expression with seconds (example: `0 * * * * *`)"))?;
    let first = cron.find_next_occurrence(&Utc::now(), false)?;
    let second = cron.find_next_occurrence(&first, false)?;
    Ok((second - first).to_std()?)
}

/// Where periodic leases are kept and who this node is in them.
#[derive(Clone)]
pub struct Leases {
    pub db: DatabaseConnection,
    pub node: Arc<str>,
    /// `PERIODIC_LEASE`.
    pub lease: Duration,
}

/// Starts the scheduler with `jobs` on this node.
pub async fn start(state: Leases, jobs: Vec<Periodic>) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await.context("starting the scheduler")?;
    for job in jobs {
        let period = cron_period(&job.cron).with_context(|| format!("periodic job {}", job.name))?;
        let lease = periodic_lease::ActiveModel {
            name: Set(job.name.to_string()),
            holder: NotSet,
            expires_at: Set(0),
            last_started_at: Set(0),
        };
        periodic_lease::Entity::insert(lease)
            .on_conflict(OnConflict::column(periodic_lease::Column::Name).do_nothing().to_owned())
            .exec_without_returning(&state.db)
            .await?;
        let state = state.clone();
        let cron = job.cron.clone();
        let scheduled = Job::new_async(cron.as_str(), move |_, _| {
            let state = state.clone();
            let job = job.clone();
            Box::pin(async move { run_if_leader(state, job, period).await })
        })
        .with_context(|| format!("scheduling `{cron}`"))?;
        scheduler.add(scheduled).await?;
    }
    scheduler.start().await?;
    Ok(scheduler)
}

/// Runs `job` now if this node wins this period's lease.
pub async fn run_if_leader(state: Leases, job: Periodic, period: Duration) {
    let node = state.node.to_string();
    let lease = state.lease;
    match try_acquire(&state, job.name, &node, lease, period / 2).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::warn!(job = job.name, error = %error, "periodic lease check failed; skipping this period");
            return;
        }
    }
    let started = now_ms();
    let run_id = record_start(&state, job.name, &node, started).await;
    let heartbeat = {
        let state = state.clone();
        let node = node.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ticker = tokio::time::interval((lease / 3).max(Duration::from_millis(50)));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let renewed = periodic_lease::Entity::update_many()
                    .col_expr(periodic_lease::Column::ExpiresAt, Expr::value(now_ms() + duration_ms(lease)))
                    .filter(periodic_lease::Column::Name.eq(job.name))
                    .filter(periodic_lease::Column::Holder.eq(node.as_str()))
                    .exec(&state.db)
                    .await;
                if let Err(error) = renewed {
                    tracing::warn!(job = job.name, error = %error, "periodic lease renewal failed");
                }
            }
        }))
    };
    tracing::debug!(job = job.name, "periodic job started");
    let outcome = std::panic::AssertUnwindSafe((job.task)()).catch_unwind().await;
    drop(heartbeat);
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(format!("{error:#}")),
        Err(_) => Some("panicked".to_string()),
    };
    if let Some(error) = &error {
        tracing::warn!(job = job.name, error = %error, "periodic job failed");
    }
    metrics::counter!("emporium_periodic_runs_total", "job" => job.name, "outcome" => if error.is_none() { "ok" } else { "error" })
        .increment(1);
    metrics::histogram!("emporium_periodic_duration_seconds", "job" => job.name)
        .record((now_ms() - started) as f64 / 1000.0);
    if let Some(id) = run_id {
        let _ = periodic_run::Entity::update_many()
            .col_expr(periodic_run::Column::FinishedAt, Expr::value(now_ms()))
            .col_expr(periodic_run::Column::Error, Expr::value(error))
            .filter(periodic_run::Column::Id.eq(id))
            .exec(&state.db)
            .await;
    }
    let _ = periodic_lease::Entity::update_many()
        .col_expr(periodic_lease::Column::Holder, Expr::value(Option::<String>::None))
        .col_expr(periodic_lease::Column::ExpiresAt, Expr::value(0i64))
        .filter(periodic_lease::Column::Name.eq(job.name))
        .filter(periodic_lease::Column::Holder.eq(node.as_str()))
        .exec(&state.db)
        .await;
}

async fn try_acquire(
    state: &Leases,
    name: &str,
    node: &str,
    lease: Duration,
    min_gap: Duration,
) -> Result<bool, sea_orm::DbErr> {
    let now = now_ms();
    use periodic_lease::Column;
    let acquired = periodic_lease::Entity::update_many()
        .col_expr(Column::Holder, Expr::value(node))
        .col_expr(Column::ExpiresAt, Expr::value(now + duration_ms(lease)))
        .col_expr(Column::LastStartedAt, Expr::value(now))
        .filter(Column::Name.eq(name))
        .filter(Condition::any().add(Column::Holder.is_null()).add(Column::ExpiresAt.lt(now)))
        .filter(Column::LastStartedAt.lte(now - duration_ms(min_gap)))
        .exec(&state.db)
        .await?;
    Ok(acquired.rows_affected == 1)
}

async fn record_start(state: &Leases, name: &str, node: &str, started: i64) -> Option<i64> {
    let run = periodic_run::ActiveModel {
        name: Set(name.to_string()),
        node: Set(node.to_string()),
        started_at: Set(started),
        ..Default::default()
    };
    match periodic_run::Entity::insert(run).exec(&state.db).await {
        Ok(inserted) => Some(inserted.last_insert_id),
        Err(error) => {
            tracing::warn!(job = name, error = %error, "recording the periodic run failed");
            None
        }
    }
}

/// The latest runs of a periodic job, newest first (health, tests).
#[derive(Debug, Clone, DerivePartialModel, serde::Serialize)]
#[sea_orm(entity = "periodic_run::Entity")]
pub struct PeriodicRun {
    pub name: String,
    pub node: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

pub async fn recent_runs(
    db: &impl sea_orm::ConnectionTrait,
    name: &str,
    limit: i64,
) -> Result<Vec<PeriodicRun>, sea_orm::DbErr> {
    periodic_run::Entity::find()
        .filter(periodic_run::Column::Name.eq(name))
        .order_by_desc(periodic_run::Column::StartedAt)
        .limit(u64::try_from(limit).unwrap_or(0))
        .into_partial_model::<PeriodicRun>()
        .all(db)
        .await
}

/// Foundation housekeeping that every deployment runs.
pub fn housekeeping(jobs: &JobQueue) -> Vec<Periodic> {
    let cron = jobs.config().jobs_purge_cron.clone();
    let jobs = jobs.clone();
    vec![Periodic::new("jobs.purge", cron, move || {
        let jobs = jobs.clone();
        async move { purge(&jobs).await }
    })]
}

async fn purge(jobs: &JobQueue) -> anyhow::Result<()> {
    let purged = jobs.purge_finished().await?;
    let cutoff = now_ms() - duration_ms(jobs.config().job_retention);
    periodic_run::Entity::delete_many().filter(periodic_run::Column::StartedAt.lt(cutoff)).exec(jobs.db()).await?;
    tracing::info!(purged, "purged finished jobs");
    Ok(())
}
