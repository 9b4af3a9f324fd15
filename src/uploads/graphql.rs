//! GraphQL: `upload(id)`, `uploads(first, after, status)` and the `uploadProgress(id)`
//! subscription. Uploads themselves arrive over REST (`POST /v1/products`): a GraphQL
//! request cannot stream a gigabyte body.

use std::collections::HashMap;

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, Object, SchemaBuilder, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};

use super::{
    Uploads,
    model::{self, ErrorPolicy, ItemError, UploadOrderField, UploadRecord},
    progress_topic,
};
use crate::{
    db::to_datetime,
    error::{AppError, AppResult},
    global_id,
    paging::{Cursor, OrderDirection, Page, PageArgs, Paged, Totals, connection},
};

/// The uploads' handle inside a resolver (every schema that serves is built with it).
fn state<'a>(ctx: &Context<'a>) -> &'a Uploads {
    ctx.data_unchecked::<Uploads>()
}

/// Where an upload's ingestion stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum UploadStatus {
    /// Accepted; waiting for a node to ingest it.
    Queued,
    /// Its products are being upserted, batch by batch.
    Ingesting,
    /// Every item was processed.
    Succeeded,
    /// Ingestion stopped for good; `error` says why.
    Failed,
}

impl UploadStatus {
    fn from_stored(status: &str) -> Self {
        match status {
            model::INGESTING => Self::Ingesting,
            model::SUCCEEDED => Self::Succeeded,
            model::FAILED => Self::Failed,
            _ => Self::Queued,
        }
    }

    fn as_stored(self) -> &'static str {
        match self {
            Self::Queued => model::QUEUED,
            Self::Ingesting => model::INGESTING,
            Self::Succeeded => model::SUCCEEDED,
            Self::Failed => model::FAILED,
        }
    }
}

/// One error of one uploaded item: which item, which of its fields, why, and what the
/// upload's `errorPolicy` made of the item.
#[derive(Debug, Clone, SimpleObject)]
pub struct UploadItemError {
    /// Position of the item in the uploaded array, from 0.
    pub index: i64,
    /// The item's `id` as uploaded ("" when it has none).
    pub sku: String,
    /// The item's field as named in the body (`id`, `name`, `description` or another
    /// key), `attributes` for its other fields taken together; "" for errors recorded
    /// before fields were.
    pub field: String,
    /// Why the field was refused, in words.
    pub reason: String,
    /// True when the item was ingested without this field (`IGNORE_FAILED`); false when
    /// the item was skipped (or, under `REJECT_EVERYTHING`, nothing was ingested).
    pub kept: bool,
}

impl From<ItemError> for UploadItemError {
    fn from(error: ItemError) -> Self {
        Self {
            index: i64::try_from(error.index).unwrap_or(i64::MAX),
            sku: error.sku,
            field: error.field,
            reason: error.reason,
            kept: error.kept,
        }
    }
}

/// A bulk product upload (`POST /v1/products`) and its ingestion.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex)]
pub struct Upload {
    /// The upload's global id (opaque; `node(id:)` refetches it). `POST /v1/products`
    /// answers it as `node_id`, beside its own numeric `upload_id`.
    #[graphql(owned)]
    pub id: ID,
    /// The row's id, for cursors.
    #[graphql(skip)]
    pub row_id: i64,
    /// Where the ingestion stands.
    pub status: UploadStatus,
    /// Size of the body in bytes.
    pub bytes: i64,
    /// BLAKE3 digest of the body's exact bytes (lowercase hex): the dedup window's key.
    pub digest: String,
    /// Products in the body.
    pub items_total: i64,
    /// Products processed so far (committed).
    pub items_done: i64,
    /// How items with errors are handled (chosen with `?errorPolicy=` or the
    /// `Emporium-Error-Policy` header of `POST /v1/products`).
    pub error_policy: ErrorPolicy,
    /// Items with at least one error so far: skipped, or under `IGNORE_FAILED` perhaps
    /// ingested without their invalid fields (see `itemErrors`).
    pub items_failed: i64,
    /// The first item errors (at most 20), in body order.
    pub item_errors: Vec<UploadItemError>,
    /// Products this upload created.
    pub products_created: i64,
    /// Existing products this upload changed.
    pub products_updated: i64,
    /// Why ingestion failed, when `status` is `FAILED`.
    pub error: Option<String>,
    /// When the upload was accepted.
    pub created_at: DateTime<Utc>,
    /// When its status or progress last changed.
    pub updated_at: DateTime<Utc>,
    /// When it became `SUCCEEDED` or `FAILED`; null before.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<UploadRecord> for Upload {
    fn from(record: UploadRecord) -> Self {
        let item_errors = record.item_errors().into_iter().map(UploadItemError::from).collect();
        let error_policy = record.error_policy();
        Self {
            id: global_id::of::<Upload>(record.id),
            row_id: record.id,
            status: UploadStatus::from_stored(&record.status),
            bytes: record.bytes,
            digest: record.digest,
            items_total: record.items_total,
            items_done: record.items_done,
            error_policy,
            items_failed: record.items_rejected,
            item_errors,
            products_created: record.products_created,
            products_updated: record.products_updated,
            error: record.error,
            created_at: to_datetime(record.created_at),
            updated_at: to_datetime(record.updated_at),
            finished_at: record.finished_at.map(to_datetime),
        }
    }
}

#[ComplexObject]
impl Upload {
    /// The former name of `itemsFailed`.
    #[graphql(deprecation = "Use `itemsFailed`.")]
    async fn items_rejected(&self) -> i64 {
        self.items_failed
    }

    /// The former name of `itemErrors`.
    #[graphql(deprecation = "Use `itemErrors`, which also names each error's field.")]
    async fn rejections(&self) -> &[UploadItemError] {
        &self.item_errors
    }
}

/// How to order uploads: `{field: CREATED_AT, direction: DESC}` is the newest first.
#[derive(InputObject, Debug, Clone, Copy, Default)]
pub struct UploadOrder {
    /// The field to order by.
    pub field: UploadOrderField,
    /// ASC (oldest first) when omitted.
    #[graphql(default)]
    pub direction: OrderDirection,
}

#[derive(Default)]
pub struct UploadQuery;

#[Object]
impl UploadQuery {
    /// An upload by its global id (the `node_id` that `POST /v1/products` answered); null
    /// when there is none (a malformed id, or one of another type, is BAD_USER_INPUT).
    async fn upload(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The upload's global id (`Upload.id`, the REST answer's `node_id`).")] id: ID,
    ) -> async_graphql::Result<Option<Upload>> {
        let id = global_id::parse::<Upload>(&id)?;
        Ok(model::get(&state(ctx).db, id).await?.map(Upload::from))
    }

    /// Uploads, oldest first unless `orderBy` says otherwise, optionally only those in one
    /// status.
    // Each parameter is an argument of the GraphQL field: the schema fixes how many.
    #[allow(clippy::too_many_arguments)]
    async fn uploads(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Forward paging: the page size, 0 to PAGE_MAX (100 by default); 20 when neither \
                          `first` nor `last` is given. Beyond that range, or together with `last`: BAD_USER_INPUT.")]
        first: Option<i32>,
        #[graphql(desc = "Forward paging: the items after this cursor (the previous page's \
                          `pageInfo.endCursor`); from the start when omitted. A malformed cursor, or one made for \
                          another `orderBy`, is BAD_USER_INPUT.")]
        after: Option<String>,
        #[graphql(desc = "Backward paging: the page size counted back from `before` (or from the end), 0 to \
                          PAGE_MAX; the page's items still come in the list's order. Beyond that range, or \
                          together with `first`: BAD_USER_INPUT.")]
        last: Option<i32>,
        #[graphql(desc = "Backward paging: the items before this cursor (the next page's \
                          `pageInfo.startCursor`); up to the end when omitted. A malformed cursor, or one made for \
                          another `orderBy`, is BAD_USER_INPUT.")]
        before: Option<String>,
        #[graphql(desc = "The list's order; creation order (`{field: CREATED_AT, direction: ASC}`) when omitted. \
                          A cursor belongs to one ordering: after changing it, start again from the first page.")]
        order_by: Option<UploadOrder>,
        #[graphql(desc = "Only uploads in this status; all when omitted.")] status: Option<UploadStatus>,
    ) -> async_graphql::Result<Paged<Upload>> {
        let state = state(ctx);
        let order = order_by.unwrap_or_default();
        let page =
            Page::new(PageArgs { first, after, last, before }, state.page_max, order.field.ordering(order.direction))?;
        let status = status.map(UploadStatus::as_stored);
        let rows = model::list(&state.db, &page, status).await?;
        let db = state.db.clone();
        let totals = Totals::new(move || async move { model::count(&db, status).await });
        let uploads = rows.into_iter().map(Upload::from).collect();
        Ok(connection(uploads, &page, |upload: &Upload| Cursor::by_id(upload.row_id), totals))
    }
}

impl UploadQuery {
    /// Describes the connection this domain's list returns: async-graphql generates the
    /// type, so no doc comment reaches it.
    pub fn describe_connections<Q, M, S>(builder: SchemaBuilder<Q, M, S>) -> SchemaBuilder<Q, M, S> {
        builder.override_output_type_description::<Paged<Upload>>(
            "A page of uploads in the order asked (`orderBy`; oldest first by default): `nodes` (or \
             `edges`, each with its cursor), `pageInfo` (`endCursor` to pass as `after` for the next page, \
             `startCursor` as `before` for the previous one), and `totalCount`.",
        )
    }
}

#[derive(Default)]
pub struct UploadSubscription;

#[Subscription]
impl UploadSubscription {
    /// The upload as it is now, then again after every committed batch, until it
    /// succeeds or fails (the stream then ends).
    async fn upload_progress(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The upload to follow; NOT_FOUND when there is none.")] id: ID,
    ) -> async_graphql::Result<impl Stream<Item = Upload>> {
        let id = global_id::parse::<Upload>(&id)?;
        let state = state(ctx).clone();
        // Subscribe before reading the current state, so no update falls in between.
        let mut updates = state.events.subscribe::<UploadRecord>(&progress_topic(id)).boxed();
        let current = model::get(&state.db, id).await?.ok_or_else(|| AppError::not_found(format!("no upload {id}")))?;
        Ok(async_stream::stream! {
            let mut last = current;
            let finished = last.is_finished();
            yield Upload::from(last.clone());
            if !finished {
                while let Some(update) = updates.next().await {
                    // Updates only move forward; skip one older than what was shown.
                    if update.items_done < last.items_done && !update.is_finished() {
                        continue;
                    }
                    last = update;
                    yield Upload::from(last.clone());
                    if last.is_finished() {
                        break;
                    }
                }
            }
        })
    }
}

/// Uploads by row (`node`, `nodes`): one statement.
pub async fn uploads_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, Upload>> {
    let found = model::by_ids(&state(ctx).db, rows).await?;
    Ok(found.into_iter().map(|record| (record.id, Upload::from(record))).collect())
}
