//! `uploads`: one row per accepted bulk upload, with its ingestion progress.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "uploads")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "String(StringLen::N(16))")]
    pub status: String,
    /// BLAKE3 of the body, lowercase hex.
    #[sea_orm(column_type = "String(StringLen::N(64))")]
    pub digest: String,
    pub bytes: i64,
    pub items_total: i64,
    pub items_done: i64,
    /// Items with an error (the API's `itemsFailed`).
    pub items_rejected: i64,
    /// The first few item errors, as a JSON array (the API's `itemErrors`).
    #[sea_orm(column_type = "Text", nullable)]
    pub rejections: Option<String>,
    pub products_created: i64,
    pub products_updated: i64,
    pub spool_key: String,
    pub job_id: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// How failing items are handled (`ErrorPolicy::as_stored`).
    #[sea_orm(column_type = "String(StringLen::N(24))")]
    pub error_policy: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
