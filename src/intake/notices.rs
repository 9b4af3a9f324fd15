//! The output queue's read side: notices after a sequence number (REST, GraphQL pages),
//! and the follower behind `intakeProcessed`, which replays from a position and then
//! goes on live without a gap or a repeat.

use std::{pin::pin, time::Duration};

use futures::{Stream, StreamExt as _};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
    sea_query::{Asterisk, Expr, Func},
};

use super::{
    Intake,
    entity::intake_notice::{self, Column},
    model::{NOTICES_TOPIC, Notice, NoticesStored},
};
use crate::{
    error::AppResult,
    paging::{KeyKind, OrderDirection, Ordering, Page},
};

/// Most notices one REST read returns (`limit`).
pub const MAX_READ: u64 = 1_000;

/// Notices one read of the follower takes; it reads again at once while they come full.
const FOLLOW_BATCH: u64 = 500;

/// How often a follower reads the table without a wake-up: the safety net for a lost
/// event (Redis down or restarting, a subscriber that lagged behind the bus).
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// What intake notices can be ordered by (`IntakeNoticeOrder.field`).
#[derive(async_graphql::Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IntakeNoticeOrderField {
    /// By queue position (`sequence`): the order the notices were committed in.
    #[default]
    Sequence,
}

impl IntakeNoticeOrderField {
    pub fn ordering(self, direction: OrderDirection) -> Ordering {
        match self {
            Self::Sequence => Ordering::new("SEQUENCE", direction, KeyKind::Id),
        }
    }
}

/// The queue's own order: the one cursors of `intakeProcessed` and `IntakeNotice.cursor` use.
pub fn queue_order() -> Ordering {
    IntakeNoticeOrderField::Sequence.ordering(OrderDirection::Asc)
}

/// Up to `limit` notices with a sequence above `after`, in sequence order.
pub async fn after(db: &impl ConnectionTrait, after: i64, limit: u64) -> AppResult<Vec<Notice>> {
    Ok(intake_notice::Entity::find()
        .filter(Column::Sequence.gt(after))
        .order_by_asc(Column::Sequence)
        .limit(limit)
        .all(db)
        .await?)
}

/// One page of notices in the page's ordering.
pub async fn list(db: &impl ConnectionTrait, page: &Page) -> AppResult<Vec<Notice>> {
    page.fetch(intake_notice::Entity::find(), None, Column::Sequence, |select| select.all(db)).await
}

pub async fn count(db: &impl ConnectionTrait) -> AppResult<i64> {
    let count = intake_notice::Entity::find().select_only().expr(Func::count(Expr::col(Asterisk))).into_tuple::<i64>();
    Ok(count.one(db).await?.unwrap_or(0))
}

/// Notices by sequence, in no particular order; unknown ones are absent.
pub async fn by_sequences(db: &impl ConnectionTrait, sequences: &[i64]) -> AppResult<Vec<Notice>> {
    Ok(intake_notice::Entity::find().filter(Column::Sequence.is_in(sequences.iter().copied())).all(db).await?)
}

/// The highest sequence committed so far (0 for an empty queue). Every notice that
/// commits later has a higher one (see `process::mark_stored`).
pub async fn latest(db: &impl ConnectionTrait) -> AppResult<i64> {
    let latest = intake_notice::Entity::find()
        .select_only()
        .expr(Func::max(Expr::col(Column::Sequence)))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?;
    Ok(latest.flatten().unwrap_or(0))
}

/// Where a follower starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After this sequence number: the notices committed since are replayed first.
    After(i64),
    /// After the latest notice committed when it starts.
    Now,
}

/// Every notice after the start, in sequence order, then each new one as it commits.
///
/// The table is the only source: an event on the bus only says "read again", and every
/// read asks for `sequence > last delivered`. So the switch from replay to live can
/// neither repeat nor skip a notice, a lost or lagging event only delays one until the
/// next wake-up or the periodic re-read ([`RECHECK_EVERY`]), and notices arrive in
/// sequence order, whichever node stored them. It subscribes to the bus before its first
/// read, so a wake-up for a notice committed meanwhile is not missed either.
pub async fn follow(intake: &Intake, start: Start) -> AppResult<impl Stream<Item = Notice> + Send + 'static> {
    let wakeups = intake.events.subscribe::<NoticesStored>(NOTICES_TOPIC);
    let mut position = match start {
        Start::After(sequence) => sequence,
        Start::Now => latest(&intake.db).await?,
    };
    let db = intake.db.clone();
    Ok(async_stream::stream! {
        let mut wakeups = pin!(wakeups);
        let mut bus_open = true;
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match after(&db, position, FOLLOW_BATCH).await {
                Ok(notices) => {
                    let full = notices.len() as u64 == FOLLOW_BATCH;
                    for notice in notices {
                        position = notice.sequence;
                        yield notice;
                    }
                    if full {
                        continue;
                    }
                }
                // Not the subscriber's fault, nor a reason to end its feed: read again later.
                Err(error) => tracing::warn!(error = ?error, "reading intake notices for a subscriber failed"),
            }
            loop {
                tokio::select! {
                    event = wakeups.next(), if bus_open => match event {
                        Some(stored) if stored.up_to <= position => continue,
                        Some(_) => break,
                        None => bus_open = false,
                    },
                    _ = recheck.tick() => break,
                }
            }
        }
    })
}
