//! The dedup window's source of truth: an upload is refused while a body with the same
//! digest was accepted less than `DEDUP_WINDOW` ago, checked in the database when the
//! fast path (Redis, or the in-process map) has no entry — after Redis lost its keys, or
//! after an embedded node restarted. One index probe per check.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Uploads {
    Table,
    Digest,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("uploads_digest_created_at")
                    .table(Uploads::Table)
                    .col(Uploads::Digest)
                    .col(Uploads::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("uploads_digest_created_at").table(Uploads::Table).to_owned()).await
    }
}
