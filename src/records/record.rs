//! Records (the store's discs): catalog data, price, and stock on hand.
//!
//! Stock changes only by single conditional statements — purchases take units
//! (`purchases::create`), cancellations give them back, `restock` adds — so concurrent
//! changes compose without locks held across statements, and the accounting identity
//! `stock = initial + restocked − effective + cancelled` always holds. `update` does
//! not touch stock for that reason.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _, Select,
    sea_query::{Expr, ExprTrait as _, LikeExpr},
};

use super::{
    entity::record::{self, Column},
    model::{self, Record},
    validate,
};
use crate::{
    db::now_ms,
    error::{AppError, AppResult},
    paging::{Cursor, KeyKind, OrderDirection, Ordering, Page, SortKey},
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
    let now = now_ms();
    let row = record::ActiveModel {
        title_folded: Set(validate::fold(&title)),
        title: Set(title),
        artist_folded: Set(validate::fold(&artist)),
        artist: Set(artist),
        genre_folded: Set(validate::fold(&genre)),
        genre: Set(genre),
        release_year: Set(release_year),
        price: Set(price),
        stock: Set(stock),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    Ok(record::Entity::insert(row).exec_with_returning(db).await?.into())
}

pub async fn find(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<Record>> {
    Ok(record::Entity::find_by_id(id).into_partial_model::<Record>().one(db).await?)
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
    let mut update = record::Entity::update_many().col_expr(Column::UpdatedAt, Expr::value(now_ms()));
    for (column, folded, text) in [
        (Column::Title, Column::TitleFolded, title),
        (Column::Artist, Column::ArtistFolded, artist),
        (Column::Genre, Column::GenreFolded, genre),
    ] {
        if let Some(text) = text {
            update = update.col_expr(folded, Expr::value(validate::fold(&text))).col_expr(column, Expr::value(text));
        }
    }
    if let Some(release_year) = release_year {
        update = update.col_expr(Column::ReleaseYear, Expr::value(release_year));
    }
    if let Some(price) = price {
        update = update.col_expr(Column::Price, Expr::value(price));
    }
    let updated = update.filter(Column::Id.eq(id)).exec_with_returning(db).await?;
    updated.into_iter().next().map(Record::from).ok_or_else(|| not_found(id))
}

/// Adds `quantity` units in one conditional statement.
pub async fn restock(db: &impl ConnectionTrait, id: i64, quantity: i32) -> AppResult<Record> {
    let quantity = validate::quantity("quantity", quantity)?;
    let restocked = record::Entity::update_many()
        .col_expr(Column::Stock, Expr::col(Column::Stock).add(quantity))
        .col_expr(Column::UpdatedAt, Expr::value(now_ms()))
        .filter(Column::Id.eq(id))
        .filter(Column::Stock.lte(MAX_STOCK - quantity))
        .exec_with_returning(db)
        .await?;
    if let Some(record) = restocked.into_iter().next() {
        return Ok(record.into());
    }
    let record = get(db, id).await?;
    Err(AppError::bad_input(format!(
        "restocking {quantity} units would take record {id} past the largest stock ({MAX_STOCK}); it holds {}",
        record.stock
    )))
}

fn filtered(filter: &RecordFilter) -> AppResult<Select<record::Entity>> {
    let mut select = record::Entity::find();
    for (column, needle) in [(Column::ArtistFolded, &filter.artist), (Column::TitleFolded, &filter.title)] {
        if let Some(needle) = needle.as_deref().filter(|needle| !needle.trim().is_empty()) {
            select = select.filter(column.like(LikeExpr::new(validate::contains_pattern(needle)).escape('\\')));
        }
    }
    if let Some(genre) = filter.genre.as_deref().filter(|genre| !genre.trim().is_empty()) {
        select = select.filter(Column::GenreFolded.eq(validate::fold(genre.trim())));
    }
    if let Some(year) = filter.release_year {
        select = select.filter(Column::ReleaseYear.eq(validate::release_year(year)?));
    }
    match filter.in_stock {
        Some(true) => select = select.filter(Column::Stock.gt(0)),
        Some(false) => select = select.filter(Column::Stock.eq(0)),
        None => {}
    }
    Ok(select)
}

/// What records can be ordered by (`RecordOrder.field`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RecordOrderField {
    /// By creation, in the order the records were added (by id).
    #[default]
    CreatedAt,
    /// By title, ignoring case.
    Title,
    /// By artist, ignoring case.
    Artist,
    /// By release year.
    ReleaseYear,
    /// By current price.
    Price,
}

impl RecordOrderField {
    pub fn ordering(self, direction: OrderDirection) -> Ordering {
        match self {
            Self::CreatedAt => Ordering::new("CREATED_AT", direction, KeyKind::Id),
            Self::Title => Ordering::new("TITLE", direction, KeyKind::Text),
            Self::Artist => Ordering::new("ARTIST", direction, KeyKind::Text),
            Self::ReleaseYear => Ordering::new("RELEASE_YEAR", direction, KeyKind::Int),
            Self::Price => Ordering::new("PRICE", direction, KeyKind::Int),
        }
    }

    fn column(self) -> Option<Column> {
        match self {
            Self::CreatedAt => None,
            // The folded copies: case-insensitive order, served by their indexes.
            Self::Title => Some(Column::TitleFolded),
            Self::Artist => Some(Column::ArtistFolded),
            Self::ReleaseYear => Some(Column::ReleaseYear),
            Self::Price => Some(Column::Price),
        }
    }

    /// Where `record` stands in this ordering.
    pub fn cursor(self, record: &Record) -> Cursor {
        let key = match self {
            Self::CreatedAt => SortKey::Id,
            Self::Title => SortKey::Text(validate::fold(&record.title)),
            Self::Artist => SortKey::Text(validate::fold(&record.artist)),
            Self::ReleaseYear => SortKey::Int(i64::from(record.release_year)),
            Self::Price => SortKey::Int(record.price),
        };
        Cursor::new(key, record.id)
    }
}

pub async fn list(
    db: &impl ConnectionTrait,
    filter: &RecordFilter,
    page: &Page,
    order: RecordOrderField,
) -> AppResult<Vec<Record>> {
    model::page(db, filtered(filter)?, order.column(), Column::Id, page).await
}

pub async fn count(db: &impl ConnectionTrait, filter: &RecordFilter) -> AppResult<i64> {
    model::count(db, filtered(filter)?).await
}

/// Records by id, in any order (for the DataLoader).
pub async fn by_ids(db: &impl ConnectionTrait, ids: &[i64]) -> AppResult<Vec<Record>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let select = record::Entity::find().filter(Column::Id.is_in(ids.iter().copied()));
    Ok(select.into_partial_model::<Record>().all(db).await?)
}
