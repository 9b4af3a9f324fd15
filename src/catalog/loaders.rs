//! The catalog's batch loaders: a list of products with their offers, lowest prices and
//! trends costs a constant number of SQL statements (no N+1).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_graphql::dataloader::{DataLoader, Loader};
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _, QueryOrder as _};
use tokio::sync::OnceCell;

use super::{
    entity::{offer, product},
    model::{OfferRow, ProductRow},
    omnibus::{self, Omnibus},
    trend::{self, Period, ProductHistory},
};
use crate::{db::now_ms, error::AppError};

/// The catalog's batch loaders. They live for the node (not per request) and do not
/// cache: each batch reads fresh rows, and concurrent requests share batches.
pub struct Loaders {
    offers: DataLoader<OffersByProduct>,
    pub(super) products: DataLoader<ProductsById>,
    histories: DataLoader<HistoriesByProduct>,
    omnibus: DataLoader<OmnibusByProduct>,
}

impl Loaders {
    pub fn new(db: &DatabaseConnection) -> Self {
        Self {
            offers: DataLoader::new(OffersByProduct(db.clone()), tokio::spawn),
            products: DataLoader::new(ProductsById(db.clone()), tokio::spawn),
            histories: DataLoader::new(HistoriesByProduct(db.clone()), tokio::spawn),
            omnibus: DataLoader::new(OmnibusByProduct(db.clone()), tokio::spawn),
        }
    }
}

type LoadError = Arc<sea_orm::DbErr>;

/// A batch's error, keeping its class (an unreachable database is 503, not internal).
pub(super) fn loader_error(error: LoadError) -> AppError {
    error.into()
}

/// The products of one list page. The first resolver that needs offers (or one
/// period's history) of any of them loads them for the whole page through the batch
/// loader; the rest of the page reuses the result. Batching a page therefore does not
/// depend on resolver timing (the loader's short collection window), and nested fields
/// (an offer's trend under its product) reuse the page's rows instead of loading again.
pub struct Batch {
    ids: Vec<i64>,
    offers: OnceCell<HashMap<i64, Arc<Vec<OfferRow>>>>,
    histories: Mutex<HashMap<Period, Arc<OnceCell<PageHistories>>>>,
    omnibus: OnceCell<HashMap<i64, Arc<Omnibus>>>,
}

/// One period's price histories of a page's products.
type PageHistories = HashMap<(i64, Period), Arc<ProductHistory>>;

impl Batch {
    pub(super) fn new(ids: Vec<i64>) -> Self {
        Self { ids, offers: OnceCell::new(), histories: Mutex::new(HashMap::new()), omnibus: OnceCell::new() }
    }
}

/// The current offers of a product, through its page's batch when it has one.
pub(super) async fn offers_of(
    loaders: &Loaders,
    product_id: i64,
    batch: Option<&Arc<Batch>>,
) -> Result<Arc<Vec<OfferRow>>, AppError> {
    let loader = &loaders.offers;
    let Some(batch) = batch else {
        return Ok(loader.load_one(product_id).await.map_err(loader_error)?.unwrap_or_default());
    };
    let page =
        batch.offers.get_or_try_init(|| loader.load_many(batch.ids.iter().copied())).await.map_err(loader_error)?;
    Ok(page.get(&product_id).cloned().unwrap_or_default())
}

/// A product's figures under the Omnibus price rule, through its page's batch when it has one.
pub(super) async fn omnibus_of(
    loaders: &Loaders,
    product_id: i64,
    batch: Option<&Arc<Batch>>,
) -> Result<Arc<Omnibus>, AppError> {
    let loader = &loaders.omnibus;
    let Some(batch) = batch else {
        return Ok(loader.load_one(product_id).await.map_err(loader_error)?.unwrap_or_default());
    };
    let page =
        batch.omnibus.get_or_try_init(|| loader.load_many(batch.ids.iter().copied())).await.map_err(loader_error)?;
    Ok(page.get(&product_id).cloned().unwrap_or_default())
}

/// A product's price history over `from..to`, through its page's batch when it has one.
pub(super) async fn history_of(
    loaders: &Loaders,
    product_id: i64,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    batch: Option<&Arc<Batch>>,
) -> Result<Arc<ProductHistory>, AppError> {
    let period = Period::new(from.map(|at| at.timestamp_millis()), to.map(|at| at.timestamp_millis()), now_ms())?;
    let loader = &loaders.histories;
    let Some(batch) = batch else {
        return Ok(loader.load_one((product_id, period)).await.map_err(loader_error)?.unwrap_or_default());
    };
    let cell = {
        let mut histories = batch.histories.lock().map_err(|_| AppError::Internal(anyhow::anyhow!("poisoned")))?;
        histories.entry(period).or_default().clone()
    };
    let page = cell
        .get_or_try_init(|| loader.load_many(batch.ids.iter().map(|id| (*id, period))))
        .await
        .map_err(loader_error)?;
    Ok(page.get(&(product_id, period)).cloned().unwrap_or_default())
}

/// Current offers of many products: one statement.
pub struct OffersByProduct(DatabaseConnection);

impl Loader<i64> for OffersByProduct {
    type Value = Arc<Vec<OfferRow>>;
    type Error = LoadError;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Self::Value>, Self::Error> {
        let rows = offer::Entity::find()
            .filter(offer::Column::ProductId.is_in(keys.iter().copied()))
            .order_by_asc(offer::Column::ProductId)
            .order_by_asc(offer::Column::Price)
            .order_by_asc(offer::Column::Id)
            .all(&self.0)
            .await?;
        let mut grouped: HashMap<i64, Vec<OfferRow>> = keys.iter().map(|key| (*key, Vec::new())).collect();
        for row in rows {
            grouped.entry(row.product_id).or_default().push(row);
        }
        Ok(grouped.into_iter().map(|(key, rows)| (key, Arc::new(rows))).collect())
    }
}

/// Products by id: one statement.
pub struct ProductsById(DatabaseConnection);

impl Loader<i64> for ProductsById {
    type Value = ProductRow;
    type Error = LoadError;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Self::Value>, Self::Error> {
        let rows = product::Entity::find().filter(product::Column::Id.is_in(keys.iter().copied())).all(&self.0).await?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }
}

/// Price histories of many products: two statements per distinct period asked for.
pub struct HistoriesByProduct(DatabaseConnection);

impl Loader<(i64, Period)> for HistoriesByProduct {
    type Value = Arc<ProductHistory>;
    type Error = LoadError;

    async fn load(&self, keys: &[(i64, Period)]) -> Result<HashMap<(i64, Period), Self::Value>, Self::Error> {
        let now = now_ms();
        let mut by_period: HashMap<Period, Vec<i64>> = HashMap::new();
        for (id, period) in keys {
            by_period.entry(*period).or_default().push(*id);
        }
        let mut loaded = HashMap::with_capacity(keys.len());
        for (period, ids) in by_period {
            let (from, to) = period.resolve(now);
            let histories = trend::load_histories(&self.0, &ids, from, to).await?;
            loaded.extend(histories.into_iter().map(|(id, history)| ((id, period), Arc::new(history))));
        }
        Ok(loaded)
    }
}

/// Figures under the Omnibus price rule of many products: two statements per round of
/// history read ([`omnibus::load`]: one round when the current prices are recent).
pub struct OmnibusByProduct(DatabaseConnection);

impl Loader<i64> for OmnibusByProduct {
    type Value = Arc<Omnibus>;
    type Error = LoadError;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Self::Value>, Self::Error> {
        let figures = omnibus::load(&self.0, keys, now_ms()).await?;
        Ok(figures.into_iter().map(|(id, figures)| (id, Arc::new(figures))).collect())
    }
}
