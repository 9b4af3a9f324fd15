//! The offer sync: a periodic job (one node at a time, by the foundation's lease; a run
//! longer than its period never overlaps itself) that fetches the offers of every
//! registered product with bounded concurrency and applies each product's snapshot in
//! its own transaction: upsert offers, delete the vanished ones, append to the price
//! history only what changed, then announce the price changes to subscribers.
//!
//! A failing product is logged, counted and noted on the product; it does not stop the
//! rest. A service that looks down (`OFFERS_SYNC_ABORT_AFTER` failures in a row) or that
//! rejects our token ends the run early: the rest waits for the next run instead of
//! hammering a service that cannot answer.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use futures::StreamExt as _;
use sea_orm::{
    ColumnTrait as _, Condition, ConnectionTrait as _, EntityTrait as _, FromQueryResult, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, TransactionTrait as _,
    sea_query::{Expr, OnConflict, Query},
};
use serde::{Deserialize, Serialize};

use super::Catalog;
use super::{
    client::{OffersError, RemoteOffer, write_setting},
    entity::{offer, price_history, product},
    model::{OfferRow, Registration},
    registration,
};
use crate::{db::now_ms, jobs::periodic::Periodic};

pub const SYNC_JOB: &str = "catalog.offers_sync";
/// Event topic of offer price changes (payload: [`PriceChanges`]).
pub const PRICE_TOPIC: &str = "catalog.offer_prices";
/// The last sync's report (JSON in `settings`), for `/health`.
pub(super) const LAST_SYNC_KEY: &str = "offers.last_sync";

pub fn periodic(catalog: &Arc<Catalog>) -> Vec<Periodic> {
    let catalog = catalog.clone();
    vec![Periodic::new(SYNC_JOB, catalog.config.offers_sync_cron.clone(), move || {
        let catalog = catalog.clone();
        async move { sync_periodically(&catalog).await }
    })]
}

/// One scheduled sync; a run where nothing could be synced fails (and says why).
async fn sync_periodically(catalog: &Catalog) -> anyhow::Result<()> {
    let report = sync_offers(catalog).await?;
    if report.aborted || (report.failed > 0 && report.synced == 0) {
        anyhow::bail!(
            "offer sync {}: {} of {} products failed; last error: {}",
            if report.aborted { "stopped early" } else { "failed" },
            report.failed,
            report.products,
            report.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// What one sync run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncReport {
    pub started_at: i64,
    pub finished_at: i64,
    /// Registered products at the start of the run.
    pub products: u64,
    /// Products whose offers were fetched and applied.
    pub synced: u64,
    pub failed: u64,
    /// Products the service no longer knew (404), queued for registration again.
    pub reregistered: u64,
    /// Products not attempted because the run stopped early.
    pub skipped: u64,
    pub aborted: bool,
    /// Offers whose price changed, appeared or vanished.
    pub price_changes: u64,
    pub last_error: Option<String>,
}

/// One offer's price change, as announced to subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriceChange {
    /// Our id of the offer.
    pub offer_id: i64,
    pub source_id: String,
    /// `None` for an offer that just appeared.
    pub previous_price: Option<i64>,
    /// `None` for an offer that was withdrawn.
    pub price: Option<i64>,
}

/// The price changes found for one product at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriceChanges {
    pub product_id: i64,
    pub at: i64,
    pub changes: Vec<PriceChange>,
}

/// Runs one sync of every registered product (the periodic job's body; tests and the
/// benchmark call it directly).
pub async fn sync_offers(state: &Catalog) -> anyhow::Result<SyncReport> {
    let started = Instant::now();
    let mut report = SyncReport { started_at: now_ms(), ..SyncReport::default() };
    let ids = registered_product_ids(&state.db).await?;
    report.products = ids.len() as u64;

    let config = &state.config;
    let in_a_row = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Every database write of a product happens inside its own future: the loop below
    // must never await the database itself, or it could wait on a write lock held by a
    // buffered future it is not polling (SQLite has one writer).
    let mut outcomes = futures::stream::iter(ids)
        .map(|id| {
            let in_a_row = in_a_row.clone();
            let stop = stop.clone();
            async move {
                if stop.load(Ordering::Relaxed) {
                    return Outcome::Skipped;
                }
                let outcome = sync_product(state, id).await;
                match &outcome {
                    Ok(_) | Err(OffersError::NotRegistered | OffersError::Rejected { .. }) => {
                        in_a_row.store(0, Ordering::Relaxed);
                    }
                    // A rejected token will not be accepted for the next product either.
                    Err(OffersError::Unauthorized(_) | OffersError::Deferred(_)) => stop.store(true, Ordering::Relaxed),
                    Err(OffersError::Unavailable(_) | OffersError::Database(_)) => {
                        if in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= config.offers_sync_abort_after {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
                settle(state, id, outcome).await
            }
        })
        .buffer_unordered(config.offers_sync_concurrency.max(1));

    while let Some(outcome) = outcomes.next().await {
        match outcome {
            Outcome::Skipped => report.skipped += 1,
            Outcome::Synced(changes) => {
                report.synced += 1;
                report.price_changes += changes as u64;
            }
            Outcome::Reregistered => report.reregistered += 1,
            Outcome::Failed(message) => {
                report.failed += 1;
                report.last_error = Some(message);
            }
        }
    }
    drop(outcomes);
    report.aborted = stop.load(Ordering::Relaxed);
    report.finished_at = now_ms();

    for (outcome, count) in [
        ("synced", report.synced),
        ("failed", report.failed),
        ("reregistered", report.reregistered),
        ("skipped", report.skipped),
    ] {
        metrics::counter!("emporium_catalog_sync_products_total", "outcome" => outcome).increment(count);
    }
    metrics::counter!("emporium_catalog_price_changes_total").increment(report.price_changes);
    let level_ok = report.failed == 0 && !report.aborted;
    if level_ok {
        tracing::info!(
            products = report.products,
            price_changes = report.price_changes,
            reregistered = report.reregistered,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "offer sync finished"
        );
    } else {
        tracing::warn!(
            products = report.products,
            synced = report.synced,
            failed = report.failed,
            skipped = report.skipped,
            aborted = report.aborted,
            last_error = report.last_error.as_deref().unwrap_or("-"),
            "offer sync finished with failures"
        );
    }
    if let Err(error) = write_setting(&state.db, LAST_SYNC_KEY, &serde_json::to_string(&report)?).await {
        tracing::warn!(error = %error, "recording the sync report failed");
    }
    Ok(report)
}

/// The products the sync covers: those registered with the offers service, by id.
pub async fn registered_product_ids(db: &impl sea_orm::ConnectionTrait) -> Result<Vec<i64>, sea_orm::DbErr> {
    product::Entity::find()
        .select_only()
        .column(product::Column::Id)
        .filter(product::Column::RegistrationStatus.eq(Registration::Registered.as_str()))
        .order_by_asc(product::Column::Id)
        .into_tuple::<i64>()
        .all(db)
        .await
}

/// What the sync did with one product.
enum Outcome {
    Synced(usize),
    Reregistered,
    Failed(String),
    Skipped,
}

/// Records the consequence of one product's fetch: a forgotten product is queued for
/// registration again, a failure is noted on the product.
async fn settle(state: &Catalog, id: i64, outcome: Result<usize, OffersError>) -> Outcome {
    match outcome {
        Ok(changes) => Outcome::Synced(changes),
        Err(OffersError::NotRegistered) => {
            let requeued = async {
                let txn = state.db.begin().await?;
                let reason = "the offers service no longer knew the product; registering it again";
                registration::requeue(state, &txn, id, Some(reason)).await?;
                txn.commit().await
            }
            .await;
            match requeued {
                Ok(()) => Outcome::Reregistered,
                Err(error) => {
                    tracing::warn!(product = id, error = %error, "queueing registration again failed");
                    Outcome::Failed(format!("queueing registration again failed: {error}"))
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            tracing::warn!(product = id, error = %message, "offer sync of a product failed");
            note_sync_error(state, id, &message).await;
            Outcome::Failed(message)
        }
    }
}

/// Fetches one product's offers and applies them; returns how many prices changed.
pub async fn sync_product(state: &Catalog, product_id: i64) -> Result<usize, OffersError> {
    let offers = state.offers.offers(&state.db, product_id).await?;
    let fetched_at = now_ms();
    Ok(apply(state, product_id, &offers, fetched_at).await?)
}

/// The error of a product's last sync, shown in its `registration.lastError` until a
/// sync succeeds.
async fn note_sync_error(state: &Catalog, id: i64, error: &str) {
    let noted = product::Entity::update_many()
        .col_expr(product::Column::RegistrationError, Expr::value(format!("offer sync failed: {error}")))
        .filter(product::Column::Id.eq(id))
        .filter(product::Column::RegistrationStatus.eq(Registration::Registered.as_str()))
        .exec(&state.db)
        .await;
    if let Err(error) = noted {
        tracing::warn!(product = id, error = %error, "recording a sync error failed");
    }
}

/// Applies one product's offers snapshot taken at `fetched_at`, in one transaction.
///
/// The transaction first claims the snapshot on the product row (`offers_synced_at`),
/// which serializes concurrent applies for the product (a registration's first fetch
/// and a sync) and skips a snapshot older than the one already applied: no duplicate
/// offers, no history row written twice, no price rolled back by a late answer.
pub async fn apply(
    state: &Catalog,
    product_id: i64,
    offers: &[RemoteOffer],
    fetched_at: i64,
) -> Result<usize, sea_orm::DbErr> {
    let txn = state.db.begin().await?;
    let claimed = product::Entity::update_many()
        .col_expr(product::Column::OffersSyncedAt, Expr::value(fetched_at))
        .col_expr(product::Column::RegistrationError, Expr::value(Option::<String>::None))
        // The snapshot becomes the product's offers below, in this transaction.
        .col_expr(product::Column::LowestPrice, Expr::value(offers.iter().map(|offer| offer.price).min()))
        .filter(product::Column::Id.eq(product_id))
        .filter(
            Condition::any()
                .add(product::Column::OffersSyncedAt.is_null())
                .add(product::Column::OffersSyncedAt.lt(fetched_at)),
        )
        .exec(&txn)
        .await?
        .rows_affected;
    if claimed == 0 {
        // Deleted meanwhile, or a newer snapshot is already applied.
        txn.rollback().await?;
        return Ok(0);
    }
    let current: Vec<OfferRow> =
        offer::Entity::find().filter(offer::Column::ProductId.eq(product_id)).all(&txn).await?;
    let current: HashMap<&str, &OfferRow> = current.iter().map(|row| (row.source_id.as_str(), row)).collect();

    let mut upserts: Vec<&RemoteOffer> = Vec::new();
    // (source id, previous price, new price); `None` new price = withdrawn.
    let mut changes: Vec<(&str, Option<i64>, Option<i64>)> = Vec::new();
    for offer in offers {
        match current.get(offer.source_id.as_str()) {
            None => {
                upserts.push(offer);
                changes.push((&offer.source_id, None, Some(offer.price)));
            }
            Some(row) if row.price != offer.price => {
                upserts.push(offer);
                changes.push((&offer.source_id, Some(row.price), Some(offer.price)));
            }
            Some(row) if row.items_in_stock != offer.items_in_stock => upserts.push(offer),
            Some(_) => {}
        }
    }
    let vanished: Vec<&OfferRow> =
        current.values().filter(|row| !offers.iter().any(|offer| offer.source_id == row.source_id)).copied().collect();
    for row in &vanished {
        changes.push((&row.source_id, Some(row.price), None));
    }

    let mut ids: HashMap<String, i64> = current.iter().map(|(source, row)| (source.to_string(), row.id)).collect();
    if !upserts.is_empty() {
        let mut insert = Query::insert();
        insert.into_table(offer::Entity).columns([
            offer::Column::ProductId,
            offer::Column::SourceId,
            offer::Column::Price,
            offer::Column::ItemsInStock,
            offer::Column::CreatedAt,
            offer::Column::UpdatedAt,
        ]);
        for offer in &upserts {
            insert
                .values([
                    product_id.into(),
                    offer.source_id.clone().into(),
                    offer.price.into(),
                    offer.items_in_stock.into(),
                    fetched_at.into(),
                    fetched_at.into(),
                ])
                .map_err(|error| sea_orm::DbErr::Custom(error.to_string()))?;
        }
        insert
            .on_conflict(
                OnConflict::columns([offer::Column::ProductId, offer::Column::SourceId])
                    .update_columns([offer::Column::Price, offer::Column::ItemsInStock, offer::Column::UpdatedAt])
                    .to_owned(),
            )
            .returning(Query::returning().columns([offer::Column::Id, offer::Column::SourceId]));
        #[derive(FromQueryResult)]
        struct Upserted {
            id: i64,
            source_id: String,
        }
        let upserted = txn
            .query_all(&insert)
            .await?
            .iter()
            .map(|row| Upserted::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?;
        ids.extend(upserted.into_iter().map(|row| (row.source_id, row.id)));
    }
    if !vanished.is_empty() {
        offer::Entity::delete_many()
            .filter(offer::Column::Id.is_in(vanished.iter().map(|row| row.id)))
            .exec(&txn)
            .await?;
    }
    if !changes.is_empty() {
        let mut insert = Query::insert();
        insert.into_table(price_history::Entity).columns([
            price_history::Column::ProductId,
            price_history::Column::OfferSourceId,
            price_history::Column::Price,
            price_history::Column::RecordedAt,
        ]);
        for (source, _, price) in &changes {
            insert
                .values([product_id.into(), source.to_string().into(), (*price).into(), fetched_at.into()])
                .map_err(|error| sea_orm::DbErr::Custom(error.to_string()))?;
        }
        txn.execute(&insert).await?;
    }
    txn.commit().await?;

    if !changes.is_empty() {
        let event = PriceChanges {
            product_id,
            at: fetched_at,
            changes: changes
                .iter()
                .map(|(source, previous_price, price)| PriceChange {
                    offer_id: ids.get(*source).copied().unwrap_or_default(),
                    source_id: source.to_string(),
                    previous_price: *previous_price,
                    price: *price,
                })
                .collect(),
        };
        state.events.publish(PRICE_TOPIC, &event).await;
    }
    Ok(changes.len())
}
