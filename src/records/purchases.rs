//! Purchases: the oversell-proof stock rule and cancellation.
//!
//! A purchase takes its units with ONE conditional statement,
//! `UPDATE records SET stock = stock - q WHERE id = r AND stock >= q`, and stores the
//! purchase in the same transaction: `EFFECTIVE` when that statement took the units,
//! `OUT_OF_STOCK` (stock untouched) when it matched nothing — by design. The
//! check and the decrement are one atomic step on both backends, whatever the
//! isolation level: concurrent buyers of the last unit queue on the row (Postgres) or
//! on the write lock (SQLite), and the losers see the new stock. Because the first
//! statement writes, SQLite takes its write lock before reading anything (no
//! SQLITE_BUSY from a read-then-write upgrade).
//!
//! The purchase row is inserted with `INSERT … SELECT` from the customer and the
//! record, so "customer exists and is active, record exists" is checked by the same
//! statement that writes; when it inserts nothing the transaction (and its stock
//! decrement) rolls back and the reason is looked up afterwards.
//!
//! Cancellation flips `EFFECTIVE` to `CANCELLED` with one conditional update and gives
//! the units back in the same transaction: whoever flips the status returns the units,
//! so they come back exactly once however many cancellations race.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, DatabaseConnection, EntityTrait as _, FromQueryResult as _, Iterable as _,
    QueryFilter as _, QuerySelect as _, QueryTrait as _, Select, TransactionTrait as _,
    sea_query::{Alias, Asterisk, Expr, ExprTrait as _, Func, Query, SelectStatement, UnionType},
};

use super::{
    customers,
    entity::{
        purchase::{self, Column},
        record as record_entity,
    },
    model::{self, Purchase, PurchaseStatus},
    record::{self, MAX_STOCK},
    validate,
};
use crate::{
    db::{now_ms, stmt},
    error::{AppError, AppResult},
    paging::{Cursor, KeyKind, OrderDirection, Ordering, Page, SortKey},
};

/// The columns of [`Purchase`], for the raw insert's `RETURNING`.
const PURCHASE_COLUMNS: &str =
    "id, customer_id, record_id, quantity, unit_price, total, status, created_at, cancelled_at";

/// The largest purchase total: money is a 32-bit GraphQL `Int` of minor units.
pub const MAX_TOTAL: i64 = i32::MAX as i64;

#[derive(Debug, Clone, Copy)]
pub struct NewPurchase {
    pub customer_id: i64,
    pub record_id: i64,
    pub quantity: i32,
}

/// Which purchases a list shows; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct PurchaseFilter {
    pub customer_id: Option<i64>,
    pub record_id: Option<i64>,
    /// Made at or after this instant (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Made before this instant (exclusive).
    pub to: Option<DateTime<Utc>>,
    pub status: Option<PurchaseStatus>,
}

/// Takes the units, or records the attempt as out of stock. See the module docs.
pub async fn create(db: &DatabaseConnection, new: NewPurchase) -> AppResult<Purchase> {
    let quantity = validate::quantity("quantity", new.quantity)?;
    let now = now_ms();
    let txn = db.begin().await?;
    // Raw SQL: the hot path of bench/records.sh, and the oversell guard; a fixed text skips building it each time.
    let take_stock = "UPDATE records SET stock = stock - $1, updated_at = $2 WHERE id = $3 AND stock >= $1";
    let taken = txn.execute_raw(stmt(&txn, take_stock, [quantity.into(), now.into(), new.record_id.into()])).await?;
    let status = if taken.rows_affected() == 1 { PurchaseStatus::Effective } else { PurchaseStatus::OutOfStock };
    // Raw SQL: INSERT … SELECT checks customer and record in the statement that writes (see the module docs).
    let insert = format!(
        "INSERT INTO purchases (customer_id, record_id, quantity, unit_price, total, status, created_at)
         SELECT c.id, r.id, $3, r.price, r.price * $3, $4, $5
         FROM customers c, records r
         WHERE c.id = $1 AND c.active AND r.id = $2 AND r.price * $3 <= {MAX_TOTAL}
         RETURNING {PURCHASE_COLUMNS}"
    );
    let values = [new.customer_id.into(), new.record_id.into(), quantity.into(), status.as_str().into(), now.into()];
    let Some(purchase) = Purchase::find_by_statement(stmt(&txn, &insert, values)).one(&txn).await? else {
        txn.rollback().await?;
        return Err(why_refused(db, new).await.unwrap_or_else(|error| error));
    };
    txn.commit().await?;
    metrics::counter!("emporium_store_purchases_total", "status" => status.as_str()).increment(1);
    Ok(purchase)
}

/// Why the purchase insert matched nothing, looked up after the rollback.
async fn why_refused(db: &DatabaseConnection, new: NewPurchase) -> AppResult<AppError> {
    let customer = customers::get(db, new.customer_id).await?;
    if !customer.active {
        return Ok(AppError::conflict(format!("customer {} is deactivated and cannot purchase", customer.id)));
    }
    let record = record::get(db, new.record_id).await?;
    if record.price * i64::from(new.quantity) > MAX_TOTAL {
        return Ok(AppError::bad_input(format!(
            "{} × {} minor units exceeds the largest total ({MAX_TOTAL})",
            new.quantity, record.price
        )));
    }
    Ok(AppError::Internal(anyhow::anyhow!("purchase of record {} was refused for no known reason", record.id)))
}

/// Cancels an effective purchase and returns its units to stock, exactly once.
pub async fn cancel(db: &DatabaseConnection, id: i64) -> AppResult<Purchase> {
    let now = now_ms();
    let txn = db.begin().await?;
    let flipped = purchase::Entity::update_many()
        .col_expr(Column::Status, Expr::value(PurchaseStatus::Cancelled.as_str()))
        .col_expr(Column::CancelledAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.eq(PurchaseStatus::Effective.as_str()))
        .exec_with_returning(&txn)
        .await?;
    let Some(purchase) = flipped.into_iter().next() else {
        txn.rollback().await?;
        return Err(why_not_cancellable(db, id).await.unwrap_or_else(|error| error));
    };
    let returned = record_entity::Entity::update_many()
        .col_expr(record_entity::Column::Stock, Expr::col(record_entity::Column::Stock).add(purchase.quantity))
        .col_expr(record_entity::Column::UpdatedAt, Expr::value(now))
        .filter(record_entity::Column::Id.eq(purchase.record_id))
        .filter(record_entity::Column::Stock.lte(MAX_STOCK - purchase.quantity))
        .exec(&txn)
        .await?;
    if returned.rows_affected != 1 {
        txn.rollback().await?;
        return Err(AppError::conflict(format!(
            "returning {} units would take record {} past the largest stock ({MAX_STOCK})",
            purchase.quantity, purchase.record_id
        )));
    }
    txn.commit().await?;
    metrics::counter!("emporium_store_cancellations_total").increment(1);
    Ok(purchase)
}

async fn why_not_cancellable(db: &DatabaseConnection, id: i64) -> AppResult<AppError> {
    let purchase = get(db, id).await?;
    Ok(match purchase.current_status()? {
        PurchaseStatus::Cancelled => AppError::conflict(format!("purchase {id} is already cancelled")),
        PurchaseStatus::OutOfStock => AppError::conflict(format!(
            "purchase {id} was out of stock: it never took units, so there is nothing to cancel"
        )),
        PurchaseStatus::Effective => {
            AppError::Internal(anyhow::anyhow!("purchase {id} is effective but could not be cancelled"))
        }
    })
}

pub async fn find(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<Purchase>> {
    Ok(purchase::Entity::find_by_id(id).one(db).await?)
}

/// Purchases by id, in no particular order; unknown ids are absent.
pub async fn by_ids(db: &impl ConnectionTrait, ids: &[i64]) -> AppResult<Vec<Purchase>> {
    Ok(purchase::Entity::find().filter(Column::Id.is_in(ids.iter().copied())).all(db).await?)
}

pub async fn get(db: &impl ConnectionTrait, id: i64) -> AppResult<Purchase> {
    find(db, id).await?.ok_or_else(|| AppError::not_found(format!("no purchase with id {id}")))
}

/// Milliseconds for comparing with `created_at`, rounded up: for whole milliseconds
/// `x >= t ⇔ x >= ceil(t)` and `x < t ⇔ x < ceil(t)`, so sub-millisecond bounds stay exact.
fn bound_ms(instant: DateTime<Utc>) -> i64 {
    let ms = instant.timestamp_millis();
    if instant.timestamp_subsec_nanos().is_multiple_of(1_000_000) { ms } else { ms + 1 }
}

fn filtered(filter: &PurchaseFilter) -> AppResult<Select<purchase::Entity>> {
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from > to
    {
        return Err(AppError::bad_input(format!("`from` ({}) is after `to` ({})", from.to_rfc3339(), to.to_rfc3339())));
    }
    let mut select = purchase::Entity::find();
    if let Some(customer_id) = filter.customer_id {
        select = select.filter(Column::CustomerId.eq(customer_id));
    }
    if let Some(record_id) = filter.record_id {
        select = select.filter(Column::RecordId.eq(record_id));
    }
    if let Some(from) = filter.from {
        select = select.filter(Column::CreatedAt.gte(bound_ms(from)));
    }
    if let Some(to) = filter.to {
        select = select.filter(Column::CreatedAt.lt(bound_ms(to)));
    }
    if let Some(status) = filter.status {
        select = select.filter(Column::Status.eq(status.as_str()));
    }
    Ok(select)
}

/// What purchases can be ordered by (`PurchaseOrder.field`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PurchaseOrderField {
    /// By creation, in the order the purchases were made (by id).
    #[default]
    CreatedAt,
    /// By total (unit price × quantity).
    Total,
}

impl PurchaseOrderField {
    pub fn ordering(self, direction: OrderDirection) -> Ordering {
        match self {
            Self::CreatedAt => Ordering::new("CREATED_AT", direction, KeyKind::Id),
            Self::Total => Ordering::new("TOTAL", direction, KeyKind::Int),
        }
    }

    fn column(self) -> Option<Column> {
        match self {
            Self::CreatedAt => None,
            Self::Total => Some(Column::Total),
        }
    }

    /// Where `purchase` stands in this ordering.
    pub fn cursor(self, purchase: &Purchase) -> Cursor {
        match self {
            Self::CreatedAt => Cursor::by_id(purchase.id),
            Self::Total => Cursor::new(SortKey::Int(purchase.total), purchase.id),
        }
    }
}

pub async fn list(
    db: &impl ConnectionTrait,
    filter: &PurchaseFilter,
    page: &Page,
    order: PurchaseOrderField,
) -> AppResult<Vec<Purchase>> {
    page.fetch(filtered(filter)?, order.column(), Column::Id, |select| select.all(db)).await
}

pub async fn count(db: &impl ConnectionTrait, filter: &PurchaseFilter) -> AppResult<i64> {
    model::count(db, filtered(filter)?).await
}

/// One page of one customer's purchases, as asked by `Customer.purchases`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerPage {
    pub customer_id: i64,
    pub page: Page,
    pub order: PurchaseOrderField,
}

/// Many customers' pages in one round trip: a `UNION ALL` of one index-bounded
/// `LIMIT` query per page (portable, unlike `LATERAL`). Returns each page's rows in
/// reading order (see [`Page::fetch`]), in the order of `pages`.
pub async fn pages_by_customer(db: &impl ConnectionTrait, pages: &[CustomerPage]) -> AppResult<Vec<Vec<Purchase>>> {
    if pages.is_empty() {
        return Ok(Vec::new());
    }
    // Each page is a subquery, so its ORDER BY and LIMIT apply before the UNION.
    let branch = |(branch, page): (usize, &CustomerPage)| -> AppResult<SelectStatement> {
        let of_customer = purchase::Entity::find().filter(Column::CustomerId.eq(page.customer_id));
        // Purchases have no nullable ordering: a page is one statement.
        let mut statements = page.page.statements(of_customer, page.order.column(), Column::Id).into_iter();
        let (Some(rows), None) = (statements.next(), statements.next()) else {
            return Err(AppError::Internal(anyhow::anyhow!("a purchase ordering needs one statement per page")));
        };
        let rows = rows.limit(page.page.fetch_limit()).into_query();
        Ok(Query::select()
            .expr_as(Expr::val(i32::try_from(branch).unwrap_or(i32::MAX)), "branch")
            .columns(Column::iter())
            .from_subquery(rows, Alias::new(format!("page{branch}")))
            .to_owned())
    };
    let mut branches = pages.iter().enumerate().map(branch).collect::<AppResult<Vec<_>>>()?.into_iter();
    let Some(mut union) = branches.next() else { return Ok(Vec::new()) };
    union.unions(branches.map(|branch| (UnionType::All, branch)));
    let rows = db.query_all(&union).await?;
    let mut grouped = vec![Vec::new(); pages.len()];
    for row in rows {
        let branch: i32 = row.try_get("", "branch")?;
        let slot = usize::try_from(branch).ok().and_then(|branch| grouped.get_mut(branch));
        if let Some(slot) = slot {
            slot.push(Purchase::from_query_result(&row, "")?);
        }
    }
    // A UNION ALL keeps no order: put each page's rows back in reading order.
    for (rows, page) in grouped.iter_mut().zip(pages) {
        page.page.sort_in_reading_order(rows, |purchase| page.order.cursor(purchase));
    }
    Ok(grouped)
}

/// Purchase counts of many customers in one query (customers without any are absent).
pub async fn counts_by_customer(db: &impl ConnectionTrait, customer_ids: &[i64]) -> AppResult<Vec<(i64, i64)>> {
    if customer_ids.is_empty() {
        return Ok(Vec::new());
    }
    let counts = purchase::Entity::find()
        .select_only()
        .column(Column::CustomerId)
        .expr(Func::count(Expr::col(Asterisk)))
        .filter(Column::CustomerId.is_in(customer_ids.iter().copied()))
        .group_by(Column::CustomerId)
        .into_tuple::<(i64, i64)>()
        .all(db)
        .await?;
    Ok(counts)
}
