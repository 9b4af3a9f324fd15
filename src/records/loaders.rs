//! Batched lookups for nested fields, so a list of N purchases or customers costs one
//! query per field instead of N (`Purchase.customer`, `Purchase.record`,
//! `Customer.purchases` and its `totalCount`).
//!
//! One loader without a cache, shared by all requests: requests that resolve at the
//! same moment share a batch, and nothing stale outlives a batch.

use std::{collections::HashMap, sync::Arc};

use async_graphql::dataloader::{DataLoader, Loader};
use sea_orm::DatabaseConnection;

use super::{
    customers,
    model::{Customer, Purchase, Record},
    purchases::{self, CustomerPage},
    record,
};
use crate::error::AppError;

/// The shared loader, registered as schema data (an `Arc` so lazy `totalCount`s can
/// hold on to it).
pub type StoreLoader = Arc<DataLoader<StoreBatches>>;

pub fn loader(db: DatabaseConnection) -> StoreLoader {
    // Keys per batch stay well below both backends' bound-parameter limits.
    Arc::new(DataLoader::new(StoreBatches { db }, tokio::spawn).max_batch_size(500))
}

pub struct StoreBatches {
    db: DatabaseConnection,
}

/// Loader errors must be `Clone`; the resolver turns them back into the `AppError` they were.
#[derive(Clone)]
pub struct BatchError(Arc<AppError>);

impl BatchError {
    pub fn into_app_error(self) -> AppError {
        match Arc::try_unwrap(self.0) {
            Ok(error) => error,
            Err(shared) => shared.duplicate(),
        }
    }
}

impl From<AppError> for BatchError {
    fn from(error: AppError) -> Self {
        Self(Arc::new(error))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomerKey(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PurchaseCountKey(pub i64);

impl Loader<CustomerKey> for StoreBatches {
    type Value = Customer;
    type Error = BatchError;

    async fn load(&self, keys: &[CustomerKey]) -> Result<HashMap<CustomerKey, Customer>, BatchError> {
        let ids: Vec<i64> = keys.iter().map(|key| key.0).collect();
        let rows = customers::by_ids(&self.db, &ids).await?;
        Ok(rows.into_iter().map(|customer| (CustomerKey(customer.id), customer)).collect())
    }
}

impl Loader<RecordKey> for StoreBatches {
    type Value = Record;
    type Error = BatchError;

    async fn load(&self, keys: &[RecordKey]) -> Result<HashMap<RecordKey, Record>, BatchError> {
        let ids: Vec<i64> = keys.iter().map(|key| key.0).collect();
        let rows = record::by_ids(&self.db, &ids).await?;
        Ok(rows.into_iter().map(|record| (RecordKey(record.id), record)).collect())
    }
}

impl Loader<CustomerPage> for StoreBatches {
    type Value = Vec<Purchase>;
    type Error = BatchError;

    async fn load(&self, keys: &[CustomerPage]) -> Result<HashMap<CustomerPage, Vec<Purchase>>, BatchError> {
        let pages = purchases::pages_by_customer(&self.db, keys).await?;
        Ok(keys.iter().cloned().zip(pages).collect())
    }
}

impl Loader<PurchaseCountKey> for StoreBatches {
    type Value = i64;
    type Error = BatchError;

    async fn load(&self, keys: &[PurchaseCountKey]) -> Result<HashMap<PurchaseCountKey, i64>, BatchError> {
        let ids: Vec<i64> = keys.iter().map(|key| key.0).collect();
        let counts: HashMap<i64, i64> = purchases::counts_by_customer(&self.db, &ids).await?.into_iter().collect();
        // Customers without purchases are absent from the query: their count is 0.
        Ok(keys.iter().map(|key| (*key, counts.get(&key.0).copied().unwrap_or(0))).collect())
    }
}
