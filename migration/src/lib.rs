//! Database migrations, shared by SQLite (embedded) and Postgres (cluster).
//!
//! Every timestamp column is BIGINT milliseconds since the Unix epoch: one type that
//! sorts, compares and indexes identically on both backends.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_foundation;
mod m20261121_000002_catalog;
mod m20261121_000003_store;
mod m20261121_000004_uploads;
mod m20261121_000005_intake;
mod m20261121_000006_unfinished_jobs_index;
mod m20261205_000007_paging_orders;
mod m20261205_000008_upload_digest_index;
mod m20261205_000009_upload_item_errors;
mod m20261205_000010_intake_notices;
mod m20261206_000011_upload_backlog_index;
mod m20261206_000012_upload_bodies;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_foundation::Migration),
            Box::new(m20261121_000002_catalog::Migration),
            Box::new(m20261121_000003_store::Migration),
            Box::new(m20261121_000004_uploads::Migration),
            Box::new(m20261121_000005_intake::Migration),
            Box::new(m20261121_000006_unfinished_jobs_index::Migration),
            Box::new(m20261205_000007_paging_orders::Migration),
            Box::new(m20261205_000008_upload_digest_index::Migration),
            Box::new(m20261205_000009_upload_item_errors::Migration),
            Box::new(m20261205_000010_intake_notices::Migration),
            Box::new(m20261206_000011_upload_backlog_index::Migration),
            Box::new(m20261206_000012_upload_bodies::Migration),
        ]
    }
}
