//! Records (the store's discs): catalog data, price, and stock on hand.
//!
//! Stock changes only by single conditional statements — purchases take units
//! (`purchases::create`), cancellations give them back, `restock` adds — so concurrent
//! changes compose without locks held across statements, and the accounting identity
//! `stock = initial + restocked − effective + cancelled` always holds. `update` does
//! not touch stock for that reason.

use sea_orm::{ConnectionTrait, FromQueryResult as _};

use super::{
    model::{Conditions, RECORD_COLUMNS, Record},
    validate,
};
use crate::{
    db::{now_ms, stmt},
    error::{AppError, AppResult},
    paging::Page,
};

/// The most units a record can hold: the API's `Int` is 32-bit.
pub const MAX_STOCK: i32 = i32::MAX;

#[derive(Debug, Clone)]
pub struct NewRecord {
    pub title: String,
    pub artist: String,
    pub genre: String,
    pub release_year: i32,
    pub price: i32,
    pub stock: i32,
}

/// Fields to change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct RecordChanges {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub genre: Option<String>,
    pub release_year: Option<i32>,
    pub price: Option<i32>,
}

/// Which records a list shows; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// Case-insensitive substring.
    pub artist: Option<String>,
    /// Case-insensitive substring.
    pub title: Option<String>,
    /// Case-insensitive exact match.
    pub genre: Option<String>,
    pub release_year: Option<i32>,
    /// `true`: at least one unit on hand; `false`: sold out.
    pub in_stock: Option<bool>,
}

pub async fn create(db: &impl ConnectionTrait, new: NewRecord) -> AppResult<Record> {
    let title = validate::text("title", &new.title)?;
    let artist = validate::text("artist", &new.artist)?;
    let genre = validate::text("genre", &new.genre)?;
    let release_year = validate::release_year(new.release_year)?;
    let price = validate::price(new.price)?;
    let stock = validate::stock(new.stock)?;
    let sql = format!(
        "INSERT INTO records (title, title_folded, artist, artist_folded, genre, genre_folded, release_year, price, stock, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING {RECORD_COLUMNS}"
    );
    let (title_folded, artist_folded, genre_folded) =
        (validate::fold(&title), validate::fold(&artist), validate::fold(&genre));
    let values = [
        title.into(),
        title_folded.into(),
        artist.into(),
        artist_folded.into(),
        genre.into(),
        genre_folded.into(),
        release_year.into(),
        price.into(),
        stock.into(),
        now_ms().into(),
    ];
    Record::find_by_statement(stmt(db, &sql, values))
        .one(db)
        .await?
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("insert returned no record")))
}

pub async fn find(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<Record>> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = $1");
    Ok(Record::find_by_statement(stmt(db, &sql, [id.into()])).one(db).await?)
}

pub async fn get(db: &impl ConnectionTrait, id: i64) -> AppResult<Record> {
    find(db, id).await?.ok_or_else(|| not_found(id))
}

pub fn not_found(id: i64) -> AppError {
    AppError::not_found(format!("no record with id {id}"))
}

pub async fn update(db: &impl ConnectionTrait, id: i64, changes: RecordChanges) -> AppResult<Record> {
    let title = changes.title.as_deref().map(|title| validate::text("title", title)).transpose()?;
    let artist = changes.artist.as_deref().map(|artist| validate::text("artist", artist)).transpose()?;
    let genre = changes.genre.as_deref().map(|genre| validate::text("genre", genre)).transpose()?;
    let release_year = changes.release_year.map(validate::release_year).transpose()?;
    let price = changes.price.map(validate::price).transpose()?;
    let sql = format!(
        "UPDATE records SET
            title = COALESCE($1, title), title_folded = COALESCE($2, title_folded),
            artist = COALESCE($3, artist), artist_folded = COALESCE($4, artist_folded),
            genre = COALESCE($5, genre), genre_folded = COALESCE($6, genre_folded),
            release_year = COALESCE($7, release_year), price = COALESCE($8, price),
            updated_at = $9
         WHERE id = $10 RETURNING {RECORD_COLUMNS}"
    );
    let title_folded = title.as_deref().map(validate::fold);
    let artist_folded = artist.as_deref().map(validate::fold);
    let genre_folded = genre.as_deref().map(validate::fold);
    let values = [
        title.into(),
        title_folded.into(),
        artist.into(),
        artist_folded.into(),
        genre.into(),
        genre_folded.into(),
        release_year.into(),
        price.into(),
        now_ms().into(),
        id.into(),
    ];
    Record::find_by_statement(stmt(db, &sql, values)).one(db).await?.ok_or_else(|| not_found(id))
}

/// Adds `quantity` units in one conditional statement.
pub async fn restock(db: &impl ConnectionTrait, id: i64, quantity: i32) -> AppResult<Record> {
    let quantity = validate::quantity("quantity", quantity)?;
    let sql = format!(
        "UPDATE records SET stock = stock + $1, updated_at = $2
         WHERE id = $3 AND stock <= {MAX_STOCK} - $1 RETURNING {RECORD_COLUMNS}"
    );
    if let Some(record) =
        Record::find_by_statement(stmt(db, &sql, [quantity.into(), now_ms().into(), id.into()])).one(db).await?
    {
        return Ok(record);
    }
    let record = get(db, id).await?;
    Err(AppError::bad_input(format!(
        "restocking {quantity} units would take record {id} past the largest stock ({MAX_STOCK}); it holds {}",
        record.stock
    )))
}

fn conditions(filter: &RecordFilter) -> AppResult<Conditions> {
    let mut conditions = Conditions::default();
    for (column, needle) in [("artist_folded", &filter.artist), ("title_folded", &filter.title)] {
        if let Some(needle) = needle.as_deref().filter(|needle| !needle.trim().is_empty()) {
            let pattern = conditions.bind(validate::contains_pattern(needle));
            conditions.and(format!("{column} LIKE {pattern} ESCAPE '\\'"));
        }
    }
    if let Some(genre) = filter.genre.as_deref().filter(|genre| !genre.trim().is_empty()) {
        let genre = conditions.bind(validate::fold(genre.trim()));
        conditions.and(format!("genre_folded = {genre}"));
    }
    if let Some(year) = filter.release_year {
        let year = conditions.bind(validate::release_year(year)?);
        conditions.and(format!("release_year = {year}"));
    }
    match filter.in_stock {
        Some(true) => conditions.and("stock > 0"),
        Some(false) => conditions.and("stock = 0"),
        None => {}
    }
    Ok(conditions)
}

pub async fn list(db: &impl ConnectionTrait, filter: &RecordFilter, page: Page) -> AppResult<Vec<Record>> {
    conditions(filter)?.page(db, "records", RECORD_COLUMNS, page).await
}

pub async fn count(db: &impl ConnectionTrait, filter: &RecordFilter) -> AppResult<i64> {
    conditions(filter)?.count(db, "records").await
}

/// Records by id, in any order (for the DataLoader).
pub async fn by_ids(db: &impl ConnectionTrait, ids: &[i64]) -> AppResult<Vec<Record>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conditions = Conditions::default();
    let list = conditions.bind_list(ids.iter().copied());
    conditions.and(format!("id IN ({list})"));
    conditions.all(db, "records", RECORD_COLUMNS).await
}
