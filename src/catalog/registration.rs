//! Registering products with the offers service: a durable job per product, enqueued in
//! the transaction that creates it. The service being down delays registration (the job
//! retries with backoff), never loses it. Registering twice is harmless (409 = already
//! registered), so the at-least-once job is idempotent.

use sea_orm::{ConnectionTrait as _, FromQueryResult};

use super::{
    client::OffersError,
    model::{PRODUCT_COLUMNS, ProductRow, REGISTER_JOB, Registration},
    products::RegisterPayload,
    sync,
};
use crate::{
    db::{now_ms, stmt},
    jobs::{JobContext, JobError, JobRegistry, NewJob},
    state::AppState,
};

pub fn register_jobs(registry: &mut JobRegistry) {
    registry.register(REGISTER_JOB, register_product);
}

/// A registration job for `product_id`, with the catalog's attempt budget.
pub fn job(state: &AppState, product_id: i64) -> NewJob {
    NewJob::new(REGISTER_JOB, &RegisterPayload { product_id })
        .max_attempts(state.config.catalog.offers_register_attempts)
}

async fn register_product(state: AppState, ctx: JobContext, payload: RegisterPayload) -> Result<(), JobError> {
    let db = &state.db;
    let product = ProductRow::find_by_statement(stmt(
        db,
        &format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"),
        [payload.product_id.into()],
    ))
    .one(db)
    .await?;
    let Some(product) = product else {
        // Deleted before we got to it: nothing to register.
        return Ok(());
    };
    if Registration::parse(&product.registration_status) == Registration::Registered {
        return Ok(());
    }
    let client = &state.catalog.offers;
    match client.register(db, product.id, &product.name, &product.description).await {
        Ok(newly) => {
            mark_registered(&state, product.id).await?;
            tracing::info!(product = product.id, newly, "product registered with the offers service");
            // Offers right away rather than at the next sync; if this fails the sync catches up.
            if let Err(error) = sync::sync_product(&state, product.id).await {
                tracing::info!(product = product.id, error = %error, "first offers fetch failed; the sync will retry");
            }
            Ok(())
        }
        Err(OffersError::Rejected { status, message }) => {
            let reason = format!("the offers service refused the product ({status}): {message}");
            mark_failed(&state, product.id, &reason).await?;
            Err(JobError::Permanent(reason))
        }
        Err(error) => {
            let reason = error.to_string();
            if ctx.attempt >= ctx.max_attempts {
                mark_failed(&state, product.id, &format!("gave up after {} attempts: {reason}", ctx.attempt)).await?;
            } else {
                note_error(&state, product.id, &reason).await?;
            }
            Err(JobError::Retry(anyhow::anyhow!(reason)))
        }
    }
}

async fn mark_registered(state: &AppState, id: i64) -> Result<(), sea_orm::DbErr> {
    state
        .db
        .execute_raw(stmt(
            &state.db,
            "UPDATE products SET registration_status = 'registered', registration_error = NULL, registered_at = $1
             WHERE id = $2 AND registration_status <> 'registered'",
            [now_ms().into(), id.into()],
        ))
        .await?;
    Ok(())
}

/// The error of an attempt that will be retried; the product stays pending.
async fn note_error(state: &AppState, id: i64, error: &str) -> Result<(), sea_orm::DbErr> {
    state
        .db
        .execute_raw(stmt(
            &state.db,
            "UPDATE products SET registration_error = $1 WHERE id = $2 AND registration_status = 'pending'",
            [error.into(), id.into()],
        ))
        .await?;
    Ok(())
}

async fn mark_failed(state: &AppState, id: i64, error: &str) -> Result<(), sea_orm::DbErr> {
    state
        .db
        .execute_raw(stmt(
            &state.db,
            "UPDATE products SET registration_status = 'failed', registration_error = $1
             WHERE id = $2 AND registration_status <> 'registered'",
            [error.into(), id.into()],
        ))
        .await?;
    Ok(())
}

/// Queues registration again (a product that failed, or that the service forgot): back
/// to pending, with a fresh job, in the caller's transaction.
pub async fn requeue(
    state: &AppState,
    conn: &impl sea_orm::ConnectionTrait,
    id: i64,
    reason: Option<&str>,
) -> Result<bool, sea_orm::DbErr> {
    let updated = conn
        .execute_raw(stmt(
            conn,
            "UPDATE products SET registration_status = 'pending', registration_error = $1 WHERE id = $2",
            [reason.map(str::to_string).into(), id.into()],
        ))
        .await?
        .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    state.jobs.enqueue(conn, job(state, id)).await?;
    Ok(true)
}
