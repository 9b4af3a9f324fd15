//! Small uploads ingested together: the job of an upload whose body is kept in the
//! database takes the other such uploads waiting (up to `UPLOAD_INGEST_GROUP`, and
//! [`GROUP_BYTES`] of bodies) and ingests them all in one transaction: one set-based
//! upsert of all their products, one registration job per chunk of new products, each
//! upload ended with its own counts, and the jobs of the others, never started, finished
//! with it. A crash before the commit leaves every one of them queued.
//!
//! An upload sharing a sku with an older one of the group is left for later (the job's
//! own upload then goes the one-upload way, after the group): so uploads sharing skus
//! apply in acceptance order within a group, and each upload's `productsCreated` and
//! `productsUpdated` are exactly what ingesting it alone reports. On Postgres, groups of different workers skip each other's uploads
//! (`SKIP LOCKED`); an upload's own job waits for the group that holds it and then finds
//! it ingested.

use std::collections::HashSet;

use bytes::Bytes;
use sea_orm::TransactionTrait as _;

use super::{
    Uploads,
    ingest::{Batch, Failure, app_error, decode_whole, refusal},
    model::{self, BatchProgress, ErrorPolicy, UploadRecord},
    publish_progress,
};
use crate::catalog::{self, UpsertOutcome, Upserted};

/// Most body bytes in one group (besides its first upload).
const GROUP_BYTES: u64 = 8 * 1024 * 1024;

/// What the group does with one of its uploads.
enum Outcome {
    Ingested(BatchProgress),
    /// `REJECT_EVERYTHING` and items with errors: failed, nothing ingested.
    Refused {
        failed: i64,
        errors: Vec<model::ItemError>,
        reason: String,
    },
    /// Its body does not decode (it changed since it was accepted): failed.
    Broken(String),
}

/// Ingests upload `id` in a group, if it is queued with its body in the database.
/// `Ok(false)`: it is not (a spooled body, or another run got to it first), and the
/// one-upload path takes over.
pub async fn ingest(state: &Uploads, id: i64) -> Result<bool, Failure> {
    let txn = state.db.begin().await?;
    let Some(first) = model::claim_inline(&txn, id).await.map_err(app_error)? else {
        txn.rollback().await?;
        return Ok(false);
    };
    let limit = u64::from(state.config.upload_ingest_group).saturating_sub(1);
    let mut uploads = vec![first];
    if limit > 0 {
        uploads.extend(model::claim_inline_group(&txn, id, limit, GROUP_BYTES).await.map_err(app_error)?);
    }
    // In acceptance order: of two uploads sharing a sku, the older goes first.
    uploads.sort_by_key(|upload| upload.id);
    let ids: Vec<i64> = uploads.iter().map(|upload| upload.id).collect();
    let mut bodies = model::bodies(&txn, &ids).await.map_err(app_error)?;

    // Decoded outside of any await on the database: each body is small.
    let mut group_skus: HashSet<String> = HashSet::new();
    let mut members: Vec<(UploadRecord, Batch)> = Vec::new();
    let mut ended: Vec<(UploadRecord, Outcome)> = Vec::new();
    let mut deferred: Vec<i64> = Vec::new();
    for upload in uploads {
        let Some(body) = bodies.remove(&upload.id) else {
            ended.push((upload, Outcome::Broken("its body is missing from the database".into())));
            continue;
        };
        let batch = match decode_whole(&upload, Bytes::from(body)).await {
            Ok(batch) => batch,
            Err(Failure::Permanent(reason)) => {
                ended.push((upload, Outcome::Broken(reason)));
                continue;
            }
            Err(failure) => return Err(failure),
        };
        if upload.error_policy() == ErrorPolicy::RejectEverything && batch.failed > 0 {
            let errors = batch.item_errors.unwrap_or_default();
            let reason = refusal(&errors, batch.failed, upload.items_total);
            ended.push((upload, Outcome::Refused { failed: batch.failed, errors, reason }));
            continue;
        }
        // Trimmed, as the catalog stores skus.
        let skus: HashSet<&str> = batch.upserts.iter().map(|item| item.sku.trim()).collect();
        if skus.iter().any(|sku| group_skus.contains(*sku)) {
            deferred.push(upload.id);
            continue;
        }
        group_skus.extend(skus.into_iter().map(str::to_string));
        members.push((upload, batch));
    }

    // Moved out, not copied; each member's share of the outcomes is its count of them.
    let shares: Vec<usize> = members.iter().map(|(_, batch)| batch.upserts.len()).collect();
    let upserts: Vec<catalog::ProductUpsert> =
        members.iter_mut().flat_map(|(_, batch)| std::mem::take(&mut batch.upserts)).collect();
    let upserted = if upserts.is_empty() {
        Vec::new()
    } else {
        catalog::upsert_each_by_sku(&state.catalog, &txn, &upserts).await.map_err(app_error)?
    };
    let mut outcomes = upserted.into_iter();
    for ((upload, batch), share) in members.into_iter().zip(shares) {
        let mine: Vec<Upserted> = outcomes.by_ref().take(share).collect();
        let UpsertOutcome { created, updated } = UpsertOutcome::of(&mine);
        let progress = BatchProgress {
            items: i64::try_from(batch.items).unwrap_or(i64::MAX),
            failed: batch.failed,
            created,
            updated,
            item_errors: batch.item_errors,
        };
        ended.push((upload, Outcome::Ingested(progress)));
    }

    // Each upload ended, with the outcome `emporium_uploads_ingested_total` counts.
    let mut finished: Vec<(UploadRecord, &'static str)> = Vec::with_capacity(ended.len());
    let mut first_failed = None;
    for (upload, outcome) in ended {
        let (row, label) = match outcome {
            Outcome::Ingested(progress) => (model::ingested(&txn, upload.id, &progress).await, "succeeded"),
            Outcome::Refused { failed, errors, reason } => {
                (model::reject_everything(&txn, upload.id, failed, &errors, &reason).await, "refused")
            }
            Outcome::Broken(reason) => {
                if upload.id == id {
                    first_failed = Some(reason.clone());
                }
                (model::finish(&txn, upload.id, Some(&reason)).await, "failed")
            }
        };
        match row.map_err(app_error)? {
            Some(row) => finished.push((row, label)),
            None => {
                txn.rollback().await?;
                return Err(Failure::Retry(anyhow::anyhow!(
                    "upload {} changed state while it was ingested",
                    upload.id
                )));
            }
        }
    }
    model::requeue(&txn, &deferred).await.map_err(app_error)?;
    // As the one-upload path: a body that failed to decode stays, for a look at it.
    let done: Vec<i64> =
        finished.iter().filter(|(_, outcome)| *outcome != "failed").map(|(upload, _)| upload.id).collect();
    model::delete_bodies(&txn, &done).await.map_err(app_error)?;
    // The others' jobs, never started, are done by this one; a job that another worker
    // started meanwhile finds its upload ended.
    let others: Vec<i64> =
        finished.iter().filter(|(upload, _)| upload.id != id).filter_map(|(upload, _)| upload.job_id).collect();
    state.jobs.finish_unstarted(&txn, &others).await?;
    txn.commit().await?;

    report(state, &finished).await;
    match first_failed {
        Some(reason) => Err(Failure::Permanent(reason)),
        // Left for later itself (it shares a sku with an older upload of the group, now
        // ingested): the one-upload path takes it, after that older one.
        None => Ok(!deferred.contains(&id)),
    }
}

async fn report(state: &Uploads, finished: &[(UploadRecord, &'static str)]) {
    let mut items = 0u64;
    for (upload, outcome) in finished {
        publish_progress(state, upload).await;
        metrics::counter!("emporium_uploads_ingested_total", "outcome" => *outcome).increment(1);
        items += u64::try_from(upload.items_done).unwrap_or(0);
    }
    metrics::counter!("emporium_upload_items_ingested_total").increment(items);
    metrics::histogram!("emporium_upload_ingest_group_size").record(finished.len() as f64);
    tracing::info!(uploads = finished.len(), items, "small uploads ingested together");
}
