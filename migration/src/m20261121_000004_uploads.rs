//! Bulk product uploads: one row per accepted body, with its ingestion
//! progress. The dedup window itself lives in Redis (or in process), not here: it is a
//! short-lived fact with an expiry, which a database row would only imitate.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Uploads {
    Table,
    Id,
    Status,
    Digest,
    Bytes,
    ItemsTotal,
    ItemsDone,
    ItemsRejected,
    Rejections,
    ProductsCreated,
    ProductsUpdated,
    SpoolKey,
    JobId,
    Error,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Uploads::Table)
                    .col(ColumnDef::new(Uploads::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Uploads::Status).string_len(16).not_null())
                    // BLAKE3 of the exact body bytes, lowercase hex.
                    .col(ColumnDef::new(Uploads::Digest).string_len(64).not_null())
                    .col(ColumnDef::new(Uploads::Bytes).big_integer().not_null())
                    .col(ColumnDef::new(Uploads::ItemsTotal).big_integer().not_null())
                    .col(ColumnDef::new(Uploads::ItemsDone).big_integer().not_null().default(0))
                    // Items the catalog refused (skipped, the rest ingested) and the first
                    // few reasons, as a JSON array.
                    .col(ColumnDef::new(Uploads::ItemsRejected).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Uploads::Rejections).text())
                    .col(ColumnDef::new(Uploads::ProductsCreated).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Uploads::ProductsUpdated).big_integer().not_null().default(0))
                    // Object-store key of the spooled body; kept until ingestion succeeds.
                    .col(ColumnDef::new(Uploads::SpoolKey).string().not_null())
                    .col(ColumnDef::new(Uploads::JobId).big_integer())
                    .col(ColumnDef::new(Uploads::Error).text())
                    .col(ColumnDef::new(Uploads::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Uploads::UpdatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Uploads::FinishedAt).big_integer())
                    .check(Expr::col(Uploads::Status).is_in(["queued", "ingesting", "succeeded", "failed"]))
                    .check(Expr::col(Uploads::Bytes).gt(0))
                    .check(
                        Expr::col(Uploads::ItemsDone)
                            .gte(0)
                            .and(Expr::col(Uploads::ItemsDone).lte(Expr::col(Uploads::ItemsTotal))),
                    )
                    .check(
                        Expr::col(Uploads::ItemsRejected)
                            .gte(0)
                            .and(Expr::col(Uploads::ItemsRejected).lte(Expr::col(Uploads::ItemsDone))),
                    )
                    .check(Expr::col(Uploads::ProductsCreated).gte(0).and(Expr::col(Uploads::ProductsUpdated).gte(0)))
                    .to_owned(),
            )
            .await?;
        // `uploads(status:)` pages by id within a status; the reconciler looks for
        // unfinished uploads.
        manager
            .create_index(
                Index::create()
                    .name("uploads_status_id")
                    .table(Uploads::Table)
                    .col(Uploads::Status)
                    .col(Uploads::Id)
                    .to_owned(),
            )
            .await?;
        // The spool sweeper asks whether an object is still some upload's spool.
        manager
            .create_index(
                Index::create().name("uploads_spool_key").table(Uploads::Table).col(Uploads::SpoolKey).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Uploads::Table).to_owned()).await
    }
}
