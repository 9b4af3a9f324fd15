//! What the intake pipeline stores: a message row from `queued` to `stored` or `failed`,
//! and the notice recorded when a message is stored.

use async_graphql::Enum;
use serde::{Deserialize, Serialize};

use super::entity::{intake_message, intake_notice};

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

/// One row of `intake_notices`: the result notice of one stored message (the output queue).
pub type Notice = intake_notice::Model;

/// Published on every node after notices commit: a wake-up for `intakeProcessed`
/// subscribers, who read the notices themselves from the table (an event can be lost, a
/// committed notice cannot).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NoticesStored {
    /// The highest sequence number just committed.
    pub up_to: i64,
}

/// The event topic of [`NoticesStored`].
pub const NOTICES_TOPIC: &str = "intake.notices";
