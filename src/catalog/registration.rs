//! Registering products with the offers service: durable jobs enqueued in the transaction
//! that creates the products, one job per product created by the API and one per batch
//! of up to 4,000 created by an upload (a job row per product cost uploads a third of
//! their speed). The service being down delays registration (the job retries with
//! backoff), never loses it. Registering twice is harmless (409 = already registered), so
//! the at-least-once job is idempotent, and a retried batch skips the products already
//! registered or refused.

use std::collections::HashSet;

use std::sync::Arc;

use futures::StreamExt as _;
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, sea_query::Expr};

use super::{
    Catalog, CatalogConfig,
    client::OffersError,
    entity::product::{self, Column},
    model::{ProductRow, REGISTER_JOB, Registration},
    sync,
};
use crate::{
    db::now_ms,
    jobs::{JobContext, JobError, JobRegistry, NewJob},
};

/// The payload of a registration job.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RegisterPayload {
    #[serde(default)]
    pub product_ids: Vec<i64>,
    /// The one product of a job queued before jobs held lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<i64>,
}

pub fn register_jobs(catalog: &Arc<Catalog>, registry: &mut JobRegistry) {
    let catalog = catalog.clone();
    registry.register(REGISTER_JOB, move |ctx, payload| register_products(catalog.clone(), ctx, payload));
}

/// A registration job for `product_ids`, with the catalog's attempt budget.
pub fn job(config: &CatalogConfig, product_ids: Vec<i64>) -> NewJob {
    NewJob::new(REGISTER_JOB, &RegisterPayload { product_ids, product_id: None })
        .max_attempts(config.offers_register_attempts)
}

/// How registering one product ended.
enum Outcome {
    Registered,
    /// The service refused it: retrying cannot help.
    Refused(String),
    /// Worth another attempt.
    Failed(String),
}

async fn register_products(state: Arc<Catalog>, ctx: JobContext, payload: RegisterPayload) -> Result<(), JobError> {
    let ids: HashSet<i64> = payload.product_ids.into_iter().chain(payload.product_id).collect();
    let ids: Vec<i64> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(());
    }
    // Deleted, registered or refused meanwhile: nothing to do for those.
    let products: Vec<ProductRow> = product::Entity::find()
        .filter(Column::Id.is_in(ids.iter().copied()))
        .filter(Column::RegistrationStatus.eq(Registration::Pending.as_str()))
        .all(&state.db)
        .await?;
    let last_attempt = ctx.attempt >= ctx.max_attempts;
    let outcomes: Vec<Result<Outcome, sea_orm::DbErr>> = futures::stream::iter(products)
        .map(|product| register_one(&state, product, ctx.attempt, last_attempt))
        .buffer_unordered(state.config.offers_register_concurrency)
        .collect()
        .await;
    let (mut refused, mut failed) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome? {
            Outcome::Registered => {}
            Outcome::Refused(reason) => refused.push(reason),
            Outcome::Failed(reason) => failed.push(reason),
        }
    }
    let summary = |reasons: &[String], what: &str| {
        let first = reasons.first().map(String::as_str).unwrap_or_default();
        match reasons.len() {
            1 => first.to_string(),
            n => format!("{n} of {} products {what}; the first: {first}", ids.len()),
        }
    };
    if !failed.is_empty() {
        return Err(JobError::Retry(anyhow::anyhow!(summary(&failed, "could not be registered"))));
    }
    if !refused.is_empty() {
        return Err(JobError::Permanent(summary(&refused, "were refused")));
    }
    Ok(())
}

async fn register_one(
    state: &Catalog,
    product: ProductRow,
    attempt: i32,
    last_attempt: bool,
) -> Result<Outcome, sea_orm::DbErr> {
    let client = &state.offers;
    match client.register(&state.db, product.id, &product.name, &product.description).await {
        Ok(newly) => {
            mark_registered(state, product.id).await?;
            tracing::info!(product = product.id, newly, "product registered with the offers service");
            // Offers right away rather than at the next sync; if this fails the sync catches up.
            if let Err(error) = sync::sync_product(state, product.id).await {
                tracing::info!(product = product.id, error = %error, "first offers fetch failed; the sync will retry");
            }
            Ok(Outcome::Registered)
        }
        Err(OffersError::Rejected { status, message }) => {
            let reason = format!("the offers service refused the product ({status}): {message}");
            mark_failed(state, product.id, &reason).await?;
            Ok(Outcome::Refused(reason))
        }
        Err(error) => {
            let reason = error.to_string();
            if last_attempt {
                mark_failed(state, product.id, &format!("gave up after {attempt} attempts: {reason}")).await?;
            } else {
                note_error(state, product.id, &reason).await?;
            }
            Ok(Outcome::Failed(reason))
        }
    }
}

async fn mark_registered(state: &Catalog, id: i64) -> Result<(), sea_orm::DbErr> {
    product::Entity::update_many()
        .col_expr(Column::RegistrationStatus, Expr::value(Registration::Registered.as_str()))
        .col_expr(Column::RegistrationError, Expr::value(Option::<String>::None))
        .col_expr(Column::RegisteredAt, Expr::value(now_ms()))
        .filter(Column::Id.eq(id))
        .filter(Column::RegistrationStatus.ne(Registration::Registered.as_str()))
        .exec(&state.db)
        .await?;
    Ok(())
}

/// The error of an attempt that will be retried; the product stays pending.
async fn note_error(state: &Catalog, id: i64, error: &str) -> Result<(), sea_orm::DbErr> {
    product::Entity::update_many()
        .col_expr(Column::RegistrationError, Expr::value(error))
        .filter(Column::Id.eq(id))
        .filter(Column::RegistrationStatus.eq(Registration::Pending.as_str()))
        .exec(&state.db)
        .await?;
    Ok(())
}

async fn mark_failed(state: &Catalog, id: i64, error: &str) -> Result<(), sea_orm::DbErr> {
    product::Entity::update_many()
        .col_expr(Column::RegistrationStatus, Expr::value(Registration::Failed.as_str()))
        .col_expr(Column::RegistrationError, Expr::value(error))
        .filter(Column::Id.eq(id))
        .filter(Column::RegistrationStatus.ne(Registration::Registered.as_str()))
        .exec(&state.db)
        .await?;
    Ok(())
}

/// Queues registration again (a product that failed, or that the service forgot): back
/// to pending, with a fresh job, in the caller's transaction.
pub async fn requeue(
    state: &Catalog,
    conn: &impl sea_orm::ConnectionTrait,
    id: i64,
    reason: Option<&str>,
) -> Result<bool, sea_orm::DbErr> {
    let updated = product::Entity::update_many()
        .col_expr(Column::RegistrationStatus, Expr::value(Registration::Pending.as_str()))
        .col_expr(Column::RegistrationError, Expr::value(reason.map(str::to_string)))
        .filter(Column::Id.eq(id))
        .exec(conn)
        .await?
        .rows_affected;
    if updated == 0 {
        return Ok(false);
    }
    state.jobs.enqueue(conn, job(&state.config, vec![id])).await?;
    Ok(true)
}
