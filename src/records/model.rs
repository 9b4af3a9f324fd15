//! The store's rows as the API reads them (partial models of the entities in
//! `entity/`), the purchase status, and the keyset page and count every list runs.

use sea_orm::{
    ConnectionTrait, DerivePartialModel, EntityTrait, PartialModelTrait, QuerySelect as _, Select,
    sea_query::{Asterisk, Expr, Func},
};

use super::entity::{customer, purchase, record};
use crate::{
    error::{AppError, AppResult},
    paging::Page,
};

#[derive(Debug, Clone, DerivePartialModel)]
#[sea_orm(entity = "customer::Entity")]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub deactivated_at: Option<i64>,
}

impl From<customer::Model> for Customer {
    fn from(row: customer::Model) -> Self {
        Self {
            id: row.id,
            name: row.name,
            email: row.email,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deactivated_at: row.deactivated_at,
        }
    }
}

/// A record (disc) of the store's catalog.
#[derive(Debug, Clone, DerivePartialModel)]
#[sea_orm(entity = "record::Entity")]
pub struct Record {
    pub id: i64,
    pub title: String,
    pub artist: String,
    pub genre: String,
    pub release_year: i32,
    /// Minor units.
    pub price: i64,
    pub stock: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<record::Model> for Record {
    fn from(row: record::Model) -> Self {
        Self {
            id: row.id,
            title: row.title,
            artist: row.artist,
            genre: row.genre,
            release_year: row.release_year,
            price: row.price,
            stock: row.stock,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A purchase: every column of `purchases`.
pub type Purchase = purchase::Model;

/// Where a purchase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum PurchaseStatus {
    /// Stock was taken: the purchase went through.
    Effective,
    /// There was not enough stock when it was made; stored as a record of the attempt,
    /// stock untouched.
    OutOfStock,
    /// Was effective, then cancelled; its units went back to stock.
    Cancelled,
}

impl PurchaseStatus {
    /// The stored spelling (the same as the GraphQL enum value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Effective => "EFFECTIVE",
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(stored: &str) -> AppResult<Self> {
        match stored {
            "EFFECTIVE" => Ok(Self::Effective),
            "OUT_OF_STOCK" => Ok(Self::OutOfStock),
            "CANCELLED" => Ok(Self::Cancelled),
            other => Err(AppError::Internal(anyhow::anyhow!("unknown purchase status `{other}` in the database"))),
        }
    }
}

impl Purchase {
    pub fn current_status(&self) -> AppResult<PurchaseStatus> {
        PurchaseStatus::parse(&self.status)
    }
}

/// One keyset page of `select` in the page's ordering, whose column is `sort` (`None`:
/// by id).
pub async fn page<E, M>(
    db: &impl ConnectionTrait,
    select: Select<E>,
    sort: Option<E::Column>,
    id: E::Column,
    page: &Page,
) -> AppResult<Vec<M>>
where
    E: EntityTrait,
    M: PartialModelTrait + Send + Sync,
{
    page.fetch(select, sort, id, |select| select.into_partial_model::<M>().all(db)).await
}

/// How many rows `select` matches (for `totalCount`).
pub async fn count<E: EntityTrait>(db: &impl ConnectionTrait, select: Select<E>) -> AppResult<i64> {
    let n = select.select_only().expr(Func::count(Expr::col(Asterisk))).into_tuple::<i64>().one(db).await?;
    Ok(n.unwrap_or(0))
}
