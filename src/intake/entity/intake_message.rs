//! `intake_messages`: one row per submitted message, `queued` → `stored` or `failed`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "intake_messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The client's own id; not unique.
    pub message_id: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub title: String,
    pub genre: String,
    #[sea_orm(column_type = "Text")]
    pub object_name: String,
    /// The message's JSON exactly as submitted.
    #[sea_orm(column_type = "Text")]
    pub body: String,
    pub status: String,
    pub bucket: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    pub job_id: i64,
    pub submitted_at: i64,
    pub processed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
