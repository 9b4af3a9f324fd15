//! The read side: message lists (the dead-letter list is `status: FAILED`), counts, and
//! the `intake` health check.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, FromQueryResult, QueryFilter as _, QuerySelect as _, Select,
    sea_query::{Asterisk, Expr, Func},
};
use serde_json::json;

use super::{
    Intake,
    entity::intake_message::{self, Column},
    model::{IntakeStatus, MessageRow},
    process::STORE_KIND,
};
use crate::{
    db::{duration_ms, now_ms, stmt},
    error::AppResult,
    health::{Check, Status},
    paging::{KeyKind, OrderDirection, Ordering, Page},
};

/// Which messages a list shows.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<IntakeStatus>,
    /// The client's own message id.
    pub message_id: Option<String>,
}

impl MessageFilter {
    fn select(&self) -> Select<intake_message::Entity> {
        let mut select = intake_message::Entity::find();
        if let Some(status) = self.status {
            select = select.filter(Column::Status.eq(status.as_str()));
        }
        if let Some(message_id) = &self.message_id {
            select = select.filter(Column::MessageId.eq(message_id.as_str()));
        }
        select
    }
}

/// What intake messages can be ordered by (`IntakeMessageOrder.field`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IntakeMessageOrderField {
    /// By creation, in the order the messages were accepted (by id).
    #[default]
    CreatedAt,
}

impl IntakeMessageOrderField {
    pub fn ordering(self, direction: OrderDirection) -> Ordering {
        match self {
            Self::CreatedAt => Ordering::new("CREATED_AT", direction, KeyKind::Id),
        }
    }
}

/// One page of messages in the page's ordering (every one is by id).
pub async fn list(db: &impl ConnectionTrait, filter: &MessageFilter, page: &Page) -> AppResult<Vec<MessageRow>> {
    page.fetch(filter.select(), None, Column::Id, |select| select.all(db)).await
}

pub async fn count(db: &impl ConnectionTrait, filter: &MessageFilter) -> AppResult<i64> {
    let count = filter.select().select_only().expr(Func::count(Expr::col(Asterisk))).into_tuple::<i64>();
    Ok(count.one(db).await?.unwrap_or(0))
}

pub async fn get(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<MessageRow>> {
    Ok(intake_message::Entity::find_by_id(id).one(db).await?)
}

/// Messages by id, in no particular order; unknown ids are absent.
pub async fn by_ids(db: &impl ConnectionTrait, ids: &[i64]) -> AppResult<Vec<MessageRow>> {
    Ok(intake_message::Entity::find().filter(Column::Id.is_in(ids.iter().copied())).all(db).await?)
}

/// Messages per status.
pub async fn counts(db: &impl ConnectionTrait) -> AppResult<BTreeMap<&'static str, i64>> {
    let rows = intake_message::Entity::find()
        .select_only()
        .column(Column::Status)
        .expr(Func::count(Expr::col(Asterisk)))
        .group_by(Column::Status)
        .into_tuple::<(String, i64)>()
        .all(db)
        .await?;
    let mut counts: BTreeMap<&'static str, i64> =
        [IntakeStatus::Queued, IntakeStatus::Stored, IntakeStatus::Failed].map(|s| (s.as_str(), 0)).into();
    for (status, n) in rows {
        counts.insert(IntakeStatus::from_column(&status).as_str(), n);
    }
    Ok(counts)
}

/// The queue's depth and the age of its oldest waiting message, dead letters, and the
/// bucket map. Not critical: a backlog does not make the node unable to serve (storage
/// reachability is the `object_store` check, which is).
pub async fn health(state: &Intake) -> Check {
    #[derive(FromQueryResult)]
    struct Row {
        waiting: i64,
        oldest: Option<i64>,
        failed: i64,
    }
    // Raw SQL: three scalar subqueries in one round trip; both counts and the oldest come
    // from the (status, id) index.
    let row = Row::find_by_statement(stmt(
        &state.db,
        "SELECT
            (SELECT COUNT(*) FROM intake_messages WHERE status = $1) AS waiting,
            (SELECT submitted_at FROM intake_messages WHERE status = $1 ORDER BY id LIMIT 1) AS oldest,
            (SELECT COUNT(*) FROM intake_messages WHERE status = $2) AS failed",
        [IntakeStatus::Queued.as_str().into(), IntakeStatus::Failed.as_str().into()],
    ))
    .one(&state.db)
    .await;
    let jobs = state.jobs.backlog(STORE_KIND).await;
    let config = &state.config;
    let buckets: BTreeMap<&str, &str> =
        config.intake_buckets.iter().map(|route| (route.genre.as_str(), route.bucket.as_str())).collect();
    match (row, jobs) {
        (Ok(Some(row)), Ok((jobs_waiting, _))) => {
            let oldest_age_ms = row.oldest.map(|oldest| (now_ms() - oldest).max(0));
            let stalled = oldest_age_ms.is_some_and(|age| age > duration_ms(config.intake_max_wait));
            let status = if stalled { Status::Degraded } else { Status::Up };
            Check::new(
                status,
                false,
                json!({
                    "queue_depth": row.waiting,
                    "oldest_waiting_age_ms": oldest_age_ms,
                    "failed": row.failed,
                    "jobs_waiting": jobs_waiting,
                    "buckets": buckets,
                }),
            )
        }
        (Ok(None), _) => Check::new(Status::Down, false, json!({ "error": "no answer", "buckets": buckets })),
        (Err(error), _) | (_, Err(error)) => {
            Check::new(Status::Down, false, json!({ "error": error.to_string(), "buckets": buckets }))
        }
    }
}
