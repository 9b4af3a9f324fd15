//! The GraphQL view of a durable job, here beside the queue so that every domain can
//! name a job (`IntakeMessage.jobId`) and the assembly can look jobs up.

use async_graphql::{Enum, ID, SimpleObject};
use chrono::{DateTime, Utc};

use super::JobRecord;
use crate::{db::to_datetime, global_id};

/// Where a durable job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum JobStatus {
    /// Waiting to run: new, or retrying after a failed attempt (from `runAt` on).
    Queued,
    /// A node is running it now (a job whose node dies is run again).
    Running,
    /// Done.
    Succeeded,
    /// Given up, after its last attempt or an error that retrying cannot fix; `lastError`
    /// says why, and `retryJob` queues it again.
    Failed,
}

/// A unit of durable background work (offer registration, upload ingestion, intake).
#[derive(Debug, Clone, SimpleObject)]
pub struct Job {
    /// The job's global id (opaque; `node(id:)` refetches it).
    #[graphql(owned)]
    pub id: ID,
    /// What the job does: `catalog.register`, `uploads.ingest` or `intake.store`.
    pub kind: String,
    /// Where the job stands.
    pub status: JobStatus,
    /// Attempts started so far (`retryJob` resets it to 0).
    pub attempts: i32,
    /// Attempts allowed before the job fails for good (set by the server per kind).
    pub max_attempts: i32,
    /// The error of the last failed attempt (kept after a later success); null when no
    /// attempt has failed.
    pub last_error: Option<String>,
    /// When the job is (or was) due to run next.
    pub run_at: DateTime<Utc>,
    /// When the job was queued.
    pub created_at: DateTime<Utc>,
    /// When it became `SUCCEEDED` or `FAILED`; null while queued or running.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<JobRecord> for Job {
    fn from(job: JobRecord) -> Self {
        let status = match job.status.as_str() {
            super::RUNNING => JobStatus::Running,
            super::SUCCEEDED => JobStatus::Succeeded,
            super::FAILED => JobStatus::Failed,
            _ => JobStatus::Queued,
        };
        Self {
            id: global_id::of::<Job>(job.id),
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
