//! `intake_notices`: the output queue, one notice per stored message, in commit order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "intake_notices")]
pub struct Model {
    /// The queue position: notices commit in this order, so a reader of
    /// `sequence > cursor` never passes over one that commits later. Gaps are possible.
    #[sea_orm(primary_key)]
    pub sequence: i64,
    /// The stored message (`intake_messages.id`); unique.
    pub intake_message_id: i64,
    /// The client's own id of the message; not unique.
    pub message_id: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub title: String,
    pub genre: String,
    pub bucket: String,
    /// The object's name inside the bucket.
    #[sea_orm(column_type = "Text")]
    pub object_name: String,
    pub stored_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
