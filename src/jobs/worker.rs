//! Runs claimed jobs: a registry of handlers by kind, a pool of workers per node, the
//! heartbeat that keeps a running job's lease, and graceful release on shutdown.

use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt as _, future::BoxFuture};
use serde::de::DeserializeOwned;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

use tracing::Instrument as _;

use super::{JobQueue, JobRecord};

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: i64,
    pub attempt: i32,
    pub max_attempts: i32,
}

/// How an attempt failed.
#[derive(Debug)]
pub enum JobError {
    /// Worth retrying (dependency down, timeout): backoff, then again.
    Retry(anyhow::Error),
    /// Retrying cannot help (invalid payload, unknown genre): fail now with this reason.
    Permanent(String),
}

/// A database error in a job is worth retrying: the database may be back by then.
impl From<sea_orm::DbErr> for JobError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::Retry(error.into())
    }
}

type Handler = Arc<dyn Fn(JobContext, String) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// Job kinds this node can run, each with its handler. A handler captures what it needs
/// (its domain's handle), so the queue knows nothing of the domains above it.
#[derive(Default, Clone)]
pub struct JobRegistry {
    handlers: HashMap<&'static str, Handler>,
}

impl JobRegistry {
    /// Registers `handler` for `kind`; the payload is decoded from JSON into `P`, and a
    /// payload that does not decode fails the job permanently.
    pub fn register<P, F, Fut>(&mut self, kind: &'static str, handler: F)
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(JobContext, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.handlers.insert(
            kind,
            Arc::new(move |ctx, payload: String| {
                let handler = handler.clone();
                async move {
                    let payload: P = serde_json::from_str(&payload)
                        .map_err(|error| JobError::Permanent(format!("payload does not decode: {error}")))?;
                    handler(ctx, payload).await
                }
                .boxed()
            }),
        );
    }

    fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.handlers.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }
}

/// This node's job workers.
pub struct Workers {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Workers {
    /// Starts `count` concurrent workers on `queue` for the kinds in `registry`; `node`
    /// names this node in the leases it takes.
    pub fn spawn(queue: JobQueue, node: Arc<str>, registry: JobRegistry, count: usize) -> Self {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_pool(queue, node, Arc::new(registry), count, cancel.clone()));
        Self { cancel, task }
    }

    /// Stops claiming, lets running jobs finish within the grace period, then releases
    /// whatever is still held so another node takes it at once.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Simulates a crash for tests: stops everything at once, releasing nothing.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The longest pause between claims while they keep failing.
const MAX_CLAIM_PAUSE: Duration = Duration::from_secs(2);

async fn run_pool(
    queue: JobQueue,
    node: Arc<str>,
    registry: Arc<JobRegistry>,
    count: usize,
    cancel: CancellationToken,
) {
    let kinds = registry.kinds();
    // Jobs of each kind (same index as `kinds`) running on this node: the claim's fair share.
    let running_by_kind: Arc<[AtomicUsize]> = kinds.iter().map(|_| AtomicUsize::new(0)).collect();
    let slots = Arc::new(Semaphore::new(count));
    let mut running: JoinSet<()> = JoinSet::new();
    let poll = queue.config().job_poll_interval;
    let mut sweep = tokio::time::interval(queue.config().job_lease.max(Duration::from_secs(1)));
    // Claims failed in a row (the database is unreachable): the pause before the next
    // doubles up to MAX_CLAIM_PAUSE, so an outage costs a log line, not a busy loop, and
    // claiming resumes within that pause of the database's return.
    let mut claim_failures: u32 = 0;

    while count > 0 && !cancel.is_cancelled() {
        while running.try_join_next().is_some() {}
        let free = slots.available_permits();
        let claimed = if free == 0 {
            Vec::new()
        } else {
            let shares: Vec<(&'static str, usize)> = kinds
                .iter()
                .zip(running_by_kind.iter())
                .map(|(kind, running)| (*kind, running.load(Ordering::Relaxed)))
                .collect();
            match queue.claim(&node, &shares, free).await {
                Ok(jobs) => {
                    if claim_failures > 0 {
                        tracing::info!(failures = claim_failures, "claiming jobs works again");
                        claim_failures = 0;
                    }
                    jobs
                }
                Err(error) => {
                    if claim_failures == 0 {
                        tracing::warn!(error = %error, "claiming jobs failed; retrying with backoff");
                    } else {
                        tracing::debug!(error = %error, failures = claim_failures, "claiming jobs failed again");
                    }
                    claim_failures = claim_failures.saturating_add(1);
                    Vec::new()
                }
            }
        };
        let full_batch = free > 0 && claimed.len() == free;
        for job in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let kind_index = kinds.iter().position(|kind| *kind == job.kind);
            if let Some(index) = kind_index {
                running_by_kind[index].fetch_add(1, Ordering::Relaxed);
            }
            let running_by_kind = running_by_kind.clone();
            let queue = queue.clone();
            let registry = registry.clone();
            let node = node.clone();
            let span = tracing::info_span!("job", id = job.id, kind = %job.kind, attempt = job.attempts);
            running.spawn(
                async move {
                    run_one(queue.clone(), &registry, &node, job).await;
                    if let Some(index) = kind_index {
                        running_by_kind[index].fetch_sub(1, Ordering::Relaxed);
                    }
                    drop(permit);
                    // A finished job may have unblocked the next one of its FIFO group:
                    // look again now rather than after the poll interval.
                    queue.wake().notify_one();
                }
                .instrument(span),
            );
        }
        if full_batch {
            // More may be due: wait for a free slot rather than the poll interval.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = slots.acquire() => {}
            }
            continue;
        }
        let pause = match claim_failures {
            0 => poll,
            failures => poll.saturating_mul(1 << failures.min(16)).min(MAX_CLAIM_PAUSE).max(poll),
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
            _ = queue.wake().notified() => {}
            _ = sweep.tick() => {
                if let Err(error) = queue.fail_abandoned().await {
                    tracing::warn!(error = %error, "failing abandoned jobs");
                }
            }
        }
    }

    let grace = queue.config().shutdown_grace;
    if !running.is_empty() {
        tracing::info!(jobs = running.len(), grace = ?grace, "waiting for running jobs before shutdown");
        let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
    }
    match queue.release_held(&node).await {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "released held jobs to other nodes"),
        Err(error) => tracing::warn!(error = %error, "releasing held jobs failed; their leases will expire"),
    }
}

async fn run_one(queue: JobQueue, registry: &JobRegistry, node: &str, job: JobRecord) {
    let Some(handler) = registry.handlers.get(job.kind.as_str()).cloned() else {
        return;
    };
    let ctx = JobContext { id: job.id, attempt: job.attempts, max_attempts: job.max_attempts };
    let started = std::time::Instant::now();

    // Keep the lease while the handler runs; a long ingestion must not be taken over
    // by another node just because it takes longer than one lease. The heartbeat dies
    // with this task, so a worker that is gone stops renewing.
    let heartbeat = {
        let queue = queue.clone();
        let node = node.to_string();
        let every = (queue.config().job_lease / 3).max(Duration::from_millis(50));
        let id = job.id;
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match queue.heartbeat(id, &node).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => tracing::warn!(error = %error, id, "job heartbeat failed"),
                }
            }
        }))
    };

    let outcome = AssertUnwindSafe(handler(ctx, job.payload.clone())).catch_unwind().await;
    drop(heartbeat);
    let outcome = outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "handler panicked".into());
        Err(JobError::Retry(anyhow::anyhow!("handler panicked: {message}")))
    });

    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!("emporium_job_duration_seconds", "kind" => job.kind.clone()).record(elapsed);
    let recorded = match &outcome {
        Ok(()) => {
            tracing::debug!(elapsed, "job succeeded");
            metrics::counter!("emporium_jobs_finished_total", "kind" => job.kind.clone(), "outcome" => "succeeded")
                .increment(1);
            queue.succeed(job.id, node).await
        }
        Err(JobError::Retry(error)) => {
            let message = format!("{error:#}");
            tracing::warn!(error = %message, "job attempt failed");
            metrics::counter!("emporium_jobs_finished_total", "kind" => job.kind.clone(), "outcome" => "retry")
                .increment(1);
            queue.fail(&job, node, &message, false).await
        }
        Err(JobError::Permanent(reason)) => {
            tracing::warn!(reason = %reason, "job failed permanently");
            metrics::counter!("emporium_jobs_finished_total", "kind" => job.kind.clone(), "outcome" => "failed")
                .increment(1);
            queue.fail(&job, node, reason, true).await
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!("job lease was lost before the result was recorded; another node owns it now"),
        Err(error) => {
            tracing::error!(error = %error, "recording the job result failed; the lease will expire and it will run again")
        }
    }
}
