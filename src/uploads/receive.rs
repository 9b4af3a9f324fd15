//! Receiving a body: one streaming pass in which each chunk, read from the socket once,
//! is validated (the incremental scanner, on a thread beside), hashed (BLAKE3) and
//! spooled (an [`ObjectWriter`]); then the dedup decision and the durable hand-off to
//! ingestion.
//!
//! Memory per upload is bounded by the writer's blocks (or parts) in flight and the few
//! chunks queued for the scan, whatever the body size: the body is never held whole.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use axum::{body::Body, http::HeaderMap};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use object_store::{ObjectStoreExt as _, path::Path};
use serde::Serialize;

use super::{
    Uploads,
    commit::Committed,
    items,
    model::{self, ErrorPolicy, ITEM_ERRORS_KEPT, ItemError, NewUpload, StoredBody},
    scan::{BodyScanner, ItemIssue, ItemSpan, Summary, SyntaxError},
    window::{Duplicate, Verdict},
};
use crate::{error::AppError, global_id, storage::ObjectWriter};

/// After a 413, how much more of the body is read (and dropped) so the client can read
/// the answer before the connection closes.
const DRAIN_AFTER_TOO_LARGE: u64 = 16 * 1024 * 1024;
/// Prefix ("bucket") of spooled bodies in the object store.
pub const SPOOL_PREFIX: &str = "uploads";

/// Why a body was not accepted.
#[derive(Debug)]
pub enum Rejection {
    /// Not an acceptable JSON array of products: 400 with the position and reason.
    Invalid(SyntaxError),
    /// `REJECT_EVERYTHING` and an item with errors (all of them here): 400.
    Items(Vec<ItemError>),
    /// Everything else: too large (413), duplicate (403), dependency down (503), ….
    App(AppError),
}

impl<E: Into<AppError>> From<E> for Rejection {
    fn from(error: E) -> Self {
        Self::App(error.into())
    }
}

/// A valid body, stored: spooled, or held to be kept in the database with its upload.
#[derive(Debug)]
pub struct Received {
    pub digest: String,
    pub summary: Summary,
    pub body: StoredBody,
    pub policy: ErrorPolicy,
    /// Items with errors found while the body streamed in.
    pub items: EdgeReport,
}

/// The items with errors that the scan found while the body streamed in (ingestion, with
/// the catalog's checks too, has the final word).
#[derive(Debug, Default)]
pub struct EdgeReport {
    pub items_failed: u64,
    /// The first [`ITEM_ERRORS_KEPT`].
    pub item_errors: Vec<ItemError>,
}

/// The answer to an accepted upload (`200 {"upload_id": …, "status": "queued"}`).
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    /// The REST id (`GET /v1/uploads/{upload_id}`).
    pub upload_id: String,
    /// The same upload's GraphQL global id (`upload(id:)`, `node(id:)`), as GitHub's REST
    /// API answers `node_id`.
    pub node_id: String,
    pub status: &'static str,
    pub bytes: u64,
    pub items: u64,
    pub digest: String,
    /// How items with errors are handled (`REJECT_FAILED_ROWS` unless the request said).
    pub error_policy: ErrorPolicy,
    /// Items with errors found while the body streamed in; the upload's own `items_failed`
    /// (`GET /v1/uploads/{id}`) is the final count.
    pub items_failed: u64,
    /// The first of their errors.
    pub item_errors: Vec<ItemError>,
}

/// The body's length as its `Content-Length` declares it.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
}

/// Streams `body` once: hashing, validating and spooling it; a body up to
/// `UPLOAD_INLINE_MAX_BYTES` is held instead, to be committed with its upload.
pub async fn receive(
    state: &Uploads,
    headers: &HeaderMap,
    body: Body,
    policy: ErrorPolicy,
) -> Result<Received, Rejection> {
    let config = &state.config;
    let max = config.max_upload_bytes;
    if let Some(encoding) = headers.get(axum::http::header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("?").trim();
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(AppError::bad_input(format!(
                "Content-Encoding `{encoding}` is not supported; send the JSON uncompressed"
            ))
            .into());
        }
    }
    let declared = declared_length(headers);
    let mut stream = body.into_data_stream();
    if let Some(length) = declared.filter(|length| *length > max) {
        // Known too large before a byte is read. A client waiting for `100 Continue`
        // has sent nothing; others are already sending, so read a little of it while
        // the answer goes out.
        let waits_for_continue = headers
            .get(axum::http::header::EXPECT)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case("100-continue"));
        if !waits_for_continue {
            spawn_drain(stream, DRAIN_AFTER_TOO_LARGE, config.upload_idle_timeout);
        }
        return Err(too_large(length, max).into());
    }

    let started = Instant::now();
    let spool_key = format!("{SPOOL_PREFIX}/{}.json", uuid::Uuid::new_v4().simple());
    let mut spool: Option<ObjectWriter> = None;
    // The body so far while it is small enough to be kept inline (shared chunks).
    let mut held: Vec<Bytes> = Vec::new();
    let inline_max = config.upload_inline_max_bytes;
    let mut scan = Scan::start(policy, declared);
    let mut hasher = blake3::Hasher::new();
    let mut received: u64 = 0;
    let receiving = async {
        loop {
            let next = match tokio::time::timeout(Scan::FLUSH_AFTER, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    // The client is slow (or stuck): the scan gets what is batched, so an
                    // invalid body is refused while its client is still sending.
                    if !scan.flush().await {
                        break;
                    }
                    tokio::select! {
                        next = tokio::time::timeout(config.upload_idle_timeout, stream.next()) => {
                            next.map_err(|_| {
                                AppError::bad_input(format!(
                                    "no data received for {} s; the upload was abandoned",
                                    config.upload_idle_timeout.as_secs()
                                ))
                            })?
                        }
                        () = scan.stopped() => break,
                    }
                }
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => {
                    return Err(AppError::bad_input(format!("the body could not be read: {error}")).into());
                }
            };
            if chunk.is_empty() {
                continue;
            }
            received += chunk.len() as u64;
            if received > max {
                return Err(too_large(received, max).into());
            }
            if !scan.push(chunk.clone()).await {
                // The scan stopped at the body's first error, which its result holds.
                break;
            }
            hasher.update(&chunk);
            let writer = match &mut spool {
                Some(writer) => writer,
                None if received <= inline_max => {
                    held.push(chunk);
                    continue;
                }
                None => {
                    // Too large to keep inline: spooled from its first byte on.
                    let writer = spool
                        .insert(state.objects.writer(&Path::from(spool_key.as_str())).await.map_err(storage_failed)?);
                    for earlier in held.drain(..) {
                        writer.write(earlier).await.map_err(storage_failed)?;
                    }
                    writer
                }
            };
            writer.write(chunk).await.map_err(storage_failed)?;
        }
        Ok(())
    };
    // A stopping node answers an upload still arriving when its grace period ends, while
    // it still can, instead of cutting the connection.
    let outcome: Result<(), Rejection> = tokio::select! {
        outcome = receiving => outcome,
        () = state.requests_deadline.cancelled() => Err(AppError::unavailable(
            "this node is shutting down; send the upload again (any node takes it)",
            Some(1),
        )
        .into()),
    };

    let summary = match outcome {
        Ok(()) => scan.finish().await.map_err(Rejection::App).and_then(|scanned| scanned),
        Err(rejection) => Err(rejection),
    };
    let (summary, items) = match summary {
        Ok(scanned) => scanned,
        Err(rejection) => {
            if let Some(spool) = spool
                && let Err(error) = spool.abort().await
            {
                tracing::warn!(error = %error, "aborting a spool failed");
            }
            if matches!(rejection, Rejection::Invalid(_) | Rejection::Items(_)) {
                // The client may still be sending: read (and drop) the rest up to the
                // size limit so it can read our answer; the answer does not wait for it.
                spawn_drain(stream, max.saturating_sub(received), config.upload_idle_timeout);
            }
            return Err(rejection);
        }
    };
    let body = match spool {
        Some(spool) => {
            spool.finish().await.map_err(storage_failed)?;
            StoredBody::Spooled(spool_key)
        }
        None => StoredBody::Inline(concatenate(held)),
    };
    metrics::histogram!("emporium_upload_receive_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("emporium_upload_received_bytes_total").increment(summary.bytes);
    Ok(Received { digest: hasher.finalize().to_hex().to_string(), summary, body, policy, items })
}

/// The chunks of a small body as one buffer (a single chunk is shared, not copied).
fn concatenate(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.remove(0);
    }
    let mut whole = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    whole.freeze()
}

/// The body's scan. A body that declares itself small is scanned on the request's task:
/// for a few kilobytes the hand-off to a thread and back (two wake-ups per upload) cost
/// more than the scan (bench/small-uploads.sh: about a tenth more uploads a second). Any other
/// body is scanned on a blocking thread of its own beside the request's task (which
/// receives, hashes and spools): on that task it made the task the upload path's limit
/// (bench/uploads.sh), the socket waiting while each chunk was scanned.
enum Scan {
    Here(Box<ScanHere>),
    Beside(BackgroundScan),
}

/// The scan's verdict: the body's summary and the items with errors, or why it is refused.
type Scanned = Result<(Summary, EdgeReport), Rejection>;

impl Scan {
    /// The largest declared body scanned on the request's task.
    const HERE_MAX_BYTES: u64 = 64 * 1024;
    /// How long the next chunk may keep a smaller batch waiting.
    const FLUSH_AFTER: Duration = Duration::from_millis(20);

    fn start(policy: ErrorPolicy, declared: Option<u64>) -> Self {
        match declared {
            Some(length) if length <= Self::HERE_MAX_BYTES => {
                Self::Here(Box::new(ScanHere { scanning: Scanning::new(policy), refused: None }))
            }
            _ => Self::Beside(BackgroundScan::start(policy)),
        }
    }

    /// Adds the body's next chunk; `false` when the scan has stopped at an error.
    async fn push(&mut self, chunk: Bytes) -> bool {
        match self {
            Self::Here(here) => here.push(chunk),
            Self::Beside(beside) => beside.push(chunk).await,
        }
    }

    /// Scans what is batched so far; `false` when the scan has stopped at an error.
    async fn flush(&mut self) -> bool {
        match self {
            Self::Here(here) => here.refused.is_none(),
            Self::Beside(beside) => beside.flush().await,
        }
    }

    /// Resolves when the scan has stopped at an error (it only stops early then).
    async fn stopped(&self) {
        match self {
            Self::Here(here) if here.refused.is_some() => {}
            Self::Here(_) => std::future::pending().await,
            Self::Beside(beside) => beside.stopped().await,
        }
    }

    /// Declares the end of the body: the scan's verdict on it.
    async fn finish(self) -> Result<Scanned, AppError> {
        match self {
            Self::Here(here) => Ok(match here.refused {
                Some(rejection) => Err(rejection),
                None => here.scanning.finish(),
            }),
            Self::Beside(beside) => beside.finish().await,
        }
    }
}

/// The scanner and the items' side of it, wherever they run.
struct Scanning {
    scanner: BodyScanner,
    items: EdgeItems,
}

impl Scanning {
    fn new(policy: ErrorPolicy) -> Self {
        Self { scanner: BodyScanner::new(), items: EdgeItems::new(policy) }
    }

    fn scan(&mut self, chunk: Bytes) -> Result<(), Rejection> {
        self.items.scan(&mut self.scanner, chunk)
    }

    fn finish(self) -> Scanned {
        let summary = self.scanner.finish().map_err(Rejection::Invalid)?;
        Ok((summary, self.items.report))
    }
}

/// A scan on the request's task; it keeps the first error and ignores what follows.
struct ScanHere {
    scanning: Scanning,
    refused: Option<Rejection>,
}

impl ScanHere {
    fn push(&mut self, chunk: Bytes) -> bool {
        if self.refused.is_none()
            && let Err(rejection) = self.scanning.scan(chunk)
        {
            self.refused = Some(rejection);
        }
        self.refused.is_none()
    }
}

/// A scan on a blocking thread beside the request's task. Chunks are shared, not copied,
/// and handed over in batches of about a megabyte: a wake-up per chunk cost more than the
/// hash. It stops at the body's first error; dropped, it ends its thread.
struct BackgroundScan {
    batches: tokio::sync::mpsc::Sender<Vec<Bytes>>,
    batch: Vec<Bytes>,
    batch_bytes: usize,
    result: tokio::task::JoinHandle<Scanned>,
}

impl BackgroundScan {
    const BATCH_BYTES: usize = 1024 * 1024;
    /// Batches waiting before the request's task waits for the scan.
    const QUEUED_BATCHES: usize = 2;

    fn start(policy: ErrorPolicy) -> Self {
        let (batches, mut queued) = tokio::sync::mpsc::channel::<Vec<Bytes>>(Self::QUEUED_BATCHES);
        let result = tokio::task::spawn_blocking(move || {
            let mut scanning = Scanning::new(policy);
            while let Some(batch) = queued.blocking_recv() {
                for chunk in batch {
                    scanning.scan(chunk)?;
                }
            }
            scanning.finish()
        });
        Self { batches, batch: Vec::new(), batch_bytes: 0, result }
    }

    /// Adds the body's next chunk; `false` when the scan has stopped at an error.
    async fn push(&mut self, chunk: Bytes) -> bool {
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        self.batch_bytes < Self::BATCH_BYTES || self.flush().await
    }

    /// Hands the batch so far to the scan; `false` when it has stopped at an error.
    async fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        self.batch_bytes = 0;
        self.batches.send(std::mem::take(&mut self.batch)).await.is_ok()
    }

    /// Resolves when the scan has stopped at an error (it only stops early then).
    async fn stopped(&self) {
        self.batches.closed().await;
    }

    /// Declares the end of the body: the scan's verdict on it.
    async fn finish(mut self) -> Result<Scanned, AppError> {
        // Refused only when the scan already stopped, and then its result says why.
        self.flush().await;
        drop(self.batches);
        self.result.await.map_err(|error| AppError::Internal(anyhow::anyhow!("scanning the body failed: {error}")))
    }
}

/// The items' side of the scan: the chunks holding the open item are kept (shared, not
/// copied), so that an item with issues can be described (its sku, the fields) once it
/// closes. `REJECT_EVERYTHING` stops at the first such item.
struct EdgeItems {
    policy: ErrorPolicy,
    /// Chunks from the open item's `{` on, each with its offset in the body.
    kept: VecDeque<(u64, Bytes)>,
    spans: Vec<ItemSpan>,
    /// Issues of items not closed yet, in body order.
    issues: VecDeque<ItemIssue>,
    report: EdgeReport,
}

impl EdgeItems {
    fn new(policy: ErrorPolicy) -> Self {
        Self {
            policy,
            kept: VecDeque::new(),
            spans: Vec::new(),
            issues: VecDeque::new(),
            report: EdgeReport::default(),
        }
    }

    fn scan(&mut self, scanner: &mut BodyScanner, chunk: Bytes) -> Result<(), Rejection> {
        let offset = scanner.offset();
        let spans = &mut self.spans;
        spans.clear();
        scanner.feed(&chunk, |span| spans.push(span)).map_err(Rejection::Invalid)?;
        self.kept.push_back((offset, chunk));
        self.issues.extend(scanner.take_item_issues());
        if !self.issues.is_empty() {
            for span in std::mem::take(&mut self.spans) {
                let of_item = self.issues.iter().take_while(|issue| issue.index == span.index).count();
                if of_item == 0 {
                    continue;
                }
                let issues: Vec<ItemIssue> = self.issues.drain(..of_item).collect();
                let errors = items::describe(&self.item_bytes(&span), span.start, span.index, &issues, self.policy);
                if self.policy == ErrorPolicy::RejectEverything {
                    return Err(Rejection::Items(errors));
                }
                self.report.items_failed += 1;
                let room = ITEM_ERRORS_KEPT.saturating_sub(self.report.item_errors.len());
                self.report.item_errors.extend(errors.into_iter().take(room));
            }
        }
        let keep_from = scanner.open_item_start().unwrap_or(scanner.offset());
        while self.kept.front().is_some_and(|(start, chunk)| start + chunk.len() as u64 <= keep_from) {
            self.kept.pop_front();
        }
        Ok(())
    }

    /// The bytes of an item that closed in the last chunk, from the kept chunks.
    fn item_bytes(&self, span: &ItemSpan) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(usize::try_from(span.end - span.start).unwrap_or(0));
        for (start, chunk) in &self.kept {
            let end = start + chunk.len() as u64;
            if end <= span.start || *start >= span.end {
                continue;
            }
            let from = usize::try_from(span.start.max(*start) - start).unwrap_or(0);
            let to = usize::try_from(span.end.min(end) - start).unwrap_or(0);
            if let Some(part) = chunk.get(from..to) {
                bytes.extend_from_slice(part);
            }
        }
        bytes
    }
}

fn too_large(bytes: u64, max: u64) -> AppError {
    AppError::PayloadTooLarge(format!(
        "the body is larger than MAX_UPLOAD_BYTES ({max} bytes){}",
        if bytes > max { format!(": at least {bytes} bytes") } else { String::new() }
    ))
}

/// Reads and drops up to `budget` more bytes of a body we already answered.
fn spawn_drain(
    mut stream: impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    budget: u64,
    idle: Duration,
) {
    tokio::spawn(async move {
        let mut drained: u64 = 0;
        while drained <= budget {
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(chunk))) => drained += chunk.len() as u64,
                _ => break,
            }
        }
    });
}

/// Decides about a received body: refuse a duplicate, or commit the upload with its
/// ingestion job (with the other uploads committing at the same moment) and open its
/// window.
pub async fn accept(state: &Uploads, received: Received) -> Result<Accepted, Rejection> {
    let verdict = match state.dedup.claim(&received.digest).await {
        Ok(verdict) => verdict,
        Err(error) => {
            discard(state, &received.body);
            return Err(error.into());
        }
    };
    let claim = match verdict {
        Verdict::Claimed(claim) => claim,
        Verdict::Duplicate(duplicate) => {
            discard(state, &received.body);
            metrics::counter!("emporium_uploads_total", "outcome" => "duplicate").increment(1);
            return Err(forbidden(&duplicate).into());
        }
    };
    // From here the work runs to its end even if the client goes away: an upload that
    // is committed must also get its window.
    let state = state.clone();
    let task = tokio::spawn(async move {
        let Received { digest, summary, body, policy, items } = received;
        let upload = NewUpload { digest, bytes: summary.bytes, items: summary.items, policy, body };
        let id = match state.committer.commit(upload.clone()).await {
            Ok(Committed::Accepted { id, accepted_at }) => {
                state.backlog.note_accepted(summary.bytes, accepted_at);
                id
            }
            Ok(Committed::Duplicate { of, left }) => {
                // The fast path had lost this window: put it back for the time left.
                let _ = state.dedup.restore(&claim, of, left).await;
                discard(&state, &upload.body);
                metrics::counter!("emporium_upload_dedup_restored_total").increment(1);
                metrics::counter!("emporium_uploads_total", "outcome" => "duplicate").increment(1);
                return Err(forbidden(&state.dedup.duplicate_for(of, left)));
            }
            Err(error) => {
                state.dedup.release(&claim).await;
                discard(&state, &upload.body);
                return Err(error);
            }
        };
        if state.dedup.accept(&claim, id).await.is_err() {
            // The upload is durable and will be ingested; keep trying to open its window.
            let state = state.clone();
            tokio::spawn(async move { retry_accept(&state, claim, id).await });
        }
        metrics::counter!("emporium_uploads_total", "outcome" => "accepted").increment(1);
        tracing::info!(upload_id = id, bytes = summary.bytes, items = summary.items, "upload accepted");
        Ok(Accepted {
            upload_id: id.to_string(),
            node_id: global_id::of::<super::graphql::Upload>(id).0,
            status: model::QUEUED,
            bytes: summary.bytes,
            items: summary.items,
            digest: upload.digest,
            error_policy: policy,
            items_failed: items.items_failed,
            item_errors: items.item_errors,
        })
    });
    match task.await {
        Ok(result) => result.map_err(Rejection::App),
        Err(join) => Err(AppError::Internal(anyhow::anyhow!("accepting the upload failed: {join}")).into()),
    }
}

/// Opens the window of a committed upload once Redis answers again (a blip between
/// claim and acceptance), for at most the window's length.
async fn retry_accept(state: &Uploads, claim: super::window::Claim, id: i64) {
    let deadline = Instant::now() + state.dedup.window();
    let mut delay = Duration::from_millis(500);
    while Instant::now() < deadline {
        tokio::time::sleep(delay).await;
        if state.dedup.accept(&claim, id).await.is_ok() {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    tracing::error!(upload_id = id, "could not open the dedup window of an accepted upload");
}

pub fn forbidden(duplicate: &Duplicate) -> AppError {
    let message = match duplicate.upload_id {
        Some(id) => format!(
            "the same body was accepted as upload {id} less than the dedup window ago; it will be accepted again in {} s",
            duplicate.retry_after
        ),
        None => "an identical body is being accepted right now by another request".to_string(),
    };
    AppError::Forbidden { message, retry_after: Some(duplicate.retry_after) }
}

/// Drops a body that will not be ingested: its spool, if it has one, is deleted.
pub fn discard(state: &Uploads, body: &StoredBody) {
    if let StoredBody::Spooled(key) = body {
        delete_spool_later(state, key);
    }
}

/// Deletes a spool in the background (a refused or failed upload); a spool that cannot
/// be deleted is left to the periodic sweeper.
pub fn delete_spool_later(state: &Uploads, key: &str) {
    let store = state.objects.store().clone();
    let path = Path::from(key);
    tokio::spawn(async move {
        if let Err(error) = store.delete(&path).await
            && !matches!(error, object_store::Error::NotFound { .. })
        {
            tracing::warn!(error = %error, key = %path, "deleting a spool failed; the sweeper will retry");
        }
    });
}

fn storage_failed(error: anyhow::Error) -> AppError {
    tracing::warn!(error = %format!("{error:#}"), "object storage failed while spooling an upload");
    AppError::unavailable("object storage is unavailable; retry shortly", Some(5))
}
