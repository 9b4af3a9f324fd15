//! Group commit of accepted uploads: the bodies accepted at the same moment on this node
//! share one transaction (and so one sync of the database's log) for their rows, their
//! inline bodies and their ingestion jobs, as databases group their log writes. A request
//! is answered 200 only after the transaction holding its upload has committed, so each
//! 200 still means "durably queued".
//!
//! One task per node takes whatever waits when it is free: under load batches grow by
//! themselves (the requests that arrived while the previous batch committed), alone a
//! request waits for no one.

use std::{collections::HashMap, time::Duration};

use sea_orm::{DatabaseConnection, TransactionTrait as _};
use tokio::sync::{mpsc, oneshot};

use super::{
    INGEST_JOB, IngestJob,
    model::{self, NewUpload, StoredBody},
    window::DedupWindow,
};
use crate::{
    db::duration_ms,
    error::{AppError, AppResult},
    jobs::{JobQueue, NewJob},
};

/// Most uploads committed in one transaction.
const BATCH_MAX: usize = 256;
/// Requests waiting for the committer beyond which a new one waits for room.
const QUEUE: usize = 1024;

/// What the commit of one upload decided.
#[derive(Debug, Clone, Copy)]
pub enum Committed {
    Accepted {
        id: i64,
        /// On the dedup window's clock.
        accepted_at: i64,
    },
    /// The database holds an acceptance of the same body within the window (upload
    /// `of`, `left` before its window ends) that the fast path did not know.
    Duplicate { of: i64, left: Duration },
}

struct Pending {
    upload: NewUpload,
    reply: oneshot::Sender<AppResult<Committed>>,
}

/// The node's committer of uploads.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts the committing task; it ends when the last handle is dropped.
    pub fn start(db: DatabaseConnection, jobs: JobQueue, window: DedupWindow) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(run(Batcher { db, jobs, window }, waiting));
        Self { queue }
    }

    /// Commits `upload` with its ingestion job, unless the database, the window's source
    /// of truth, holds an acceptance of the same digest within the window.
    pub async fn commit(&self, upload: NewUpload) -> AppResult<Committed> {
        let (reply, answer) = oneshot::channel();
        let gone = || AppError::Internal(anyhow::anyhow!("the upload committer has stopped"));
        self.queue.send(Pending { upload, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

struct Batcher {
    db: DatabaseConnection,
    jobs: JobQueue,
    window: DedupWindow,
}

async fn run(batcher: Batcher, mut waiting: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while waiting.recv_many(&mut batch, BATCH_MAX).await > 0 {
        metrics::histogram!("emporium_upload_commit_batch_size").record(batch.len() as f64);
        let uploads: Vec<&NewUpload> = batch.iter().map(|pending| &pending.upload).collect();
        match batcher.commit(&uploads).await {
            Ok(decisions) => {
                for (pending, decision) in batch.drain(..).zip(decisions) {
                    // A request that went away still has its upload committed.
                    let _ = pending.reply.send(Ok(decision));
                }
            }
            Err(error) => {
                tracing::warn!(error = %error.message(), uploads = batch.len(), "committing a batch of uploads failed");
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(error.duplicate()));
                }
            }
        }
    }
}

impl Batcher {
    /// One transaction for the batch: the digests locked (Postgres), the rows inserted,
    /// those whose digest the database saw within the window (or earlier in the batch)
    /// deleted again, then the inline bodies and the ingestion jobs of the rest.
    async fn commit(&self, uploads: &[&NewUpload]) -> AppResult<Vec<Committed>> {
        let accepted_at = self.window.now_ms();
        let window = duration_ms(self.window.window());
        let digests: Vec<&str> = uploads.iter().map(|upload| upload.digest.as_str()).collect();
        let txn = self.db.begin().await?;
        model::lock_digests(&txn, &digests).await?;
        // Inserted before the check: on SQLite a transaction must write first to hold the
        // write lock, which is what makes its check and insert atomic.
        let ids = model::insert_many(&txn, uploads, accepted_at).await?;
        let earlier = model::accepted_since(&txn, &digests, accepted_at - window + 1, &ids).await?;

        let mut decisions = Vec::with_capacity(uploads.len());
        let mut first_in_batch: HashMap<&str, i64> = HashMap::new();
        let mut refused = Vec::new();
        let mut accepted = Vec::new();
        for (upload, id) in uploads.iter().zip(&ids) {
            let digest = upload.digest.as_str();
            let duplicate = match (earlier.get(digest), first_in_batch.get(digest)) {
                (Some((of, of_at)), _) => Some((*of, of_at + window - accepted_at)),
                (None, Some(of)) => Some((*of, window)),
                (None, None) => None,
            };
            match duplicate {
                Some((of, left)) => {
                    refused.push(*id);
                    let left = Duration::from_millis(u64::try_from(left).unwrap_or(1).max(1));
                    decisions.push(Committed::Duplicate { of, left });
                }
                None => {
                    first_in_batch.insert(digest, *id);
                    accepted.push((*id, *upload));
                    decisions.push(Committed::Accepted { id: *id, accepted_at });
                }
            }
        }
        model::delete_many(&txn, &refused).await?;
        let bodies: Vec<(i64, &[u8])> = accepted
            .iter()
            .filter_map(|(id, upload)| match &upload.body {
                StoredBody::Inline(body) => Some((*id, body.as_ref())),
                StoredBody::Spooled(_) => None,
            })
            .collect();
        model::insert_bodies(&txn, &bodies).await?;
        let jobs = accepted.iter().map(|(id, _)| NewJob::new(INGEST_JOB, &IngestJob { upload_id: *id })).collect();
        let job_ids = self.jobs.enqueue_many(&txn, jobs).await?;
        let pairs: Vec<(i64, i64)> = accepted.iter().map(|(id, _)| *id).zip(job_ids).collect();
        model::set_jobs(&txn, &pairs).await?;
        txn.commit().await?;
        Ok(decisions)
    }
}
