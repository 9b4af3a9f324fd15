//! The store's rows as stored, the purchase status, and a small builder for the
//! filtered keyset queries every list runs.

use sea_orm::{ConnectionTrait, FromQueryResult, QueryResult, Value};

use crate::{
    db::stmt,
    error::{AppError, AppResult},
    paging::Page,
};

pub const CUSTOMER_COLUMNS: &str = "id, name, email, active, created_at, updated_at, deactivated_at";
pub const RECORD_COLUMNS: &str = "id, title, artist, genre, release_year, price, stock, created_at, updated_at";
pub const PURCHASE_COLUMNS: &str =
    "id, customer_id, record_id, quantity, unit_price, total, status, created_at, cancelled_at";

#[derive(Debug, Clone, FromQueryResult)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub deactivated_at: Option<i64>,
}

/// A record (disc) of the store's catalog.
#[derive(Debug, Clone, FromQueryResult)]
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

#[derive(Debug, Clone, FromQueryResult)]
pub struct Purchase {
    pub id: i64,
    pub customer_id: i64,
    pub record_id: i64,
    pub quantity: i32,
    /// The record's price when the purchase was made (minor units).
    pub unit_price: i64,
    pub total: i64,
    pub status: String,
    pub created_at: i64,
    pub cancelled_at: Option<i64>,
}

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

/// `WHERE` conditions with their bound values, numbered `$1, $2, …` in order.
#[derive(Default, Clone)]
pub struct Conditions {
    clauses: Vec<String>,
    values: Vec<Value>,
}

impl Conditions {
    /// Binds a value and returns its placeholder.
    pub fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("${}", self.values.len())
    }

    /// Binds every value and returns the placeholders, comma-separated (for `IN (…)`).
    pub fn bind_list<V: Into<Value>>(&mut self, values: impl IntoIterator<Item = V>) -> String {
        values.into_iter().map(|value| self.bind(value)).collect::<Vec<_>>().join(", ")
    }

    pub fn and(&mut self, clause: impl Into<String>) {
        self.clauses.push(clause.into());
    }

    fn where_sql(&self) -> String {
        if self.clauses.is_empty() { String::new() } else { format!(" WHERE {}", self.clauses.join(" AND ")) }
    }

    /// One keyset page of `table` under these conditions, ordered by id.
    pub async fn page<T: FromQueryResult>(
        mut self,
        db: &impl ConnectionTrait,
        table: &str,
        columns: &str,
        page: Page,
    ) -> AppResult<Vec<T>> {
        if let Some(after) = page.after {
            let placeholder = self.bind(after);
            self.and(format!("id > {placeholder}"));
        }
        let limit = self.bind(page.fetch_limit() as i64);
        let sql = format!("SELECT {columns} FROM {table}{} ORDER BY id LIMIT {limit}", self.where_sql());
        Ok(T::find_by_statement(stmt(db, &sql, self.values)).all(db).await?)
    }

    /// Every matching row of `table`, unordered (for batched lookups by id).
    pub async fn all<T: FromQueryResult>(
        self,
        db: &impl ConnectionTrait,
        table: &str,
        columns: &str,
    ) -> AppResult<Vec<T>> {
        let sql = format!("SELECT {columns} FROM {table}{}", self.where_sql());
        Ok(T::find_by_statement(stmt(db, &sql, self.values)).all(db).await?)
    }

    /// Runs `sql`, written with this builder's placeholders, ignoring its conditions.
    pub async fn query_all(self, db: &impl ConnectionTrait, sql: &str) -> AppResult<Vec<QueryResult>> {
        Ok(db.query_all_raw(stmt(db, sql, self.values)).await?)
    }

    /// How many rows of `table` match (for `totalCount`).
    pub async fn count(self, db: &impl ConnectionTrait, table: &str) -> AppResult<i64> {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}{}", self.where_sql());
        let row = db.query_one_raw(stmt(db, &sql, self.values)).await?;
        Ok(row.map(|row| row.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
    }
}
