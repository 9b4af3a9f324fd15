//! The claim query asks, for every due job in a FIFO group, whether an older job of its
//! group is still unfinished. Through `(ordering_key, id)` that walks every older job,
//! finished ones included, which grows with the group's history (a busy intake genre keeps
//! thousands of succeeded jobs for the retention period). A partial index over the
//! unfinished jobs of FIFO groups alone makes it one probe, and costs nothing to the many
//! jobs without a group (one registration job per uploaded product). Same SQL on SQLite
//! and Postgres.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX jobs_unfinished_by_group ON jobs (ordering_key, id)
                 WHERE status IN ('queued', 'running') AND ordering_key IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("jobs_unfinished_by_group").table(Alias::new("jobs")).to_owned()).await
    }
}
