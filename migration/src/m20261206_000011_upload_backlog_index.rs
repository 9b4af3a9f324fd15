//! Backpressure reads the backlog — count, bytes and oldest acceptance of the uploads
//! not finished — up to every half second per node. Through `uploads_status_id` the count is
//! an index range, but the bytes and the oldest time are one table lookup per waiting
//! upload (10,000 at the default bound). A partial index over the unfinished uploads
//! alone, holding both columns, answers all three from the index (SQLite: covering index;
//! Postgres: index-only scan), and its size is the backlog's, not the history's. It leads
//! with `status` so that SQLite, without statistics, prefers it to `uploads_status_id`.
//! Same SQL on SQLite and Postgres; the query writes the status list exactly as here, for
//! SQLite's planner to match the index's condition.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX uploads_backlog ON uploads (status, created_at, bytes)
                 WHERE status IN ('queued', 'ingesting')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("uploads_backlog").table(Alias::new("uploads")).to_owned()).await
    }
}
