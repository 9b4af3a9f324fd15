//! Ingestion: the durable job that reads a spooled body back as a stream and upserts its
//! products through the catalog, batch by batch.
//!
//! The same scanner that validated the body finds each item's bytes; serde_json decodes
//! one item at a time, in a reader task that prepares the next batch while the current
//! one commits, so memory stays bounded by two batches. Each batch commits in one
//! transaction with the upload's progress (`items_done`), guarded by the progress it
//! started from: a re-run after a crash skips the items already committed and resumes
//! with the next batch, and a second runner of the same job cannot apply a batch twice.
//! Items with errors (the scanner's item issues, the catalog's checks) are handled by the
//! upload's error policy ([`items::check`]) and reported on the upload; the rest are
//! ingested. Under `REJECT_EVERYTHING` a first pass checks every item before anything is
//! written (the edge refused what it could see; this catches what only the catalog sees).

use std::{collections::VecDeque, io, time::Instant};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{GetResultPayload, ObjectStoreExt as _, path::Path};
use sea_orm::TransactionTrait as _;
use tokio::sync::mpsc::{Receiver, Sender};

use super::{
    IngestJob, Uploads, ingest_group, items, model,
    model::{BatchProgress, ErrorPolicy, ITEM_ERRORS_KEPT, ItemError, UploadRecord},
    publish_progress,
    scan::{BodyScanner, ItemIssue, ItemSpan, SyntaxError},
};
use crate::{
    catalog::{self, ProductUpsert},
    error::AppError,
    jobs::{JobContext, JobError},
};

/// A batch is also cut when its items hold this many bytes of JSON.
const BATCH_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Read size for spools on a local disk.
const READ_CHUNK: usize = 1024 * 1024;

/// How an ingestion attempt failed.
pub(super) enum Failure {
    /// Retrying cannot help (the spool is gone or does not match the accepted body).
    Permanent(String),
    Retry(anyhow::Error),
}

/// A database error is worth retrying: the database may be back by then.
impl From<sea_orm::DbErr> for Failure {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::Retry(error.into())
    }
}

/// An error of the catalog or the uploads' model: an internal one keeps its whole chain
/// (the database's own message), which is what the upload stores and the log shows.
pub(super) fn app_error(error: AppError) -> Failure {
    match error {
        AppError::Internal(error) => Failure::Retry(error),
        other => Failure::Retry(anyhow::anyhow!("{}: {}", other.code(), other.message())),
    }
}

/// The job handler.
pub async fn run(state: Uploads, ctx: JobContext, job: IngestJob) -> Result<(), JobError> {
    match ingest(&state, job.upload_id).await {
        Ok(()) => Ok(()),
        Err(Failure::Permanent(reason)) => {
            mark_failed(&state, job.upload_id, &reason).await;
            Err(JobError::Permanent(reason))
        }
        Err(Failure::Retry(error)) => {
            tracing::warn!(
                upload_id = job.upload_id,
                attempt = ctx.attempt,
                max_attempts = ctx.max_attempts,
                error = format!("{error:#}"),
                "an ingestion attempt failed"
            );
            if ctx.attempt >= ctx.max_attempts {
                mark_failed(&state, job.upload_id, &format!("{error:#}")).await;
            }
            Err(JobError::Retry(error))
        }
    }
}

async fn mark_failed(state: &Uploads, id: i64, reason: &str) {
    match model::finish(&state.db, id, Some(reason)).await {
        Ok(Some(upload)) => publish_progress(state, &upload).await,
        Ok(None) => {}
        Err(error) => tracing::error!(upload_id = id, error = ?error, "recording the failure of an upload failed"),
    }
}

async fn ingest(state: &Uploads, id: i64) -> Result<(), Failure> {
    // A small upload is ingested with the others waiting (its body is in the database).
    if ingest_group::ingest(state, id).await? {
        return Ok(());
    }
    let Some(mut upload) = model::start_ingesting(&state.db, id).await.map_err(app_error)? else {
        // Unknown or already succeeded: a duplicate delivery of a finished job.
        return Ok(());
    };
    publish_progress(state, &upload).await;
    let started = Instant::now();
    let skip = u64::try_from(upload.items_done).unwrap_or(0);
    if skip > 0 {
        tracing::info!(upload_id = id, items_done = skip, "resuming an interrupted ingestion");
    }

    if upload.error_policy() == ErrorPolicy::RejectEverything && skip == 0 && refuse_everything(state, &upload).await? {
        return Ok(());
    }

    // The next batch is read and decoded while the current one commits.
    let mut ready = start_reader(state, &upload, false).await?;
    let mut complete = false;
    while let Some(read) = ready.recv().await {
        let batch = match read? {
            Read::Batch(batch) => batch,
            Read::Last(batch) => {
                complete = true;
                batch
            }
        };
        if batch.items > 0 {
            upload = commit(state, &upload, batch).await?;
        }
    }
    if !complete {
        return Err(Failure::Retry(anyhow::anyhow!("reading the spooled body stopped early")));
    }

    let Some(finished) = model::finish(&state.db, id, None).await.map_err(app_error)? else {
        return Err(Failure::Retry(anyhow::anyhow!("upload {id} changed state while it was being ingested")));
    };
    publish_progress(state, &finished).await;
    forget_body(state, &upload).await;
    // Uploads leaving the backlog; its rate, beside `emporium_uploads_total`'s accepted
    // one, says whether ingestion keeps up.
    metrics::counter!("emporium_uploads_ingested_total", "outcome" => "succeeded").increment(1);
    metrics::counter!("emporium_upload_items_ingested_total")
        .increment(u64::try_from(finished.items_total).unwrap_or(0).saturating_sub(skip));
    tracing::info!(
        upload_id = id,
        items = finished.items_total,
        created = finished.products_created,
        updated = finished.products_updated,
        failed = finished.items_rejected,
        seconds = started.elapsed().as_secs_f64(),
        "upload ingested"
    );
    Ok(())
}

/// Reads the spool from the upload's progress on, in a task of its own; `check_only`
/// keeps no upserts and sends only the last batch (with the counts of the whole body).
async fn start_reader(
    state: &Uploads,
    upload: &UploadRecord,
    check_only: bool,
) -> Result<Receiver<ReadBatch>, Failure> {
    let spool = open_spool(state, upload).await?;
    let (batches, ready) = tokio::sync::mpsc::channel(1);
    let reader = Reader {
        skip: u64::try_from(upload.items_done).unwrap_or(0),
        items_total: upload.items_total,
        batch_size: usize::from(state.config.upload_batch_size),
        policy: upload.error_policy(),
        check_only,
        item_errors: upload.item_errors(),
    };
    tokio::spawn(reader.run(spool, batches));
    Ok(ready)
}

/// `REJECT_EVERYTHING`: checks every item before anything is written; when some have
/// errors, ends the upload failed with them, nothing ingested, and returns true.
async fn refuse_everything(state: &Uploads, upload: &UploadRecord) -> Result<bool, Failure> {
    let mut ready = start_reader(state, upload, true).await?;
    let mut checked = None;
    while let Some(read) = ready.recv().await {
        if let Read::Last(batch) = read? {
            checked = Some(batch);
        }
    }
    let checked = checked.ok_or_else(|| Failure::Retry(anyhow::anyhow!("checking the spooled body stopped early")))?;
    if checked.failed == 0 {
        return Ok(false);
    }
    let errors = checked.item_errors.unwrap_or_default();
    let reason = refusal(&errors, checked.failed, upload.items_total);
    tracing::warn!(upload_id = upload.id, failed = checked.failed, reason, "upload refused whole");
    match model::reject_everything(&state.db, upload.id, checked.failed, &errors, &reason).await.map_err(app_error)? {
        Some(finished) => {
            publish_progress(state, &finished).await;
            metrics::counter!("emporium_uploads_ingested_total", "outcome" => "refused").increment(1);
        }
        None => return Err(Failure::Retry(anyhow::anyhow!("upload {} changed state while it was checked", upload.id))),
    }
    forget_body(state, upload).await;
    Ok(true)
}

/// Deletes the body of an upload that ended: its spool, or its row in `upload_bodies`
/// (a failure there only leaves the row; the upload is finished either way).
async fn forget_body(state: &Uploads, upload: &UploadRecord) {
    if upload.spool_key != model::INLINE {
        super::receive::delete_spool_later(state, &upload.spool_key);
    } else if let Err(error) = model::delete_bodies(&state.db, &[upload.id]).await {
        tracing::warn!(upload_id = upload.id, error = %error.message(), "deleting an ingested inline body failed");
    }
}

/// The reason stored on an upload that `REJECT_EVERYTHING` refuses after ingestion's check.
pub(super) fn refusal(errors: &[ItemError], failed: i64, items_total: i64) -> String {
    let first = errors
        .first()
        .map(|error| format!(" (the first: item {} `{}`: {})", error.index, error.field, error.reason))
        .unwrap_or_default();
    format!(
        "{failed} of {items_total} items have errors{first}; with errorPolicy REJECT_EVERYTHING nothing was ingested"
    )
}

/// The body as a stream of chunks: from the database when kept inline, else from its
/// spool (large reads when it is a local file).
async fn open_spool(state: &Uploads, upload: &UploadRecord) -> Result<BoxStream<'static, io::Result<Bytes>>, Failure> {
    let key = upload.spool_key.as_str();
    if key == model::INLINE {
        let mut bodies = model::bodies(&state.db, &[upload.id]).await.map_err(app_error)?;
        let body = bodies.remove(&upload.id).ok_or_else(|| {
            Failure::Permanent(format!("the body of upload {} is missing from the database", upload.id))
        })?;
        return Ok(futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed());
    }
    let result = match state.objects.store().get(&Path::from(key)).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Failure::Permanent(format!("the spooled body `{key}` is missing from object storage")));
        }
        // Object storage unreachable or failing: it may be back by the next attempt.
        Err(error) => return Err(Failure::Retry(error.into())),
    };
    Ok(match result.payload {
        GetResultPayload::File(file, _) => {
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), READ_CHUNK).boxed()
        }
        GetResultPayload::Stream(stream) => stream.map_err(io::Error::other).boxed(),
    })
}

/// Decodes and checks a whole body held in memory (a small upload of a group) as one
/// batch: every item, whatever `UPLOAD_BATCH_SIZE` says.
pub(super) async fn decode_whole(upload: &UploadRecord, body: Bytes) -> Result<Batch, Failure> {
    let mut reader = Reader {
        skip: 0,
        items_total: upload.items_total,
        batch_size: usize::MAX,
        policy: upload.error_policy(),
        check_only: false,
        item_errors: Vec::new(),
    };
    let (batches, mut ready) = tokio::sync::mpsc::channel(1);
    let spool = futures::stream::once(async move { Ok(body) }).boxed();
    let read = async {
        let outcome = reader.read(spool, &batches).await;
        drop(batches);
        outcome
    };
    let collect = async {
        let mut whole = Batch::default();
        while let Some(batch) = ready.recv().await {
            let (Ok(Read::Batch(batch)) | Ok(Read::Last(batch))) = batch else { continue };
            whole.upserts.extend(batch.upserts);
            whole.items += batch.items;
            whole.bytes += batch.bytes;
            whole.failed += batch.failed;
            whole.item_errors = batch.item_errors.or(whole.item_errors);
        }
        whole
    };
    let (outcome, whole) = tokio::join!(read, collect);
    outcome.map(|()| whole)
}

/// Reads the spooled body and cuts it into decoded batches, from item `skip` on.
struct Reader {
    skip: u64,
    /// Items in the accepted body: the spool must hold as many.
    items_total: i64,
    batch_size: usize,
    policy: ErrorPolicy,
    /// Only count and report the items' errors: no upserts, one batch at the end.
    check_only: bool,
    /// The upload's kept item errors so far.
    item_errors: Vec<ItemError>,
}

/// What the reader sends: full batches, then the last one (maybe empty) once the whole
/// spool has been read and checked; or why it stopped.
enum Read {
    Batch(Batch),
    Last(Batch),
}

type ReadBatch = Result<Read, Failure>;

impl Reader {
    /// Sends batches until the spool ends or the receiver is gone (its commit failed).
    async fn run(mut self, spool: BoxStream<'static, io::Result<Bytes>>, batches: Sender<ReadBatch>) {
        if let Err(failure) = self.read(spool, &batches).await {
            let _ = batches.send(Err(failure)).await;
        }
    }

    async fn read(
        &mut self,
        mut spool: BoxStream<'static, io::Result<Bytes>>,
        batches: &Sender<ReadBatch>,
    ) -> Result<(), Failure> {
        let mut scanner = BodyScanner::new();
        let mut buffer: Vec<u8> = Vec::new();
        let mut buffer_start: u64 = 0;
        let mut spans: Vec<ItemSpan> = Vec::new();
        // Issues of items whose span has not closed yet, in body order.
        let mut issues: VecDeque<ItemIssue> = VecDeque::new();
        let mut batch = Batch::default();
        while let Some(chunk) = spool.next().await {
            // A read of the spool failed (storage down, connection cut): retry later.
            let chunk = chunk.map_err(|error| Failure::Retry(error.into()))?;
            buffer.extend_from_slice(&chunk);
            spans.clear();
            scanner.feed(&chunk, |span| spans.push(span)).map_err(no_longer_valid)?;
            issues.extend(scanner.take_item_issues());
            for span in &spans {
                let of_item = issues.iter().take_while(|issue| issue.index == span.index).count();
                let item_issues: Vec<ItemIssue> = issues.drain(..of_item).collect();
                if span.index < self.skip {
                    continue;
                }
                let start = usize::try_from(span.start - buffer_start).unwrap_or(usize::MAX);
                let end = usize::try_from(span.end - buffer_start).unwrap_or(usize::MAX);
                let bytes = buffer
                    .get(start..end)
                    .ok_or_else(|| Failure::Retry(anyhow::anyhow!("item span outside the read buffer")))?;
                self.add(&mut batch, span, bytes, &item_issues)?;
                let full = !self.check_only && (batch.items >= self.batch_size || batch.bytes >= BATCH_MAX_BYTES);
                if full && batches.send(Ok(Read::Batch(std::mem::take(&mut batch)))).await.is_err() {
                    // The receiver is gone: its commit failed, and it reports why.
                    return Ok(());
                }
            }
            // Keep only the bytes of an item still open.
            let keep_from = scanner.open_item_start().unwrap_or(scanner.offset());
            let consumed = usize::try_from(keep_from - buffer_start).unwrap_or(buffer.len()).min(buffer.len());
            buffer.drain(..consumed);
            buffer_start = keep_from;
        }
        let summary = scanner.finish().map_err(no_longer_valid)?;
        if i64::try_from(summary.items).ok() != Some(self.items_total) {
            return Err(Failure::Permanent(format!(
                "the spooled body holds {} items, the accepted one {}",
                summary.items, self.items_total
            )));
        }
        let _ = batches.send(Ok(Read::Last(batch))).await;
        Ok(())
    }

    fn add(&mut self, batch: &mut Batch, span: &ItemSpan, bytes: &[u8], issues: &[ItemIssue]) -> Result<(), Failure> {
        let index = span.index;
        let checked = items::check(bytes, span.start, issues, self.policy).map_err(|error| {
            Failure::Permanent(format!("item {index} of the spooled body does not decode: {error}"))
        })?;
        batch.items += 1;
        batch.bytes += bytes.len();
        if !checked.errors.is_empty() {
            batch.failed += 1;
            let room = ITEM_ERRORS_KEPT.saturating_sub(self.item_errors.len());
            if room > 0 {
                self.item_errors.extend(checked.item_errors(index).take(room));
                batch.item_errors = Some(self.item_errors.clone());
            }
        }
        if let Some(upsert) = checked.upsert
            && !self.check_only
        {
            batch.upserts.push(upsert);
        }
        Ok(())
    }
}

fn no_longer_valid(error: SyntaxError) -> Failure {
    Failure::Permanent(format!("the spooled body is no longer valid: {error}"))
}

/// Items decoded since the last commit.
#[derive(Default)]
pub(super) struct Batch {
    pub upserts: Vec<ProductUpsert>,
    /// Items in this batch, refused ones included.
    pub items: usize,
    pub bytes: usize,
    /// Items of this batch with an error.
    pub failed: i64,
    /// The upload's kept item errors after this batch, when the batch added some.
    pub item_errors: Option<Vec<ItemError>>,
}

/// Upserts the batch and advances the upload's progress in one transaction.
async fn commit(state: &Uploads, upload: &UploadRecord, batch: Batch) -> Result<UploadRecord, Failure> {
    let txn = state.db.begin().await?;
    let outcome = if batch.upserts.is_empty() {
        catalog::UpsertOutcome::default()
    } else {
        catalog::upsert_by_sku(&state.catalog, &txn, &batch.upserts).await.map_err(app_error)?
    };
    let progress = BatchProgress {
        items: i64::try_from(batch.items).unwrap_or(i64::MAX),
        failed: batch.failed,
        created: outcome.created,
        updated: outcome.updated,
        item_errors: batch.item_errors,
    };
    let Some(advanced) = model::advance(&txn, upload.id, upload.items_done, &progress).await.map_err(app_error)? else {
        txn.rollback().await?;
        return Err(Failure::Retry(anyhow::anyhow!(
            "upload {} progressed elsewhere (another runner holds its job); stopping this one",
            upload.id
        )));
    };
    txn.commit().await?;
    publish_progress(state, &advanced).await;
    Ok(advanced)
}
