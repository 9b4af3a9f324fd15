//! The record store: customers, records (discs) with stock, and purchases.
//!
//! - `customers`: accounts with a case-insensitively unique e-mail; deactivation keeps
//!   the account and its history but stops new purchases.
//! - `records`: the catalog of discs with price (minor units) and stock on hand.
//! - `purchases`: buying is oversell-proof on SQLite and Postgres alike — stock is
//!   taken by one conditional `UPDATE` in the purchase's transaction; when it takes
//!   nothing the purchase is still stored as `OUT_OF_STOCK`. Cancelling an effective
//!   purchase returns its units exactly once.
//!
//! Stock changes only by single conditional statements (purchase, cancellation,
//! restock), so the identity `stock = initial + restocked − effective + cancelled`
//! holds under any concurrency, and a CHECK keeps stock non-negative in the database.

mod customers;
pub mod entity;
pub mod graphql;
mod loaders;
mod model;
mod purchases;
mod record;
mod validate;

pub use graphql::{RecordsMutation, RecordsQuery};
pub use loaders::StoreLoader;
pub use model::{Customer, Purchase, Record};

use sea_orm::DatabaseConnection;

use crate::state::AppState;

/// The record store's handle: its database, its GraphQL batch loader and the page cap.
#[derive(Clone)]
pub struct Records {
    pub db: DatabaseConnection,
    pub loader: StoreLoader,
    /// `PAGE_MAX`.
    pub page_max: usize,
}

impl Records {
    pub fn new(shared: &AppState) -> Self {
        Self { db: shared.db.clone(), loader: loaders::loader(shared.db.clone()), page_max: shared.page_max }
    }
}
