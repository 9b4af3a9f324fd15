//! Customers: creation with a case-insensitively unique e-mail, updates, and
//! deactivation (the account and its purchase history stay; it can no longer buy).

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait as _, Condition, ConnectionTrait, EntityTrait as _, QueryFilter as _, Select,
    sea_query::{Expr, LikeExpr},
};

use super::{
    entity::customer::{self, Column},
    model::{self, Customer},
    validate,
};
use crate::{
    db::now_ms,
    error::{AppError, AppResult, UniqueKey, conflict_on_unique},
    paging::{Cursor, KeyKind, OrderDirection, Ordering, Page, SortKey},
};

/// Which customers a list shows.
#[derive(Debug, Clone, Default)]
pub struct CustomerFilter {
    pub active: Option<bool>,
    /// Case-insensitive substring of the name or the e-mail.
    pub search: Option<String>,
}

/// Fields to change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct CustomerChanges {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// Customers are unique by e-mail address, compared case-folded.
const EMAIL_KEY: UniqueKey = UniqueKey { constraint: "customers_email_folded", column: "customers.email_folded" };

fn email_taken(email: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a customer with the e-mail `{email}` already exists (addresses are compared ignoring case)")
}

pub async fn create(db: &impl ConnectionTrait, name: &str, email: &str) -> AppResult<Customer> {
    let name = validate::text("name", name)?;
    let email = validate::email(email)?;
    let now = now_ms();
    let row = customer::ActiveModel {
        name_folded: Set(validate::fold(&name)),
        name: Set(name),
        email_folded: Set(validate::fold(&email)),
        email: Set(email.clone()),
        active: Set(true),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    let created = customer::Entity::insert(row)
        .exec_with_returning(db)
        .await
        .map_err(|error| conflict_on_unique(error, EMAIL_KEY, email_taken(&email)))?;
    Ok(created.into())
}

pub async fn find(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<Customer>> {
    Ok(customer::Entity::find_by_id(id).into_partial_model::<Customer>().one(db).await?)
}

pub async fn get(db: &impl ConnectionTrait, id: i64) -> AppResult<Customer> {
    find(db, id).await?.ok_or_else(|| not_found(id))
}

fn not_found(id: i64) -> AppError {
    AppError::not_found(format!("no customer with id {id}"))
}

pub async fn update(db: &impl ConnectionTrait, id: i64, changes: CustomerChanges) -> AppResult<Customer> {
    let name = changes.name.as_deref().map(|name| validate::text("name", name)).transpose()?;
    let email = changes.email.as_deref().map(validate::email).transpose()?;
    let taken = email.clone().unwrap_or_default();
    let mut update = customer::Entity::update_many().col_expr(Column::UpdatedAt, Expr::value(now_ms()));
    if let Some(name) = name {
        update = update
            .col_expr(Column::NameFolded, Expr::value(validate::fold(&name)))
            .col_expr(Column::Name, Expr::value(name));
    }
    if let Some(email) = email {
        update = update
            .col_expr(Column::EmailFolded, Expr::value(validate::fold(&email)))
            .col_expr(Column::Email, Expr::value(email));
    }
    let updated = update
        .filter(Column::Id.eq(id))
        .exec_with_returning(db)
        .await
        .map_err(|error| conflict_on_unique(error, EMAIL_KEY, email_taken(&taken)))?;
    updated.into_iter().next().map(Customer::from).ok_or_else(|| not_found(id))
}

/// Marks the customer inactive, once: a second deactivation is a conflict.
pub async fn deactivate(db: &impl ConnectionTrait, id: i64) -> AppResult<Customer> {
    let now = now_ms();
    let deactivated = customer::Entity::update_many()
        .col_expr(Column::Active, Expr::value(false))
        .col_expr(Column::DeactivatedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::Active.eq(true))
        .exec_with_returning(db)
        .await?;
    if let Some(customer) = deactivated.into_iter().next() {
        return Ok(customer.into());
    }
    let customer = get(db, id).await?;
    let when = customer.deactivated_at.map(crate::db::to_datetime).map(|at| at.to_rfc3339()).unwrap_or_default();
    Err(AppError::conflict(format!("customer {id} is already deactivated (since {when})")))
}

fn filtered(filter: &CustomerFilter) -> Select<customer::Entity> {
    let mut select = customer::Entity::find();
    if let Some(active) = filter.active {
        select = select.filter(Column::Active.eq(active));
    }
    if let Some(search) = filter.search.as_deref().filter(|search| !search.trim().is_empty()) {
        let pattern = || LikeExpr::new(validate::contains_pattern(search)).escape('\\');
        select = select
            .filter(Condition::any().add(Column::NameFolded.like(pattern())).add(Column::EmailFolded.like(pattern())));
    }
    select
}

/// What customers can be ordered by (`CustomerOrder.field`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CustomerOrderField {
    /// By creation, in the order the accounts were opened (by id).
    #[default]
    CreatedAt,
    /// By name, ignoring case.
    Name,
}

impl CustomerOrderField {
    pub fn ordering(self, direction: OrderDirection) -> Ordering {
        match self {
            Self::CreatedAt => Ordering::new("CREATED_AT", direction, KeyKind::Id),
            Self::Name => Ordering::new("NAME", direction, KeyKind::Text),
        }
    }

    fn column(self) -> Option<Column> {
        match self {
            Self::CreatedAt => None,
            // The folded copy: case-insensitive order, served by its index.
            Self::Name => Some(Column::NameFolded),
        }
    }

    /// Where `customer` stands in this ordering.
    pub fn cursor(self, customer: &Customer) -> Cursor {
        match self {
            Self::CreatedAt => Cursor::by_id(customer.id),
            Self::Name => Cursor::new(SortKey::Text(validate::fold(&customer.name)), customer.id),
        }
    }
}

pub async fn list(
    db: &impl ConnectionTrait,
    filter: &CustomerFilter,
    page: &Page,
    order: CustomerOrderField,
) -> AppResult<Vec<Customer>> {
    model::page(db, filtered(filter), order.column(), Column::Id, page).await
}

pub async fn count(db: &impl ConnectionTrait, filter: &CustomerFilter) -> AppResult<i64> {
    model::count(db, filtered(filter)).await
}

/// Customers by id, in any order (for the DataLoader).
pub async fn by_ids(db: &impl ConnectionTrait, ids: &[i64]) -> AppResult<Vec<Customer>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let select = customer::Entity::find().filter(Column::Id.is_in(ids.iter().copied()));
    Ok(select.into_partial_model::<Customer>().all(db).await?)
}
