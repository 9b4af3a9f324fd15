//! Customers: creation with a case-insensitively unique e-mail, updates, and
//! deactivation (the account and its purchase history stay; it can no longer buy).

use sea_orm::{ConnectionTrait, FromQueryResult as _};

use super::{
    model::{CUSTOMER_COLUMNS, Conditions, Customer},
    validate,
};
use crate::{
    db::{now_ms, stmt},
    error::{AppError, AppResult, UniqueKey, conflict_on_unique},
    paging::Page,
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
    let sql = format!(
        "INSERT INTO customers (name, name_folded, email, email_folded, active, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {CUSTOMER_COLUMNS}"
    );
    let values = [
        name.clone().into(),
        validate::fold(&name).into(),
        email.clone().into(),
        validate::fold(&email).into(),
        true.into(),
        now.into(),
    ];
    Customer::find_by_statement(stmt(db, &sql, values))
        .one(db)
        .await
        .map_err(|error| conflict_on_unique(error, EMAIL_KEY, email_taken(&email)))?
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("insert returned no customer")))
}

pub async fn find(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<Customer>> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1");
    Ok(Customer::find_by_statement(stmt(db, &sql, [id.into()])).one(db).await?)
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
    let sql = format!(
        "UPDATE customers SET
            name = COALESCE($1, name), name_folded = COALESCE($2, name_folded),
            email = COALESCE($3, email), email_folded = COALESCE($4, email_folded),
            updated_at = $5
         WHERE id = $6 RETURNING {CUSTOMER_COLUMNS}"
    );
    let values = [
        name.clone().into(),
        name.as_deref().map(validate::fold).into(),
        email.clone().into(),
        email.as_deref().map(validate::fold).into(),
        now_ms().into(),
        id.into(),
    ];
    let taken = email.clone().unwrap_or_default();
    Customer::find_by_statement(stmt(db, &sql, values))
        .one(db)
        .await
        .map_err(|error| conflict_on_unique(error, EMAIL_KEY, email_taken(&taken)))?
        .ok_or_else(|| not_found(id))
}

/// Marks the customer inactive, once: a second deactivation is a conflict.
pub async fn deactivate(db: &impl ConnectionTrait, id: i64) -> AppResult<Customer> {
    let now = now_ms();
    let sql = format!(
        "UPDATE customers SET active = $1, deactivated_at = $2, updated_at = $2
         WHERE id = $3 AND active RETURNING {CUSTOMER_COLUMNS}"
    );
    if let Some(customer) =
        Customer::find_by_statement(stmt(db, &sql, [false.into(), now.into(), id.into()])).one(db).await?
    {
        return Ok(customer);
    }
    let customer = get(db, id).await?;
    let when = customer.deactivated_at.map(crate::db::to_datetime).map(|at| at.to_rfc3339()).unwrap_or_default();
    Err(AppError::conflict(format!("customer {id} is already deactivated (since {when})")))
}

fn conditions(filter: &CustomerFilter) -> Conditions {
    let mut conditions = Conditions::default();
    if let Some(active) = filter.active {
        let active = conditions.bind(active);
        conditions.and(format!("active = {active}"));
    }
    if let Some(search) = filter.search.as_deref().filter(|search| !search.trim().is_empty()) {
        let pattern = conditions.bind(validate::contains_pattern(search));
        conditions.and(format!("(name_folded LIKE {pattern} ESCAPE '\\' OR email_folded LIKE {pattern} ESCAPE '\\')"));
    }
    conditions
}

pub async fn list(db: &impl ConnectionTrait, filter: &CustomerFilter, page: Page) -> AppResult<Vec<Customer>> {
    conditions(filter).page(db, "customers", CUSTOMER_COLUMNS, page).await
}

pub async fn count(db: &impl ConnectionTrait, filter: &CustomerFilter) -> AppResult<i64> {
    conditions(filter).count(db, "customers").await
}

/// Customers by id, in any order (for the DataLoader).
pub async fn by_ids(db: &impl ConnectionTrait, ids: &[i64]) -> AppResult<Vec<Customer>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conditions = Conditions::default();
    let list = conditions.bind_list(ids.iter().copied());
    conditions.and(format!("id IN ({list})"));
    conditions.all(db, "customers", CUSTOMER_COLUMNS).await
}
