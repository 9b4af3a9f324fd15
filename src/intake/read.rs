//! The read side: message lists (the dead-letter list is `status: FAILED`), counts, and
//! the `intake` health check.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::json;

use super::{
    Intake,
    model::{IntakeStatus, MessageRow},
    process::STORE_KIND,
};
use crate::{
    db::{duration_ms, now_ms, stmt},
    error::AppResult,
    health::{Check, Status},
    paging::Page,
};

/// Which messages a list shows.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<IntakeStatus>,
    /// The client's own message id.
    pub message_id: Option<String>,
}

impl MessageFilter {
    /// `WHERE` conditions and their values, numbered from `$1`.
    fn conditions(&self, values: &mut Vec<Value>) -> Vec<String> {
        let mut conditions = Vec::new();
        if let Some(status) = self.status {
            values.push(status.as_str().into());
            conditions.push(format!("status = ${}", values.len()));
        }
        if let Some(message_id) = &self.message_id {
            values.push(message_id.clone().into());
            conditions.push(format!("message_id = ${}", values.len()));
        }
        conditions
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) }
}

/// One page of messages, oldest first.
pub async fn list(db: &impl ConnectionTrait, filter: &MessageFilter, page: Page) -> AppResult<Vec<MessageRow>> {
    let mut values = Vec::new();
    let mut conditions = filter.conditions(&mut values);
    if let Some(after) = page.after {
        values.push(after.into());
        conditions.push(format!("id > ${}", values.len()));
    }
    values.push(i64::try_from(page.fetch_limit()).unwrap_or(i64::MAX).into());
    let sql =
        format!("SELECT * FROM intake_messages {} ORDER BY id LIMIT ${}", where_clause(&conditions), values.len());
    Ok(MessageRow::find_by_statement(stmt(db, &sql, values)).all(db).await?)
}

pub async fn count(db: &impl ConnectionTrait, filter: &MessageFilter) -> AppResult<i64> {
    let mut values = Vec::new();
    let conditions = filter.conditions(&mut values);
    let sql = format!("SELECT COUNT(*) AS n FROM intake_messages {}", where_clause(&conditions));
    #[derive(FromQueryResult)]
    struct Row {
        n: i64,
    }
    Ok(Row::find_by_statement(stmt(db, &sql, values)).one(db).await?.map_or(0, |row| row.n))
}

pub async fn get(db: &impl ConnectionTrait, id: i64) -> AppResult<Option<MessageRow>> {
    Ok(MessageRow::find_by_statement(stmt(db, "SELECT * FROM intake_messages WHERE id = $1", [id.into()]))
        .one(db)
        .await?)
}

/// Messages per status.
pub async fn counts(db: &impl ConnectionTrait) -> AppResult<BTreeMap<&'static str, i64>> {
    #[derive(FromQueryResult)]
    struct Row {
        status: String,
        n: i64,
    }
    let rows =
        Row::find_by_statement(stmt(db, "SELECT status, COUNT(*) AS n FROM intake_messages GROUP BY status", []))
            .all(db)
            .await?;
    let mut counts: BTreeMap<&'static str, i64> =
        [IntakeStatus::Queued, IntakeStatus::Stored, IntakeStatus::Failed].map(|s| (s.as_str(), 0)).into();
    for row in rows {
        counts.insert(IntakeStatus::from_column(&row.status).as_str(), row.n);
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
    // Both counts and the oldest come from the (status, id) index.
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
