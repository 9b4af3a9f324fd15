//! GraphQL view of the gateway: the served list and each source's state.

use async_graphql::{Context, Enum, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::{Gateway, SourceStatus, SourceView};
use crate::db::to_datetime;

/// The state of one partner feed on the node that answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "FeedSourceStatus")]
pub enum FeedSourceStatusGql {
    /// No poll has answered yet (the node just started).
    Pending,
    /// The last poll succeeded.
    Ok,
    /// The last poll failed; the last good snapshot is still served.
    Failing,
    /// No successful poll for three periods; the last good snapshot is still served.
    Stale,
}

impl From<SourceStatus> for FeedSourceStatusGql {
    fn from(status: SourceStatus) -> Self {
        match status {
            SourceStatus::Pending => Self::Pending,
            SourceStatus::Ok => Self::Ok,
            SourceStatus::Failing => Self::Failing,
            SourceStatus::Stale => Self::Stale,
        }
    }
}

/// A partner feed the gateway polls (`FEED_SOURCES`), as seen by the node that answers:
/// each node polls on its own.
#[derive(Debug, Clone, SimpleObject)]
pub struct FeedSource {
    /// The URL polled with GET.
    pub url: String,
    /// Seconds between two polls.
    pub period: f64,
    /// The source's polling state on this node.
    pub status: FeedSourceStatusGql,
    /// When the last good snapshot was received; null before the first one.
    pub last_success_at: Option<DateTime<Utc>>,
    /// The reason of the most recent failed poll (kept after the source recovers; compare
    /// `lastErrorAt` with `lastSuccessAt`, or read `status`).
    pub last_error: Option<String>,
    /// When the most recent failed poll happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Failed polls since the last good one.
    pub consecutive_failures: i32,
    /// Distinct items in the last good snapshot.
    pub item_count: i32,
    /// Items dropped from the source's last answer that was a JSON array: items that are not
    /// strings of exactly `FEED_ITEM_BYTES` UTF-8 bytes (8 by default) are not served. 0
    /// when every item was good, or before the first answer; counted over time in
    /// `emporium_feed_items_dropped_total`.
    pub items_dropped: i32,
    /// Seconds since the last good snapshot; null before the first one.
    pub staleness_seconds: Option<f64>,
}

impl From<SourceView> for FeedSource {
    fn from(view: SourceView) -> Self {
        Self {
            url: view.url,
            period: view.period.as_secs_f64(),
            status: view.status.into(),
            last_success_at: view.last_success_at.map(to_datetime),
            last_error_at: view.last_error.as_ref().map(|error| to_datetime(error.at)),
            last_error: view.last_error.map(|error| error.message),
            consecutive_failures: i32::try_from(view.consecutive_failures).unwrap_or(i32::MAX),
            item_count: i32::try_from(view.item_count).unwrap_or(i32::MAX),
            items_dropped: i32::try_from(view.items_dropped).unwrap_or(i32::MAX),
            staleness_seconds: view.staleness.map(|staleness| staleness.as_secs_f64()),
        }
    }
}

#[derive(Default)]
pub struct FeedQuery;

#[Object]
impl FeedQuery {
    /// The gateway's current list: the union of every source's last good snapshot, without
    /// duplicates, sorted by byte order — the same data `GET /v1/feed` serves.
    async fn feed(&self, ctx: &Context<'_>) -> Vec<String> {
        ctx.data_unchecked::<Gateway>().served().items.to_vec()
    }

    /// Every partner feed in configuration order, with its polling state.
    async fn feed_sources(&self, ctx: &Context<'_>) -> Vec<FeedSource> {
        ctx.data_unchecked::<Gateway>().sources().into_iter().map(FeedSource::from).collect()
    }
}
