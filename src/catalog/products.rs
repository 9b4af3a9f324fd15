//! Product writes and reads: GraphQL CRUD and the bulk upsert by sku that uploads use.
//! Every product created here gets registered by a job queued in the same transaction.

use std::collections::{HashMap, HashSet};

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait as _, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait as _,
    FromQueryResult, QueryFilter as _, QuerySelect as _, Select, SqlErr, Statement, TransactionTrait as _, Value,
    sea_query::{Asterisk, Expr, ExprTrait as _, Func, LikeExpr},
};

use super::{
    Catalog,
    entity::product::{self, Column},
    model::{self, InvalidField, ProductRow, Registration},
    registration,
};
use crate::{
    db::now_ms,
    error::{AppError, AppResult, UniqueKey, conflict_on_unique},
    paging::{Cursor, KeyKind, OrderDirection, Ordering, Page, SortKey},
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

impl InvalidItem {
    /// The refused field and why.
    pub fn invalid_field(&self) -> &InvalidField {
        match self {
            Self::Sku(field) | Self::Field { field, .. } => field,
        }
    }
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
/// [`insert_new`]; it writes first, as SQLite wants), one `UPDATE … FROM` for the rest
/// that only touches rows whose fields differ, and the job insert. An invalid
/// item fails the whole batch with `BAD_USER_INPUT` naming its sku; use
/// [`validate_upsert`] first to skip bad items instead.
pub async fn upsert_by_sku(
    state: &Catalog,
    txn: &DatabaseTransaction,
    batch: &[ProductUpsert],
) -> AppResult<UpsertOutcome> {
    Ok(UpsertOutcome::of(&upsert_each_by_sku(state, txn, batch).await?))
}

impl UpsertOutcome {
    /// The counts of some items' outcomes.
    pub fn of(outcomes: &[Upserted]) -> Self {
        let count = |wanted: Upserted| outcomes.iter().filter(|outcome| **outcome == wanted).count() as u64;
        Self { created: count(Upserted::Created), updated: count(Upserted::Updated) }
    }
}

/// What an upsert did with one item of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    /// An existing product whose fields changed.
    Updated,
    /// An existing product equal to the item.
    Unchanged,
    /// A later item of the batch has the same sku, and wins.
    Superseded,
}

/// [`upsert_by_sku`], answering for each item of `batch`, in its order: what a caller
/// that upserts several uploads' items at once needs to report each upload's share.
pub async fn upsert_each_by_sku(
    state: &Catalog,
    txn: &DatabaseTransaction,
    batch: &[ProductUpsert],
) -> AppResult<Vec<Upserted>> {
    let mut items: Vec<CleanUpsert> = Vec::with_capacity(batch.len());
    let mut position: HashMap<String, usize> = HashMap::with_capacity(batch.len());
    // For each item of the batch, its sku's place in `items`; for each of `items`, the
    // batch's last item with its sku (the one that wins).
    let mut item_of: Vec<usize> = Vec::with_capacity(batch.len());
    let mut last_of: Vec<usize> = Vec::with_capacity(batch.len());
    for (index, item) in batch.iter().enumerate() {
        let item = clean(item)?;
        match position.get(&item.sku) {
            Some(&at) => {
                item_of.push(at);
                last_of[at] = index;
                items[at] = item;
            }
            None => {
                position.insert(item.sku.clone(), items.len());
                item_of.push(items.len());
                last_of.push(index);
                items.push(item);
            }
        }
    }

    let mut outcome = vec![Upserted::Unchanged; items.len()];
    let now = now_ms();
    let mut created_total = 0u64;
    for (chunk_index, chunk) in items.chunks(UPSERT_CHUNK).enumerate() {
        let offset = chunk_index * UPSERT_CHUNK;
        let created = insert_new(txn, chunk, now).await?;
        let created_skus: HashSet<&str> = created.iter().map(|(_, sku)| sku.as_str()).collect();
        let rest: Vec<&CleanUpsert> = chunk.iter().filter(|item| !created_skus.contains(item.sku.as_str())).collect();
        let updated_skus = update_changed(txn, &rest, now).await?;
        for (index, item) in chunk.iter().enumerate() {
            if created_skus.contains(item.sku.as_str()) {
                outcome[offset + index] = Upserted::Created;
            } else if updated_skus.contains(&item.sku) {
                outcome[offset + index] = Upserted::Updated;
            }
        }
        created_total += created.len() as u64;
        if !created.is_empty() {
            let ids = created.iter().map(|(id, _)| *id).collect();
            state.jobs.enqueue(txn, registration::job(&state.config, ids)).await?;
        }
    }
    if created_total > 0 {
        metrics::counter!("emporium_catalog_products_created_total").increment(created_total);
    }
    // Back to the batch's order: an item that a later one with its sku replaced did nothing.
    Ok(item_of
        .iter()
        .enumerate()
        .map(|(index, at)| if last_of[*at] == index { outcome[*at] } else { Upserted::Superseded })
        .collect())
}

/// Inserts the items whose sku is new; returns `(id, sku)` of each product created.
/// First as a plain insert in a savepoint, as if every sku were new (the common case of a
/// catalog's first upload); if one is taken, the savepoint is rolled back (at the first
/// taken sku, so a batch of known products wastes little) and the chunk inserted again
/// with `ON CONFLICT DO NOTHING`, which skips the stored ones.
async fn insert_new(txn: &DatabaseTransaction, items: &[CleanUpsert], now: i64) -> AppResult<Vec<(i64, String)>> {
    let items_json = chunk_json(items);
    let savepoint = txn.begin().await?;
    match insert_products(&savepoint, &items_json, now, false).await {
        Ok(created) => {
            savepoint.commit().await?;
            Ok(created)
        }
        Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            savepoint.rollback().await?;
            Ok(insert_products(txn, &items_json, now, true).await?)
        }
        Err(error) => Err(error.into()),
    }
}

/// The items of one chunk as the bulk statements take them: one JSON array of
/// `{sku, name, description, attributes}` (attributes as JSON text), read back by the
/// database (`json_to_recordset` on Postgres, `json_each` on SQLite). One parameter
/// whatever the chunk's size, so each bulk statement has one text: prepared once per
/// connection and cached, where a `VALUES` list with parameters per item made a new
/// statement for each chunk size (megabytes each in SQLite's statement cache).
fn chunk_json<'a>(items: impl IntoIterator<Item = &'a CleanUpsert>) -> String {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        sku: &'a str,
        name: &'a str,
        description: Option<&'a str>,
        attributes: Option<&'a str>,
    }
    let items: Vec<Item> = items
        .into_iter()
        .map(|item| Item {
            sku: &item.sku,
            name: &item.name,
            description: item.description.as_deref(),
            attributes: item.attributes.as_deref(),
        })
        .collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".to_string())
}

/// The chunk's items as rows `item (sku, name, description, attributes)` in SQL, from the
/// JSON array in parameter `$2`.
fn chunk_rows(backend: DbBackend) -> &'static str {
    if backend == DbBackend::Postgres {
        "json_to_recordset($2::json) AS item (sku text, name text, description text, attributes text)"
    } else {
        "(SELECT value ->> 'sku' AS sku, value ->> 'name' AS name, value ->> 'description' AS description,
                 value ->> 'attributes' AS attributes
          FROM json_each($2)) AS item"
    }
}

async fn insert_products(
    conn: &impl ConnectionTrait,
    items_json: &str,
    now: i64,
    skip_taken: bool,
) -> Result<Vec<(i64, String)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Created {
        id: i64,
        sku: String,
    }
    let backend = conn.get_database_backend();
    let pending = Registration::Pending.as_str();
    // `WHERE true`: SQLite needs it to tell an `ON CONFLICT` from a join's `ON`.
    let on_conflict = if skip_taken { "WHERE true ON CONFLICT (sku) DO NOTHING" } else { "" };
    // Raw SQL: an insert from rows the database reads out of one JSON parameter.
    let sql = format!(
        "INSERT INTO products (sku, name, description, attributes, registration_status, created_at, updated_at)
         SELECT item.sku, item.name, COALESCE(item.description, ''), item.attributes, '{pending}', $1, $1
         FROM {} {on_conflict}
         RETURNING id, sku",
        chunk_rows(backend)
    );
    let values: Vec<Value> = vec![now.into(), items_json.into()];
    let rows = Created::find_by_statement(Statement::from_sql_and_values(backend, sql, values)).all(conn).await?;
    Ok(rows.into_iter().map(|row| (row.id, row.sku)).collect())
}

/// Updates existing products whose fields differ from the items; returns the skus of
/// those that changed.
async fn update_changed(conn: &impl ConnectionTrait, items: &[&CleanUpsert], now: i64) -> AppResult<HashSet<String>> {
    if items.is_empty() {
        return Ok(HashSet::new());
    }
    let backend = conn.get_database_backend();
    // SQLite's `RETURNING` names the updated table's columns only, Postgres's needs them
    // told apart from the rows' `sku`.
    let returning = if backend == DbBackend::Postgres { "p.sku" } else { "sku" };
    // Raw SQL: `UPDATE … FROM` rows read out of one JSON parameter is beyond sea-query.
    let sql = format!(
        "UPDATE products AS p SET
            name = item.name,
            description = COALESCE(item.description, p.description),
            attributes = COALESCE(item.attributes, p.attributes),
            updated_at = $1
         FROM {}
         WHERE p.sku = item.sku
           AND (p.name <> item.name
                OR p.description <> COALESCE(item.description, p.description)
                OR p.attributes IS DISTINCT FROM COALESCE(item.attributes, p.attributes))
         RETURNING {returning}",
        chunk_rows(backend)
    );
    let values: Vec<Value> = vec![now.into(), chunk_json(items.iter().copied()).into()];
    let rows = conn.query_all_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
    rows.iter().map(|row| row.try_get::<String>("", "sku").map_err(AppError::from)).collect()
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
    let row = product::ActiveModel {
        sku: Set(sku.clone()),
        name: Set(name),
        description: Set(description),
        attributes: Set(attributes),
        registration_status: Set(Registration::Pending.as_str().to_string()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    let product = product::Entity::insert(row)
        .exec_with_returning(&txn)
        .await
        .map_err(|error| conflict_on_unique(error, SKU_KEY, sku_taken(&sku)))?;
    state.jobs.enqueue(&txn, registration::job(&state.config, vec![product.id])).await?;
    txn.commit().await?;
    metrics::counter!("emporium_catalog_products_created_total").increment(1);
    Ok(product)
}

/// Applies `changes` to product `id` in one statement.
pub async fn update(state: &Catalog, id: i64, changes: ProductChanges) -> AppResult<ProductRow> {
    let mut update = product::Entity::update_many();
    let mut changed = false;
    if let Some(name) = &changes.name {
        update = update.col_expr(Column::Name, Expr::value(model::valid_name(name)?));
        changed = true;
    }
    if let Some(description) = &changes.description {
        let description = model::valid_description(description)?;
        update = update.col_expr(Column::Description, Expr::value(description));
        changed = true;
    }
    let mut sku = None;
    if let Some(new_sku) = &changes.sku {
        sku = new_sku.as_deref().map(model::valid_sku).transpose()?;
        update = update.col_expr(Column::Sku, Expr::value(sku.clone()));
        changed = true;
    }
    if let Some(attributes) = &changes.attributes {
        let text = attributes.as_ref().map(model::valid_attributes).transpose()?;
        update = update.col_expr(Column::Attributes, Expr::value(text));
        changed = true;
    }
    if !changed {
        return Err(AppError::bad_input("nothing to update: give at least one field"));
    }
    let updated = update
        .col_expr(Column::UpdatedAt, Expr::value(now_ms()))
        .filter(Column::Id.eq(id))
        .exec_with_returning(&state.db)
        .await
        .map_err(|error| conflict_on_unique(error, SKU_KEY, sku_taken(&sku)))?;
    updated.into_iter().next().ok_or_else(|| AppError::not_found(format!("no product {id}")))
}

/// Deletes a product with its offers and price history.
pub async fn delete(state: &Catalog, id: i64) -> AppResult<()> {
    let deleted = product::Entity::delete_by_id(id).exec(&state.db).await?.rows_affected;
    if deleted == 0 {
        return Err(AppError::not_found(format!("no product {id}")));
    }
    Ok(())
}

/// The product, if there is one.
pub async fn find(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<ProductRow>> {
    Ok(product::Entity::find_by_id(id).one(db).await?)
}

/// The product; NOT_FOUND when there is none.
pub async fn get(db: &impl ConnectionTrait, id: i64) -> AppResult<ProductRow> {
    find(db, id).await?.ok_or_else(|| AppError::not_found(format!("no product {id}")))
}

/// The products a filter lets through.
fn filtered(filter: &ProductFilter) -> AppResult<Select<product::Entity>> {
    let mut select = product::Entity::find();
    if let Some(search) = filter.search.as_deref().map(str::trim).filter(|search| !search.is_empty()) {
        model::no_nul("search", search)?;
        if search.chars().count() > SEARCH_MAX {
            return Err(AppError::bad_input(format!("`search` must be at most {SEARCH_MAX} characters")));
        }
        let escaped = search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let pattern = || LikeExpr::new(format!("%{escaped}%")).escape('\\');
        let name = Func::lower(Expr::col(Column::Name));
        let sku = Func::lower(Func::coalesce([Expr::col(Column::Sku), Expr::val("")]));
        select =
            select.filter(Condition::any().add(Expr::expr(name).like(pattern())).add(Expr::expr(sku).like(pattern())));
    }
    if let Some(sku) = &filter.sku {
        model::no_nul("sku", sku)?;
        select = select.filter(Column::Sku.eq(sku.trim()));
    }
    Ok(select)
}

/// What products can be ordered by (`ProductOrder.field`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ProductOrderField {
    /// By name, in the database's collation (SQLite: character code order, so capitals
    /// before lower case; Postgres: the database's locale).
    Name,
    /// By creation, in the order the products were created (by id; products created by
    /// one upload were created in the order of its items).
    #[default]
    CreatedAt,
    /// By `lowestPrice`. Products without offers (null `lowestPrice`) come last in both
    /// directions.
    LowestPrice,
}

impl ProductOrderField {
    pub fn ordering(self, direction: OrderDirection) -> Ordering {
        match self {
            Self::Name => Ordering::new("NAME", direction, KeyKind::Text),
            Self::CreatedAt => Ordering::new("CREATED_AT", direction, KeyKind::Id),
            Self::LowestPrice => Ordering::new("LOWEST_PRICE", direction, KeyKind::NullableInt),
        }
    }

    fn column(self) -> Option<Column> {
        match self {
            Self::Name => Some(Column::Name),
            Self::CreatedAt => None,
            Self::LowestPrice => Some(Column::LowestPrice),
        }
    }

    /// Where `row` stands in this ordering.
    pub fn cursor(self, row: &ProductRow) -> Cursor {
        let key = match self {
            Self::Name => SortKey::Text(row.name.clone()),
            Self::CreatedAt => SortKey::Id,
            Self::LowestPrice => row.lowest_price.map_or(SortKey::Null, SortKey::Int),
        };
        Cursor::new(key, row.id)
    }
}

/// One page of products (keyset: cursors survive inserts and deletes).
pub async fn list(
    db: &impl ConnectionTrait,
    page: &Page,
    order: ProductOrderField,
    filter: &ProductFilter,
) -> AppResult<Vec<ProductRow>> {
    page.fetch(filtered(filter)?, order.column(), Column::Id, |select| select.all(db)).await
}

/// How many products match a filter.
pub async fn count(db: &impl ConnectionTrait, filter: &ProductFilter) -> AppResult<i64> {
    let select = filtered(filter)?.select_only().expr(Func::count(Expr::col(Asterisk)));
    Ok(select.into_tuple::<i64>().one(db).await?.unwrap_or(0))
}

/// Queues registration again for a product that is not registered (it failed, or its
/// job was lost); refused for a registered product.
pub async fn register_again(state: &Catalog, id: i64) -> AppResult<ProductRow> {
    let txn = state.db.begin().await?;
    // Write first (SQLite); only a product that is not registered qualifies.
    let updated = product::Entity::update_many()
        .col_expr(Column::RegistrationStatus, Expr::value(Registration::Pending.as_str()))
        .col_expr(Column::RegistrationError, Expr::value(Option::<String>::None))
        .filter(Column::Id.eq(id))
        .filter(Column::RegistrationStatus.ne(Registration::Registered.as_str()))
        .exec(&txn)
        .await?
        .rows_affected;
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
