//! What the intake pipeline stores: a message row from `queued` to `stored` or `failed`,
//! and the notice published when a message is stored.

use async_graphql::Enum;
use sea_orm::FromQueryResult;

use super::entity::intake_message;
use serde::{Deserialize, Serialize};

/// Where a message is in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum IntakeStatus {
    /// Accepted and durably queued; not written yet.
    Queued,
    /// Written to its bucket; `bucket` and `key` say where.
    Stored,
    /// Will not be written; `reason` says why (unknown genre, storage failing past the retries).
    Failed,
}

impl IntakeStatus {
    /// The stored form (the `status` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Stored => "stored",
            Self::Failed => "failed",
        }
    }

    pub fn from_column(value: &str) -> Self {
        match value {
            "stored" => Self::Stored,
            "failed" => Self::Failed,
            _ => Self::Queued,
        }
    }
}

/// One row of `intake_messages`.
pub type MessageRow = intake_message::Model;

/// The result notice of one stored message (the output queue), pushed to
/// `intakeProcessed` subscribers on every node.
#[derive(Debug, Clone, Serialize, Deserialize, FromQueryResult)]
pub struct Notice {
    pub id: i64,
    pub message_id: Option<String>,
    pub title: String,
    pub genre: String,
    pub bucket: String,
    /// The object name inside the bucket.
    pub object_name: String,
    pub processed_at: i64,
}

/// The event topic of notices.
pub const PROCESSED_TOPIC: &str = "intake.processed";
