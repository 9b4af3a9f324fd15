//! Product writes and reads: GraphQL CRUD and the bulk upsert by sku that uploads use.
//! Every product created here gets registered by a job queued in the same transaction.

use std::collections::{HashMap, HashSet};

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, FromQueryResult, SqlErr, TransactionTrait as _, Value,
    sea_query::ArrayType,
};

use super::{
    Catalog,
    model::{self, InvalidField, PRODUCT_COLUMNS, ProductRow, Registration},
    registration,
};
use crate::{
    db::{bind_row, now_ms, stmt},
    error::{AppError, AppResult, UniqueKey, conflict_on_unique},
    paging::Page,
};

/// One product as a bulk upload describes it; `sku` is the client's id.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProductUpsert {
    pub sku: String,
    pub name: String,
    /// `None`: empty for new products, unchanged for existing ones.
    pub description: Option<String>,
    /// The item's other fields (a JSON object), stored as JSON text. `None`: absent for
    /// new products, unchanged for existing ones.
    pub attributes: Option<serde_json::Value>,
}

/// What an upsert did. `updated` counts existing products whose fields changed; items
/// equal to what is stored count in neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertOutcome {
    pub created: u64,
    pub updated: u64,
}

/// Largest number of items sent in one statement (4 parameters per item on SQLite,
/// whose limit is 32,766).
const UPSERT_CHUNK: usize = 4000;

/// An upsert item after validation: trimmed sku and name, attributes as JSON text.
struct CleanUpsert {
    sku: String,
    name: String,
    description: Option<String>,
    attributes: Option<String>,
}

/// An upload item the catalog refuses: which one (by sku, when it has a valid one) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidItem {
    #[error("{0}")]
    Sku(InvalidField),
    #[error("sku `{sku}`: {field}")]
    Field { sku: String, field: InvalidField },
}

impl From<InvalidItem> for AppError {
    fn from(invalid: InvalidItem) -> Self {
        AppError::bad_input(invalid.to_string())
    }
}

/// Checks one upload item against the catalog's limits (the same as `createProduct`).
pub fn validate_upsert(item: &ProductUpsert) -> Result<(), InvalidItem> {
    clean(item).map(|_| ())
}

fn clean(item: &ProductUpsert) -> Result<CleanUpsert, InvalidItem> {
    let sku = model::valid_sku(&item.sku).map_err(InvalidItem::Sku)?;
    let with_sku = |field: InvalidField| InvalidItem::Field { sku: sku.clone(), field };
    Ok(CleanUpsert {
        name: model::valid_name(&item.name).map_err(with_sku)?,
        description: item.description.as_deref().map(model::valid_description).transpose().map_err(with_sku)?,
        attributes: item.attributes.as_ref().map(model::valid_attributes).transpose().map_err(with_sku)?,
        sku,
    })
}

/// Upserts a batch by sku in as few statements as possible, and enqueues one registration
/// job per chunk for the products it creates, all in `txn` (the caller's transaction).
/// Re-running the same batch leaves the same rows and enqueues nothing new (idempotent).
/// Within one batch a repeated sku: the last occurrence wins.
///
/// Statements per chunk of 4,000: an `INSERT … RETURNING` of the new products (see
/// [`insert_new`]; it writes first, as SQLite wants), one `UPDATE … FROM (VALUES …)` for
/// the rest that only touches rows whose fields differ, and the job insert. An invalid
/// item fails the whole batch with `BAD_USER_INPUT` naming its sku; use
/// [`validate_upsert`] first to skip bad items instead.
pub async fn upsert_by_sku(
    state: &Catalog,
    txn: &DatabaseTransaction,
    batch: &[ProductUpsert],
) -> AppResult<UpsertOutcome> {
    let mut items: Vec<CleanUpsert> = Vec::with_capacity(batch.len());
    let mut position: HashMap<String, usize> = HashMap::with_capacity(batch.len());
    for item in batch {
        let item = clean(item)?;
        match position.get(&item.sku) {
            Some(&at) => items[at] = item,
            None => {
                position.insert(item.sku.clone(), items.len());
                items.push(item);
            }
        }
    }

    let mut outcome = UpsertOutcome::default();
    let now = now_ms();
    for chunk in items.chunks(UPSERT_CHUNK) {
        let created = insert_new(txn, chunk, now).await?;
        let created_skus: HashSet<&str> = created.iter().map(|(_, sku)| sku.as_str()).collect();
        let rest: Vec<&CleanUpsert> = chunk.iter().filter(|item| !created_skus.contains(item.sku.as_str())).collect();
        outcome.updated += update_changed(txn, &rest, now).await?;
        outcome.created += created.len() as u64;
        if !created.is_empty() {
            let ids = created.iter().map(|(id, _)| *id).collect();
            state.jobs.enqueue(txn, registration::job(&state.config, ids)).await?;
        }
    }
    if outcome.created > 0 {
        metrics::counter!("emporium_catalog_products_created_total").increment(outcome.created);
    }
    Ok(outcome)
}

/// Inserts the items whose sku is new; returns `(id, sku)` of each product created.
/// First as a plain insert in a savepoint, as if every sku were new (the common case of a
/// catalog's first upload); if one is taken, the savepoint is rolled back (at the first
/// taken sku, so a batch of known products wastes little) and the chunk inserted again
/// with `ON CONFLICT DO NOTHING`, which skips the stored ones.
async fn insert_new(txn: &DatabaseTransaction, items: &[CleanUpsert], now: i64) -> AppResult<Vec<(i64, String)>> {
    let savepoint = txn.begin().await?;
    match insert_products(&savepoint, items, now, "").await {
        Ok(created) => {
            savepoint.commit().await?;
            Ok(created)
        }
        Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            savepoint.rollback().await?;
            Ok(insert_products(txn, items, now, " ON CONFLICT (sku) DO NOTHING").await?)
        }
        Err(error) => Err(error.into()),
    }
}

async fn insert_products(
    conn: &impl ConnectionTrait,
    items: &[CleanUpsert],
    now: i64,
    on_conflict: &str,
) -> Result<Vec<(i64, String)>, DbErr> {
    let columns =
        "INSERT INTO products (sku, name, description, attributes, registration_status, created_at, updated_at)";
    let pending = Registration::Pending.as_str();
    let (sql, values) = if conn.get_database_backend() == DbBackend::Postgres {
        // Four arrays instead of four parameters per row: Postgres plans and evaluates a
        // many-row VALUES list row by row, which cost it a third of an upload's time.
        // sea-query string arrays cannot hold NULL, so no attributes travel as "".
        let column = |field: fn(&CleanUpsert) -> String| {
            Value::Array(ArrayType::String, Some(Box::new(items.iter().map(|item| field(item).into()).collect())))
        };
        let values = vec![
            now.into(),
            column(|item| item.sku.clone()),
            column(|item| item.name.clone()),
            column(|item| item.description.clone().unwrap_or_default()),
            column(|item| item.attributes.clone().unwrap_or_default()),
        ];
        let sql = format!(
            "{columns} SELECT sku, name, description, NULLIF(attributes, ''), '{pending}', $1, $1
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS item (sku, name, description, attributes)"
        );
        (sql, values)
    } else {
        let mut sql = format!("{columns} VALUES ");
        let mut values: Vec<Value> = Vec::with_capacity(items.len() * 4 + 1);
        values.push(now.into());
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let [sku, name, description, attributes] = bind_row(
                &mut values,
                [
                    item.sku.clone().into(),
                    item.name.clone().into(),
                    item.description.clone().unwrap_or_default().into(),
                    item.attributes.clone().into(),
                ],
            );
            sql.push_str(&format!("({sku}, {name}, {description}, {attributes}, '{pending}', $1, $1)"));
        }
        (sql, values)
    };
    let sql = format!("{sql}{on_conflict} RETURNING id, sku");
    #[derive(FromQueryResult)]
    struct Created {
        id: i64,
        sku: String,
    }
    let rows = Created::find_by_statement(stmt(conn, &sql, values)).all(conn).await?;
    Ok(rows.into_iter().map(|row| (row.id, row.sku)).collect())
}

/// Updates existing products whose fields differ from the items; returns how many changed.
async fn update_changed(conn: &impl ConnectionTrait, items: &[&CleanUpsert], now: i64) -> AppResult<u64> {
    if items.is_empty() {
        return Ok(0);
    }
    // `VALUES` columns are named column1..column4 on both backends.
    let mut rows = Vec::with_capacity(items.len());
    let mut values: Vec<Value> = Vec::with_capacity(items.len() * 4 + 1);
    values.push(now.into());
    for item in items {
        let [sku, name, description, attributes] = bind_row(
            &mut values,
            [
                item.sku.clone().into(),
                item.name.clone().into(),
                item.description.clone().into(),
                item.attributes.clone().into(),
            ],
        );
        rows.push(format!("({sku}, {name}, {description}, {attributes})"));
    }
    let sql = format!(
        "UPDATE products AS p SET
            name = v.column2,
            description = COALESCE(v.column3, p.description),
            attributes = COALESCE(v.column4, p.attributes),
            updated_at = $1
         FROM (VALUES {}) AS v
         WHERE p.sku = v.column1
           AND (p.name <> v.column2
                OR p.description <> COALESCE(v.column3, p.description)
                OR p.attributes IS DISTINCT FROM COALESCE(v.column4, p.attributes))",
        rows.join(", ")
    );
    let result = conn.execute_raw(stmt(conn, &sql, values)).await?;
    Ok(result.rows_affected())
}

/// A product to create.
#[derive(Debug, Clone, Default)]
pub struct NewProduct {
    pub name: String,
    pub description: String,
    pub sku: Option<String>,
    pub attributes: Option<serde_json::Value>,
}

/// Changes to a product; `None` leaves a field as it is. `sku` and `attributes` can be
/// cleared with `Some(None)`.
#[derive(Debug, Clone, Default)]
pub struct ProductChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub sku: Option<Option<String>>,
    pub attributes: Option<Option<serde_json::Value>>,
}

/// Which products a list shows.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    /// Case-insensitive part of the name or sku.
    pub search: Option<String>,
    /// Exactly this sku.
    pub sku: Option<String>,
}

const SEARCH_MAX: usize = 200;

/// Products are unique by sku (when they have one).
const SKU_KEY: UniqueKey = UniqueKey { constraint: "products_sku_key", column: "products.sku" };

fn sku_taken(sku: &Option<String>) -> impl FnOnce() -> String + '_ {
    move || format!("a product with sku `{}` already exists", sku.as_deref().unwrap_or_default())
}

/// Creates a product and queues its registration, in one transaction.
pub async fn create(state: &Catalog, input: NewProduct) -> AppResult<ProductRow> {
    let name = model::valid_name(&input.name)?;
    let description = model::valid_description(&input.description)?;
    let sku = input.sku.as_deref().map(model::valid_sku).transpose()?;
    let attributes = input.attributes.as_ref().map(model::valid_attributes).transpose()?;
    let now = now_ms();
    let txn = state.db.begin().await?;
    let product = ProductRow::find_by_statement(stmt(
        &txn,
        &format!(
            "INSERT INTO products (sku, name, description, attributes, registration_status, created_at, updated_at)
             VALUES ($1, $2, $3, $4, '{}', $5, $5) RETURNING {PRODUCT_COLUMNS}",
            Registration::Pending.as_str()
        ),
        [sku.clone().into(), name.into(), description.into(), attributes.into(), now.into()],
    ))
    .one(&txn)
    .await
    .map_err(|error| conflict_on_unique(error, SKU_KEY, sku_taken(&sku)))?
    .ok_or_else(|| AppError::Internal(anyhow::anyhow!("insert returned no row")))?;
    state.jobs.enqueue(&txn, registration::job(&state.config, vec![product.id])).await?;
    txn.commit().await?;
    metrics::counter!("emporium_catalog_products_created_total").increment(1);
    Ok(product)
}

/// Applies `changes` to product `id` in one statement.
pub async fn update(state: &Catalog, id: i64, changes: ProductChanges) -> AppResult<ProductRow> {
    let mut columns: Vec<(&str, Value)> = Vec::new();
    if let Some(name) = &changes.name {
        columns.push(("name", model::valid_name(name)?.into()));
    }
    if let Some(description) = &changes.description {
        columns.push(("description", model::valid_description(description)?.into()));
    }
    let mut sku = None;
    if let Some(new_sku) = &changes.sku {
        sku = new_sku.as_deref().map(model::valid_sku).transpose()?;
        columns.push(("sku", sku.clone().into()));
    }
    if let Some(attributes) = &changes.attributes {
        let text = attributes.as_ref().map(model::valid_attributes).transpose()?;
        columns.push(("attributes", text.into()));
    }
    if columns.is_empty() {
        return Err(AppError::bad_input("nothing to update: give at least one field"));
    }
    columns.push(("updated_at", now_ms().into()));
    let sets: Vec<String> =
        columns.iter().enumerate().map(|(i, (column, _))| format!("{column} = ${}", i + 1)).collect();
    let mut values: Vec<Value> = columns.into_iter().map(|(_, value)| value).collect();
    values.push(id.into());
    let sql =
        format!("UPDATE products SET {} WHERE id = ${} RETURNING {PRODUCT_COLUMNS}", sets.join(", "), values.len());
    ProductRow::find_by_statement(stmt(&state.db, &sql, values))
        .one(&state.db)
        .await
        .map_err(|error| conflict_on_unique(error, SKU_KEY, sku_taken(&sku)))?
        .ok_or_else(|| AppError::not_found(format!("no product {id}")))
}

/// Deletes a product with its offers and price history.
pub async fn delete(state: &Catalog, id: i64) -> AppResult<()> {
    let deleted =
        state.db.execute_raw(stmt(&state.db, "DELETE FROM products WHERE id = $1", [id.into()])).await?.rows_affected();
    if deleted == 0 {
        return Err(AppError::not_found(format!("no product {id}")));
    }
    Ok(())
}

pub async fn get(db: &impl ConnectionTrait, id: i64) -> AppResult<ProductRow> {
    ProductRow::find_by_statement(stmt(
        db,
        &format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| AppError::not_found(format!("no product {id}")))
}

/// The `WHERE` conditions of a filter, with their values numbered after `values`.
fn filter_sql(filter: &ProductFilter, values: &mut Vec<Value>) -> AppResult<Vec<String>> {
    let mut conditions = Vec::new();
    if let Some(search) = filter.search.as_deref().map(str::trim).filter(|search| !search.is_empty()) {
        if search.chars().count() > SEARCH_MAX {
            return Err(AppError::bad_input(format!("`search` must be at most {SEARCH_MAX} characters")));
        }
        let escaped = search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        values.push(format!("%{escaped}%").into());
        let n = values.len();
        conditions
            .push(format!("(LOWER(name) LIKE ${n} ESCAPE '\\' OR LOWER(COALESCE(sku, '')) LIKE ${n} ESCAPE '\\')"));
    }
    if let Some(sku) = &filter.sku {
        values.push(sku.trim().to_string().into());
        conditions.push(format!("sku = ${}", values.len()));
    }
    Ok(conditions)
}

/// One page of products in id order (keyset: cursors survive inserts and deletes).
pub async fn list(db: &impl ConnectionTrait, page: Page, filter: &ProductFilter) -> AppResult<Vec<ProductRow>> {
    let mut values = Vec::new();
    let mut conditions = filter_sql(filter, &mut values)?;
    if let Some(after) = page.after {
        values.push(after.into());
        conditions.push(format!("id > ${}", values.len()));
    }
    values.push(i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX).into());
    let limit = values.len();
    let clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products {clause} ORDER BY id LIMIT ${limit}");
    Ok(ProductRow::find_by_statement(stmt(db, &sql, values)).all(db).await?)
}

/// How many products match a filter.
pub async fn count(db: &impl ConnectionTrait, filter: &ProductFilter) -> AppResult<i64> {
    let mut values = Vec::new();
    let conditions = filter_sql(filter, &mut values)?;
    let clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let row = Count::find_by_statement(stmt(db, &format!("SELECT COUNT(*) AS n FROM products {clause}"), values))
        .one(db)
        .await?;
    Ok(row.map_or(0, |row| row.n))
}

/// Queues registration again for a product that is not registered (it failed, or its
/// job was lost); refused for a registered product.
pub async fn register_again(state: &Catalog, id: i64) -> AppResult<ProductRow> {
    let txn = state.db.begin().await?;
    // Write first (SQLite); only a product that is not registered qualifies.
    let updated = txn
        .execute_raw(stmt(
            &txn,
            "UPDATE products SET registration_status = 'pending', registration_error = NULL
             WHERE id = $1 AND registration_status <> 'registered'",
            [id.into()],
        ))
        .await?
        .rows_affected();
    if updated == 0 {
        let product = get(&txn, id).await?;
        txn.rollback().await?;
        return Err(AppError::conflict(format!("product {} is already registered", product.id)));
    }
    state.jobs.enqueue(&txn, registration::job(&state.config, vec![id])).await?;
    let product = get(&txn, id).await?;
    txn.commit().await?;
    Ok(product)
}
